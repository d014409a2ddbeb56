"""Runtime helpers: device choice, seeding and logging set-up shared by every step."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np


def pick_device(preference="auto"):
    """Return a ``torch.device``: CUDA when asked for or available under ``auto``, else the CPU; a ``torch.device``
    passes through unchanged, so loaders take either a setting or a device already picked."""
    import torch

    if isinstance(preference, torch.device):
        return preference
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA device is visible; set device: auto or cpu")
    return torch.device(preference)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so that a step gives the same result on every run on the same hardware."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr, where Snakemake's ``log:`` redirection picks it up."""
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
