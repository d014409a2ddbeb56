"""Configuration: load YAML, validate against the JSON schema, fill defaults.

The schema (workflow/schemas/config.schema.yaml, Draft 2020-12) is the single
description of every key. Validation fills defaults and rejects unknown keys
with a message that names the key and the keys allowed at that place, because
a mistyped key silently ignored is how a run spends a day on the wrong setting.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration does not match the schema."""


def _extend_with_default(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _extend_with_default(jsonschema.Draft202012Validator)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The schema as a dict, read with libyaml's C loader where PyYAML has it.

    Every ``snakemake`` call (a dry run too) and every step validates the config; the pure-Python loader takes
    0.03 s for this file on the project's machine, the C one 0.004 s (BENCHMARKS.md, "Dry run of a finished DAG").
    """
    return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def coerce_strings(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """Turn strings into the numbers, booleans or nulls that the schema asks for at their place; return the value.

    Why: Snakemake's ``--config key=VALUE`` reads a nested VALUE with YAML's BaseLoader, so
    ``--config 'selection={"weights": {"clip": 2.0}}'`` arrives as ``{"weights": {"clip": "2.0"}}`` and would be
    refused as "not of type 'number'". The schema says what each place holds, so the conversion follows it,
    descending into objects (``properties``, ``additionalProperties``), arrays (``items``), local ``$ref``s and
    ``anyOf``/``oneOf``/``allOf`` branches. A string is left alone where a string is allowed, except a YAML null
    (``null`` or ``~``) where null is allowed too; it becomes a boolean from ``true``/``false`` (any case), an
    integer from ``int()``, a number from ``int()`` or else ``float()``. A string that is none of these stays
    a string, so validation then reports it with its key as before. Dicts and lists are converted in place.
    """
    root = schema if root is None else root
    branches = _branches(schema, root)
    if isinstance(value, dict):
        for key in value:
            sub = next((b["properties"][key] for b in branches if key in b.get("properties", {})),
                       next((b["additionalProperties"] for b in branches
                             if isinstance(b.get("additionalProperties"), dict)), {}))
            value[key] = coerce_strings(value[key], sub, root)
        return value
    if isinstance(value, list):
        items = next((b["items"] for b in branches if isinstance(b.get("items"), dict)), {})
        value[:] = [coerce_strings(item, items, root) for item in value]
        return value
    if not isinstance(value, str):
        return value
    types = {t for b in branches for t in ([b["type"]] if isinstance(b.get("type"), str) else b.get("type", []))}
    if "null" in types and value in ("null", "Null", "NULL", "~"):
        return None
    if "string" in types or not types:
        return value
    if "boolean" in types and value.lower() in ("true", "false"):
        return value.lower() == "true"
    for wanted, parse in (("integer", int), ("number", int), ("number", float)):
        if wanted in types:
            try:
                return parse(value)
            except ValueError:
                pass
    return value


def _branches(schema: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    """``schema`` and every schema it defers to (local ``$ref``, ``anyOf``/``oneOf``/``allOf``), flattened."""
    if not isinstance(schema, dict):  # `true`/`false` schemas say nothing about types
        return []
    found = [schema]
    if isinstance(schema.get("$ref"), str) and schema["$ref"].startswith("#/"):
        target = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        found += _branches(target, root)
    for keyword in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(keyword, []):
            found += _branches(branch, root)
    return found


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config`` in place (filling defaults) and return it; raise ConfigError on the first problems.

    Strings from Snakemake's ``--config`` are first converted where the schema wants numbers or booleans
    (``coerce_strings``).
    """
    schema = schema or load_schema()
    coerce_strings(config, schema)
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n" + "\n".join(_describe(e) for e in errors))
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    return validate_config(yaml.safe_load(Path(path).read_text()) or {})


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"  unknown key(s) {', '.join(repr(k) for k in unknown)} under {where}; allowed keys: {', '.join(allowed)}"
    return f"  {where}: {error.message}"


def check_real_run(config: dict[str, Any]) -> None:
    """Refuse a non-toy run that lacks a model or data path, when the DAG is built rather than an hour later.

    The toy world builds its own models and suites; a real run must name them. Every missing setting is listed
    with the key to set, so one edit of the config file fixes all of them.
    """
    if config["dataset"]["format"] == "toy":
        return
    missing = []
    if not config["dataset"]["root"]:
        missing.append("dataset.root: the folder of the dataset to select from")
    clip_uses = clip_embedding_uses(config)
    clip = config["models"]["clip"]
    if clip_uses and not clip["pretrained"] and not clip["model"].startswith("local-dir:"):
        missing.append(f"models.clip.pretrained: a CLIP checkpoint path or a cached open_clip tag "
                       f"(for {', '.join(clip_uses)})")
    if not config["selection"]["external_scores"] and not config["models"]["reward"]["path"]:
        missing.append("models.reward.path: a reward model folder or a cached Hugging Face id")
    if config["finetune"]["backend"] == "minigpt4":
        missing += [f"finetune.minigpt4.{key}: {what}" for key, what in
                    (("repo", "your MiniGPT-4 checkout"), ("ckpt", "the stage-1 checkpoint (.pth)"),
                     ("llama_model", "the Vicuna/Llama-2 folder")) if not config["finetune"]["minigpt4"].get(key)]
    elif not config["models"]["vlm"]["path"]:
        missing.append("models.vlm.path: the VLM to fine-tune (a transformers model folder; "
                       "`vlselect convert-minigpt4` makes one from MiniGPT-4's official checkpoints)")
    suites = config["labels"]["suites"] + config["final"]["suites"]
    if any(isinstance(s, str) for s in suites) and not config["evaluate"]["suite_root"]:
        missing.append("evaluate.suite_root: the folder holding the evaluation suites named in labels/final.suites")
    if config["judge"]["backend"] == "oracle":
        missing.append("judge.backend: 'openai' (with judge.base_url/model) or 'none'; the oracle judge scores "
                       "against the toy world's generator and exists only there")
    if missing:
        raise ConfigError(f"dataset.format is {config['dataset']['format']!r}, a real run, and it needs:\n  "
                          + "\n  ".join(missing)
                          + "\nSet them in your config file (configs/minigpt4.yaml and configs/llava.yaml are "
                            "templates with every such key marked).")


def clip_embedding_uses(config: dict[str, Any]) -> list[str]:
    """What in ``config`` runs the CLIP model; empty when nothing does, so a run can do without CLIP weights.

    With ``selection.external_scores`` the CLIP score is not computed, but the CLIP image embeddings still are for
    the image clusters and for the selector, whose inputs are PCA features of the image and answer embeddings.
    """
    uses = []
    if not config["selection"]["external_scores"]:
        uses.append("the CLIP score")
    if config["selection"]["clusters"] == "image":
        uses.append("selection.clusters: image")
    if "selector" in config["selection"]["methods"] + config["final"]["methods"]:
        uses.append("the selector's features")
    return uses


def check_external_scores(config: dict[str, Any]) -> None:
    """Refuse, when the DAG is built, a selection that needs what the run does not have.

    With ``selection.external_scores`` only the indicators named in its ``columns`` exist, so an
    ``<indicator>_only`` method for another one, or ``selection.weights`` on none of them, would otherwise fail
    after the import; ``selection.clusters: provided`` needs the embeddings brought with the scores.
    """
    sel = config["selection"]
    external = sel["external_scores"]
    problems = []
    if sel["clusters"] == "provided" and not (external and external["embeddings"]):
        problems.append("selection.clusters is 'provided' but selection.external_scores.embeddings is not set; "
                        "set it ({image: embeddings.npy, ids: ids.parquet}) or use clusters: image or none")
    if external:
        have = sorted(external["columns"])
        methods = sel["methods"] + [m for m in config["final"]["methods"] if m not in sel["methods"]]
        for method in methods:
            if method.endswith("_only") and method[: -len("_only")] not in have:
                problems.append(f"method {method!r} needs the indicator {method[: -len('_only')]!r}, which "
                                f"selection.external_scores.columns does not provide (it has {', '.join(have)}); "
                                "add a column for it or remove the method")
        if {"weights", "no_cluster"} & set(methods) and not any(sel["weights"].get(k) for k in have):
            problems.append(f"methods 'weights' and 'no_cluster' need a nonzero selection.weights entry for one of "
                            f"the imported indicators ({', '.join(have)})")
    if problems:
        raise ConfigError("selection settings the run cannot satisfy:\n  " + "\n  ".join(problems))


def check_gpu_counts(config: dict[str, Any]) -> None:
    """A fine-tune runs one training process per GPU (``finetune.gpus``, or ``finetune.minigpt4.gpus`` for the
    official backend), so its job must ask the scheduler for exactly that many (``resources.finetune.gpus``), or for
    none to train on the CPU; otherwise torchrun would put several processes on one GPU, or leave GPUs idle."""
    finetune = config["finetune"]
    key = "finetune.gpus" if finetune["backend"] == "transformers" else "finetune.minigpt4.gpus"
    processes = finetune["gpus"] if finetune["backend"] == "transformers" else finetune["minigpt4"]["gpus"]
    asked = config["resources"]["finetune"]["gpus"]
    if asked not in (0, processes):
        raise ConfigError(f"resources.finetune.gpus is {asked} but {key} is {processes}: a fine-tune runs one "
                          f"process per GPU; set both to the same number (or resources.finetune.gpus: 0 to train "
                          "on the CPU)")
