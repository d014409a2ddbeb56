"""The whole workflow on the tiny toy world: every stage runs, outputs follow their contracts, and reruns are incremental."""

import json

import pandas as pd
import pytest
import yaml

from vlselect.dataset import import_dataset
from workflow_helpers import planned_jobs, tiny_config, write_config

pytestmark = pytest.mark.slow

EXPENSIVE = {"toy_world", "train_toy_clip", "train_toy_reward", "train_toy_vlm", "import_dataset", "score_model_shard", "score_text_shard",
             "gather_scores", "embed_shard", "gather_features", "fit_pca", "make_subsets", "export_subsets",
             "finetune_subset", "evaluate_subset", "collect_labels", "train_selector", "predict_quality"}


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_every_stage_wrote_its_outputs(run):
    workdir, config = run
    r = workdir / "results"
    manifest = pd.read_parquet(r / "manifest.parquet")
    assert len(manifest) + len(pd.read_parquet(r / "quarantine.parquet")) == config["toy"]["n_examples"]
    for indicator in ("clip", "reward", "length"):
        scores = pd.read_parquet(r / "scores" / f"{indicator}.parquet")
        assert list(scores["sample_id"]) == list(manifest["sample_id"])
        assert (scores["status"] == "ok").all() and scores["score"].notna().all()
    gpt = pd.read_parquet(r / "scores" / "gpt.parquet")
    assert (gpt["status"] == "skipped").all() and gpt["score"].isna().all()
    labels = pd.read_parquet(r / "labels" / "labels.parquet")
    assert sorted(labels["subset"]) == list(range(config["labels"]["n_subsets"]))
    assert labels["label"].between(0, 1).all()
    # each label is the mean of labels.seeds fine-tunes, each kept with its own answers
    assert (labels["n_seeds"] == config["labels"]["seeds"]).all() and labels["seed_sd"].notna().all()
    evaluated = json.loads((r / "labels" / "eval" / "subset_0.json").read_text())
    assert sorted(evaluated["seeds"]) == [str(config["finetune"].get("seed", 0) + i) for i in range(config["labels"]["seeds"])]
    # the real-layout suite (VSR's files) was answered and scored in both stages, from its own split
    assert evaluated["seeds"]["0"]["suites"]["vsr"]["n"] == 12 and "acc_vsr" in labels.columns
    final_eval = json.loads((r / "final" / "eval" / "base.json").read_text())
    assert final_eval["split"] == "test" and final_eval["suites"]["vsr"]["n"] == 12
    assert {i["id"] for i in final_eval["suites"]["vsr"]["items"]}.isdisjoint(
        {i["id"] for i in evaluated["seeds"]["0"]["suites"]["vsr"]["items"]})
    table = pd.read_csv(r / "final" / "table.csv")
    assert len(table) == 1 + len(config["final"]["methods"]) and "vsr_mean" in table.columns
    judge = json.loads((r / "final" / "judge.json").read_text())
    assert judge["comparisons"]
    for name in ("indicators", "correlation", "embedding_map", "labels", "gallery", "final_table", "judge"):
        assert (r / "report" / f"{name}.png").stat().st_size > 5000, name


def test_each_selection_has_n_select_unique_examples_and_reimports(run):
    workdir, config = run
    r = workdir / "results"
    n_kept = len(pd.read_parquet(r / "manifest.parquet"))
    for method in config["selection"]["methods"]:
        selected = pd.read_parquet(r / "selection" / method / "selected.parquet")
        expected = n_kept if method == "full" else config["selection"]["n_select"]
        assert len(selected) == expected and selected["sample_id"].is_unique, method
        back = workdir / f"reimport_{method}"
        import_dataset(format="cc_sbu_align", root=str(r / "selection" / method / "dataset"),
                       out_manifest=str(back / "manifest.parquet"), out_quarantine=str(back / "quarantine.parquet"))
        assert len(pd.read_parquet(back / "manifest.parquet")) == expected
        assert len(pd.read_parquet(back / "quarantine.parquet")) == 0


def test_nothing_to_do_after_a_complete_run(run):
    workdir, _ = run
    assert planned_jobs(workdir) == {}


@pytest.mark.parametrize("key,value", [("selection.weights", {"clip": 2.0, "reward": 1.0, "length": 0.5, "gpt": 1.0}),
                                       ("selection.n_select", 15),
                                       ("selection.n_clusters", 2)])
def test_selection_changes_rerun_only_selection_and_what_follows(run, key, value):
    workdir, _ = run
    write_config(workdir, tiny_config(**{key: value}))
    try:
        jobs = planned_jobs(workdir)
    finally:
        write_config(workdir, tiny_config())
    assert jobs.get("select", 0) >= 1 and jobs.get("finetune_final", 0) >= 1 and jobs.get("final_table") == 1
    assert not EXPENSIVE & set(jobs), sorted(EXPENSIVE & set(jobs))


def test_weights_given_with_config_on_the_command_line_plan_the_same_jobs_as_an_override_file(run):
    """Snakemake hands a nested `--config` value over as strings ("2.0"); validation converts them to the numbers
    the schema wants, so the command line and a second config file plan the same selection jobs and nothing upstream.
    """
    workdir, config = run
    weights = {"clip": 2.0, "reward": 1.0, "length": 0.5, "gpt": 1.0}
    override = workdir / "weights_override.yaml"
    override.write_text(yaml.safe_dump({"selection": {"weights": weights}}))
    try:
        from_file = planned_jobs(workdir, "--configfile", str(workdir / "config.yaml"), str(override))
    finally:
        override.unlink()
    from_command_line = planned_jobs(workdir, "--config", f"selection={json.dumps({'weights': weights})}")
    # the weights reach the `weights` and `no_cluster` selections only; `weights` is also a final method here
    seeds = config["final"]["seeds"]
    assert from_command_line == from_file == {"select": 2, "export_selection": 2, "finetune_final": seeds,
                                              "evaluate_final": seeds, "final_table": 1, "plot_final_table": 1,
                                              "all": 1}
