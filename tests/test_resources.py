"""Resources per rule group: sized from the checkpoints a job loads, grown on retry, shown by a SLURM dry run."""

import re

import pytest
import yaml

from vlselect.config import ConfigError, check_gpu_counts, check_real_run, validate_config
from vlselect.resources import checkpoint_mb, group_resources, memory_mb
from workflow_helpers import REPO, snakemake


def _weights(folder, mb):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_bytes(b"\0" * (mb * 2**20))
    (folder / "config.json").write_text("{}")  # not a weight file: not counted
    return folder


def test_checkpoint_size_counts_weight_files_only(tmp_path):
    model = _weights(tmp_path / "m", 3)
    assert checkpoint_mb(model) == pytest.approx(3.0)
    assert checkpoint_mb(model / "model.safetensors") == pytest.approx(3.0)
    assert checkpoint_mb(tmp_path / "not-built-yet") == 0.0 and checkpoint_mb(None) == 0.0


def test_memory_is_derived_from_checkpoints_unless_set(tmp_path):
    a, b = _weights(tmp_path / "a", 3), _weights(tmp_path / "b", 2)
    assert memory_mb([a, b], floor=100) == int(2 * 5 + 4000)
    assert memory_mb([a], floor=9000) == 9000  # the floor holds for tiny models
    assert memory_mb([a], floor=100, configured=1234) == 1234


def test_memory_and_runtime_grow_with_each_attempt(tmp_path):
    res = group_resources({"mem_mb": 1000, "runtime": 30, "gpus": 2}, [], floor=1, runtime_factor=2)
    assert [res["mem_mb"](None, k) for k in (1, 2, 3)] == [1000, 2000, 3000]
    assert [res["runtime"](None, k) for k in (1, 2)] == [60, 120]
    assert res["gpu"] == 2
    assert "gpu" not in group_resources({"mem_mb": 1, "runtime": 1, "gpus": 0}, [], floor=1)


def _real_config(name):
    return yaml.safe_load((REPO / "configs" / name).read_text())


@pytest.mark.parametrize("name", ["minigpt4.yaml", "llava.yaml"])
def test_real_run_configs_validate(name):
    validate_config(_real_config(name))


def test_a_real_run_without_model_paths_is_refused_when_the_dag_is_built():
    config = validate_config(_real_config("minigpt4.yaml"))
    config["models"]["vlm"]["path"] = None
    config["dataset"]["root"] = None
    config["judge"]["backend"] = "oracle"
    with pytest.raises(ConfigError) as err:
        check_real_run(config)
    for key in ("dataset.root", "models.vlm.path", "judge.backend"):
        assert key in str(err.value)


def test_a_fine_tune_asks_for_as_many_gpus_as_it_runs_processes():
    config = validate_config(_real_config("llava.yaml"))
    config["finetune"]["gpus"] = 4
    with pytest.raises(ConfigError, match="resources.finetune.gpus is 1 but finetune.gpus is 4"):
        check_gpu_counts(config)
    config["resources"]["finetune"]["gpus"] = 4
    check_gpu_counts(config)
    config["resources"]["finetune"]["gpus"] = 0  # a CPU fine-tune asks for none
    check_gpu_counts(config)


def test_slurm_dry_run_of_a_real_config_sizes_gpu_jobs_from_the_checkpoint(tmp_path):
    """The MiniGPT-4 template with its paths filled: 30 subset fine-tunes, each asking for a GPU and more memory
    than its checkpoint, on the GPU partition."""
    vlm = _weights(tmp_path / "vlm", 40)
    config = _real_config("minigpt4.yaml")
    config["dataset"]["root"] = str(tmp_path / "data")
    config["models"]["clip"]["pretrained"] = str(_weights(tmp_path / "clip", 1) / "model.safetensors")
    config["models"]["reward"]["path"] = str(_weights(tmp_path / "reward", 1))
    config["models"]["vlm"]["path"] = str(vlm)
    config["evaluate"]["suite_root"] = str(tmp_path / "suites")
    config["resources"]["finetune"]["mem_mb"] = None
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm")).stdout
    jobs = re.findall(r"rule (\w+):\n(?:    .*\n)*?    resources: (.*)\n", out)
    finetunes = [dict(kv.split("=", 1) for kv in res.split(", ")) for rule, res in jobs if rule == "finetune_subset"]
    assert len(finetunes) == 30
    for res in finetunes:
        assert int(res["gpu"]) == 1 and res["slurm_partition"] == "gpu"
        assert int(res["mem_mb"]) == int(2 * 40 + 4000) > 40
