"""Do a recipe's labels follow the data's quality? Re-make all of a finished toy run's labels under a setting.

For each fine-tune setting (a name and a JSON object of ``finetune`` keys over the config's), fine-tunes every
subset with ``--seeds`` and evaluates as the workflow does, then prints the labels' spread, the noise a label
carries from its seeds (their sd over sqrt(seeds)) and the Spearman correlation between label and true flaw rate:
the workflow's own ``labels.parquet`` gives one such figure per run; this gives it for settings side by side on
the same base model and subsets. About 15 s per subset with 2 seeds on this machine.

    PYTHONPATH=src python bench/label_recipe.py [--results results] [--config config.yaml] [--seeds 0 1] \\
        --setting three_epochs '{"epochs": 3}' --setting six_epochs '{"epochs": 6}' [--subsets 4 12]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from label_helpers import clean_share, remake_label, settings_parser
from vlselect.config import load_config


def main() -> int:
    parser = settings_parser(__doc__, [0, 1])
    parser.add_argument("--subsets", type=int, nargs="+", help="only these subsets (default: all); the Spearman "
                        "then runs over them alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    r = Path(args.results)
    cfg = load_config(args.config)
    share = clean_share(r)
    if args.subsets:
        share = share.loc[args.subsets]
    for name, setting in args.setting:
        labels, sds = [], []
        for k in share.index:
            result = remake_label(r, cfg, int(k), args.seeds, json.loads(setting))
            labels.append(result["mean"])
            sds.append(result["seed_sd"])
            print(f"{name} subset {k}: label {result['mean']:.4f} (seed sd {result['seed_sd']:.4f})", flush=True)
        rho = spearmanr(labels, 1 - share.to_numpy())
        noise = float(np.sqrt(np.mean(np.square(sds)) / len(args.seeds)))
        print(f"== {name} {setting}: label sd {np.std(labels, ddof=1):.4f}, noise in a label {noise:.4f}, "
              f"Spearman(label, true flaw rate) {rho.statistic:+.3f} (p = {rho.pvalue:.4f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
