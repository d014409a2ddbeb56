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
    return yaml.safe_load(Path(path).read_text())


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config`` in place (filling defaults) and return it; raise ConfigError on the first problems."""
    schema = schema or load_schema()
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
    if not config["selection"]["external_scores"]:
        if not config["models"]["clip"]["pretrained"] and not config["models"]["clip"]["model"].startswith("local-dir:"):
            missing.append("models.clip.pretrained: a CLIP checkpoint path or a cached open_clip tag")
        if not config["models"]["reward"]["path"]:
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
        missing.append("judge.backend: 'openai' (with judge.base_url/model) or 'none'; the oracle judge reads the toy "
                       "world's hidden truth and exists only there")
    if missing:
        raise ConfigError(f"dataset.format is {config['dataset']['format']!r}, a real run, and it needs:\n  "
                          + "\n  ".join(missing)
                          + "\nSet them in your config file (configs/minigpt4.yaml and configs/llava.yaml are "
                            "templates with every such key marked).")
