"""Is a genuine label more than seed noise? Re-run one subset's fine-tune and evaluation with other seeds.

Reads a finished run's settings from its outputs (the subset's training set, the base VLM, the suites) and
fine-tunes the same subset with ``--seeds`` seeds using the run's own fine-tune parameters
(``results/labels/models/<k>/finetune.json``), each evaluated on the validation suites as the label is (with the
config's ``evaluate`` settings, which the run's outputs do not record). Prints the
labels' spread across the 30 subsets beside the spread of this one subset across seeds: a label means something
only where the first is clearly larger.

    PYTHONPATH=src python bench/label_seed_spread.py [--results results] [--config config.yaml] [--subset 0]
        [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from vlselect.config import load_config
from vlselect.evaluate import evaluate
from vlselect.finetune import finetune


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config.yaml", help="the run's config (for its evaluate settings)")
    parser.add_argument("--subset", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    r = Path(args.results)
    labels = pd.read_parquet(r / "labels" / "labels.parquet")
    run = json.loads((r / "labels" / "models" / f"subset_{args.subset}" / "finetune.json").read_text())
    reference = json.loads((r / "labels" / "eval" / f"subset_{args.subset}.json").read_text())
    params = {k: run[k] for k in ("trainable", "template", "instruction", "epochs", "batch_size", "lr")}
    ev = load_config(args.config)["evaluate"]
    scores = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out = Path(tmp) / f"seed{seed}"
            finetune(base_model=run["base_model"], train_dir=str(r / "labels" / f"subset_{args.subset}"),
                     out_dir=str(out), seed=seed, device="cpu", **params)
            result = evaluate(model_dir=str(out), suites=sorted(reference["suites"]),
                              out=str(Path(tmp) / f"eval{seed}.json"), suite_root=str(r / "toy" / "suites"),
                              split=reference["split"], batch_size=ev["batch_size"],
                              max_new_tokens=ev["max_new_tokens"], device="cpu")
            scores.append(result["mean"])
            print(f"subset {args.subset} seed {seed}: label {result['mean']:.4f}", flush=True)
    own = float(labels.loc[labels["subset"] == args.subset, "label"].iloc[0])
    print(f"\nsubset {args.subset}: seed {run['seed']} (the run's) {own:.4f}; seeds {args.seeds}: "
          f"{', '.join(f'{s:.4f}' for s in scores)}")
    across_seeds = float(np.std([own, *scores], ddof=1))
    across_subsets = float(labels["label"].std(ddof=1))
    print(f"sd across {len(scores) + 1} seeds of one subset: {across_seeds:.4f}")
    # --seeds 0 alone re-runs the run's own seed: a zero spread then shows the label is reproducible
    ratio = f"ratio {across_subsets / across_seeds:.1f}x" if across_seeds > 0 else "seeds agree exactly"
    print(f"sd across {len(labels)} subsets' labels:        {across_subsets:.4f} ({ratio})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
