"""Cluster resources per rule group, sized from the models a job loads.

A job that loads a 7B checkpoint reads it into host memory before it reaches the GPU, so a fixed 4 GB request
is killed on a real run while a toy run needs a fraction of it. Each group's memory is therefore derived from the
size on disk of the checkpoints its jobs load (``2 x size + 4 GB``, at least the group's floor) unless the config
sets it, and memory and runtime grow with Snakemake's ``attempt`` so that a job killed for either is resubmitted
with more.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def checkpoint_mb(path: str | os.PathLike | None) -> float:
    """Size in MB of the weights at ``path``: a file, a model folder, or a Hugging Face id already in the cache.

    0 for None or a path that does not exist yet (a toy model the workflow has still to build).
    """
    if not path:
        return 0.0
    local = Path(path)
    if not local.exists():
        local = _cached_snapshot(str(path))
        if local is None:
            return 0.0
    if local.is_file():
        return local.stat().st_size / 2**20
    # os.path.getsize follows the symlinks a Hugging Face cache snapshot is made of
    return sum(os.path.getsize(p) for p in local.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()) / 2**20


def _cached_snapshot(model_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    if model_id.count("/") != 1:
        return None
    hit = try_to_load_from_cache(model_id, "config.json")
    return Path(hit).parent if isinstance(hit, str) else None


def memory_mb(models: list, *, floor: int, configured: int | None = None) -> int:
    """Host memory for one attempt: ``configured`` when set, else ``2 x checkpoint size + 4000`` MB, at least
    ``floor``. Twice the size leaves room for the weights in host memory while they are cast and moved, plus the
    optimizer state of the trained part."""
    if configured:
        return int(configured)
    size = sum(checkpoint_mb(m) for m in models)
    return max(int(floor), int(2 * size + 4000))


def group_resources(spec: dict, models: list, *, floor: int, runtime_factor: int = 1) -> dict:
    """Snakemake ``resources`` for a rule group from its config ``spec`` ({mem_mb, runtime, gpus}).

    ``mem_mb`` and ``runtime`` are callables of (wildcards, attempt) that multiply by ``attempt``; ``gpu`` is the
    number of GPUs each job uses (omitted when 0, so CPU-only groups never wait for a GPU slot).
    """
    mem = memory_mb(models, floor=floor, configured=spec.get("mem_mb"))
    runtime = int(spec["runtime"]) * runtime_factor
    res = {"mem_mb": lambda wildcards, attempt: mem * attempt,
           "runtime": lambda wildcards, attempt: runtime * attempt}
    if spec.get("gpus"):
        res["gpu"] = int(spec["gpus"])
    return res
