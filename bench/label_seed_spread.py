"""Is a genuine label more than seed noise? Re-make one subset's label with other seeds.

Reads a finished run's outputs (the subset's training set, the base VLM, the suites, the fine-tune settings in
``results/labels/models/subset_<k>/seed_<s>/finetune.json``) and makes the subset's label ``--repeats`` more
times as the run made it: ``labels.seeds`` fine-tunes (each repeat with new seeds), evaluated and averaged. Prints
the spread of those labels beside the spread of the 30 subsets' labels (a label means something only where the
second is clearly larger), and the spread of single fine-tunes, which is what a label of one seed would carry.

    PYTHONPATH=src python bench/label_seed_spread.py [--results results] [--config config.yaml] [--subset 0]
        [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vlselect.config import load_config
from vlselect.evaluate import evaluate, seed_dirs
from vlselect.finetune import finetune_seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--config", default="config.yaml", help="the run's config (for its evaluate settings)")
    parser.add_argument("--subset", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    r = Path(args.results)
    labels = pd.read_parquet(r / "labels" / "labels.parquet")
    runs = seed_dirs(r / "labels" / "models" / f"subset_{args.subset}")
    if not runs:
        raise SystemExit(f"{r}/labels/models/subset_{args.subset} holds no seed_<s> fine-tunes; finish a run first")
    run = json.loads((runs[0] / "finetune.json").read_text())
    reference = json.loads((r / "labels" / "eval" / f"subset_{args.subset}.json").read_text())
    ft = {k: run[k] for k in ("base_model", "trainable", "template", "instruction", "epochs", "batch_size", "lr")}
    ev = load_config(args.config)["evaluate"]
    n, first = len(runs), int(runs[0].name[5:])
    own = float(labels.loc[labels["subset"] == args.subset, "label"].iloc[0])
    made = [own]
    singles = [v["mean"] for v in reference.get("seeds", {}).values()] or [reference["mean"]]
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(1, args.repeats + 1):
            seeds = [first + n * rep + i for i in range(n)]
            finetune_seeds(seeds=seeds, train_dir=str(r / "labels" / f"subset_{args.subset}"),
                           out_dir=f"{tmp}/models{rep}", device="cpu", **ft)
            result = evaluate(model_dir=f"{tmp}/models{rep}", suites=sorted(reference["suites"]),
                              out=f"{tmp}/eval{rep}.json", suite_root=str(r / "toy" / "suites"),
                              split=reference["split"], batch_size=ev["batch_size"],
                              max_new_tokens=ev["max_new_tokens"], device="cpu")
            made.append(result["mean"])
            singles += [v["mean"] for v in result.get("seeds", {}).values()] or [result["mean"]]
            print(f"subset {args.subset} seeds {seeds}: label {result['mean']:.4f}", flush=True)
    across_subsets = float(labels["label"].std(ddof=1))
    spread = float(np.std(made, ddof=1))
    single = float(np.std(singles, ddof=1))
    print(f"\nsubset {args.subset}, labels of {n} seed(s) each: {', '.join(f'{m:.4f}' for m in made)} "
          f"(the first is the run's)")
    print(f"sd of this subset's label over {len(made)} makings:  {spread:.4f}")
    print(f"sd of {len(singles)} single fine-tunes of this subset: {single:.4f}")
    print(f"sd across {len(labels)} subsets' labels:           {across_subsets:.4f} "
          f"({across_subsets / spread:.1f}x the label's own spread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
