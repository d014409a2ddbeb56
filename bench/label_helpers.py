"""Shared by the label benches: re-make a finished toy run's genuine labels outside the workflow, as it makes them."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from vlselect.evaluate import evaluate
from vlselect.vlm import finetune_seeds


def remake_label(results: Path, cfg: dict, subset: int, seeds: list[int], setting: dict | None = None) -> dict:
    """Fine-tune subset ``subset`` once per seed and evaluate the models on the validation suites.

    The run's base VLM, training set and suites, with the config's ``finetune`` settings overridden by ``setting``
    and its ``evaluate`` settings, as ``finetune_subset`` and ``evaluate_subset`` use them. Returns the eval dict:
    ``mean`` (the label), ``suites`` and, per seed, ``seeds``.
    """
    params = {k: cfg["finetune"][k] for k in ("trainable", "template", "epochs", "batch_size", "lr")} | (setting or {})
    ev = cfg["evaluate"]
    with tempfile.TemporaryDirectory() as tmp:
        finetune_seeds(seeds=seeds, base_model=str(results / "toy" / "models" / "vlm"),
                       train_dir=str(results / "labels" / f"subset_{subset}"), out_dir=f"{tmp}/models",
                       instruction=cfg["dataset"]["instruction"], device="cpu", **params)
        return evaluate(model_dir=f"{tmp}/models", suites=cfg["labels"]["suites"], out=f"{tmp}/eval.json",
                        suite_root=str(results / "toy" / "suites"), split="val", batch_size=ev["batch_size"],
                        max_new_tokens=ev["max_new_tokens"], device="cpu")


def clean_share(results: Path) -> pd.Series:
    """Each subset's share of unflawed examples, from the toy world's hidden truth (index: subset)."""
    truth = pd.read_parquet(results / "toy" / "truth.parquet", columns=["sample_id", "clean"])
    subsets = pd.read_parquet(results / "labels" / "subsets.parquet")
    return subsets.merge(truth, on="sample_id").groupby("subset")["clean"].mean()


def settings_parser(doc: str, seeds: list[int]) -> argparse.ArgumentParser:
    """The options of a bench that compares fine-tune settings: a finished run, its config, seeds, settings."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config.yaml", help="the run's config")
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setting", nargs=2, action="append", metavar=("NAME", "JSON"), required=True,
                        help="a name and a JSON object of finetune keys over the config's")
    return parser
