"""The run's closing summary names what the selection left out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vlselect.io import write_parquet
from vlselect.selection import select
from vlselect.summary import summary

N = 40


def test_summary_names_an_indicator_the_selection_left_out(tmp_path, capsys):
    """Every GPT reply failed: the selection runs on the other indicators, and the summary says so with the counts."""
    results = tmp_path / "results"
    ids = [f"id{i:03d}" for i in range(N)]
    write_parquet(pd.DataFrame({"sample_id": ids, "image_path": "x", "image_sha256": "0", "instruction": "i",
                                "answer": "a", "source": "toy"}), results / "manifest.parquet")
    write_parquet(pd.DataFrame({"sample_id": ids, "cluster": np.arange(N) % 2}), results / "clusters.parquet")
    scores = {"clip": (np.linspace(0, 1, N), "ok"), "gpt": (np.full(N, np.nan), "failed")}
    paths = []
    for name, (values, status) in scores.items():
        path = results / "scores" / f"{name}.parquet"
        write_parquet(pd.DataFrame({"sample_id": ids, "score": values, "status": status}), path,
                      metadata={"indicator": name})
        paths.append(str(path))
    select(method="weights", manifest=str(results / "manifest.parquet"), scores=paths,
           clusters=str(results / "clusters.parquet"), out_dir=str(results / "selection" / "weights"), n_select=5,
           quota_m=10, weights={"clip": 1.0, "gpt": 1.0})
    summary(results=str(results))
    out = capsys.readouterr().out
    assert f"indicator 'gpt' left out of selection: no usable score (failed: {N} in " in out
    assert "'clip'" not in out
