"""The workflow's DAG: the full config fans out one fine-tune per subset; bad config stops before any job."""

import yaml

from workflow_helpers import REPO, planned_jobs, snakemake, write_config


def test_full_config_dry_run_fans_out_one_finetune_per_subset(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    write_config(tmp_path, config)
    jobs = planned_jobs(tmp_path)
    assert jobs["finetune_subset"] == 30
    assert jobs["evaluate_subset"] == 30
    assert jobs["export_subsets"] == 1
    for rule in ("toy_world", "train_toy_reward", "train_toy_vlm", "import_dataset",
                 "train_selector", "spectral_clusters", "final_table", "merge_judgements"):
        assert jobs[rule] == 1, rule
    assert jobs["train_toy_clip"] == 2  # the scoring CLIP and the VLM's image tower
    # four indicators scored in one shard each (CLIP and reward on a GPU, length and GPT without), then gathered
    assert jobs["score_model_shard"] == 2 and jobs["score_text_shard"] == 2 and jobs["gather_scores"] == 4


def test_shards_multiply_scoring_jobs_only(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["scoring"]["shards"] = 3
    write_config(tmp_path, config)
    jobs = planned_jobs(tmp_path)
    assert jobs["score_model_shard"] == 6 and jobs["score_text_shard"] == 6 and jobs["embed_shard"] == 3
    assert jobs["gather_scores"] == 4 and jobs["gather_features"] == 1


def test_a_mistyped_key_stops_the_run_naming_the_key(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["labels"]["n_subset"] = 30
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "'n_subset'" in output and "n_subsets" in output


def test_no_step_is_given_the_ground_truth_file(tmp_path):
    """Only the generator writes truth.parquet; no rule takes it as input or names it in its command."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    write_config(tmp_path, config)
    out = snakemake(tmp_path, "-n", "-p").stdout
    commands = [line for line in out.splitlines() if line.startswith("Shell command:")]
    assert len(commands) > 100
    assert not [c for c in commands if "truth" in c]
    inputs = [line for line in out.splitlines() if line.strip().startswith("input:")]
    assert inputs and not [line for line in inputs if "truth" in line]
    readers = [p.relative_to(REPO / "src") for p in (REPO / "src" / "vlselect").rglob("*.py") if "truth" in p.read_text()]
    assert {str(p) for p in readers} <= {"vlselect/toy/world.py"}, readers


def test_indicator_space_subsets_wait_for_the_scores_and_image_subsets_do_not(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    inputs = {}
    for space in ("image", "indicators"):
        config["labels"]["subset_space"] = space
        write_config(tmp_path, config)
        out = snakemake(tmp_path, "-n", "-p").stdout
        block = out[out.index("rule make_subsets:"):].split("\n\n")[0]
        inputs[space] = next(line for line in block.splitlines() if line.strip().startswith("input:"))
        command = out[out.index("vlselect make-subsets"):].splitlines()[0]
        assert f'"space": "{space}"' in command
        assert ("--scores" in command) == (space == "indicators")
    assert "scores/clip.parquet" not in inputs["image"] and "manifest.parquet" not in inputs["image"]
    assert all(f"scores/{k}.parquet" in inputs["indicators"] for k in ("clip", "reward", "length", "gpt"))
    # subsets cut along the indicators never read the embeddings, so re-embedding leaves their fine-tunes alone
    assert "features/" not in inputs["indicators"] and "features/image.npy" in inputs["image"]
