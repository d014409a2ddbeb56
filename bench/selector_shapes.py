"""What would each selector shape have picked? Train every shape on a finished toy run's labels, side by side.

For each selector shape (linear or MLP, on the indicators alone or with the PCA features) this trains the
selector on the run's subsets and labels exactly as the train_selector rule does, predicts every example's
quality, takes the diverse top ``n_select`` with the run's spectral clusters, and prints its cross-validated
error and what the picks are, against the toy world's hidden truth: the unflawed share, and how many picks
carry each flaw. The workflow runs only the shape cross-validation chooses; this shows the others too.

    PYTHONPATH=src python bench/selector_shapes.py [--results results] [--n-select 200] [--quota-m 209]
        [--normalise rank zscore] [--labels other_labels.parquet]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
from pathlib import Path

import pandas as pd

from vlselect.io import read_json
from vlselect.selection import diverse_top
from vlselect.selector import predict, train_selector

INDICATORS = ("clip", "reward", "length", "gpt")
FLAWS = ("hallucination", "other_image", "repetition", "truncation", "filler", "short")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--n-select", type=int, default=200)
    parser.add_argument("--quota-m", type=int, default=209)
    parser.add_argument("--labels", help="a label table other than the run's (e.g. from bench/rescore_labels.py)")
    parser.add_argument("--normalise", nargs="+", default=["rank"], choices=["rank", "zscore"],
                        help="how indicators enter the selector (selection.selector.normalise); each is shown")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    r = Path(args.results)
    # in the workflow's order (INDICATORS in workflow/rules/common.smk): the MLP's initial weights follow the columns
    scores = [str(r / "scores" / f"{k}.parquet") for k in INDICATORS if (r / "scores" / f"{k}.parquet").exists()]
    pca = str(r / "features" / "pca.parquet")
    truth = pd.read_parquet(r / "toy" / "truth.parquet").set_index("sample_id")
    clusters = pd.read_parquet(r / "selection" / "clusters.parquet")
    print(f"| selector | CV MSE (constant) | unflawed share | {' | '.join(FLAWS)} |\n|--|--:|--:|"
          + "--:|" * len(FLAWS))
    for normalise, arch, inputs in itertools.product(args.normalise, ("linear", "mlp"), ("indicators", "all")):
        with tempfile.TemporaryDirectory() as tmp:
            train_selector(scores=scores, pca=pca, subsets=str(r / "labels" / "subsets.parquet"),
                           labels=args.labels or str(r / "labels" / "labels.parquet"), out_dir=tmp, arch=arch,
                           inputs=inputs, normalise=normalise)
            predict(model_dir=tmp, scores=scores, pca=pca, out=f"{tmp}/quality.parquet")
            report = read_json(Path(tmp) / "report.json")
            q = pd.read_parquet(f"{tmp}/quality.parquet").merge(clusters, on="sample_id")
        picked = q["sample_id"].to_numpy()[diverse_top(q["quality"].to_numpy(), q["sample_id"].to_numpy(),
                                                       q["cluster"].to_numpy(), args.n_select, args.quota_m)]
        t = truth.loc[picked]
        counts = [int(t["flaws"].str.contains(f).sum()) for f in FLAWS]
        cv = report["cv"]
        weights = report.get("linear_weights")
        shown = "" if weights is None else " (weights " + ", ".join(
            f"{k} {v:.2f}" for k, v in weights.items() if not k.startswith(("img_pc", "txt_pc"))) + ")"
        print(f"| {arch}/{inputs}, {normalise}{shown} | {cv[f'{arch}/{inputs}']['mse']:.3f} "
              f"({cv['constant']['mse']:.3f}) | {t['clean'].mean():.3f} | " + " | ".join(map(str, counts)) + " |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
