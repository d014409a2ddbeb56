"""A real VLM architecture through the workflow: a tiny randomly initialised LLaVA-1.5 (transformers' LLaVA classes
and processor) replaces the toy VLM via models.vlm.path and is fine-tuned with LoRA for every label and final model.

It starts from a copy of the shared tiny run, so scoring, features and the toy world are kept and only the VLM's
jobs (and what follows them) run again: the same incremental rerun a user gets when changing the VLM.
"""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from vlselect.vlm.tiny import build_tiny_vlm
from workflow_helpers import planned_jobs, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow


def test_tiny_llava_with_lora_runs_the_label_and_final_stages(tiny_run, tmp_path):
    local, _ = tiny_run
    workdir = tmp_path / "llava_run"
    shutil.copytree(local, workdir, symlinks=True)
    llava = build_tiny_vlm("llava", str(tmp_path / "tiny-llava"))
    config = tiny_config(**{"models.vlm.path": str(llava), "finetune.trainable": "lora", "finetune.steps": 2,
                            "finetune.lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}})
    write_config(workdir, config)

    jobs = planned_jobs(workdir)
    n = config["labels"]["n_subsets"]
    assert jobs["finetune_subset"] == n and jobs["evaluate_subset"] == n and jobs["final_table"] == 1
    assert not {"toy_world", "train_toy_vlm", "score_model_shard", "embed_shard", "make_subsets"} & set(jobs)

    snakemake(workdir, "--cores", "2")
    r = workdir / "results"
    trained = json.loads((r / "labels" / "models" / "subset_0" / "seed_0" / "finetune.json").read_text())
    assert trained["family"] == "llava" and trained["lora"]["r"] == 4 and trained["steps"] == 2
    assert trained["base_model"] == str(Path(llava).resolve())
    evaluated = json.loads((r / "labels" / "eval" / "subset_0.json").read_text())
    assert set(evaluated["suites"]) == {"toy-vqa", "toy-count", "toy-spatial", "toy-mc", "toy-caption", "vsr"}
    labels = pd.read_parquet(r / "labels" / "labels.parquet")
    assert len(labels) == n and labels["label"].between(0, 1).all()
    table = pd.read_csv(r / "final" / "table.csv")
    assert len(table) == 1 + len(config["final"]["methods"])
    assert planned_jobs(workdir) == {}
