"""How subsets, spectral clusters, the selector and selection scale with the number of examples.

Synthetic data (embedding dim 64, a mixture of 50 Gaussian blobs; random indicators, PCA features and
subset labels). quota_m = 209 = n_select + n_clusters - 1, the smallest value that always yields 200
candidates whatever the cluster sizes. Each N runs in its own subprocess so its peak resident memory (ru_maxrss) is its own.

    PYTHONPATH=src python bench/scaling.py                 # N = 3439, 20000, 100000
    PYTHONPATH=src python bench/scaling.py --sizes 3439 20000 --epochs 100
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

STEPS = ["make_subsets", "spectral_clusters", "train_selector", "predict", "select_weights", "select_selector"]


def build(root: Path, n: int, dim: int = 64, seed: int = 0) -> dict:
    from vlselect.io import write_npy, write_parquet

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    x = (centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    ids = [f"s{i:07d}" for i in range(n)]
    feats = root / "features"
    write_npy(x, feats / "image.npy")
    write_parquet(pd.DataFrame({"sample_id": ids}), feats / "ids.parquet")
    write_parquet(pd.DataFrame({"sample_id": ids, "image_path": "x", "image_sha256": "0", "instruction": "i",
                                "answer": "a", "source": "synthetic"}), root / "manifest.parquet")
    pca = pd.DataFrame({"sample_id": ids} | {f"{m}_pc{j}": rng.normal(size=n) for m in ("img", "txt") for j in range(6)})
    write_parquet(pca, feats / "pca.parquet")
    scores = []
    for name in ("clip", "reward", "length"):
        path = root / "scores" / f"{name}.parquet"
        write_parquet(pd.DataFrame({"sample_id": ids, "score": rng.normal(size=n), "status": "ok"}), path,
                      metadata={"indicator": name})
        scores.append(str(path))
    return {"features": str(feats), "scores": scores}


def run_one(n: int, epochs: int) -> dict:
    import torch

    from vlselect.selection import select, spectral_clusters
    from vlselect.selector import predict, train_selector
    from vlselect.subsets import make_subsets
    from vlselect.io import write_parquet

    torch.set_num_threads(1)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = build(root, n)
        t = time.perf_counter()
        make_subsets(features_dir=paths["features"], out=str(root / "subsets.parquet"),
                     out_dropped=str(root / "dropped.parquet"), n_subsets=30, seed=0)
        times["make_subsets"] = time.perf_counter() - t
        t = time.perf_counter()
        spectral_clusters(features_dir=paths["features"], out=str(root / "clusters.parquet"), n_clusters=10, seed=0)
        times["spectral_clusters"] = time.perf_counter() - t
        labels = pd.DataFrame({"subset": np.arange(30), "label": np.random.default_rng(1).uniform(0.3, 0.6, 30)})
        write_parquet(labels, root / "labels.parquet")
        t = time.perf_counter()
        train_selector(scores=paths["scores"], pca=f"{paths['features']}/pca.parquet",
                       subsets=str(root / "subsets.parquet"), labels=str(root / "labels.parquet"),
                       out_dir=str(root / "selector"), arch="auto", epochs=epochs)
        times["train_selector"] = time.perf_counter() - t
        t = time.perf_counter()
        predict(model_dir=str(root / "selector"), scores=paths["scores"], pca=f"{paths['features']}/pca.parquet",
                out=str(root / "pred.parquet"))
        times["predict"] = time.perf_counter() - t
        common = dict(manifest=str(root / "manifest.parquet"), scores=paths["scores"],
                      clusters=str(root / "clusters.parquet"), n_select=200, quota_m=209)
        t = time.perf_counter()
        select(method="weights", out_dir=str(root / "sel_w"), weights={"clip": 1, "reward": 1, "length": 1}, **common)
        times["select_weights"] = time.perf_counter() - t
        t = time.perf_counter()
        select(method="selector", out_dir=str(root / "sel_s"), predictions=str(root / "pred.parquet"), **common)
        times["select_selector"] = time.perf_counter() - t
        arch = json.loads((root / "selector" / "report.json").read_text())["arch"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"n": n, "times": times, "peak_rss_mb": peak_mb, "arch": arch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3439, 20000, 100000])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.epochs)))
        return
    rows = []
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--epochs", str(args.epochs)],
                              capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"N={n} failed")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"N={n} done", file=sys.stderr, flush=True)
    header = f"{'N':>8} | " + " | ".join(f"{s:>17}" for s in STEPS) + " | peak RSS MB | chosen arch"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['n']:>8} | " + " | ".join(f"{r['times'][s]:>16.2f}s" for s in STEPS)
              + f" | {r['peak_rss_mb']:>11.0f} | {r['arch']}")


if __name__ == "__main__":
    main()
