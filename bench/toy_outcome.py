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

from vlselect.toy.describe import FLAWS as FLAW_KINDS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    r = Path(parser.parse_args().results)
    truth = pd.read_parquet(r / "toy" / "truth.parquet")

    print("## Tiny models\n")
    for name in ("clip", "vision", "reward", "vlm"):
        m = json.loads((r / "toy" / "models" / name / "metrics.json").read_text())
        keys = [k for k in m if any(s in k for s in ("tower", "accuracy", "f1", "seconds", "steps"))]
        print(f"- {name}: " + ", ".join(f"{k} {m[k]:.3f}" if isinstance(m[k], float) else f"{k} {m[k]}" for k in keys))

    subsets = pd.read_parquet(r / "labels" / "subsets.parquet").merge(truth, on="sample_id")
    per = subsets.groupby("subset").agg(flaw_rate=("clean", lambda c: 1 - c.mean()),
                                        purity=("source", lambda s: s.value_counts().iloc[0] / len(s)))
    labels = pd.read_parquet(r / "labels" / "labels.parquet").set_index("subset")
    suites = [c for c in labels.columns if c.startswith("acc_")]
    per = per.join(labels[["label"] + suites])
    rho, p = spearmanr(per["label"], per["flaw_rate"])
    print("\n## Subsets and labels\n")
    print(f"- {len(per)} subsets; source purity mean {per['purity'].mean():.3f}; true flaw rate "
          f"{per['flaw_rate'].min():.3f} to {per['flaw_rate'].max():.3f} (sd {per['flaw_rate'].std():.3f})")
    print(f"- labels {per['label'].min():.3f} to {per['label'].max():.3f} (sd {per['label'].std():.3f}); "
          f"Spearman(label, true flaw rate) = {rho:.3f} (p = {p:.3g})")

    print("\nSpearman of each label, and of each suite's accuracy it averages, with the share of each flaw in the "
          "subsets (negative: that score punishes the flaw):\n")
    print("| score | " + " | ".join(FLAW_KINDS) + " |\n|--|" + "--:|" * len(FLAW_KINDS))
    flaws = subsets.groupby("subset")["flaws"]
    shares = {k: flaws.apply(lambda f, k=k: f.str.contains(k).mean()).loc[per.index] for k in FLAW_KINDS}
    for score in ["label"] + suites:
        row = [spearmanr(shares[k], per[score])[0] for k in FLAW_KINDS]
        print(f"| {score.removeprefix('acc_')} | " + " | ".join(f"{v:+.2f}" for v in row) + " |")

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
    """The best unflawed share of the top ``n`` by z(clip) + w z(reward) over a grid of w: what any weighting of
    the two scoring models could reach, whatever the labels; without cluster quotas, then with the run's quotas
    (selection.quota_m read back from the selector's picks) as the diversity methods pick. Beside each w, how
    well the weighting fits the genuine labels: the correlation of a subset's mean score with its label, which
    is what the selector's training rewards."""
    from vlselect.indicators import read_indicators
    from vlselect.io import read_parquet_metadata
    from vlselect.selection import diverse_top

    ids = truth["sample_id"].tolist()
    raw, _ = read_indicators([str(r / "scores" / f"{k}.parquet") for k in ("clip", "reward")], ids)
    z = (raw - raw.mean()) / raw.std()
    clean = truth["clean"].to_numpy()
    cluster = pd.read_parquet(r / "selection" / "clusters.parquet").set_index("sample_id")["cluster"].reindex(ids)
    quota_m = read_parquet_metadata(str(r / "selection" / "selector" / "selected.parquet"))["quota_m"]
    subset = pd.read_parquet(r / "labels" / "subsets.parquet").set_index("sample_id")["subset"].reindex(ids)
    label = pd.read_parquet(r / "labels" / "labels.parquet").set_index("subset")["label"]
    id_array, cluster_array, subset_array = np.asarray(ids, dtype=str), cluster.to_numpy(), subset.to_numpy()
    lines = ["| w | unflawed, no quotas | unflawed, with the quotas | corr(subset mean score, label) |",
             "|--:|--:|--:|--:|"]
    best = {}
    for w in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, None):  # None: the reward score alone
        score = z["reward"] if w is None else z["clip"] + w * z["reward"]
        s = score.fillna(-np.inf).to_numpy()
        plain = clean[np.argsort(-s, kind="stable")[:n]].mean()
        picks = diverse_top(s, id_array, cluster_array, n, quota_m)
        fit = score.groupby(subset_array).mean().reindex(label.index).corr(label)
        best[w] = (clean[picks].mean(), picks)
        lines.append(f"| {'reward alone' if w is None else f'{w:g}'} | {plain:.3f} | {best[w][0]:.3f} | {fit:+.3f} |")
    w_q = max(best, key=lambda w: best[w][0])
    left = truth.iloc[best[w_q][1]].query("not clean")["flaws"].value_counts()
    return ("top " + str(n) + " by z(clip) + w z(reward):\n\n" + "\n".join(lines)
            + f"\n\nWith the quotas, the best w ({w_q:g}) leaves these flawed picks: {left.to_dict()}")


if __name__ == "__main__":
    raise SystemExit(main())
