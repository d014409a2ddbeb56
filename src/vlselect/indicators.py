"""Reading quality indicators: one score file per indicator, aligned to the dataset and standardised.

Shared by the steps that consume scores (subsets in indicator space, the selector, the selections), so every
step reads a score file, drops unusable values and standardises in exactly one way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
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


def percentile_grid(values: pd.Series, n: int = 1001) -> list[float]:
    """The indicator's quantiles at ``n`` evenly spaced levels (unscored examples ignored), for :func:`rank_scores`.

    A fixed-size summary rather than every value, so a model that stores it stays small at any dataset size.
    """
    return np.nanquantile(values.to_numpy(dtype=np.float64), np.linspace(0.0, 1.0, n)).tolist()


def percentile(values: pd.Series, grid: list[float]) -> pd.Series:
    """Each value's percentile rank (0 to 1) in the distribution ``grid`` summarises; NaN stays NaN.

    The rank is the share of grid points below the value, ties counted half, so equal values (answer lengths
    often tie) get equal ranks. Unlike a z-score, a rank is bounded: one extreme value, such as a repetition
    loop many times longer than any clean answer, counts no more than the longest clean answer.
    """
    ref = np.asarray(grid, dtype=np.float64)
    x = values.to_numpy(dtype=np.float64)
    below = np.searchsorted(ref, x, side="left") + np.searchsorted(ref, x, side="right")
    ranks = np.where(np.isnan(x), np.nan, below / (2.0 * len(ref)))
    return pd.Series(ranks, index=values.index, name=values.name)


def rank_scores(values: pd.Series, grid: list[float]) -> pd.Series:
    """Each value's percentile rank mapped to the standard normal quantile (a rank-based inverse normal transform).

    The scores are spread like z-scores of normal data, which the selector's shapes train well on, but bounded
    (at most about 3.3 for a grid of 1001 points) whatever the raw value. Plain percentiles (uniform on 0 to 1)
    bound values too, but the attention selector then fitted subset means with per-example scores unrelated to
    quality (tests/test_selector.py).
    """
    from scipy.stats import norm

    u = percentile(values, grid)
    half_step = 0.5 / len(grid)
    return pd.Series(norm.ppf(u.clip(half_step, 1.0 - half_step)), index=values.index, name=values.name)
