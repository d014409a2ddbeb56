"""Balanced k-means subsets and the subset labels collected from evaluation files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from vlselect.io import read_parquet_metadata, write_json, write_npy, write_parquet
from vlselect.labels import collect_labels
from vlselect.subsets import balance_clusters, make_subsets


def write_features(root, x):
    ids = [f"s{i:05d}" for i in range(len(x))]
    write_npy(x.astype(np.float32), root / "image.npy")
    write_parquet(pd.DataFrame({"sample_id": ids}), root / "ids.parquet")
    write_parquet(pd.DataFrame({"sample_id": ids, "answer": "a"}), root / "manifest.parquet")
    return ids


def blobs(n, dim, sizes, seed=0):
    """Gaussian blobs of very different sizes, so raw k-means clusters are far from balanced."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * 3
    parts = [centres[k] + rng.normal(size=(s, dim)) for k, s in enumerate(sizes)]
    x = np.concatenate(parts)[:n]
    return x


@pytest.mark.parametrize("sizes,n_subsets", [([120, 40, 30, 10, 3], 6), ([50] * 4, 4)])
def test_subsets_equal_disjoint_and_complete(tmp_path, sizes, n_subsets):
    x = blobs(sum(sizes), 8, sizes)
    ids = write_features(tmp_path, x)
    out, dropped_path = tmp_path / "subsets.parquet", tmp_path / "dropped.parquet"
    make_subsets(features_dir=str(tmp_path), out=str(out), out_dropped=str(dropped_path), n_subsets=n_subsets, seed=3)
    sub, dropped = pd.read_parquet(out), pd.read_parquet(dropped_path)
    target = len(ids) // n_subsets
    counts = sub["subset"].value_counts()
    assert sorted(counts.index) == list(range(n_subsets))
    assert (counts == target).all()
    assert not sub["sample_id"].duplicated().any()
    assert set(sub["sample_id"]).isdisjoint(dropped["sample_id"])
    assert sorted(sub["sample_id"].tolist() + dropped["sample_id"].tolist()) == ids
    assert len(dropped) == len(ids) - n_subsets * target
    assert set(dropped["reason"]) <= {"balance_trim"}
    assert read_parquet_metadata(out)["subset_size"] == target

    # Deterministic: a second run writes the same assignment.
    make_subsets(features_dir=str(tmp_path), out=str(tmp_path / "again.parquet"),
                 out_dropped=str(tmp_path / "again_dropped.parquet"), n_subsets=n_subsets, seed=3)
    pd.testing.assert_frame_equal(sub, pd.read_parquet(tmp_path / "again.parquet"))


def test_balance_moves_cheapest_example_and_trims_farthest():
    # Cluster 0 has 4 members, cluster 1 has 1, cluster 2 has 2; target 2 (7 examples, 3 clusters).
    dist = np.array([
        [0.1, 5.0, 9.0],   # 0: in 0, moving to 1 costs 4.9
        [0.2, 0.9, 9.0],   # 1: in 0, moving to 1 costs 0.7  <- cheapest move
        [0.3, 3.0, 9.0],   # 2: in 0, costs 2.7
        [0.4, 2.0, 9.0],   # 3: in 0, costs 1.6
        [9.0, 0.1, 9.0],   # 4: in 1
        [9.0, 9.0, 0.5],   # 5: in 2
        [9.0, 9.0, 0.6],   # 6: in 2
    ])
    assign = np.array([0, 0, 0, 0, 1, 2, 2])
    new, dropped = balance_clusters(dist, assign, target=2)
    assert new.tolist() == [0, 1, 0, 0, 1, 2, 2]
    # Cluster 0 keeps 3 and must trim one: the farthest from its centroid (example 3, distance 0.4).
    assert np.flatnonzero(dropped).tolist() == [3]


def test_make_subsets_rejects_too_few_examples(tmp_path):
    write_features(tmp_path, np.random.default_rng(0).normal(size=(5, 4)))
    with pytest.raises(ValueError, match="cannot make 30 subsets from 5"):
        make_subsets(features_dir=str(tmp_path), out=str(tmp_path / "s.parquet"), out_dropped=str(tmp_path / "d.parquet"))


def write_score(path, ids, values, name):
    write_parquet(pd.DataFrame({"sample_id": ids, "score": values, "status": "ok"}), path, metadata={"indicator": name})
    return str(path)


def test_indicator_space_subsets_span_the_indicators(tmp_path):
    """Image clusters that say nothing about quality: image subsets share one indicator mean, indicator subsets not."""
    rng = np.random.default_rng(0)
    ids = write_features(tmp_path, blobs(240, 8, [60] * 4))
    quality = rng.normal(size=240)  # independent of the images
    scores = [write_score(tmp_path / "clip.parquet", ids, quality + 0.3 * rng.normal(size=240), "clip"),
              write_score(tmp_path / "reward.parquet", ids, 5.0 * quality, "reward")]
    spread = {}
    for space in ("image", "indicators"):
        out = tmp_path / f"{space}.parquet"
        if space == "indicators":  # the embeddings are not read: the examples come from the manifest
            (tmp_path / "image.npy").unlink()
            source = dict(manifest=str(tmp_path / "manifest.parquet"), scores=scores)
        else:
            source = dict(features_dir=str(tmp_path))
        make_subsets(**source, out=str(out), out_dropped=str(tmp_path / f"{space}_d.parquet"), n_subsets=6, seed=0,
                     space=space)
        sub = pd.read_parquet(out)
        assert (sub["subset"].value_counts() == 40).all()
        assert read_parquet_metadata(out)["space"] == space
        means = pd.Series(quality, index=ids).loc[sub["sample_id"]].groupby(sub["subset"].to_numpy()).mean()
        spread[space] = means.std()
    assert spread["image"] < 0.3 and spread["indicators"] > 0.8, spread


def test_indicator_space_needs_a_usable_indicator(tmp_path):
    ids = write_features(tmp_path, blobs(40, 4, [20, 20]))
    kwargs = dict(manifest=str(tmp_path / "manifest.parquet"), out=str(tmp_path / "s.parquet"),
                  out_dropped=str(tmp_path / "d.parquet"), n_subsets=2, space="indicators")
    with pytest.raises(ValueError, match="no score files"):
        make_subsets(**kwargs)
    skipped = tmp_path / "gpt.parquet"
    write_parquet(pd.DataFrame({"sample_id": ids, "score": np.nan, "status": "skipped"}), skipped)
    with pytest.raises(ValueError, match="subset_space: image"):
        make_subsets(**kwargs, scores=[str(skipped)])
    with pytest.raises(ValueError, match="unknown labels.subset_space"):
        make_subsets(**(kwargs | {"space": "text"}))
    with pytest.raises(ValueError, match="need manifest"):
        make_subsets(**(kwargs | {"manifest": None}), scores=[str(skipped)])
    assert not (tmp_path / "s.parquet").exists()


def eval_json(path, accs):
    write_json({"suites": {s: {"accuracy": a, "n": 10, "items": []} for s, a in accs.items()},
                "mean": float(np.mean(list(accs.values())))}, path)


def test_collect_labels_mean_of_listed_suites(tmp_path):
    eval_json(tmp_path / "subset_10.json", {"toy-vqa": 0.5, "toy-mc": 0.3, "toy-count": 0.9})
    eval_json(tmp_path / "subset_2.json", {"toy-vqa": 0.2, "toy-mc": 0.4, "toy-count": 0.0})
    out = tmp_path / "labels.parquet"
    collect_labels(evals=[str(tmp_path / "subset_10.json"), str(tmp_path / "subset_2.json")], out=str(out),
                   suites=["toy-vqa", "toy-mc"])
    df = pd.read_parquet(out)
    assert df["subset"].tolist() == [2, 10]
    assert list(df.columns) == ["subset", "label", "seed_sd", "n_seeds", "acc_toy-vqa", "acc_toy-mc"]
    np.testing.assert_allclose(df["label"], [0.3, 0.4])
    assert df["n_seeds"].tolist() == [1, 1] and df["seed_sd"].isna().all()

    with pytest.raises(ValueError, match="toy-spatial"):
        collect_labels(evals=[str(tmp_path / "subset_2.json")], out=str(out), suites=["toy-spatial"])
    with pytest.raises(ValueError, match="subset_<k>.json"):
        eval_json(tmp_path / "other.json", {"toy-vqa": 0.5})
        collect_labels(evals=[str(tmp_path / "other.json")], out=str(out))


def test_collect_labels_with_seeds_reports_their_spread(tmp_path):
    # two seeds of one subset, as evaluate writes a dir of seeds: suite accuracy = mean over seeds
    seeds = {"0": {"toy-vqa": 0.5, "toy-mc": 0.1, "toy-count": 1.0}, "1": {"toy-vqa": 0.3, "toy-mc": 0.1, "toy-count": 0.0}}
    write_json({"suites": {s: {"accuracy": float(np.mean([a[s] for a in seeds.values()])), "n": 10} for s in seeds["0"]},
                "seeds": {k: {"suites": {s: {"accuracy": v, "n": 10, "items": []} for s, v in a.items()}}
                          for k, a in seeds.items()}}, tmp_path / "subset_0.json")
    out = tmp_path / "labels.parquet"
    collect_labels(evals=[str(tmp_path / "subset_0.json")], out=str(out), suites=["toy-vqa", "toy-mc"])
    row = pd.read_parquet(out).iloc[0]
    assert row["label"] == pytest.approx(0.25) and row["n_seeds"] == 2
    # the spread of the label over the listed suites (0.3 vs 0.2), not of all suites (0.53 vs 0.13)
    assert row["seed_sd"] == pytest.approx(np.std([0.3, 0.2], ddof=1))


def test_export_subset_writes_only_that_subset(tmp_path):
    from vlselect.dataset import export_dataset

    ids = [f"s{i}" for i in range(6)]
    for sid in ids:
        (tmp_path / f"{sid}.png").write_bytes(sid.encode())  # export links bytes; it never decodes them
    write_parquet(pd.DataFrame({"sample_id": ids, "image_path": [str(tmp_path / f"{s}.png") for s in ids],
                                "image_sha256": "0", "instruction": "Describe this image in detail.",
                                "answer": [f"answer {s}" for s in ids], "source": "toy"}), tmp_path / "m.parquet")
    write_parquet(pd.DataFrame({"sample_id": ids, "subset": [0, 1, 0, 1, 2, 2]}), tmp_path / "subsets.parquet")
    export_dataset(manifest=str(tmp_path / "m.parquet"), sample_ids_file=str(tmp_path / "subsets.parquet"), subset=1,
                   out_dir=str(tmp_path / "subset_1"))
    doc = json.loads((tmp_path / "subset_1" / "filter_cap.json").read_text())
    assert [a["caption"] for a in doc["annotations"]] == ["answer s1", "answer s3"]

    # one job writes every subset, each into its own folder, in the layout asked for
    from vlselect.dataset import export_subsets

    outs = [str(tmp_path / "all" / f"subset_{k}") for k in range(3)]
    assert export_subsets(manifest=str(tmp_path / "m.parquet"), subsets=str(tmp_path / "subsets.parquet"),
                          out_dirs=outs, format="llava") == 6
    assert [[t["id"] for t in json.loads((tmp_path / "all" / f"subset_{k}" / "llava.json").read_text())]
            for k in range(3)] == [["s0", "s2"], ["s1", "s3"], ["s4", "s5"]]
    with pytest.raises(ValueError, match="holds 3 subsets but 2 output folders"):
        export_subsets(manifest=str(tmp_path / "m.parquet"), subsets=str(tmp_path / "subsets.parquet"),
                       out_dirs=outs[:2])
