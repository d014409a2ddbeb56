"""What a changed score weight costs after a finished run, against the cold run, and how long a dry run takes.

Copies a finished run (its results folder, Snakemake's metadata and config.yaml) into a temporary folder, so the
original stays as it is, then:

1. times ``snakemake -n`` of the full DAG in an empty folder (the cold plan) and in the copy (nothing to do);
2. changes ``selection.weights.<--indicator>`` and lists the jobs the dry run plans, by rule;
3. runs those jobs and reports the wall time, beside the cold run's job count and wall time read from the run's
   own Snakemake log (``--cold-log``, the log of the run that made the results).

    PYTHONPATH=src python bench/incremental_rerun.py [--run-dir .] [--cold-log .snakemake/log/<run>.log]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def snakemake(workdir: Path, *args: str) -> tuple[float, str]:
    """Run Snakemake on the repository's Snakefile in ``workdir``; returns (seconds, output)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def planned(output: str) -> Counter:
    """Jobs per rule from a dry run's job-stats table."""
    jobs = Counter()
    table = output.rsplit("Job stats:", 1)[-1].split("Reasons:", 1)[0] if "Job stats:" in output else ""
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def cold_run(log: Path) -> tuple[int, str]:
    """(jobs, elapsed) of a finished run from its Snakemake log."""
    text = log.read_text()
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", text)
    elapsed = re.findall(r"Elapsed time: (\S+)", text)
    return (int(done[-1][1]) if done else 0), (elapsed[-1] if elapsed else "unknown")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=".", help="folder holding results/, .snakemake/ and config.yaml")
    parser.add_argument("--cold-log", help="Snakemake log of the run that made the results")
    parser.add_argument("--indicator", default="clip", help="whose selection weight to change")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--cores", default="2")
    args = parser.parse_args()
    run = Path(args.run_dir).resolve()
    config = yaml.safe_load((run / "config.yaml").read_text())
    results = config.get("results", "results")

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty"
        empty.mkdir()
        shutil.copy(run / "config.yaml", empty / "config.yaml")
        seconds, out = snakemake(empty, "-n", "--quiet", "rules")
        cold_plan = planned(out)
        print(f"dry run of the full DAG from nothing: {seconds:.1f} s, {sum(cold_plan.values())} jobs "
              f"({cold_plan.get('finetune_subset', 0)} subset fine-tunes)")

        copy = Path(tmp) / "copy"
        copy.mkdir()
        shutil.copytree(run / results, copy / results, symlinks=True)
        shutil.copytree(run / ".snakemake", copy / ".snakemake", symlinks=True,
                        ignore=shutil.ignore_patterns("log", "locks", "incomplete", "conda", "singularity"))
        shutil.copy(run / "config.yaml", copy / "config.yaml")
        seconds, out = snakemake(copy, "-n", "--quiet", "rules")
        print(f"dry run of the finished copy: {seconds:.1f} s, {sum(planned(out).values())} jobs planned")

        weights = config["selection"]["weights"]
        weights[args.indicator] = weights.get(args.indicator, 1.0) * args.factor
        (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        seconds, out = snakemake(copy, "-n", "--quiet", "rules")
        plan = planned(out)
        print(f"\nafter selection.weights.{args.indicator} x {args.factor}: dry run {seconds:.1f} s, "
              f"{sum(plan.values())} jobs planned")
        print("| rule | jobs |\n|--|--:|")
        for rule, n in sorted(plan.items()):
            print(f"| {rule} | {n} |")
        seconds, _ = snakemake(copy, "--cores", args.cores, "--resources", f"gpu={args.cores}")
        print(f"\nincremental rerun: {sum(plan.values())} jobs in {seconds:.0f} s wall")
    if args.cold_log:
        jobs, elapsed = cold_run(Path(args.cold_log))
        print(f"cold run (from {args.cold_log}): {jobs} jobs in {elapsed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
