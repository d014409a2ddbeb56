"""A finished toy run's genuine labels under today's suite metrics, from its saved predictions (nothing re-trained).

Every labels/eval/subset_<k>.json keeps each validation item's prediction. This scores them again with
vlselect.suites.score_item, writes the label table as the collect_labels rule does (to ``--out``), and prints how
closely the run's labels and the re-scored ones follow the subsets' true share of unflawed examples (Spearman), per
suite and for the label. Use it to see what a metric change does to the labels before paying for a new run; the
written table feeds ``bench/selector_shapes.py --labels``.

    PYTHONPATH=src python bench/rescore_labels.py [--results results] --out rescored_labels.parquet
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from label_helpers import clean_share
from vlselect.io import read_json, write_json
from vlselect.labels import collect_labels
from vlselect.suites import load_toy_suite, score_item


def rescore(result: dict, items: dict) -> dict:
    """``result`` (one eval file) with every suite's items, accuracies and means scored again."""
    seeds = {}
    for seed, run in result["seeds"].items():
        suites = {}
        for name, suite in run["suites"].items():
            scored = [it | {"correct": score_item(items[name][it["id"]], it["prediction"])} for it in suite["items"]]
            suites[name] = suite | {"items": scored, "accuracy": float(np.mean([it["correct"] for it in scored]))}
        seeds[seed] = {"mean": float(np.mean([s["accuracy"] for s in suites.values()])), "suites": suites}
    names = list(next(iter(seeds.values()))["suites"])
    averaged = {n: {"accuracy": float(np.mean([s["suites"][n]["accuracy"] for s in seeds.values()]))} for n in names}
    return result | {"seeds": seeds, "suites": averaged, "mean": float(np.mean([s["mean"] for s in seeds.values()]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", required=True, help="where to write the re-scored label table (parquet)")
    args = parser.parse_args()
    r = Path(args.results)
    evals = sorted((r / "labels" / "eval").glob("subset_*.json"))
    first = read_json(evals[0])
    items = {name: {it.id: it for it in load_toy_suite(name, str(r / "toy" / "suites"), first["split"])}
             for name in first["suites"]}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for path in evals:
            write_json(rescore(read_json(path), items), Path(tmp) / path.name)
            paths.append(str(Path(tmp) / path.name))
        collect_labels(evals=paths, out=args.out, suites=list(first["suites"]))
    before = pd.read_parquet(r / "labels" / "labels.parquet").set_index("subset")
    after = pd.read_parquet(args.out).set_index("subset")
    share = clean_share(r)
    columns = [c for c in before.columns if c.startswith("acc_")] + ["label"]
    print("| | Spearman with the unflawed share, the run's | re-scored |\n|--|--:|--:|")
    for c in columns:
        print(f"| {c} | {spearmanr(before[c], share[before.index])[0]:+.2f} "
              f"| {spearmanr(after[c], share[after.index])[0]:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
