"""Final selection: spectral clusters for diversity, the selection methods, and imported scores.

Every diversity method (selector, weights, <indicator>_only) follows InstructionGPT-4: each spectral
cluster C contributes its best max(1, floor(quota_m * |C| / N)) examples by score, then the overall
best n_select of that pool are kept. Scores are compared as floats (never rounded) and ties go to the
smaller sample_id, so a selection is reproducible to the example.

Weighted score (methods "weights" and "no_cluster"): F(x) = sum_i w_i * z_i(x) / sum_i w_i, with z_i the
z-score of indicator i over the dataset. z-scores, not min-max, because one outlier would squeeze a
min-max range, and because the "why" column speaks in the same units (σ). An example whose indicator i
was not scored (NaN) gets z_i = 0, the dataset average, and the number of such examples is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.cluster import SpectralClustering
from sklearn.neighbors import kneighbors_graph

from vlselect.indicators import read_indicators, zscore
from vlselect.io import read_parquet_metadata, sha256_file, write_npy, write_parquet
from vlselect.subsets import load_image_features

log = logging.getLogger(__name__)

DIVERSITY = ("selector", "weights", "clip_only", "length_only", "reward_only", "gpt_only")
METHODS = DIVERSITY + ("random", "full", "no_cluster")


# ------------------------------------------------------------------------------------------------- clusters
def knn_affinity(x: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    """Sparse k-nearest-neighbour distance graph (N x N with N*k entries; never a dense N x N matrix)."""
    return kneighbors_graph(x, n_neighbors=n_neighbors, mode="distance", include_self=False)


def spectral_clusters(*, features_dir: str, out: str, n_clusters: int = 10, n_neighbors: int = 10, seed: int = 0,
                      eigen_solver: str = "arpack") -> None:
    """Spectral clustering of the L2-normalised image embeddings into ``n_clusters`` (writes sample_id, cluster).

    The affinity is the symmetrised k-nearest-neighbour connectivity graph, kept sparse so memory grows
    with N * n_neighbors rather than N^2. Labels are assigned by cluster_qr (deterministic, no k-means
    restarts). ``eigen_solver`` is sklearn's ("arpack" or "lobpcg"; lobpcg can be faster at large N).
    """
    x, ids = load_image_features(features_dir)
    if len(ids) <= max(n_clusters, n_neighbors):
        raise ValueError(f"{len(ids)} examples are too few for {n_clusters} clusters with {n_neighbors} neighbours; "
                         "lower selection.n_clusters")
    graph = knn_affinity(x, n_neighbors)
    model = SpectralClustering(n_clusters=n_clusters, affinity="precomputed_nearest_neighbors",
                               n_neighbors=n_neighbors, assign_labels="cluster_qr", eigen_solver=eigen_solver,
                               random_state=seed)
    labels = model.fit_predict(graph)
    if not sp.issparse(model.affinity_matrix_):  # the whole point: fail loudly rather than go quadratic
        raise RuntimeError("spectral clustering built a dense affinity matrix")
    sizes = np.bincount(labels, minlength=n_clusters)
    write_parquet(pd.DataFrame({"sample_id": ids, "cluster": labels.astype(np.int64)}), out,
                  metadata={"n_clusters": n_clusters, "n_neighbors": n_neighbors, "seed": seed,
                            "affinity": "sparse_knn", "affinity_nnz": int(model.affinity_matrix_.nnz),
                            "sizes": sizes.tolist()})
    log.info("%d spectral clusters; sizes %s", n_clusters, sizes.tolist())


# ------------------------------------------------------------------------------------------------ selection
def _order(score: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Indices by score descending, ties by sample_id ascending (full float comparison)."""
    return np.lexsort((ids, -score))


def cluster_quotas(sizes: dict[int, int], quota_m: int) -> dict[int, int]:
    """max(1, floor(quota_m * |C| / N)) per cluster (integer arithmetic, so no float rounding)."""
    total = sum(sizes.values())
    return {c: max(1, (quota_m * n) // total) for c, n in sizes.items()}


def diverse_top(score: np.ndarray, ids: np.ndarray, cluster: np.ndarray, n_select: int, quota_m: int) -> np.ndarray:
    """Each cluster's best by quota, then the overall best n_select; indices in rank order.

    Examples with a NaN score cannot be ranked and are never chosen.
    """
    ok = np.isfinite(score)
    sizes = {int(c): int(n) for c, n in zip(*np.unique(cluster, return_counts=True))}
    quotas = cluster_quotas(sizes, quota_m)
    pool = []
    for c, q in quotas.items():
        members = np.flatnonzero((cluster == c) & ok)
        pool.append(members[_order(score[members], ids[members])][:q])
    pool = np.concatenate(pool)
    if len(pool) < n_select:
        raise ValueError(f"the cluster quotas (quota_m={quota_m}, {len(quotas)} clusters) yield only {len(pool)} "
                         f"rankable candidates, fewer than n_select={n_select} (flooring each quota loses up to one "
                         f"per cluster); set selection.quota_m >= {n_select + len(quotas) - 1} or lower n_select")
    log.info("cluster quotas %s give a pool of %d", quotas, len(pool))
    return pool[_order(score[pool], ids[pool])][:n_select]


def _top(score: np.ndarray, ids: np.ndarray, n_select: int) -> np.ndarray:
    """The best n_select by score alone (no cluster quotas); examples with a NaN score are never chosen."""
    ranked = _order(score, ids)
    ranked = ranked[np.isfinite(score[ranked])]
    if len(ranked) < n_select:
        raise ValueError(f"only {len(ranked)} examples have a score, fewer than n_select={n_select}; lower "
                         "selection.n_select or score more examples")
    return ranked[:n_select]


def _why(z: pd.DataFrame, weights: dict[str, float] | None, quality_z: np.ndarray | None) -> list[str]:
    """Short text naming the (at most two) indicators that carried each example, e.g. "clip +1.8σ, reward +1.2σ".

    An indicator carries an example when it adds to the example's score: weight x z for a weighted score (the
    weights method, a linear selector), plain z otherwise. One that subtracts, or has no weight or no score,
    is never named, so a pick is never explained by what counted against it.
    """
    names = list(z.columns)
    zv = z.to_numpy()
    w = np.array([weights.get(n, 0.0) for n in names]) if weights else np.ones(len(names))
    with np.errstate(invalid="ignore"):
        contrib = np.where(np.isnan(zv) | (w * zv <= 0), -np.inf, zv * w)
    top = np.argsort(-contrib, axis=1, kind="stable")[:, :2]
    out = []
    for row in range(len(z)):
        parts = [] if quality_z is None else [f"quality {quality_z[row]:+.1f}σ"]
        carried = [f"{names[j]} {zv[row, j]:+.1f}σ" for j in top[row] if np.isfinite(contrib[row, j])]
        out.append(", ".join(parts + (carried or ["no indicator above average"])))
    return out


def select(*, method: str, manifest: str, scores: list[str], out_dir: str, clusters: str | None = None,
           n_select: int = 200, quota_m: int = 204, weights: dict[str, float] | None = None,
           predictions: str | None = None, seed: int = 0) -> None:
    """Select n_select examples by ``method``; write selected/rejected/ids parquet files under ``out_dir``.

    Methods: selector (learned quality), weights (weighted z-scores), <indicator>_only (one indicator), all
    three with the cluster quotas (without ``clusters``, selection.clusters: none, by score alone: one cluster
    holding every example would give the same picks); no_cluster (weighted z-scores, no quotas); random (seeded
    draw); full (every example). selected.parquet: sample_id, rank (1 = best), score, cluster, why, each indicator's
    raw value and <name>_z, and quality for the selector; rejected.parquet: the rest, rank null;
    ids.parquet: sample_id in rank order (what export reads).
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    ids_list = pd.read_parquet(manifest, columns=["sample_id"])["sample_id"].astype(str).tolist()
    ids = np.asarray(ids_list, dtype=object).astype(str)
    n = len(ids)
    raw, unusable = read_indicators(list(scores), ids_list)
    zs = raw.apply(zscore)
    table = pd.concat([raw, zs.add_suffix("_z")], axis=1).reset_index()

    cluster = None
    if clusters:
        cl = pd.read_parquet(clusters, columns=["sample_id", "cluster"])
        cluster_s = pd.Series(cl["cluster"].to_numpy(), index=cl["sample_id"].astype(str)).reindex(ids)
        if cluster_s.isna().any() and method in DIVERSITY:
            raise ValueError(f"{clusters} has no cluster for {int(cluster_s.isna().sum())} manifest examples; "
                             "re-run spectral_clusters on the current features")
        cluster = cluster_s.to_numpy()
    table["cluster"] = pd.array(cluster, dtype="Int64") if cluster is not None else pd.array([None] * n, "Int64")

    used_weights = None
    quality_z = None
    meta = {"method": method, "seed": seed, "unusable_indicators": unusable}
    if method == "selector":
        if not predictions:
            raise ValueError("method 'selector' needs --predictions (selector/predictions.parquet); run predict first")
        pred = pd.read_parquet(predictions, columns=["sample_id", "quality"])
        q = pd.Series(pred["quality"].to_numpy(float), index=pred["sample_id"].astype(str)).reindex(ids)
        if q.isna().any():
            raise ValueError(f"{predictions} lacks a quality for {int(q.isna().sum())} manifest examples; re-run predict")
        table["quality"] = q.to_numpy()
        score = q.to_numpy()
        quality_z = zscore(q).to_numpy()
        # a linear selector's weights say what each indicator adds; other shapes leave the plain z-scores
        used_weights = read_parquet_metadata(predictions).get("linear_weights")
    elif method in ("weights", "no_cluster"):
        used_weights = _usable_weights(weights, list(raw.columns), unusable)
        score = sum(w * zs[k].fillna(0.0).to_numpy() for k, w in used_weights.items())
        for k in used_weights:
            if raw[k].isna().any():
                log.warning("indicator %r: %d examples without a score count as its average (z = 0)", k,
                            int(raw[k].isna().sum()))
        meta["weights"] = used_weights
        meta["normalisation"] = "zscore"
    elif method.endswith("_only"):
        name = method[: -len("_only")]
        if name not in raw.columns:
            why = "has no usable score" if name in unusable else "was not given among the score files"
            hint = " (enable scoring.gpt with an endpoint, or import GPT scores)" if name == "gpt" else ""
            raise ValueError(f"method {method!r}: indicator {name!r} {why}{hint}; choose another method")
        score = raw[name].to_numpy(float)
        used_weights = {name: 1.0}
    else:
        score = np.full(n, np.nan)
    table["score"] = score

    if method == "full":
        chosen = np.arange(n)
    elif n_select > n:
        raise ValueError(f"n_select={n_select} exceeds the {n} examples in the manifest; lower selection.n_select")
    elif method == "random":
        chosen = np.random.default_rng(seed).choice(n, size=n_select, replace=False)
    elif method == "no_cluster" or cluster is None:
        chosen = _top(score, ids, n_select)
    else:
        chosen = diverse_top(score, ids, cluster, n_select, quota_m)
    assert len(set(chosen.tolist())) == len(chosen)

    if method == "random":
        table["why"] = f"random draw (seed {seed})"
    elif method == "full":
        table["why"] = "full dataset"
    else:
        table["why"] = _why(zs, used_weights, quality_z)
    rank = pd.array([None] * n, dtype="Int64")
    rank[chosen] = np.arange(1, len(chosen) + 1)
    table["rank"] = rank
    lead = ["sample_id", "rank", "score", "cluster", "why"]
    table = table[lead + [c for c in table.columns if c not in lead]]
    selected = table.iloc[chosen].reset_index(drop=True)
    mask = np.ones(n, dtype=bool)
    mask[chosen] = False
    rejected = table[mask]
    rejected = rejected.iloc[_order(rejected["score"].fillna(-np.inf).to_numpy(), rejected["sample_id"].to_numpy(
        str))].reset_index(drop=True)
    meta |= {"n_select": len(chosen), "quota_m": quota_m}
    out_dir = Path(out_dir)
    write_parquet(selected, out_dir / "selected.parquet", metadata=meta)
    write_parquet(rejected, out_dir / "rejected.parquet", metadata=meta)
    write_parquet(selected[["sample_id"]], out_dir / "ids.parquet", metadata=meta)
    log.info("%s: selected %d of %d examples", method, len(chosen), n)


def _usable_weights(weights: dict[str, float] | None, available: list[str], unusable: list[str]) -> dict[str, float]:
    """Drop weights of indicators that are missing or unusable (warning by name) and renormalise to sum 1."""
    if not weights:
        raise ValueError("methods 'weights' and 'no_cluster' need selection.weights, e.g. {clip: 1, reward: 1}")
    kept = {}
    for name, w in weights.items():
        if name in available:
            kept[name] = float(w)
        else:
            reason = "has no usable score" if name in unusable else "has no score file"
            log.warning("indicator %r %s; its weight %.3g is dropped and the others renormalised", name, reason, w)
    for name in available:
        if name not in weights:
            log.info("indicator %r has no weight in selection.weights; it does not count", name)
    total = sum(kept.values())
    if not kept or total == 0:
        raise ValueError(f"no usable weighted indicator left (weights {weights}, usable {available}); "
                         "give a nonzero weight to an indicator that has scores")
    return {k: w / total for k, w in kept.items()}


# ------------------------------------------------------------------------------------ bring your own scores
def import_scores(*, path: str, out_dir: str, manifest: str, columns: dict[str, str], id_column: str = "sample_id",
                  max_missing_fraction: float = 0.05) -> None:
    """Turn a table of your own per-sample scores into scores/<indicator>.parquet files (contract format).

    ``path`` is parquet, CSV, JSON (records) or JSON Lines; ``columns`` maps indicator name to column,
    e.g. {"clip": "my_clip", "gpt": "gpt4_rating"}, and only those indicators are written. Rows follow
    ``manifest`` order. Each output has sample_id, score (float) and status: "ok" where the value is a number,
    "skipped" where the file leaves it empty (not scored on purpose), "failed" where the file has no row for the
    example. Published scores often miss a few examples, so up to ``max_missing_fraction`` of the manifest may be
    absent; more usually means the ids do not match (another id column, another dataset version), and the
    import stops, listing the first absent ids. Rows for ids outside the manifest (quarantined examples) are
    dropped. Each file's metadata names the source file and its sha256, so a changed file is detectable.
    """
    src = Path(path)
    df = _read_table(src, id_column)
    needed = [id_column] + list(columns.values())
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; it has {list(df.columns)}")
    df[id_column] = df[id_column].astype(str)
    if df[id_column].duplicated().any():
        raise ValueError(f"{path}: {int(df[id_column].duplicated().sum())} duplicated ids in column {id_column!r}")
    order = pd.read_parquet(manifest, columns=["sample_id"])["sample_id"].astype(str)
    absent = order[~order.isin(df[id_column])].tolist()
    if len(absent) > max_missing_fraction * len(order):
        raise ValueError(
            f"{path} has no row for {len(absent)} of the {len(order)} manifest examples "
            f"({len(absent) / len(order):.1%}, above selection.external_scores.max_missing_fraction="
            f"{max_missing_fraction}); first absent: {', '.join(absent[:5])}; the file's ids start "
            f"{', '.join(df[id_column].head(3))}. Check that {id_column!r} holds the dataset's sample_id values "
            "(results/manifest.parquet), or raise max_missing_fraction if those examples were never scored")
    if absent:
        log.warning("%s has no row for %d manifest examples (first: %s); they get status failed", path, len(absent),
                    ", ".join(absent[:5]))
    extra = int((~df[id_column].isin(order)).sum())
    if extra:
        log.info("%s: %d rows are not in the manifest (quarantined or another dataset) and are ignored", path, extra)
    df = df.set_index(id_column).reindex(order.tolist())
    found = ~df.index.isin(absent)
    checksum = sha256_file(src)
    for name, column in columns.items():
        score = pd.to_numeric(df[column], errors="raise").astype(float)
        status = np.where(score.notna(), "ok", np.where(found, "skipped", "failed"))
        out = pd.DataFrame({"sample_id": order.to_numpy(), "score": score.to_numpy(), "status": status})
        write_parquet(out, Path(out_dir) / f"{name}.parquet",
                      metadata={"indicator": name, "model": "imported", "source": str(src), "column": column,
                                "checksum": checksum})
        log.info("imported %s from column %r: %d scored, %d empty, %d absent", name, column,
                 int(score.notna().sum()), int((status == "skipped").sum()), len(absent))


def import_embeddings(*, image: str, ids: str, manifest: str, out_dir: str, id_column: str = "sample_id") -> None:
    """Write image embeddings computed elsewhere as ``out_dir``/image.npy + ids.parquet, in manifest order.

    ``image`` is an N x D .npy; ``ids`` a table (parquet, CSV, JSON, JSON Lines) whose ``id_column`` names the
    example of each row. The result has the layout of the workflow's own features, so spectral clustering reads
    either. Every manifest example needs an embedding, since a diversity method needs every example's cluster;
    rows outside the manifest are dropped.
    """
    x = np.load(image, allow_pickle=False)
    table = _read_table(Path(ids), id_column)
    if id_column not in table.columns:
        raise ValueError(f"{ids} lacks column {id_column!r}; it has {list(table.columns)}")
    row_ids = table[id_column].astype(str)
    if x.ndim != 2 or len(x) != len(row_ids):
        raise ValueError(f"{image} has shape {x.shape} but {ids} names {len(row_ids)} rows; "
                         "they must be one embedding per id, in the same order")
    if row_ids.duplicated().any():
        raise ValueError(f"{ids}: {int(row_ids.duplicated().sum())} duplicated ids in column {id_column!r}")
    order = pd.read_parquet(manifest, columns=["sample_id"])["sample_id"].astype(str)
    absent = order[~order.isin(row_ids)].tolist()
    if absent:
        raise ValueError(f"{ids} has no embedding for {len(absent)} of the {len(order)} manifest examples (first: "
                         f"{', '.join(absent[:5])}); every example needs one for its cluster")
    rows = pd.Series(np.arange(len(row_ids)), index=row_ids.to_numpy()).loc[order.tolist()].to_numpy()
    out = Path(out_dir)
    write_npy(x[rows].astype(np.float32), out / "image.npy")
    write_parquet(pd.DataFrame({"sample_id": order.to_numpy()}), out / "ids.parquet",
                  metadata={"source": str(image), "checksum": sha256_file(image)})
    log.info("imported %d x %d image embeddings from %s", len(rows), x.shape[1], image)


def _read_table(src: Path, id_column: str) -> pd.DataFrame:
    """A parquet, CSV, JSON (records) or JSON Lines table, its id column read as text (ids like 007 stay 007)."""
    suffix = src.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(src)
    if suffix == ".csv":
        return pd.read_csv(src, dtype={id_column: str})
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(src, lines=True, dtype={id_column: str})
    if suffix == ".json":
        return pd.read_json(src, dtype={id_column: str})
    raise ValueError(f"{src}: unsupported table type {suffix!r}; use .parquet, .csv, .json or .jsonl")
