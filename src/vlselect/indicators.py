"""Reading quality indicators: one score file per indicator, aligned to the dataset and standardised.

Shared by the steps that consume scores (subsets in indicator space, the selector, the selections), so every
step reads a score file, drops unusable values and standardises in exactly one way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from vlselect.io import read_parquet_metadata

log = logging.getLogger(__name__)


def indicator_name(path: str) -> str:
    """The indicator a score file holds: its metadata "indicator", else the file name stem."""
    return str(read_parquet_metadata(path).get("indicator") or Path(path).stem)


def read_indicators(paths: list[str], sample_ids: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Raw indicator values aligned to ``sample_ids`` (one column per indicator; NaN unless status "ok").

    Returns (table, unusable) where unusable names the indicators with no usable value at all
    (e.g. the GPT score when it was skipped); their columns are left out of the table.
    """
    table = pd.DataFrame(index=pd.Index(sample_ids, name="sample_id"))
    unusable = []
    for path in paths:
        name = indicator_name(path)
        if name in table.columns:
            raise ValueError(f"indicator {name!r} given twice (second file {path})")
        df = pd.read_parquet(path, columns=["sample_id", "score", "status"])
        if df["sample_id"].duplicated().any():
            raise ValueError(f"{path}: duplicated sample_id values; re-run the scoring step")
        values = df["score"].astype(float).where(df["status"] == "ok")
        series = pd.Series(values.to_numpy(), index=df["sample_id"].astype(str)).reindex(table.index)
        n_missing = int(series.isna().sum())
        if not series.notna().any():
            unusable.append(name)
            log.warning("indicator %r (%s) has no usable score (all NaN/skipped/failed); it is left out", name, path)
            continue
        if n_missing:
            log.info("indicator %r: %d of %d examples have no score", name, n_missing, len(series))
        table[name] = series
    return table, unusable


def zscore(values: pd.Series) -> pd.Series:
    """(x - mean) / std over the scored examples; a constant indicator gives 0 everywhere it is scored."""
    std = values.std(ddof=0)
    return (values - values.mean()) / (std if std > 0 else 1.0)
