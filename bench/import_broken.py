"""Import benchmark: a cc_sbu_align dataset of 3,439 small random images with 5% broken in assorted ways.

Builds the dataset in a temporary folder, imports it, checks that the quarantine holds
exactly the broken examples with the reason each was broken for, and prints counts and
timings. 5% of 3,439 is 171.95; it breaks 171 (4.97%) so the default
dataset.max_bad_fraction of 0.05 lets the import through.

    PYTHONPATH=src python bench/import_broken.py [--n 3439] [--fraction 0.05] [--keep DIR]
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared bad-input builders
import badinputs  # noqa: E402

from vlselect.dataset import import_dataset  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3439)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="build in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args()
    n_broken = math.floor(args.n * args.fraction)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        t0 = time.perf_counter()
        expected = badinputs.build_broken_cc_sbu_align(work / "dataset", work / "outside", n=args.n,
                                                       n_broken=n_broken, seed=args.seed)
        t1 = time.perf_counter()
        import_dataset(format="cc_sbu_align", root=str(work / "dataset"), out_manifest=str(work / "manifest.parquet"),
                       out_quarantine=str(work / "quarantine.parquet"), max_bad_fraction=args.fraction)
        t2 = time.perf_counter()
        manifest = pd.read_parquet(work / "manifest.parquet")
        quarantine = pd.read_parquet(work / "quarantine.parquet")

    got = dict(zip(quarantine["sample_id"], quarantine["reason"]))
    assert len(quarantine) == len(got), "a sample_id was quarantined twice"
    assert got == expected, {"unexpected": {k: v for k, v in got.items() if expected.get(k) != v},
                             "missed": {k: v for k, v in expected.items() if got.get(k) != v}}
    assert len(manifest) == args.n - n_broken and manifest["sample_id"].is_unique

    print(f"examples {args.n}, broken {n_broken} ({n_broken / args.n:.2%}), kept {len(manifest)}, "
          f"quarantined {len(quarantine)}: exactly the broken ones, each with its reason")
    for reason, count in sorted(collections.Counter(got.values()).items()):
        print(f"  {reason:20s} {count}")
    print(f"build {t1 - t0:.1f} s, import {t2 - t1:.1f} s ({args.n / (t2 - t1):.0f} examples/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
