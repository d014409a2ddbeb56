"""Command-line interface: one subcommand per pipeline step.

Each subcommand calls one public function with keyword arguments. Paths come
as ``--name value`` options (a name listed as a list option takes one or more
values); every other setting comes as one JSON object in ``--params``, which
is how the Snakemake rules hand over their ``params:``. Example::

    vlselect score-length --manifest results/manifest.parquet \\
        --out results/scores/length.parquet --params '{"unit": "chars", "max_len": 1009}'

Arguments are checked before the step runs: an unknown or missing one is answered with the step's allowed
arguments, and a value that the config schema describes (a step's ``schema`` section) is checked against it. A
user's mistake, there or in the step (a ValueError or a missing file), ends in a one-line message; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import typing
from dataclasses import dataclass

from vlselect.runtime import setup_logging


class UsageError(Exception):
    """A mistake in a command line: reported in one line, with a traceback only under --debug."""


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"
    lists: tuple[str, ...] = ()  # options that take several values
    schema: str = ""  # the config section (dotted) its --params come from; the schema checks their values

    def function(self):
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {
    "toy-world": Command("vlselect.toy.world:build_toy_world"),
    "train-toy-clip": Command("vlselect.toy.train_clip:train_toy_clip"),
    "train-toy-reward": Command("vlselect.toy.train_reward:train_toy_reward"),
    "train-toy-vlm": Command("vlselect.toy.train_vlm:train_toy_vlm"),
    "convert-minigpt4": Command("vlselect.vlm.minigpt4:convert_minigpt4"),
    "build-tiny-vlm": Command("vlselect.vlm.tiny:build_tiny_vlm"),
    "import": Command("vlselect.dataset:import_dataset", schema="dataset"),
    "export": Command("vlselect.dataset:export_dataset"),
    "export-subsets": Command("vlselect.dataset:export_subsets", lists=("out_dirs",)),
    "score-clip": Command("vlselect.scoring.clip:score_clip"),
    "score-reward": Command("vlselect.scoring.reward:score_reward"),
    "score-length": Command("vlselect.scoring.length:score_length", schema="scoring.length"),
    "score-gpt": Command("vlselect.scoring.gpt:score_gpt", schema="scoring.gpt"),
    "import-scores": Command("vlselect.selection:import_scores", schema="selection.external_scores"),
    "import-embeddings": Command("vlselect.selection:import_embeddings"),
    "gather": Command("vlselect.shards:gather", lists=("inputs",)),
    "gather-features": Command("vlselect.shards:gather_features", lists=("inputs",)),
    "embed": Command("vlselect.features:embed"),
    "fit-pca": Command("vlselect.features:fit_pca"),
    "make-subsets": Command("vlselect.subsets:make_subsets", lists=("scores",)),
    "finetune": Command("vlselect.vlm.train:finetune", schema="finetune"),
    "finetune-seeds": Command("vlselect.vlm.train:finetune_seeds", schema="finetune"),
    "evaluate": Command("vlselect.evaluate:evaluate"),
    "collect-labels": Command("vlselect.labels:collect_labels", lists=("evals",)),
    "train-selector": Command("vlselect.selector:train_selector", lists=("scores",), schema="selection.selector"),
    "predict": Command("vlselect.selector:predict", lists=("scores",)),
    "spectral-clusters": Command("vlselect.selection:spectral_clusters"),
    "select": Command("vlselect.selection:select", lists=("scores",)),
    "judge": Command("vlselect.judge:judge"),
    "merge-judgements": Command("vlselect.judge:merge_judgements", lists=("inputs",)),
    "final-table": Command("vlselect.report:final_table", lists=("evals",)),
    "plot-indicators": Command("vlselect.report:plot_indicator_histograms", lists=("scores",)),
    "plot-correlation": Command("vlselect.report:plot_indicator_correlation", lists=("scores",)),
    "plot-embedding-map": Command("vlselect.report:plot_embedding_map"),
    "plot-labels": Command("vlselect.report:plot_labels_vs_predicted"),
    "plot-gallery": Command("vlselect.report:plot_gallery"),
    "plot-final-table": Command("vlselect.report:plot_final_table"),
    "plot-judge": Command("vlselect.report:plot_judge"),
    "summary": Command("vlselect.summary:summary"),
}


def _summary(command: Command) -> str:
    try:
        doc = inspect.getdoc(command.function()) or ""
    except (ImportError, AttributeError) as exc:  # a broken module must not hide the other commands
        return f"(unavailable: {exc})"
    return doc.splitlines()[0] if doc else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlselect",
        description="Select high-quality multimodal instruction data (InstructionGPT-4). "
        "Every pipeline step is a subcommand; the Snakemake rules call these.",
        epilog="Paths: --name value; settings: --params JSON. 'vlselect STEP --help' shows a step's arguments.",
    )
    sub = parser.add_subparsers(dest="command", metavar="STEP", required=True)
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=_summary(command), add_help=False)
    return parser


def _coerce(key: str, value: str, hint) -> object:
    """Command-line values are strings; convert those the function declares as int or float."""
    types = typing.get_args(hint) or (hint,)
    for kind in (int, float):
        if kind in types:
            try:
                return kind(value)
            except ValueError as exc:
                raise UsageError(f"option --{key.replace('_', '-')} takes {kind.__name__}, got {value!r}") from exc
    return value


def _parse_options(command: Command, argv: list[str]) -> dict:
    """Turn ``--some-name value [value ...]`` pairs and ``--params`` into checked keyword arguments."""
    kwargs: dict = {}
    key = None
    for token in argv:
        if token.startswith("--"):
            key = token[2:].replace("-", "_")
            kwargs.setdefault(key, [])
        elif key is None:
            raise UsageError(f"unexpected argument {token!r}; options look like --name value")
        else:
            kwargs[key].append(token)
    params = kwargs.pop("params", None)
    function = command.function()
    hints = typing.get_type_hints(function)
    out = {}
    for k, values in kwargs.items():
        if k in command.lists:
            out[k] = values
        elif len(values) == 1:
            out[k] = _coerce(k, values[0], hints.get(k))
        else:
            raise UsageError(f"option --{k} takes exactly one value, got {len(values)}")
    extra = {}
    if params:
        try:
            extra = json.loads(params[0])
        except json.JSONDecodeError as exc:
            raise UsageError(f"--params is not valid JSON ({exc}): {params[0]!r}") from exc
        if not isinstance(extra, dict):
            raise UsageError(f"--params must be a JSON object of settings, got {params[0]!r}")
        clash = set(extra) & set(out)
        if clash:
            raise UsageError(f"{sorted(clash)} given both as options and in --params")
        out.update(extra)
    _check_names(function, out, set(extra))
    if command.schema:
        _check_values(command.schema, out)
    return out


def _check_names(function, kwargs: dict, from_params: set[str]) -> None:
    """Refuse arguments the function does not take (naming the ones it does) and required ones left out."""
    parameters = inspect.signature(function).parameters
    named = {k: p for k, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    # a function with **settings hands them on to another step, which checks them itself
    unknown = sorted(set(kwargs) - set(named)) if len(named) == len(parameters) else []
    if unknown:
        shown = ", ".join(f"{k!r} in --params" if k in from_params else f"--{k.replace('_', '-')}" for k in unknown)
        raise UsageError(f"unknown {shown}; allowed keys: {', '.join(named)}")
    missing = [k for k, p in named.items() if p.default is p.empty and k not in kwargs]
    if missing:
        raise UsageError(f"missing {', '.join('--' + k.replace('_', '-') for k in missing)}")


def _check_values(section: str, kwargs: dict) -> None:
    """Check each value that the config schema's ``section`` describes, as the config validator would."""
    import jsonschema

    from vlselect.config import load_schema

    schema = load_schema()
    node = schema
    for part in section.split("."):
        node = node["properties"][part]
    for key, value in kwargs.items():
        if key in node.get("properties", {}):
            # the root's $defs go along, so that a property defined by reference resolves
            checker = jsonschema.Draft202012Validator(node["properties"][key] | {"$defs": schema.get("$defs", {})})
            error = jsonschema.exceptions.best_match(checker.iter_errors(value))
            if error is not None:
                raise UsageError(f"{key}={json.dumps(value)} is invalid ({section}.{key}): {error.message}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        build_parser().print_help()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        build_parser().parse_args([name])  # prints the list of valid steps and exits
    command = COMMANDS[name]
    function = command.function()
    if rest in (["-h"], ["--help"]):
        print(f"vlselect {name}: {inspect.signature(function)}\n\n{inspect.getdoc(function) or ''}")
        return 0
    debug = "--debug" in rest
    rest = [token for token in rest if token != "--debug"]
    try:
        kwargs = _parse_options(command, rest)
        setup_logging()
        function(**kwargs)
    # ValueError and a missing file are how the steps report a wrong setting or input; anything else is a bug
    # or a runtime failure and keeps its traceback
    except (UsageError, ValueError, FileNotFoundError) as exc:
        if debug:
            raise
        raise SystemExit(f"vlselect {name}: {exc} (--debug shows the traceback)") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
