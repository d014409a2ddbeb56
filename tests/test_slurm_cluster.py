"""profiles/slurm on a real single-node SLURM cluster (tests/slurm_cluster.py).

Runs the tiny toy config through the real workflow with `snakemake --profile profiles/slurm` and
checks that every job went through sbatch and that the outputs equal the local run's
(tests/conftest.py). Runs the 3-rule smoke workflow in tests/slurm_smoke/ with `snakemake --profile profiles/slurm`
plus a test override profile (no account, no GPU requests, short status polling), and checks
that the jobs really went through sbatch, landed on the partitions the profile names, and give
the same outputs as a local run; then cancels one job mid-run and checks that the retry
replaces its partial output. Skipped unless root with slurm-wlm and munge installed
(.ci/install_apt.sh).
"""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import LocalSlurm
from workflow_helpers import SNAKEMAKE, assert_same_table, write_config

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "tests" / "slurm_smoke"
SLURM_PROFILE = REPO / "profiles" / "slurm"
LOCAL_PROFILE = REPO / "profiles" / "local"
RUN_TIMEOUT_S = 240
TINY_TIMEOUT_S = 1500
# Outputs of the tiny run that must not depend on where the jobs ran: indicator scores, features,
# subsets, genuine labels, the selector's predictions, every selection and the final comparison.
COMPARED = ["manifest.parquet", "scores/clip.parquet", "scores/reward.parquet", "scores/length.parquet",
            "features/pca.parquet", "labels/subsets.parquet", "labels/labels.parquet", "selector/predictions.parquet",
            "final/table.csv", "final/judge.json"]
GPU_RULES = {"embed_shard", "score_model_shard", "finetune_subset", "evaluate_subset", "finetune_final", "evaluate_final"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalSlurm(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def _override_profile(dest):
    """A second profile: tests/slurm_smoke/override.yaml laid over profiles/slurm. The GPU rules keep
    their GPU requests, which the test node's two GPUs (generic resources) grant and enforce."""
    override = yaml.safe_load((SMOKE / "override.yaml").read_text())
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(override))
    return dest


def _workflow_copy(dest):
    shutil.copytree(SMOKE, dest, ignore=shutil.ignore_patterns("results", ".snakemake", "slurm_logs"))
    return dest


def _snakemake_cmd(profiles, *extra):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", "Snakefile"]
    for p in profiles:
        cmd += ["--profile", str(p)]
    return cmd + list(extra)


def _outputs(workdir):
    return {p.name: p.read_text() for p in sorted((workdir / "results").glob("*.txt"))}


def _expected_outputs(n_values=10, n_subsets=2):
    squares = [i * i for i in range(1, n_values + 1)]
    out = {"world.txt": "".join(f"{i}\n" for i in range(1, n_values + 1)),
           "embed.txt": "".join(f"{s}\n" for s in squares)}
    for k in range(n_subsets):
        out[f"subset_{k}.txt"] = "".join(f"{s}\n" for nr, s in enumerate(squares, 1) if nr % n_subsets == k)
    return out


def _submission(job_id):
    """The sbatch call a SLURM job id came from, in submission order: `9` for job 9, `7` for array task `7_1`."""
    return int(job_id.partition("_")[0])


def _run_id(log):
    match = re.search(r"SLURM run ID: (\S+)", log)
    assert match, f"no SLURM run ID in the Snakemake log:\n{log[-4000:]}"
    return match.group(1)


def test_profile_runs_jobs_through_sbatch_like_a_local_run(cluster, tmp_path):
    local = _workflow_copy(tmp_path / "local")
    proc = subprocess.run(_snakemake_cmd([LOCAL_PROFILE]), cwd=local, env=cluster.env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]

    wf = _workflow_copy(tmp_path / "slurm")
    profiles = [SLURM_PROFILE, _override_profile(tmp_path / "override")]
    # embed_shard dies as if killed for memory below 200 MB; it asks for 100 MB x attempt
    oom = ["--config", "oom_below_mb=200"]
    proc = subprocess.run(_snakemake_cmd(profiles, *oom), cwd=wf, env=cluster.env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{log[-6000:]}\n{cluster.log_tail()}"

    assert _outputs(wf) == _outputs(local) == _expected_outputs()

    # Every rule but `all` (a localrule) ran as a SLURM job of this run, on the profile's partition.
    jobs = [j for j in cluster.jobs() if j["name"] == _run_id(log)]
    by_rule = {}
    for j in jobs:
        by_rule.setdefault(re.match(r"rule_([a-z_]+?)(_wildcards_.*)?$", j["comment"]).group(1), []).append(j)
    assert sorted(by_rule) == ["embed_shard", "finetune_subset", "toy_world"], jobs
    # The job killed for memory was resubmitted with twice the memory, and only then completed.
    assert [(j["state"], j["memory"]) for j in sorted(by_rule["embed_shard"], key=lambda j: int(j["id"]))] == [
        ("FAILED", "100M"), ("COMPLETED", "200M")], by_rule["embed_shard"]
    assert all(j["state"] == "COMPLETED" for j in by_rule["toy_world"] + by_rule["finetune_subset"]), jobs
    # GPU rules asked the scheduler for one GPU each; the CPU rule for none.
    assert {j["tres"] for j in by_rule["embed_shard"] + by_rule["finetune_subset"]} == {"gres:gpu:1"}, jobs
    assert by_rule["toy_world"][0]["tres"] in ("", "N/A"), jobs
    assert {j["partition"] for j in by_rule["toy_world"]} == {"cpu"}
    assert {j["partition"] for j in by_rule["embed_shard"] + by_rule["finetune_subset"]} == {"gpu"}
    # The two subsets went out as one job array (slurm-array-jobs in the profile): ids <job>_<task>.
    assert len(by_rule["finetune_subset"]) == 2
    assert len({j["id"].split("_")[0] for j in by_rule["finetune_subset"]}) == 1, by_rule["finetune_subset"]

    # sbatch wrote each job's log under slurm-logdir, named by SLURM job id (kept on success).
    log_ids = {p.stem for p in (wf / "slurm_logs").rglob("*.log")}
    assert {j["id"] for j in by_rule["toy_world"] + by_rule["embed_shard"]} <= log_ids, log_ids

    # Nothing left to do: Snakemake recorded every output as complete.
    dry = subprocess.run(_snakemake_cmd(profiles, *oom, "--dry-run"), cwd=wf, env=cluster.env(),
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr


def test_the_scheduler_enforces_gpu_requests(cluster, tmp_path):
    """The test node has two GPUs: a job asking for one runs, a job asking for three is refused at submission."""
    def sbatch(*args):
        return subprocess.run(["sbatch", "--parsable", "--partition=gpu", "--mem=50", "--output=/dev/null", *args,
                               "--wrap", "true"], env=cluster.env(), capture_output=True, text=True, timeout=30)

    ok = sbatch("--gpus=1")
    assert ok.returncode == 0, ok.stderr
    too_many = sbatch("--gpus=3")
    assert too_many.returncode != 0 and "Requested node configuration is not available" in too_many.stderr
    assert sbatch("--gres=gpu:3").returncode != 0


def test_cancelled_job_is_retried_and_its_partial_output_discarded(cluster, tmp_path):
    wf = _workflow_copy(tmp_path / "slurm")
    profiles = [SLURM_PROFILE, _override_profile(tmp_path / "override")]
    # Long enough a pause to find the running job and cancel it while its output says PARTIAL.
    config = ["--config", "pause_seconds=6"]
    cmd = _snakemake_cmd(profiles, *config)
    with open(tmp_path / "snakemake.log", "w+") as log_file:
        proc = subprocess.Popen(cmd, cwd=wf, env=cluster.env(), stdout=log_file, stderr=subprocess.STDOUT)
        try:
            victim = None
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while victim is None and time.monotonic() < deadline and proc.poll() is None:
                partial = [p for p in (wf / "results").glob("subset_*.txt") if p.read_text() == "PARTIAL\n"]
                running = [j for j in cluster.jobs() if j["comment"].startswith("rule_finetune_subset")
                           and j["state"] == "RUNNING"]
                if partial and running:
                    victim = running[0]["id"]
                    cluster.run("scancel", victim)
                time.sleep(0.2)
            assert victim, "never saw a running finetune_subset job with partial output to cancel"
            proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
        log_file.seek(0)
        log = log_file.read()

    assert proc.returncode == 0, f"{log[-6000:]}\n{cluster.log_tail()}"
    # The cancelled job failed in Snakemake's eyes and was submitted again ...
    states = {j["id"]: j["state"] for j in cluster.jobs()}
    assert states[victim] == "CANCELLED", states
    assert f"SLURM-job '{victim}' failed" in log, log[-6000:]
    run_jobs = [j for j in cluster.jobs() if j["name"] == _run_id(log)
                and j["comment"].startswith("rule_finetune_subset")]
    summary = f"{[(j['id'], j['comment'], j['state']) for j in run_jobs]}\n{log[-6000:]}"
    # Each subset finished exactly once (a finished job is never run again), the victim's by an sbatch call after
    # the victim's. Array tasks all carry the first task's wildcards in their comment, so jobs are counted, not matched to
    # subsets. Other failed jobs are allowed: a loaded test node can fail a job too, and Snakemake retries it.
    completed = [j["id"] for j in run_jobs if j["state"] == "COMPLETED"]
    assert len(completed) == 2, summary
    assert max(map(_submission, completed)) > _submission(victim), summary
    # ... and no PARTIAL file survived as a finished output.
    assert _outputs(wf) == _expected_outputs()
    dry = subprocess.run(_snakemake_cmd(profiles, *config, "--dry-run"), cwd=wf, env=cluster.env(),
                         capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr


@pytest.mark.slow
def test_tiny_workflow_through_the_profile_equals_the_local_run(cluster, tiny_run, tmp_path):
    local, config = tiny_run
    wd = tmp_path / "slurm_run"
    wd.mkdir()
    write_config(wd, config)
    profiles = [SLURM_PROFILE, _override_profile(tmp_path / "override")]
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(wd), "--configfile", str(wd / "config.yaml")]
    for p in profiles:
        cmd += ["--profile", str(p)]
    env = cluster.env()
    # the jobs call the `vlselect` entry point of this environment (sbatch exports the environment)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    proc = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=TINY_TIMEOUT_S)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{log[-6000:]}\n{cluster.log_tail()}"

    jobs = [j for j in cluster.jobs() if j["name"] == _run_id(log)]
    by_rule = {}
    for j in jobs:
        by_rule.setdefault(re.match(r"rule_([a-z_]+?)(_wildcards_.*)?$", j["comment"]).group(1), []).append(j)
    assert all(j["state"] == "COMPLETED" for j in jobs), jobs
    # every rule of the run but `all` and the network steps (network_local: GPT scoring's rule and the judge run on
    # the submit host) was a SLURM job, the GPU rules on the GPU partition
    assert {"toy_world", "train_toy_vlm", "finetune_subset", "evaluate_subset", "train_selector", "select",
            "finetune_final", "final_table", "merge_judgements"} <= set(by_rule), sorted(by_rule)
    assert not {"judge_pair", "score_text_shard"} & set(by_rule), sorted(by_rule)
    assert (wd / "results" / "final" / "judge.json").exists()
    assert len(by_rule["finetune_subset"]) == config["labels"]["n_subsets"] > 2
    # one sbatch --array each for the subset fine-tunes and for their evaluations: every task of a rule carries the
    # same submission id (the workflow makes them ready together; the plugin bundles only what is ready at once)
    for rule in ("finetune_subset", "evaluate_subset"):
        assert len({_submission(j["id"]) for j in by_rule[rule]}) == 1, by_rule[rule]
        assert all("_" in j["id"] for j in by_rule[rule]), by_rule[rule]
    for rule, rule_jobs in by_rule.items():
        assert {j["partition"] for j in rule_jobs} == ({"gpu"} if rule in GPU_RULES else {"cpu"}), rule

    for rel in COMPARED:
        a, b = local / "results" / rel, wd / "results" / rel
        if rel.endswith(".parquet"):
            assert_same_table(rel, wd, local)
        else:
            assert b.read_text() == a.read_text(), rel
    for method in config["selection"]["methods"]:
        assert_same_table(f"selection/{method}/selected.parquet", wd, local)
