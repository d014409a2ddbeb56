"""Which hallucinations can the indicators see? CLIP and reward AUC per kind of lie, on a finished toy run.

A hallucinated answer of the toy world states one false fact: a colour, a shape, a count or a position. The
kind is read back from the answer against the scene (vlselect.toy.describe.parse_attributes): a false count;
a (colour, shape) pair absent from the scene whose colour is in it (a shape lie) or whose shape is in it (a
colour lie; "colour or shape" when both or neither are); no false fact at all (a position lie, which the
fact parser does not read). For each kind and for each other flaw, the AUC of the CLIP and reward scores
between unflawed answers and answers with that single flaw (0.5: the indicator cannot tell them apart).

It then bounds any selection that sees only these indicators: suppose a selector dropped every flawed answer
whose flaw some indicator tells from clean (AUC above ``--visible``), and picked at random among the rest. The
unflawed share of that pool is the best such a selector can expect.

    PYTHONPATH=src python bench/hallucination_kinds.py [--results results] [--visible 0.6]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from vlselect.toy.describe import parse_attributes, scene_facts


def lie_kind(answer: str, objects: list[dict]) -> str:
    """The kind of the one false fact in a hallucinated ``answer`` about ``objects`` (see the module docstring)."""
    wrong = parse_attributes(answer) - scene_facts(objects)
    if any(f[0] == "count" for f in wrong):
        return "count"
    pairs = [f for f in wrong if f[0] == "object"]
    if not pairs:
        return "position"
    _, colour, shape = pairs[0]
    colour_seen = colour in {o["colour"] for o in objects}
    shape_seen = shape in {o["shape"] for o in objects}
    if colour_seen != shape_seen:
        return "shape" if colour_seen else "colour"
    return "colour or shape"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--visible", type=float, default=0.6, help="AUC above which a flaw counts as visible")
    args = parser.parse_args()
    r = Path(args.results)
    t = pd.read_parquet(r / "toy" / "truth.parquet").merge(
        pd.read_parquet(r / "manifest.parquet", columns=["sample_id", "answer"]), on="sample_id")
    for name in ("clip", "reward"):
        s = pd.read_parquet(r / "scores" / f"{name}.parquet", columns=["sample_id", "score"])
        t = t.merge(s.rename(columns={"score": name}), on="sample_id")
    t["kind"] = t["flaws"]
    lies = t["flaws"] == "hallucination"
    t.loc[lies, "kind"] = [f"hallucination: {lie_kind(a, json.loads(o))}"
                           for a, o in zip(t.loc[lies, "answer"], t.loc[lies, "objects"])]
    clean = t[t["clean"]]
    print(f"| single flaw | n | CLIP AUC | reward AUC |\n|--|--:|--:|--:|")
    visible = {}
    for kind, g in t[~t["clean"] & ~t["flaws"].str.contains(",")].groupby("kind"):
        y = np.r_[np.ones(len(clean)), np.zeros(len(g))]
        aucs = [roc_auc_score(y, np.r_[clean[k], g[k]]) for k in ("clip", "reward")]
        visible[kind] = max(aucs) > args.visible
        print(f"| {kind} | {len(g)} | {aucs[0]:.3f} | {aucs[1]:.3f} |")
    # an answer with two flaws is visible when either flaw is (the second is always text-visible or other_image)
    hidden = t["kind"].map(lambda k: not visible.get(k, True)) & ~t["clean"]
    pool = int(t["clean"].sum()) + int(hidden.sum())
    print(f"\n{int(t['clean'].sum())} unflawed answers; {int(hidden.sum())} answers whose only flaw no indicator "
          f"tells from clean (AUC <= {args.visible}): {', '.join(k for k, v in visible.items() if not v)}.")
    print(f"A selector that dropped every visible flaw and picked at random among the rest: unflawed share "
          f"{t['clean'].sum() / pool:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
