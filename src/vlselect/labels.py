"""Genuine quality labels: one row per subset from the evaluation of the model fine-tuned on it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from vlselect.io import read_json, write_parquet

log = logging.getLogger(__name__)

_SUBSET_FILE = re.compile(r"subset_(\d+)\.json$")


def collect_labels(*, evals: list[str], out: str, suites: list[str] | None = None) -> None:
    """Gather labels/eval/subset_{k}.json files into labels.parquet (subset, label, seed_sd, n_seeds, acc_<suite>...).

    The label of subset k is the mean accuracy over ``suites`` (all suites of the first file when None),
    the paper's "average score on the validation benchmarks"; with several fine-tune seeds, the mean over
    seeds, and ``seed_sd`` the seeds' spread (NaN for one seed). k comes from the file name, so the
    files may arrive in any order. Every file must hold every listed suite: a label averaged over
    different suites would not be comparable with the others.
    """
    if not evals:
        raise ValueError("collect_labels got no evaluation files; run the evaluate_subset jobs first")
    rows = []
    for path in evals:
        match = _SUBSET_FILE.search(Path(path).name)
        if not match:
            raise ValueError(f"{path}: expected a file named subset_<k>.json so the subset number is known")
        result = read_json(path)
        available = result.get("suites", {})
        wanted = list(available) if suites is None else list(suites)
        if suites is None and rows and set(wanted) != set(rows[0]["_suites"]):
            raise ValueError(f"{path} has suites {sorted(wanted)} but the first file has {sorted(rows[0]['_suites'])}; "
                             "pass labels.suites explicitly or re-run the evaluation")
        missing = [s for s in wanted if s not in available]
        if missing:
            raise ValueError(f"{path} has no result for suite(s) {missing} (it has {sorted(available)}); "
                             "re-run evaluate_subset with these suites or change labels.suites")
        row = {"subset": int(match.group(1)), "_suites": wanted}
        for s in wanted:
            row[f"acc_{s}"] = float(available[s]["accuracy"])
        row["label"] = float(np.mean([row[f"acc_{s}"] for s in wanted]))
        seeds = result.get("seeds", {})
        row["n_seeds"] = max(1, len(seeds))
        # the spread over seeds of the label itself (not of the file's mean, whose suites may differ)
        row["seed_sd"] = (float(np.std([np.mean([r["suites"][s]["accuracy"] for s in wanted]) for r in seeds.values()],
                                       ddof=1)) if len(seeds) > 1 else float("nan"))
        rows.append(row)
    df = pd.DataFrame(rows).drop(columns="_suites")
    dup = df["subset"][df["subset"].duplicated()].tolist()
    if dup:
        raise ValueError(f"subset(s) {dup} appear in more than one evaluation file")
    df = df.sort_values("subset").reset_index(drop=True)
    df = df[["subset", "label", "seed_sd", "n_seeds"] + [c for c in df.columns if c.startswith("acc_")]]
    write_parquet(df, out, metadata={"suites": [c[4:] for c in df.columns if c.startswith("acc_")]})
    log.info("labels for %d subsets: mean %.4f, std %.4f, range %.4f..%.4f", len(df), df["label"].mean(),
             df["label"].std(ddof=0), df["label"].min(), df["label"].max())
    if df["seed_sd"].notna().any():
        # a label is the mean of n seeds, so its own noise is the seeds' sd / sqrt(n)
        noise = float(np.sqrt(np.nanmean(df["seed_sd"] ** 2) / df["n_seeds"].mean()))
        log.info("noise in a label from its seeds: about %.4f, against %.4f across subsets", noise,
                 df["label"].std(ddof=1))
