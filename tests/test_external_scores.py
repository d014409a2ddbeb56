"""Bring-your-own scores through the workflow: a cc_sbu_align dataset, a table of published scores (and optionally
image embeddings), no CLIP or reward model configured, asked for the selections' exports only."""

import json

import numpy as np
import pandas as pd
import pytest

import badinputs as bad
from workflow_helpers import snakemake, write_config

N = 240
ABSENT = 3  # examples the published file does not score: below max_missing_fraction (5% of 240 = 12)


def byo_workdir(tmp_path, columns, embeddings):
    """Write the dataset, the score file (a column per indicator in ``columns``), optionally the embeddings, and a
    config that selects 200 with every method that needs neither labels nor CLIP; return (workdir, methods)."""
    bad.build_broken_cc_sbu_align(tmp_path / "data", tmp_path / "outside", n=N, n_broken=0)
    ids = [f"ex_{i:05d}" for i in range(N)]
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"id": ids, **{f"pub_{k}": rng.normal(size=N) for k in columns}}).iloc[ABSENT:]
    scores.to_csv(tmp_path / "published.csv", index=False)
    external = {"path": str(tmp_path / "published.csv"), "id_column": "id",
                "columns": {k: f"pub_{k}" for k in columns}}
    if embeddings:
        # two well separated groups of images, rows in another order than the dataset's
        x = rng.normal(size=(N, 8)) + np.repeat([[5.0], [-5.0]], N // 2, axis=0)
        np.save(tmp_path / "emb.npy", x[::-1])
        pd.DataFrame({"sample_id": ids[::-1]}).to_parquet(tmp_path / "emb_ids.parquet")
        external["embeddings"] = {"image": str(tmp_path / "emb.npy"), "ids": str(tmp_path / "emb_ids.parquet")}
    methods = ["weights", "random", "full", "no_cluster"] + [f"{k}_only" for k in columns]
    config = {
        "results": "results",
        "dataset": {"format": "cc_sbu_align", "root": str(tmp_path / "data")},
        "models": {"clip": {"pretrained": None}, "vlm": {"path": str(tmp_path / "vlm-not-needed-for-picks")}},
        "evaluate": {"suite_root": str(tmp_path / "suites-not-needed-for-picks")},
        "judge": {"backend": "none"},
        "labels": {"subset_space": "indicators"},
        "selection": {"n_select": 200, "quota_m": 209, "n_clusters": 2, "methods": methods,
                      "clusters": "provided" if embeddings else "none", "external_scores": external},
        "final": {"methods": ["random", "full"]},
    }
    write_config(tmp_path, config)
    return tmp_path, methods


def targets(methods):
    return [f"results/selection/{m}/dataset" for m in methods]


def dry_run_jobs(workdir, methods):
    """Jobs per rule of a dry run for the exports, and the outputs the import_scores job declares."""
    out = snakemake(workdir, "-n", *targets(methods)).stdout
    jobs = {}
    for line in out.splitlines():
        if line.startswith("rule ") and line.endswith(":"):
            jobs[line[5:-1]] = jobs.get(line[5:-1], 0) + 1
    block = out[out.index("rule import_scores:"):].split("\n\n")[0]
    outputs = next(line for line in block.splitlines() if line.strip().startswith("output:"))
    return jobs, sorted(p.strip().rsplit("/", 1)[-1] for p in outputs.split(":", 1)[1].split(","))


@pytest.mark.parametrize("embeddings", [False, True], ids=["no_embeddings", "embeddings"])
@pytest.mark.parametrize("columns", [["gpt"], ["clip", "length"], ["clip", "reward", "length", "gpt"]],
                         ids=["1col", "2col", "4col"])
def test_dag_imports_exactly_the_mapped_indicators_and_never_runs_clip(tmp_path, columns, embeddings):
    workdir, methods = byo_workdir(tmp_path, columns, embeddings)
    jobs, outputs = dry_run_jobs(workdir, methods)
    assert outputs == sorted(f"{k}.parquet" for k in columns)
    assert jobs["import_scores"] == 1 and jobs["select"] == jobs["export_selection"] == len(methods)
    # no model runs: no scoring, no embedding, no PCA
    assert not {"score_model_shard", "score_text_shard", "gather_scores", "embed_shard", "gather_features",
                "fit_pca"} & set(jobs), jobs
    # clusters come from the provided embeddings, or there are none
    assert jobs.get("import_embeddings", 0) == jobs.get("spectral_clusters", 0) == int(embeddings)


def test_a_method_needing_an_indicator_not_provided_is_refused_when_the_dag_is_built(tmp_path):
    workdir, methods = byo_workdir(tmp_path, ["reward"], embeddings=False)
    config_path = workdir / "config.yaml"
    config_path.write_text(config_path.read_text().replace("- reward_only", "- reward_only\n  - clip_only"))
    result = snakemake(workdir, "-n", check=False)
    assert result.returncode != 0
    assert "method 'clip_only' needs the indicator 'clip'" in result.stdout + result.stderr


def test_provided_clusters_without_embeddings_are_refused(tmp_path):
    workdir, _ = byo_workdir(tmp_path, ["reward"], embeddings=False)
    config_path = workdir / "config.yaml"
    config_path.write_text(config_path.read_text().replace("clusters: none", "clusters: provided"))
    result = snakemake(workdir, "-n", check=False)
    assert result.returncode != 0 and "external_scores.embeddings is not set" in result.stdout + result.stderr


@pytest.mark.parametrize("columns,embeddings", [(["gpt"], False), (["clip", "reward", "length", "gpt"], True)],
                         ids=["1col_no_embeddings", "4col_embeddings"])
def test_published_scores_to_200_picks_and_an_export(tmp_path, columns, embeddings):
    workdir, methods = byo_workdir(tmp_path, columns, embeddings)
    snakemake(workdir, "--cores", "2", *targets(methods))
    results = workdir / "results"
    assert sorted(p.name for p in (results / "scores").glob("*.parquet")) == sorted(f"{k}.parquet" for k in columns)
    assert not (results / "features" / "image.npy").exists()  # no CLIP embeddings were computed
    absent = [f"ex_{i:05d}" for i in range(ABSENT)]
    first = pd.read_parquet(results / "scores" / f"{columns[0]}.parquet").set_index("sample_id")
    assert (first.loc[absent, "status"] == "failed").all() and first.loc[absent, "score"].isna().all()
    for method in methods:
        exported = json.loads((results / "selection" / method / "dataset" / "filter_cap.json").read_text())
        assert len(exported["annotations"]) == (N if method == "full" else 200), method
    picked = pd.read_parquet(results / "selection" / f"{columns[0]}_only" / "selected.parquet")
    assert not set(absent) & set(picked["sample_id"])  # an example without a score is never ranked in
    # with embeddings both groups of images get their quota; without, no clusters at all
    clusters = picked["cluster"]
    assert clusters.nunique() == 2 if embeddings else clusters.isna().all()


def test_weights_on_no_imported_indicator_and_clip_needs_are_named_at_dag_time():
    from vlselect.config import ConfigError, check_external_scores, clip_embedding_uses, validate_config

    config = validate_config({"selection": {"methods": ["weights", "random"], "weights": {"clip": 1.0, "gpt": 0.0},
                                            "external_scores": {"path": "s.csv", "columns": {"gpt": "g"}}}})
    with pytest.raises(ConfigError, match="nonzero selection.weights entry for one of the imported indicators"):
        check_external_scores(config)
    # imported scores still need CLIP for image clusters and the selector (final.methods has it by default)
    assert clip_embedding_uses(config) == ["selection.clusters: image", "the selector's features"]
    config["selection"]["clusters"] = "none"
    config["final"]["methods"] = ["random"]
    assert clip_embedding_uses(config) == []
