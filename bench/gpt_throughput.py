"""GPT-score throughput against the local fake endpoint (tests/fake_openai.py) with 200 ms latency per request.

Measures requests/second of vlselect.scoring.gpt.score_gpt at concurrency 1, 8, 16 and 32 (fresh cache each time),
then re-runs with a warm cache and reports how many requests that sent (should be 0).
Run: PYTHONPATH=src python bench/gpt_throughput.py [--n 64] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_openai import FakeOpenAI  # noqa: E402

from vlselect.io import read_parquet_metadata, write_parquet  # noqa: E402
from vlselect.scoring.gpt import score_gpt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args()
    os.environ["VLSELECT_BENCH_KEY"] = "sk-bench-not-a-real-key"
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(lambda p, n: {"text": "Score: 70"},
                                                          latency=args.latency) as srv:
        tmp = Path(tmp)
        manifest = tmp / "manifest.parquet"
        write_parquet(pd.DataFrame({"sample_id": [f"s{i}" for i in range(args.n)], "image_path": "/none.png",
                                    "image_sha256": "0", "instruction": "Describe this image in detail.",
                                    "answer": [f"answer {i}" for i in range(args.n)], "source": "bench"}), manifest)
        common = dict(manifest=str(manifest), enabled=True, base_url=srv.base_url, api_key_env="VLSELECT_BENCH_KEY")
        print(f"{args.n} requests, {args.latency * 1000:.0f} ms server latency each")
        print(f"{'concurrency':>11} {'seconds':>8} {'req/s':>7} {'max in flight':>14}")
        for conc in (1, 8, 16, 32):
            srv.max_in_flight = 0
            t0 = time.perf_counter()
            score_gpt(out=str(tmp / f"c{conc}.parquet"), cache_dir=str(tmp / f"cache{conc}"), concurrency=conc,
                      **common)
            dt = time.perf_counter() - t0
            sent = read_parquet_metadata(tmp / f"c{conc}.parquet")["requests_sent"]
            print(f"{conc:>11} {dt:>8.2f} {sent / dt:>7.1f} {srv.max_in_flight:>14}")
        before = srv.total
        score_gpt(out=str(tmp / "rerun.parquet"), cache_dir=str(tmp / "cache32"), concurrency=32, **common)
        meta = read_parquet_metadata(tmp / "rerun.parquet")
        print(f"re-run with a warm cache: {meta['requests_sent']} requests sent "
              f"(server saw {srv.total - before}), {meta['cache_hits']} cache hits")


if __name__ == "__main__":
    main()
