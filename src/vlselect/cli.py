"""Command-line interface: one subcommand per pipeline step.

Each subcommand calls one public function with keyword arguments. Paths come
as ``--name value`` options (a name listed as a list option takes one or more
values); every other setting comes as one JSON object in ``--params``, which
is how the Snakemake rules hand over their ``params:``. Example::

    vlselect score-length --manifest results/manifest.parquet \\
        --out results/scores/length.parquet --params '{"unit": "chars", "max_len": 1009}'
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


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"
    lists: tuple[str, ...] = ()  # options that take several values

    def function(self):
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {
    "toy-world": Command("vlselect.toy.world:build_toy_world"),
    "train-toy-clip": Command("vlselect.toy.train_clip:train_toy_clip"),
    "train-toy-reward": Command("vlselect.toy.train_reward:train_toy_reward"),
    "train-toy-vlm": Command("vlselect.toy.train_vlm:train_toy_vlm"),
    "import": Command("vlselect.dataset:import_dataset"),
    "export": Command("vlselect.dataset:export_dataset"),
    "export-subsets": Command("vlselect.dataset:export_subsets", lists=("out_dirs",)),
    "score-clip": Command("vlselect.scoring.clip:score_clip"),
    "score-reward": Command("vlselect.scoring.reward:score_reward"),
    "score-length": Command("vlselect.scoring.length:score_length"),
    "score-gpt": Command("vlselect.scoring.gpt:score_gpt"),
    "import-scores": Command("vlselect.selection:import_scores"),
    "gather": Command("vlselect.shards:gather", lists=("inputs",)),
    "gather-features": Command("vlselect.shards:gather_features", lists=("inputs",)),
    "embed": Command("vlselect.features:embed"),
    "fit-pca": Command("vlselect.features:fit_pca"),
    "make-subsets": Command("vlselect.subsets:make_subsets", lists=("scores",)),
    "finetune": Command("vlselect.finetune:finetune"),
    "finetune-seeds": Command("vlselect.finetune:finetune_seeds"),
    "evaluate": Command("vlselect.evaluate:evaluate"),
    "collect-labels": Command("vlselect.labels:collect_labels", lists=("evals",)),
    "train-selector": Command("vlselect.selector:train_selector", lists=("scores",)),
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


def _coerce(value: str, hint) -> object:
    """Command-line values are strings; convert those the function declares as int or float."""
    types = typing.get_args(hint) or (hint,)
    for kind in (int, float):
        if kind in types:
            return kind(value)
    return value


def _parse_options(command: Command, argv: list[str]) -> dict:
    """Turn ``--some-name value [value ...]`` pairs into keyword arguments."""
    kwargs: dict = {}
    key = None
    for token in argv:
        if token.startswith("--"):
            key = token[2:].replace("-", "_")
            kwargs.setdefault(key, [])
        elif key is None:
            raise SystemExit(f"vlselect: unexpected argument {token!r}; options look like --name value")
        else:
            kwargs[key].append(token)
    params = kwargs.pop("params", None)
    hints = typing.get_type_hints(command.function())
    out = {}
    for k, values in kwargs.items():
        if k in command.lists:
            out[k] = values
        elif len(values) == 1:
            out[k] = _coerce(values[0], hints.get(k))
        else:
            raise SystemExit(f"vlselect: option --{k} takes exactly one value, got {len(values)}")
    if params:
        extra = json.loads(params[0])
        clash = set(extra) & set(out)
        if clash:
            raise SystemExit(f"vlselect: {sorted(clash)} given both as options and in --params")
        out.update(extra)
    return out


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
    setup_logging()
    function(**_parse_options(command, rest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
