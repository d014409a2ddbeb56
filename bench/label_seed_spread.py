"""Is a genuine label more than seed noise? Re-make one subset's label with other seeds.

Makes subset ``--subset``'s label ``--repeats`` more times as the finished run made it (``labels.seeds``
fine-tunes with the config's settings, each repeat with new seeds, evaluated and averaged). Prints the spread of
those labels beside the spread of the run's 30 labels (a label means something only where the second is clearly
larger), and the spread of single fine-tunes, which is what a label of one seed would carry. ``--config`` must be
the run's config.

    PYTHONPATH=src python bench/label_seed_spread.py [--results results] [--config config.yaml] [--subset 0]
        [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from label_helpers import remake_label
from vlselect.config import load_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--subset", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    r = Path(args.results)
    cfg = load_config(args.config)
    labels = pd.read_parquet(r / "labels" / "labels.parquet")
    reference = json.loads((r / "labels" / "eval" / f"subset_{args.subset}.json").read_text())
    n, first = cfg["labels"]["seeds"], cfg["finetune"]["seed"]
    made = [float(labels.loc[labels["subset"] == args.subset, "label"].iloc[0])]
    singles = [v["mean"] for v in reference.get("seeds", {}).values()] or [reference["mean"]]
    for rep in range(1, args.repeats + 1):
        seeds = [first + n * rep + i for i in range(n)]
        result = remake_label(r, cfg, args.subset, seeds)
        made.append(result["mean"])
        singles += [v["mean"] for v in result["seeds"].values()]
        print(f"subset {args.subset} seeds {seeds}: label {result['mean']:.4f}", flush=True)
    across_subsets = float(labels["label"].std(ddof=1))
    spread = float(np.std(made, ddof=1))
    print(f"\nsubset {args.subset}, labels of {n} seed(s) each: {', '.join(f'{m:.4f}' for m in made)} "
          f"(the first is the run's)")
    print(f"sd of this subset's label over {len(made)} makings:  {spread:.4f}")
    print(f"sd of {len(singles)} single fine-tunes of this subset: {float(np.std(singles, ddof=1)):.4f}")
    print(f"sd across {len(labels)} subsets' labels:           {across_subsets:.4f} "
          f"({across_subsets / spread:.1f}x the label's own spread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
