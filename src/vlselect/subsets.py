"""Balanced k-means subsets of the dataset, the units that receive genuine quality labels.

InstructionGPT-4 clusters the image embeddings into 30 subsets, fine-tunes one model per subset
and uses each model's benchmark score as the subset's quality label. Subsets of equal size make
those labels comparable: a bigger subset would score better for being bigger, not for being
cleaner. So the k-means clusters are rebalanced to exactly floor(N / n_subsets) members each.

The space that k-means splits is a choice (``labels.subset_space``). "image", the paper's, gives subsets
of like images. "indicators" clusters the z-scored quality indicators instead. The selector learns how
quality depends on the indicators only from how the subsets differ in them; image clusters differ mostly
in what their images show, so their indicator means vary little and the label differences they carry
are largely about image content. Subsets cut along the indicators span them (a subset of long answers
with low reward, one of high CLIP scores, ...), so their labels say which indicators mark good data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from vlselect.indicators import read_indicators, zscore
from vlselect.io import write_parquet

log = logging.getLogger(__name__)

SPACES = ("image", "indicators")


def load_image_features(features_dir: str) -> tuple[np.ndarray, list[str]]:
    """Return the L2-normalised image embeddings and their sample ids (manifest order)."""
    features_dir = Path(features_dir)
    x = np.load(features_dir / "image.npy").astype(np.float64)
    ids = pd.read_parquet(features_dir / "ids.parquet")["sample_id"].astype(str).tolist()
    if len(ids) != len(x):
        raise ValueError(f"{features_dir}: image.npy has {len(x)} rows but ids.parquet {len(ids)}; "
                         "re-run the embedding step")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # An all-zero row (no image) stays zero instead of becoming NaN.
    return x / np.maximum(norms, 1e-12), ids


def balance_clusters(dist: np.ndarray, assign: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Rebalance ``assign`` so every cluster has exactly ``target`` members; return (assign, dropped mask).

    ``dist[i, c]`` is the distance of example i to centroid c. Step 1 repeatedly moves, among members of
    over-full clusters, the example whose move to an under-full cluster costs the least extra distance
    (dist to new centroid minus dist to its own). Centroids stay fixed, an over-full cluster never becomes
    over-full again once it is not, and a filled cluster never takes more, so one pass over all candidate
    moves sorted by cost is the same as re-searching the best move after every move, only fast.
    Step 2 trims clusters still over target by dropping their members farthest from the centroid.
    Ties are broken by example index, then cluster index, so the result is deterministic.
    """
    assign = assign.copy()
    n_clusters = dist.shape[1]
    counts = np.bincount(assign, minlength=n_clusters)
    under = np.flatnonzero(counts < target)
    if len(under):
        donors = np.flatnonzero(counts[assign] > target)
        own = dist[donors, assign[donors]]
        gap = dist[np.ix_(donors, under)] - own[:, None]  # (n_donors, n_under)
        rows, cols = np.meshgrid(np.arange(len(donors)), np.arange(len(under)), indexing="ij")
        order = np.lexsort((cols.ravel(), donors[rows.ravel()], gap.ravel()))
        moved = np.zeros(len(donors), dtype=bool)
        for flat in order:
            r, c = divmod(int(flat), len(under))
            i, dest = donors[r], under[c]
            if moved[r] or counts[assign[i]] <= target or counts[dest] >= target:
                continue
            counts[assign[i]] -= 1
            counts[dest] += 1
            assign[i] = dest
            moved[r] = True
            if counts.min() >= target:
                break
    dropped = np.zeros(len(assign), dtype=bool)
    for c in np.flatnonzero(counts > target):
        members = np.flatnonzero(assign == c)
        d = dist[members, c]
        # Farthest first; equal distances drop the higher index first.
        far = members[np.lexsort((-members, -d))][: counts[c] - target]
        dropped[far] = True
    return assign, dropped


def load_indicator_features(scores: list[str], ids: list[str]) -> np.ndarray:
    """The usable indicators of ``scores``, each z-scored over the dataset, as rows aligned to ``ids``.

    An example an indicator could not score gets 0 (the average) for it, as in the selector's input.
    """
    if not scores:
        raise ValueError("labels.subset_space is 'indicators' but no score files were given")
    raw, unusable = read_indicators(list(scores), ids)
    if raw.shape[1] == 0:
        raise ValueError(f"none of the indicators {unusable} has a usable score; use labels.subset_space: image")
    log.info("subsets in the space of the indicators %s (unusable: %s)", list(raw.columns), unusable or "none")
    return raw.apply(zscore).fillna(0.0).to_numpy(dtype=np.float64)


def make_subsets(*, out: str, out_dropped: str, features_dir: str | None = None, manifest: str | None = None,
                 n_subsets: int = 30, seed: int = 0, space: str = "image", scores: list[str] | None = None) -> None:
    """Split the dataset into ``n_subsets`` equal-size k-means clusters of the image embeddings or indicators.

    k-means++ (10 restarts, ``random_state=seed``) on the L2-normalised image embeddings of ``features_dir``
    (``space="image"``) or on the z-scored indicators of the ``scores`` files for the examples of ``manifest``
    (``space="indicators"``, see the module docstring; the embeddings are not read, so re-embedding leaves
    these subsets and their fine-tunes alone), then :func:`balance_clusters` makes every subset exactly
    floor(N / n_subsets) examples. Writes ``out`` (sample_id, subset) and ``out_dropped`` (sample_id, reason
    "balance_trim") for the N mod n_subsets examples that fit no subset. Deterministic for a given seed.
    """
    if space not in SPACES:
        raise ValueError(f"unknown labels.subset_space {space!r}; use one of {', '.join(SPACES)}")
    if space == "image":
        if features_dir is None:
            raise ValueError("subsets in the image space need features_dir")
        x, ids = load_image_features(features_dir)
    else:
        if manifest is None:
            raise ValueError("subsets in the indicators space need manifest")
        ids = pd.read_parquet(manifest, columns=["sample_id"])["sample_id"].astype(str).tolist()
        x = load_indicator_features(list(scores or []), ids)
    n = len(ids)
    if n_subsets < 2 or n < n_subsets:
        raise ValueError(f"cannot make {n_subsets} subsets from {n} examples; set labels.n_subsets between 2 and N")
    target = n // n_subsets
    km = KMeans(n_clusters=n_subsets, init="k-means++", n_init=10, random_state=seed).fit(x)
    dist = km.transform(x)  # Euclidean distance of every example to every centroid
    sizes = np.bincount(km.labels_, minlength=n_subsets)
    log.info("k-means cluster sizes before balancing: min %d, max %d, target %d", sizes.min(), sizes.max(), target)
    assign, dropped = balance_clusters(dist, km.labels_.astype(np.int64), target)
    kept = ~dropped
    sizes = np.bincount(assign[kept], minlength=n_subsets)
    if not np.all(sizes == target):  # guards the invariant every label relies on
        raise RuntimeError(f"balancing failed: subset sizes {sizes.tolist()} differ from {target}")
    ids_arr = np.asarray(ids, dtype=object)
    subsets = pd.DataFrame({"sample_id": ids_arr[kept], "subset": assign[kept].astype(np.int64)})
    drop_df = pd.DataFrame({"sample_id": ids_arr[dropped], "reason": ["balance_trim"] * int(dropped.sum())})
    meta = {"n_subsets": n_subsets, "seed": seed, "space": space, "subset_size": target, "n_dropped": int(dropped.sum()),
            "n_moved": int((assign != km.labels_).sum()), "inertia": float(km.inertia_)}
    write_parquet(subsets, out, metadata=meta)
    write_parquet(drop_df, out_dropped, metadata=meta)
    log.info("%d subsets of %d examples; %d moved between clusters, %d dropped", n_subsets, target,
             meta["n_moved"], meta["n_dropped"])

