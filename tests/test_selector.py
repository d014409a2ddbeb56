"""The learned selector: cross-validation report, determinism, and recovering a known quality signal."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from vlselect.io import read_parquet_metadata, write_parquet
from vlselect.indicators import percentile, percentile_grid, rank_scores
from vlselect.selector import SIMPLEST_FIRST, choose_candidate, predict, train_selector

torch.set_num_threads(1)

N, N_SUBSETS, SUBSET_SIZE = 640, 20, 30  # 600 examples in subsets, 40 outside (like balance-trimmed ones)


def score_file(path, ids, values, indicator, status=None):
    status = status if status is not None else np.where(np.isnan(values), "failed", "ok")
    write_parquet(pd.DataFrame({"sample_id": ids, "score": values, "status": status}), path,
                  metadata={"indicator": indicator, "model": "synthetic"})
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Quality is a known linear function of the clip indicator; reward is noise; gpt was never scored.

    Subsets group examples with similar latent quality (as k-means on features does with sources), so
    subset labels differ and carry signal about the per-example indicator.
    """
    root = tmp_path_factory.mktemp("selector")
    rng = np.random.default_rng(0)
    ids = [f"x{i:04d}" for i in range(N)]
    latent = rng.normal(size=N)
    clip = 2.0 * latent + 0.3 * rng.normal(size=N) + 25.0
    clip[5] = np.nan  # one failed score must not break anything
    reward = rng.normal(size=N)
    quality = latent  # the truth the labels come from
    pcs = rng.normal(size=(N, 4))
    write_parquet(pd.DataFrame({"sample_id": ids, "img_pc0": pcs[:, 0], "img_pc1": pcs[:, 1],
                                "txt_pc0": pcs[:, 2], "txt_pc1": pcs[:, 3]}), root / "pca.parquet")
    scores = [score_file(root / "clip.parquet", ids, clip, "clip"),
              score_file(root / "reward.parquet", ids, reward, "reward"),
              score_file(root / "gpt.parquet", ids, np.full(N, np.nan), "gpt", status=np.full(N, "skipped"))]
    order = np.argsort(latent[: N_SUBSETS * SUBSET_SIZE] + 0.5 * rng.normal(size=N_SUBSETS * SUBSET_SIZE))
    subset = np.empty(N_SUBSETS * SUBSET_SIZE, dtype=np.int64)
    subset[order] = np.arange(N_SUBSETS * SUBSET_SIZE) // SUBSET_SIZE
    write_parquet(pd.DataFrame({"sample_id": ids[: N_SUBSETS * SUBSET_SIZE], "subset": subset}),
                  root / "subsets.parquet")
    labels = [quality[: N_SUBSETS * SUBSET_SIZE][subset == k].mean() * 0.1 + 0.5 for k in range(N_SUBSETS)]
    write_parquet(pd.DataFrame({"subset": np.arange(N_SUBSETS), "label": labels}), root / "labels.parquet")
    common = dict(scores=scores, pca=str(root / "pca.parquet"), subsets=str(root / "subsets.parquet"),
                  labels=str(root / "labels.parquet"))
    return root, ids, quality, common


def test_choice_prefers_the_simplest_shape_within_one_standard_error():
    cv = {"linear/indicators": {"mse": 0.42, "se": 0.05}, "linear/all": {"mse": 0.60, "se": 0.05},
          "mlp/indicators": {"mse": 0.39, "se": 0.04}, "mlp/all": {"mse": 0.45, "se": 0.06}}
    every = [tuple(k.split("/")) for k in cv]
    assert choose_candidate(cv, every) == ("linear", "indicators")  # 0.42 <= 0.39 + 0.04
    cv["linear/indicators"]["mse"] = 0.44  # now beyond the bound: the next simplest within it is mlp/indicators
    assert choose_candidate(cv, every) == ("mlp", "indicators")
    # only the shapes allowed by the config compete
    assert choose_candidate(cv, [("linear", "all"), ("mlp", "all")]) == ("mlp", "all")
    assert choose_candidate(cv, [("linear", "all")]) == ("linear", "all")


def test_report_fields_auto_choice_and_skipped_indicator(world):
    root, ids, quality, common = world
    out = root / "auto"
    train_selector(**common, out_dir=str(out), arch="auto", inputs="auto", epochs=80, lr=0.02)
    report = json.loads((out / "report.json").read_text())
    candidates = [f"{a}/{s}" for a in ("linear", "mlp", "attention") for s in ("all", "indicators")]
    assert sorted(report["cv"]) == sorted(candidates + ["constant"])
    for name in report["cv"]:
        assert np.isfinite(report["cv"][name]["mse"]) and len(report["cv"][name]["fold_mse"]) == 5
    lowest = min(candidates, key=lambda k: report["cv"][k]["mse"])
    assert report["lowest_cv"] == lowest
    best = f"{report['arch']}/{report['inputs']}"
    # the choice is the simplest shape within one standard error of the lowest CV error
    assert report["cv"][best]["mse"] <= report["cv"][lowest]["mse"] + report["cv"][lowest]["se"]
    simpler = [f"{a}/{s}" for a, s in SIMPLEST_FIRST][:[f"{a}/{s}" for a, s in SIMPLEST_FIRST].index(best)]
    assert all(report["cv"][k]["mse"] > report["cv"][lowest]["mse"] + report["cv"][lowest]["se"] for k in simpler)
    assert report["skipped_indicators"] == ["gpt"]
    assert report["features"] == ["clip", "reward", "img_pc0", "img_pc1", "txt_pc0", "txt_pc1"]
    # The signal is strong: the chosen model must beat predicting the mean label.
    assert report["cv"][best]["mse"] < 0.5 * report["cv"]["constant"]["mse"]
    spec = json.loads((out / "model.json").read_text())
    assert spec["arch"] == report["arch"] and spec["inputs"] == report["inputs"]
    assert spec["indicators"] == ["clip", "reward"] and len(spec["feature_stats"]["mean"]) == 6
    assert spec["in_dim"] == (6 if spec["inputs"] == "all" else 2)


def test_indicators_only_selector_ignores_the_features(world):
    """inputs=indicators: the model sees clip and reward only, so scrambling the PCA features changes nothing."""
    root, ids, quality, common = world
    out = root / "indicators_only"
    train_selector(**common, out_dir=str(out), arch="linear", inputs="indicators", epochs=80, lr=0.02)
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["cv"]) == ["attention/indicators", "constant", "linear/indicators", "mlp/indicators"]
    assert json.loads((out / "model.json").read_text())["in_dim"] == 2
    predict(model_dir=str(out), scores=common["scores"], pca=common["pca"], out=str(out / "a.parquet"))
    pca = pd.read_parquet(common["pca"])
    cols = [c for c in pca.columns if c != "sample_id"]
    pca[cols] = pca[cols].to_numpy()[::-1]
    write_parquet(pca, out / "scrambled.parquet")
    predict(model_dir=str(out), scores=common["scores"], pca=str(out / "scrambled.parquet"), out=str(out / "b.parquet"))
    a, b = pd.read_parquet(out / "a.parquet"), pd.read_parquet(out / "b.parquet")
    assert np.corrcoef(a["quality"], quality)[0, 1] > 0.6
    np.testing.assert_array_equal(a["quality"].to_numpy(), b["quality"].to_numpy())


@pytest.mark.parametrize("arch", ["linear", "mlp", "attention"])
def test_predictions_cover_everyone_and_track_quality(world, arch):
    root, ids, quality, common = world
    out = root / arch
    train_selector(**common, out_dir=str(out), arch=arch, epochs=80, lr=0.02)
    predict(model_dir=str(out), scores=common["scores"], pca=common["pca"], out=str(out / "pred.parquet"))
    pred = pd.read_parquet(out / "pred.parquet")
    assert pred["sample_id"].tolist() == ids  # including the 40 examples in no subset
    assert pred["quality"].notna().all()
    outside = slice(N_SUBSETS * SUBSET_SIZE, N)
    assert np.corrcoef(pred["quality"], quality)[0, 1] > 0.6
    assert np.corrcoef(pred["quality"][outside], quality[outside])[0, 1] > 0.6


def test_training_is_deterministic(world):
    root, _, _, common = world
    for name in ("det_a", "det_b"):
        train_selector(**common, out_dir=str(root / name), arch="attention", epochs=30)
    a, b = (root / "det_a" / "model.safetensors").read_bytes(), (root / "det_b" / "model.safetensors").read_bytes()
    assert a == b
    ra, rb = (json.loads((root / n / "report.json").read_text())["cv"] for n in ("det_a", "det_b"))
    assert ra == rb


def test_predict_refuses_missing_trained_indicator(world):
    root, ids, _, common = world
    out = root / "missing"
    train_selector(**common, out_dir=str(out), arch="linear", epochs=10)
    with pytest.raises(ValueError, match="clip"):
        predict(model_dir=str(out), scores=common["scores"][1:], pca=common["pca"], out=str(out / "p.parquet"))


def test_unknown_arch_is_rejected(world):
    root, _, _, common = world
    with pytest.raises(ValueError, match="unknown selector arch 'transformer'"):
        train_selector(**common, out_dir=str(root / "bad"), arch="transformer")


@pytest.mark.parametrize("monotone", [True, False])
def test_monotone_linear_selector_never_weighs_an_indicator_negatively(world, tmp_path, monotone):
    """Labels that fall as CLIP rises: a free linear fit weighs CLIP negatively, a monotone one holds it at 0."""
    root, _, _, common = world
    labels = pd.read_parquet(common["labels"])
    labels["label"] = 1.0 - labels["label"]
    write_parquet(labels, tmp_path / "labels.parquet")
    out = tmp_path / "sel"
    train_selector(**{**common, "labels": str(tmp_path / "labels.parquet")}, out_dir=str(out), arch="linear",
                   inputs="indicators", epochs=200, seed=0, monotone=monotone)
    report = json.loads((out / "report.json").read_text())
    assert report["monotone"] is monotone and set(report["linear_weights"]) == {"clip", "reward"}
    if monotone:
        assert min(report["linear_weights"].values()) >= 0.0
        assert report["linear_weights"]["clip"] < 0.05
    else:
        assert report["linear_weights"]["clip"] < -0.3


def test_percentile_ranks_ties_equally_and_keeps_unscored_missing():
    values = pd.Series([3.0, 1.0, 2.0, 2.0, np.nan, 1000.0], name="length")
    grid = percentile_grid(values, n=101)
    ranks = percentile(values, grid)
    assert ranks.name == "length" and np.isnan(ranks[4])
    assert ranks[2] == ranks[3]  # equal lengths, equal ranks
    assert ranks[1] < ranks[2] < ranks[0] < ranks[5] <= 1.0 and ranks[1] >= 0.0
    # values outside the grid's range clip to its ends: a new extreme counts no more than the old one
    assert percentile(pd.Series([1e9, -1e9]), grid).tolist() == [1.0, 0.0]
    normal = rank_scores(values, grid)
    assert normal[1] < normal[2] == normal[3] < normal[0] < normal[5] < 3.0 and np.isnan(normal[4])


@pytest.mark.parametrize("normalise", ["rank", "zscore"])
def test_one_extreme_indicator_value_carries_a_pick_only_under_zscores(world, tmp_path, normalise):
    """A reward far beyond every other (a loop's length, say) tops a z-scored selector's ranking, not a ranked one.

    Here reward tracks quality, more loosely than CLIP, and the worst example outside the subsets gets a reward
    some 200 standard deviations out. Under ranks that reward counts as the highest reward and no more, so
    its poor CLIP keeps it out of the top quarter; under z-scores the reward weight lifts it to the top.
    """
    root, ids, quality, common = world
    reward = quality + np.random.default_rng(1).normal(size=N)
    outside = N_SUBSETS * SUBSET_SIZE  # in no subset, as most loops are outside any one subset's mean
    worst = outside + int(np.argmin(quality[outside:]))
    reward[worst] = 300.0
    scores = [common["scores"][0], score_file(tmp_path / "reward.parquet", ids, reward, "reward")]
    out = tmp_path / normalise
    train_selector(**{**common, "scores": scores}, out_dir=str(out), arch="linear", inputs="indicators", epochs=200,
                   lr=0.02, normalise=normalise)
    report = json.loads((out / "report.json").read_text())
    assert report["normalise"] == normalise and report["linear_weights"]["reward"] > 0.0
    predict(model_dir=str(out), scores=scores, pca=common["pca"], out=str(out / "pred.parquet"))
    # the predictions carry the linear weights on the indicators, which selection's "why" column reads
    assert read_parquet_metadata(out / "pred.parquet")["linear_weights"] == pytest.approx(report["linear_weights"])
    rank = pd.read_parquet(out / "pred.parquet")["quality"].rank(ascending=False)[worst]
    spec = json.loads((out / "model.json").read_text())
    if normalise == "rank":
        assert set(spec["feature_stats"]["percentile_grids"]) == {"clip", "reward"}
        assert rank > N / 4
    else:
        assert spec["feature_stats"]["percentile_grids"] is None
        assert rank == 1
