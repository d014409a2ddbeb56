"""kill -9 of the whole workflow mid-run, then a resume: nothing is lost, nothing is paid twice, no secret leaks.

One tiny run with the GPT score switched on against the local OpenAI-compatible server (tests/fake_openai.py)
and a planted API key. Snakemake and its jobs are killed with SIGKILL twice, once while the GPT score is being
requested and once while the selections are exported; the third start finishes the run. The outputs that do
not depend on the GPT score must equal the uninterrupted local run's (tests/conftest.py), and the planted key
must appear in no file the run wrote, Snakemake's metadata included, and in none of its console output.
"""

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from fake_openai import FakeOpenAI
from vlselect.subsets import make_subsets
from workflow_helpers import (REPO, SNAKEMAKE, assert_same_table, planned_jobs, snakemake, tiny_config,
                              write_config)

pytestmark = pytest.mark.slow

KEY = "sk-test-PLANTED-KEY-7f3a9c"
CONCURRENCY = 4
# What the GPT score does not feed. The tiny config cuts its subsets along the indicators, GPT included, so the
# subsets (and labels) are checked against the run's own complete scores instead.
GPT_FREE = ["manifest.parquet", "scores/clip.parquet", "scores/reward.parquet", "scores/length.parquet",
            "features/pca.parquet"]


def _score(prompt: str, n: int) -> dict:
    # a fixed score per prompt, so a repeated request would get the same answer
    return {"text": f"Score: {int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 101}"}


def _run_until(workdir: Path, env: dict, kill_when, timeout: float = 900) -> str:
    """Start the workflow; SIGKILL its whole process group as soon as ``kill_when()`` holds. Returns the output."""
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(workdir / "config.yaml"),
           "--cores", "2", "--rerun-incomplete"]
    with open(workdir.parent / "console.log", "a+") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if kill_when():
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    break
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL, f"the run ended ({proc.returncode}) before it could be killed"
        out.seek(0)
        return out.read()


def test_killed_twice_resumes_to_the_same_results_without_paying_twice_or_leaking_the_key(tiny_run, tmp_path):
    local, _ = tiny_run
    workdir = tmp_path / "run"
    workdir.mkdir()
    env = {**os.environ, "PATH": f"{Path(SNAKEMAKE).parent}{os.pathsep}{os.environ['PATH']}", "OPENAI_API_KEY": KEY}
    r = workdir / "results"
    with FakeOpenAI(_score, latency=0.1, api_key=KEY) as srv:
        config = tiny_config(**{"scoring.gpt.enabled": True, "scoring.gpt.base_url": srv.base_url,
                                "scoring.gpt.concurrency": CONCURRENCY, "scoring.gpt.max_usd": 1.0})
        n = config["toy"]["n_examples"]
        write_config(workdir, config)

        # 1. killed while the GPT score is half requested
        _run_until(workdir, env, lambda: srv.total >= 40)
        at_kill = srv.total
        assert at_kill < n and not (r / "scores" / "gpt.parquet").exists()

        # 2. killed while the selections are being exported
        snakemake(workdir, "--unlock")
        exports = r / "logs" / "export_selection"
        _run_until(workdir, env, lambda: exports.is_dir() and any(exports.iterdir()))
        methods = config["selection"]["methods"]
        assert not all((r / "selection" / m / "dataset").is_dir() for m in methods), "every export had finished"

        # 3. the resume finishes the run
        snakemake(workdir, "--unlock")
        result = snakemake(workdir, "--cores", "2", "--rerun-incomplete", env={"OPENAI_API_KEY": KEY})
        assert planned_jobs(workdir) == {}

        # Every example was scored. A prompt went out more than once only if it was in flight at the kill (its
        # answer never reached the cache) or two examples share it and were asked at the same moment.
        gpt = pd.read_parquet(r / "scores" / "gpt.parquet")
        assert len(gpt) == len(pd.read_parquet(r / "manifest.parquet")) and (gpt["status"] == "ok").all()
        shared = len(gpt) - len(srv.counts)
        assert sum(c - 1 for c in srv.counts.values()) <= CONCURRENCY + shared, srv.counts

    # Outputs that the GPT score does not feed are exactly the uninterrupted run's.
    for rel in GPT_FREE:
        assert_same_table(rel, workdir, local)
    # The subsets are those of the complete scores (never of the GPT file as it stood at a kill), and every one has
    # its label.
    labels_cfg = config["labels"]
    assert labels_cfg["subset_space"] == "indicators"
    make_subsets(manifest=str(r / "manifest.parquet"), out=str(tmp_path / "subsets.parquet"),
                 out_dropped=str(tmp_path / "dropped.parquet"), n_subsets=labels_cfg["n_subsets"],
                 seed=labels_cfg.get("seed", 0), space="indicators",
                 scores=[str(r / "scores" / f"{k}.parquet") for k in ("clip", "reward", "length", "gpt")])
    pd.testing.assert_frame_equal(pd.read_parquet(r / "labels" / "subsets.parquet"),
                                  pd.read_parquet(tmp_path / "subsets.parquet"))
    assert sorted(pd.read_parquet(r / "labels" / "labels.parquet")["subset"]) == list(range(labels_cfg["n_subsets"]))
    for m in methods:
        selected = pd.read_parquet(r / "selection" / m / "selected.parquet")
        exported = sorted(p.stem for p in (r / "selection" / m / "dataset" / "image").iterdir())
        assert exported == sorted(selected["sample_id"]), m

    # The planted key is nowhere: not in results, the response cache, Snakemake's metadata or the console.
    console = (tmp_path / "console.log").read_text() + result.stdout + result.stderr
    assert KEY not in console
    leaks = [p for p in workdir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert any((workdir / ".snakemake").rglob("*")) and any((workdir / ".vlselect_cache").rglob("*.json"))
