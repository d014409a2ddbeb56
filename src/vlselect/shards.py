"""Scatter/gather support: split the manifest into shards and join shard outputs.

Scoring and embedding functions take ``shard`` and ``n_shards`` and process the
contiguous rows :func:`shard_rows` gives them; the gather functions join the
pieces back into manifest order, so any shard count yields identical files.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from vlselect.io import read_parquet_metadata, write_npy, write_parquet

log = logging.getLogger(__name__)


def shard_rows(n_rows: int, shard: int, n_shards: int) -> np.ndarray:
    """Indices of the rows that shard ``shard`` of ``n_shards`` handles (contiguous, balanced)."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
    return np.array_split(np.arange(n_rows), n_shards)[shard]


def parse_scatteritem(item: str) -> tuple[int, int]:
    """Snakemake's scatter item "3-of-8" -> (shard 2, n_shards 8)."""
    match = re.fullmatch(r"(\d+)-of-(\d+)", item)
    if not match:
        raise ValueError(f"not a scatter item: {item!r} (expected like '1-of-4')")
    return int(match.group(1)) - 1, int(match.group(2))


def gather(*, inputs: list[str], out: str, manifest: str) -> None:
    """Join per-shard score files into one file in manifest order, checking that no example is missing."""
    ids = pd.read_parquet(manifest, columns=["sample_id"])["sample_id"]
    parts = [pd.read_parquet(p) for p in inputs]
    df = pd.concat(parts, ignore_index=True)
    if df["sample_id"].duplicated().any() or len(df) != len(ids) or set(df["sample_id"]) != set(ids):
        raise RuntimeError(
            f"shard outputs {inputs} do not cover the manifest exactly ({len(df)} rows for {len(ids)} examples); "
            "delete the shard files and re-run"
        )
    df = df.set_index("sample_id").loc[ids].reset_index()
    metadata = read_parquet_metadata(inputs[0])
    metadata.pop("shard", None)
    for key in ("n_truncated", "usd_spent", "requests_sent"):
        values = [read_parquet_metadata(p).get(key) for p in inputs]
        if all(isinstance(v, (int, float)) for v in values):
            metadata[key] = sum(values)
    write_parquet(df, out, metadata=metadata)
    log.info("gathered %d shards into %s (%d rows)", len(inputs), out, len(df))


def gather_features(*, inputs: list[str], out_dir: str) -> None:
    """Join per-shard feature folders (image.npy, text.npy, ids.parquet) in shard order."""
    out = Path(out_dir)
    dirs = [Path(p) for p in inputs]
    for name in ("image.npy", "text.npy"):
        write_npy(np.concatenate([np.load(d / name) for d in dirs]), out / name)
    ids = pd.concat([pd.read_parquet(d / "ids.parquet") for d in dirs], ignore_index=True)
    write_parquet(ids, out / "ids.parquet")
