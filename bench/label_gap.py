"""Does a label see data quality through seed noise? The cleanest and the most flawed subset, several seeds.

Fine-tunes the run's cleanest and most flawed k-means subsets (by the toy world's hidden truth) with each of
``--seeds`` under one or more fine-tune settings, evaluates each model on the validation suites as a label is
(with the config's ``evaluate`` settings), and prints per setting: the labels, the gap between the clean and
the flawed subset's mean label, and the mean seed sd, then the same for each suite. A setting is fit for genuine
labels where the gap is positive and several times the seed sd. Each setting is a name and a JSON object of ``finetune`` keys:

    PYTHONPATH=src python bench/label_gap.py [--results results] [--config config.yaml] [--seeds 0 1 2] \\
        --setting projection '{"trainable": ["language_projection"], "lr": 0.003}' \\
        --setting with_lm '{"trainable": ["language_projection", "language_model"], "lr": 0.001}'

Settings not given are the config's ``finetune`` values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch

from label_helpers import clean_share, remake_label, settings_parser
from vlselect.config import load_config


def main() -> int:
    args = settings_parser(__doc__, [0, 1, 2]).parse_args()
    torch.set_num_threads(args.threads)
    r = Path(args.results)
    cfg = load_config(args.config)
    share = clean_share(r).sort_values()
    pair = {"clean": int(share.index[-1]), "flawed": int(share.index[0])}
    print(f"cleanest subset {pair['clean']} ({share.iloc[-1]:.3f} unflawed), most flawed subset {pair['flawed']} "
          f"({share.iloc[0]:.3f} unflawed)", flush=True)
    for name, setting in args.setting:
        per_seed = {}
        for which, k in pair.items():
            result = remake_label(r, cfg, k, args.seeds, json.loads(setting))
            per_seed[which] = pd.DataFrame([{"label": v["mean"]} | {s: a["accuracy"] for s, a in v["suites"].items()}
                                            for v in result["seeds"].values()])
        gap = per_seed["clean"].mean() - per_seed["flawed"].mean()
        sd = (per_seed["clean"].std(ddof=1) + per_seed["flawed"].std(ddof=1)) / 2
        print(f"{name} {json.dumps(json.loads(setting))}: clean {per_seed['clean']['label'].round(3).tolist()}, "
              f"flawed {per_seed['flawed']['label'].round(3).tolist()}; gap {gap['label']:+.4f}, "
              f"seed sd {sd['label']:.4f}", flush=True)
        print(pd.DataFrame({"gap": gap, "seed_sd": sd, "gap/sd": gap / sd}).round(4).to_string(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
