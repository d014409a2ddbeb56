"""What the toy experiment showed: a finished toy run's outputs held against the toy world's ground truth.

Reads only files of a finished run (results/ by default) and prints, as markdown tables: the tiny models'
held-out metrics, how well the k-means subsets separate the hidden sources, whether the genuine labels follow the
subsets' true flaw rates (Spearman), the selector's cross-validated error, the share of unflawed examples
among each selection's picks, and the best share any weighting of the CLIP and reward scores could reach.

    PYTHONPATH=src python bench/toy_outcome.py [--results results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    r = Path(parser.parse_args().results)
    truth = pd.read_parquet(r / "toy" / "truth.parquet")

    print("## Tiny models\n")
    for name in ("clip", "reward", "vlm"):
        m = json.loads((r / "toy" / "models" / name / "metrics.json").read_text())
        keys = [k for k in m if any(s in k for s in ("accuracy", "f1", "seconds", "steps"))]
        print(f"- {name}: " + ", ".join(f"{k} {m[k]:.3f}" if isinstance(m[k], float) else f"{k} {m[k]}" for k in keys))

    subsets = pd.read_parquet(r / "labels" / "subsets.parquet").merge(truth, on="sample_id")
    per = subsets.groupby("subset").agg(flaw_rate=("clean", lambda c: 1 - c.mean()),
                                        purity=("source", lambda s: s.value_counts().iloc[0] / len(s)))
    labels = pd.read_parquet(r / "labels" / "labels.parquet").set_index("subset")
    per = per.join(labels["label"])
    rho, p = spearmanr(per["label"], per["flaw_rate"])
    print("\n## Subsets and labels\n")
    print(f"- {len(per)} subsets; source purity mean {per['purity'].mean():.3f}; true flaw rate "
          f"{per['flaw_rate'].min():.3f} to {per['flaw_rate'].max():.3f} (sd {per['flaw_rate'].std():.3f})")
    print(f"- labels {per['label'].min():.3f} to {per['label'].max():.3f} (sd {per['label'].std():.3f}); "
          f"Spearman(label, true flaw rate) = {rho:.3f} (p = {p:.3g})")

    report = json.loads((r / "selector" / "report.json").read_text())
    cv = {k: round(v["mse"], 3) for k, v in report["cv"].items()}
    print(f"- selector: chosen {report['arch']}/{report.get('inputs', 'all')}; leave-subsets-out CV MSE {cv}")

    print("\n## Unflawed share among the picks (base rate "
          f"{truth['clean'].mean():.3f})\n")
    print("| selection | picks | unflawed share |\n|--|--:|--:|")
    for d in sorted(p for p in (r / "selection").iterdir() if (p / "selected.parquet").exists()):
        picks = pd.read_parquet(d / "selected.parquet", columns=["sample_id"]).merge(truth, on="sample_id")
        print(f"| {d.name} | {len(picks)} | {picks['clean'].mean():.3f} |")
    print(f"\nCeiling of the scores: {_indicator_ceiling(r, truth)}")

    print("\n## Final table\n")
    print((r / "final" / "table.md").read_text())
    judge = json.loads((r / "final" / "judge.json").read_text())
    for c in judge.get("comparisons", []):
        print(f"- judge {c.get('a')} vs {c.get('b')}: " + json.dumps(c.get("counts")))
    return 0


def _indicator_ceiling(r: Path, truth: pd.DataFrame, n: int = 200) -> str:
    """The best unflawed share among the top ``n`` of z(clip) + w z(reward) over a grid of w, with no cluster quotas:
    what any weighting of the two scoring models could reach, whatever the labels."""
    from vlselect.indicators import read_indicators

    ids = truth["sample_id"].tolist()
    raw, _ = read_indicators([str(r / "scores" / f"{k}.parquet") for k in ("clip", "reward")], ids)
    z = (raw - raw.mean()) / raw.std()
    clean = truth["clean"].to_numpy()
    shares = {w: clean[np.argsort(-(z["clip"] + w * z["reward"]).fillna(-np.inf).to_numpy(), kind="stable")[:n]].mean()
              for w in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 1e6)}
    best = max(shares, key=shares.get)
    return (f"top {n} by z(clip) + w z(reward): best w {best:g} gives {shares[best]:.3f} unflawed "
            f"(w 0: {shares[0.0]:.3f}, reward alone: {shares[1e6]:.3f})")


if __name__ == "__main__":
    raise SystemExit(main())
