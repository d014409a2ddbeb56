"""Selection methods, cluster quotas, tie-breaking, spectral clusters and imported scores."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from vlselect.io import read_parquet_metadata, write_npy, write_parquet
from vlselect.selection import (cluster_quotas, import_embeddings, import_scores, knn_affinity, select,
                               spectral_clusters)

N = 300


def score_file(path, ids, values, indicator=None, status=None):
    values = np.asarray(values, dtype=float)
    status = status if status is not None else np.where(np.isnan(values), "failed", "ok")
    write_parquet(pd.DataFrame({"sample_id": ids, "score": values, "status": status}), path,
                  metadata={"indicator": indicator} if indicator else None)
    return str(path)


@pytest.fixture()
def world(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"id{i:04d}" for i in range(N)]
    write_parquet(pd.DataFrame({"sample_id": ids, "image_path": "x", "image_sha256": "0", "instruction": "i",
                                "answer": "a", "source": "toy"}), tmp_path / "manifest.parquet")
    clusters = np.repeat([0, 1, 2], [150, 100, 50])
    write_parquet(pd.DataFrame({"sample_id": ids, "cluster": clusters}), tmp_path / "clusters.parquet")
    raw = {"clip": rng.normal(30, 2, N), "reward": rng.normal(0, 1, N), "length": rng.uniform(0, 1, N)}
    scores = [score_file(tmp_path / f"{k}.parquet", ids, v, k) for k, v in raw.items()]
    # Skipped GPT score: the file exists (the DAG always makes it) but holds nothing usable.
    scores.append(score_file(tmp_path / "gpt.parquet", ids, np.full(N, np.nan), "gpt", status=np.full(N, "skipped")))
    base = dict(manifest=str(tmp_path / "manifest.parquet"), scores=scores, clusters=str(tmp_path / "clusters.parquet"))
    return tmp_path, ids, raw, clusters, base


def read(out):
    return (pd.read_parquet(out / "selected.parquet"), pd.read_parquet(out / "rejected.parquet"),
            pd.read_parquet(out / "ids.parquet"))


def test_quota_maths():
    assert cluster_quotas({0: 150, 1: 100, 2: 50}, 30) == {0: 15, 1: 10, 2: 5}
    assert cluster_quotas({0: 990, 1: 10}, 50) == {0: 49, 1: 1}  # floor(0.5) = 0 becomes 1
    assert cluster_quotas({0: 1, 1: 2}, 204) == {0: 68, 1: 136}  # floor(204/3), floor(408/3)


def test_weights_drop_missing_gpt_and_renormalise(world, caplog):
    root, ids, raw, clusters, base = world
    out = root / "weights"
    with caplog.at_level(logging.WARNING, logger="vlselect.selection"):
        select(method="weights", out_dir=str(out), n_select=20, quota_m=60,
               weights={"clip": 1.0, "reward": 3.0, "gpt": 4.0}, **base)
    assert any("'gpt'" in r.getMessage() and "renormalised" in r.getMessage() for r in caplog.records)
    meta = read_parquet_metadata(out / "selected.parquet")
    assert meta["weights"] == {"clip": 0.25, "reward": 0.75}
    sel, rej, order = read(out)
    z = {k: (v - v.mean()) / v.std() for k, v in raw.items()}
    expected = 0.25 * z["clip"] + 0.75 * z["reward"]
    got = pd.concat([sel, rej]).set_index("sample_id").loc[ids, "score"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    # Exactly n_select unique, in rank order, partitioning the manifest with the rejected rows.
    assert len(sel) == 20 and sel["sample_id"].is_unique and sel["rank"].tolist() == list(range(1, 21))
    assert order["sample_id"].tolist() == sel["sample_id"].tolist()
    assert rej["rank"].isna().all() and len(rej) == N - 20
    assert set(sel["sample_id"]) | set(rej["sample_id"]) == set(ids)
    assert {"clip", "clip_z", "reward", "reward_z", "length", "length_z"} <= set(sel.columns)
    assert "gpt" not in sel.columns
    # Diversity: the selection is the top-20 of the per-cluster pools (quotas 30, 20, 10), not of everything.
    pool = []
    for c, q in {0: 30, 1: 20, 2: 10}.items():
        members = np.flatnonzero(clusters == c)
        pool += list(members[np.argsort(-expected[members])][:q])
    pool = np.array(pool)
    best = pool[np.argsort(-expected[pool])][:20]
    assert sel["sample_id"].tolist() == [ids[i] for i in best]
    assert sel["why"].str.contains("σ").all() and sel["why"].iloc[0].split(" ")[0] in ("clip", "reward")


def test_ties_by_sample_id_and_full_float_comparison(tmp_path):
    ids = ["b", "a", "d", "c", "e"]
    write_parquet(pd.DataFrame({"sample_id": ids}), tmp_path / "m.parquet")
    write_parquet(pd.DataFrame({"sample_id": ids, "cluster": [0] * 5}), tmp_path / "cl.parquet")
    # b and a tie exactly; d beats c by 0.3; e differs from c by 1e-12 only (must not be rounded into a tie).
    clip = score_file(tmp_path / "clip.parquet", ids, [5.0, 5.0, 0.4, 0.1, 0.1 + 1e-12], "clip")
    select(method="clip_only", manifest=str(tmp_path / "m.parquet"), scores=[clip], clusters=str(tmp_path / "cl.parquet"),
           out_dir=str(tmp_path / "o"), n_select=5, quota_m=5)
    sel = pd.read_parquet(tmp_path / "o" / "selected.parquet")
    assert sel["sample_id"].tolist() == ["a", "b", "d", "e", "c"]


def test_errors_when_not_enough_candidates_or_gpt_absent(world):
    root, _, _, _, base = world
    with pytest.raises(ValueError, match="quota_m"):
        select(method="clip_only", out_dir=str(root / "x"), n_select=50, quota_m=10, **base)
    with pytest.raises(ValueError, match="gpt_only.*'gpt' has no usable score"):
        select(method="gpt_only", out_dir=str(root / "y"), n_select=5, quota_m=10, **base)
    with pytest.raises(ValueError, match="predictions"):
        select(method="selector", out_dir=str(root / "z"), n_select=5, quota_m=10, **base)


def test_random_seeded_full_all_and_no_cluster(world):
    root, ids, raw, _, base = world
    picks = []
    for name, seed in (("r1", 7), ("r2", 7), ("r3", 8)):
        select(method="random", out_dir=str(root / name), n_select=25, seed=seed, **base)
        picks.append(read(root / name)[0]["sample_id"].tolist())
    assert picks[0] == picks[1] and picks[0] != picks[2] and len(set(picks[0])) == 25
    select(method="full", out_dir=str(root / "full"), **base)
    sel, rej, _ = read(root / "full")
    assert sel["sample_id"].tolist() == ids and len(rej) == 0
    select(method="no_cluster", out_dir=str(root / "nc"), n_select=10, weights={"length": 1.0}, **base)
    top = np.argsort(-raw["length"])[:10]
    assert read(root / "nc")[0]["sample_id"].tolist() == [ids[i] for i in top]


def test_selector_method_uses_predictions(world):
    root, ids, raw, _, base = world
    quality = -raw["reward"]
    write_parquet(pd.DataFrame({"sample_id": ids[::-1], "quality": quality[::-1]}), root / "pred.parquet")
    select(method="selector", out_dir=str(root / "s"), n_select=12, quota_m=40, predictions=str(root / "pred.parquet"),
           **base)
    sel = read(root / "s")[0]
    np.testing.assert_allclose(sel["quality"], quality[[ids.index(i) for i in sel["sample_id"]]])
    assert (np.diff(sel["score"]) <= 0).all() and sel["why"].str.startswith("quality +").all()
    # Without a linear selector's weights, the plain z-scores explain a pick, and only those above average do:
    # these picks have low rewards, so reward never appears.
    carried = sel["why"].str.split(", ").apply(lambda parts: parts[1:])
    assert all(p.split(" ")[1].startswith("+") or p == "no indicator above average" for ps in carried for p in ps)
    assert not sel["why"].str.contains("reward").any()


def test_a_linear_selectors_picks_are_explained_by_its_weights(world):
    root, ids, raw, _, base = world
    z = (raw["reward"] - raw["reward"].mean()) / raw["reward"].std()
    write_parquet(pd.DataFrame({"sample_id": ids, "quality": 0.4 + 0.01 * z}), root / "pred.parquet",
                  metadata={"arch": "linear", "linear_weights": {"clip": 0.0, "reward": 1.0, "length": 0.0}})
    select(method="selector", out_dir=str(root / "s"), n_select=12, quota_m=40, predictions=str(root / "pred.parquet"),
           **base)
    why = read(root / "s")[0]["why"]
    # clip and length are above average for some of these picks, but they carry no weight in this selector
    assert why.str.fullmatch(r"quality \+\d\.\dσ, reward \+\d\.\dσ").all(), why.tolist()


def test_spectral_clusters_sparse_affinity(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 4
    truth = np.repeat(np.arange(4), 75)
    x = (centres[truth] + rng.normal(size=(300, 16))).astype(np.float32)
    write_npy(x, tmp_path / "image.npy")
    write_parquet(pd.DataFrame({"sample_id": [f"s{i}" for i in range(300)]}), tmp_path / "ids.parquet")
    graph = knn_affinity(x, 10)
    assert sp.issparse(graph) and graph.nnz == 300 * 10
    spectral_clusters(features_dir=str(tmp_path), out=str(tmp_path / "cl.parquet"), n_clusters=4, n_neighbors=10)
    cl = pd.read_parquet(tmp_path / "cl.parquet")
    meta = read_parquet_metadata(tmp_path / "cl.parquet")
    assert meta["affinity"] == "sparse_knn" and meta["affinity_nnz"] <= 2 * 300 * 10 < 300 * 300 / 4
    assert adjusted_rand_score(truth, cl["cluster"]) > 0.9


def test_import_scores_then_select(world):
    root, ids, raw, _, base = world
    ext = pd.DataFrame({"id": ids[::-1], "my_clip": raw["clip"][::-1], "rating": np.r_[np.nan, np.arange(N - 1.0)]})
    ext.to_csv(root / "ext.csv", index=False)
    import_scores(path=str(root / "ext.csv"), out_dir=str(root / "imported"), columns={"clip": "my_clip", "gpt": "rating"},
                  id_column="id", manifest=base["manifest"])
    gpt = pd.read_parquet(root / "imported" / "gpt.parquet")
    meta = read_parquet_metadata(root / "imported" / "gpt.parquet")
    assert gpt["sample_id"].tolist() == ids and meta["indicator"] == "gpt" and len(meta["checksum"]) == 64
    assert gpt["status"].iloc[-1] == "skipped" and gpt["status"].iloc[0] == "ok"
    select(method="gpt_only", manifest=base["manifest"], scores=[str(root / "imported" / "gpt.parquet")],
           clusters=base["clusters"], out_dir=str(root / "g"), n_select=5, quota_m=50)
    assert read(root / "g")[0]["sample_id"].tolist() == ["id0000", "id0001", "id0002", "id0003", "id0004"]
    with pytest.raises(ValueError, match="lacks column"):
        import_scores(path=str(root / "ext.csv"), out_dir=str(root / "bad"), columns={"clip": "nope"}, id_column="id",
                      manifest=base["manifest"])


def test_import_scores_marks_absent_examples_failed_below_the_threshold(world):
    root, ids, raw, _, base = world
    # two manifest examples absent, one present with an empty value, one row for an example outside the manifest
    kept = ids[2:]
    ext = pd.DataFrame({"id": kept + ["quarantined"], "r": np.r_[np.nan, raw["reward"][3:], 0.0]})
    ext.to_parquet(root / "ext.parquet")
    import_scores(path=str(root / "ext.parquet"), out_dir=str(root / "imp"), columns={"reward": "r"}, id_column="id",
                  manifest=base["manifest"], max_missing_fraction=0.01)
    assert sorted(p.name for p in (root / "imp").iterdir()) == ["reward.parquet"]  # only the mapped indicator
    out = pd.read_parquet(root / "imp" / "reward.parquet")
    assert out["sample_id"].tolist() == ids
    assert out["status"].tolist()[:4] == ["failed", "failed", "skipped", "ok"]
    assert out["score"].iloc[:3].isna().all() and (out["status"] == "ok").sum() == N - 3


def test_import_scores_stops_above_the_threshold_listing_absent_ids(world):
    root, ids, raw, _, base = world
    pd.DataFrame({"id": ids[10:], "c": raw["clip"][10:]}).to_csv(root / "ext.csv", index=False)
    with pytest.raises(ValueError, match=r"no row for 10 of the 300 .*max_missing_fraction=0.01.*id0000, id0001"):
        import_scores(path=str(root / "ext.csv"), out_dir=str(root / "imp"), columns={"clip": "c"}, id_column="id",
                      manifest=base["manifest"], max_missing_fraction=0.01)
    assert not (root / "imp").exists()


def test_import_scores_without_columns_is_a_usage_error_not_a_type_error(world):
    from vlselect.cli import main

    root, ids, raw, _, base = world
    pd.DataFrame({"sample_id": ids, "c": raw["clip"]}).to_csv(root / "ext.csv", index=False)
    args = ["import-scores", "--path", str(root / "ext.csv"), "--manifest", base["manifest"], "--out-dir",
            str(root / "imp"), "--params"]
    with pytest.raises(SystemExit, match="missing --columns"):
        main(args + ["{}"])
    with pytest.raises(SystemExit, match="columns.*quality"):
        main(args + ['{"columns": {"quality": "c"}}'])
    assert not (root / "imp").exists()


def test_import_embeddings_follow_the_manifest_and_need_every_example(world):
    root, ids, _, _, base = world
    x = np.arange(N * 2, dtype=np.float32).reshape(N, 2)
    np.save(root / "emb.npy", x[::-1])
    pd.DataFrame({"sample_id": ids[::-1]}).to_csv(root / "emb_ids.csv", index=False)
    import_embeddings(image=str(root / "emb.npy"), ids=str(root / "emb_ids.csv"), manifest=base["manifest"],
                      out_dir=str(root / "prov"))
    assert np.array_equal(np.load(root / "prov" / "image.npy"), x)
    assert pd.read_parquet(root / "prov" / "ids.parquet")["sample_id"].tolist() == ids
    np.save(root / "short.npy", x[1:])
    pd.DataFrame({"sample_id": ids[1:]}).to_csv(root / "short_ids.csv", index=False)
    with pytest.raises(ValueError, match="no embedding for 1 of the 300 .*id0000"):
        import_embeddings(image=str(root / "short.npy"), ids=str(root / "short_ids.csv"), manifest=base["manifest"],
                          out_dir=str(root / "prov2"))


def test_without_clusters_a_diversity_method_ranks_by_score_alone(world):
    root, ids, _, _, base = world
    # the best examples all sit in the first (largest) cluster
    clip = score_file(root / "ordered" / "clip.parquet", ids, -np.arange(N, dtype=float), "clip")
    select(method="clip_only", manifest=base["manifest"], scores=[clip], out_dir=str(root / "nc"), n_select=20)
    picked = read(root / "nc")[0]
    assert picked["sample_id"].tolist() == ids[:20] and picked["cluster"].isna().all()
    # with clusters the quotas take the third cluster's best too (ids from 250 on)
    select(method="clip_only", manifest=base["manifest"], scores=[clip], clusters=base["clusters"],
           out_dir=str(root / "q"), n_select=20, quota_m=22)
    assert "id0250" in read(root / "q")[0]["sample_id"].tolist()
