"""Run the real workflow in a temporary folder with a given config (used by the end-to-end tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def tiny_config(**overrides) -> dict:
    config = yaml.safe_load((REPO / "tests" / "config_tiny.yaml").read_text())
    for stage in ("labels", "final"):
        for suite in config[stage]["suites"]:
            if isinstance(suite, dict):
                suite["path"] = str(REPO / suite["path"])
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return config


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None, timeout: int = 1500):
    """Run snakemake on the repository's Snakefile with ``workdir`` as the working directory."""
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(workdir / "config.yaml"),
           *args]
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts by rule that a dry run would execute (empty when nothing is to be done)."""
    out = snakemake(workdir, "-n", "--quiet", "rules", *args).stdout
    counts: dict[str, int] = {}
    in_table = False
    for line in out.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                if parts[0] != "total":
                    counts[parts[0]] = int(parts[1])
            elif parts and not set(parts[0]) <= {"-"}:
                in_table = False
    return counts


def assert_same_table(rel: str, workdir: Path, reference: Path) -> None:
    """Assert that ``results/<rel>`` (parquet) is exactly the same in two run directories.

    Absolute paths (the manifest's image column) differ only by the run directory, so each run's own directory is
    replaced by a placeholder before the comparison.
    """
    import pandas as pd

    def read(root: Path):
        frame = pd.read_parquet(root / "results" / rel)
        for col in frame.columns:
            if pd.api.types.is_string_dtype(frame[col]):
                frame[col] = frame[col].str.replace(str(root), "<run>", regex=False)
        return frame

    pd.testing.assert_frame_equal(read(workdir), read(reference), check_exact=True, obj=rel)
