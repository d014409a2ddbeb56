"""What a changed score weight costs after a finished run, against the cold run, and how long a dry run takes.

Copies a finished run (its results folder, Snakemake's metadata and config.yaml) into a temporary folder, so the
original stays as it is, then:

1. times ``snakemake -n`` of the full DAG in an empty folder (the cold plan) and in the copy (nothing to do);
2. changes ``selection.weights.<--indicator>`` three ways (the copy's config.yaml edited, a second ``--configfile``,
   ``--config`` on the command line), times each dry run and lists the jobs it plans, by rule;
3. unless ``--dry-only``, runs those jobs and reports the wall time, beside the cold run's job count and wall time
   read from the run's own Snakemake log (``--cold-log``, the log of the run that made the results).

Each dry run is timed ``--repeats`` times (min and median: the machine is shared). ``--repo`` (repeatable) names
the checkouts whose Snakefile and ``src/`` are timed, by default this one; with two, before and after a change,
their runs alternate so that both see the same machine load:

    PYTHONPATH=src python bench/incremental_rerun.py [--run-dir .] [--cold-log .snakemake/log/<run>.log]
    PYTHONPATH=src python bench/incremental_rerun.py --run-dir <run> --dry-only --repo <before> --repo <after>
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = {"clip": 1.0, "reward": 1.0, "length": 1.0, "gpt": 1.0}  # the schema's selection.weights default


def snakemake(repo: Path, workdir: Path, *args: str, check: bool = True) -> tuple[float, str, int]:
    """Run Snakemake on ``repo``'s Snakefile (its ``src/`` first on the path) in ``workdir``.

    Returns (seconds, output, exit status); stops the script on a failure unless ``check`` is false.
    """
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr, proc.returncode


def timed_dry_runs(repos: list[Path], workdir: Path, args: list[str], repeats: int) -> dict[Path, dict]:
    """Dry-run each checkout ``repeats`` times, alternating between them: per checkout its min and median
    seconds and its planned jobs, or the first line of its error when it refuses the run."""
    seconds: dict[Path, list[float]] = {repo: [] for repo in repos}
    result: dict[Path, dict] = {}
    for _ in range(repeats):
        for repo in repos:
            took, out, status = snakemake(repo, workdir, "-n", "--quiet", "rules", *args, check=False)
            if status != 0:
                lines = [line.strip() for line in out.splitlines()]
                errors = [line for line in lines if "is not of type" in line] + [line for line in lines if "Error" in line]
                result[repo] = {"error": errors[0] if errors else f"exit status {status}"}
                continue
            seconds[repo].append(took)
            result[repo] = {"jobs": planned(out)}
    for repo, times in seconds.items():
        if times:
            result[repo] |= {"min": min(times), "median": statistics.median(times)}
    return result


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


def report_row(what: str, by_repo: dict[Path, dict]) -> str:
    """One markdown table row: per checkout 'min s (median s), N jobs', or why it refused."""
    cells = []
    for entry in by_repo.values():
        if "error" in entry:
            cells.append(f"refused: `{entry['error']}`")
        else:
            cells.append(f"{entry['min']:.2f} s ({entry['median']:.2f}), {sum(entry['jobs'].values())} jobs")
    return f"| {what} | " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=".", help="folder holding results/, .snakemake/ and config.yaml")
    parser.add_argument("--cold-log", help="Snakemake log of the run that made the results")
    parser.add_argument("--indicator", default="clip", help="whose selection weight to change")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--cores", default="2")
    parser.add_argument("--repeats", type=int, default=5, help="timed dry runs per case and checkout")
    parser.add_argument("--repo", type=Path, action="append", help="checkout to time (repeatable; default: this one)")
    parser.add_argument("--dry-only", action="store_true", help="time the dry runs only; do not run the jobs")
    args = parser.parse_args()
    repos = [r.resolve() for r in args.repo] if args.repo else [REPO]
    run = Path(args.run_dir).resolve()
    config = yaml.safe_load((run / "config.yaml").read_text())
    results = config.get("results", "results")

    with tempfile.TemporaryDirectory() as tmp:
        print("| dry run | " + " | ".join(str(r) for r in repos) + " |\n|--|" + "--:|" * len(repos))
        empty = Path(tmp) / "empty"
        empty.mkdir()
        shutil.copy(run / "config.yaml", empty / "config.yaml")
        print(report_row("full DAG from nothing", timed_dry_runs(repos, empty, [], args.repeats)))

        copy = Path(tmp) / "copy"
        copy.mkdir()
        shutil.copytree(run / results, copy / results, symlinks=True)
        shutil.copytree(run / ".snakemake", copy / ".snakemake", symlinks=True,
                        ignore=shutil.ignore_patterns("log", "locks", "incomplete", "conda", "singularity"))
        shutil.copy(run / "config.yaml", copy / "config.yaml")
        print(report_row("finished run (nothing to do)", timed_dry_runs(repos, copy, [], args.repeats)))

        # the same weight change three ways, each giving all four weights (a weights object replaces the schema's
        # default as a whole); all three must plan the same jobs
        weights = dict(config.get("selection", {}).get("weights") or DEFAULT_WEIGHTS)
        weights[args.indicator] = weights.get(args.indicator, 1.0) * args.factor
        change = {"selection": {"weights": weights}}
        (copy / "override.yaml").write_text(yaml.safe_dump(change))
        ways = {"second --configfile": ["--configfile", str(copy / "config.yaml"), str(copy / "override.yaml")],
                "--config on the command line": ["--config", f"selection={json.dumps(change['selection'])}"]}
        plans = {way: timed_dry_runs(repos, copy, extra, args.repeats) for way, extra in ways.items()}
        edited = yaml.safe_load((run / "config.yaml").read_text())
        edited.setdefault("selection", {})["weights"] = weights
        (copy / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
        plans = {"config.yaml edited": timed_dry_runs(repos, copy, [], args.repeats)} | plans
        for way, by_repo in plans.items():
            print(report_row(f"selection.weights.{args.indicator} x {args.factor}, {way}", by_repo))

        plan = plans["config.yaml edited"][repos[-1]]["jobs"]
        for way, by_repo in plans.items():
            for repo, entry in by_repo.items():
                if "jobs" in entry and entry["jobs"] != plan:
                    print(f"\nWARNING: {way} plans other jobs in {repo}: {dict(entry['jobs'])}")
        print("\n| rule | jobs |\n|--|--:|")
        for rule, n in sorted(plan.items()):
            print(f"| {rule} | {n} |")
        if not args.dry_only:
            seconds, _, _ = snakemake(repos[-1], copy, "--cores", args.cores, "--resources", f"gpu={args.cores}")
            print(f"\nincremental rerun: {sum(plan.values())} jobs in {seconds:.0f} s wall")
    if args.cold_log:
        jobs, elapsed = cold_run(Path(args.cold_log))
        print(f"cold run (from {args.cold_log}): {jobs} jobs in {elapsed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
