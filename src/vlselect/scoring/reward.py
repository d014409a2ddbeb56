"""Reward score: a text-only reward model's judgement of the answer to the instruction (InstructionGPT-4).

Any transformers sequence-classification model with one output works (the paper used
OpenAssistant/reward-model-deberta-v3-large-v2); the input is the text pair (instruction, answer),
as in that model's card. Examples are batched in order of length so that padding wastes little
compute, and written back in manifest order. Inputs longer than ``max_length`` tokens are truncated
(longest side first); their number is logged and stored in the file's metadata as "n_truncated",
since a truncated answer is judged on its beginning only.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vlselect.io import write_parquet
from vlselect.models import hf_checksum, load_reward
from vlselect.runtime import pick_device
from vlselect.scoring.clip import autocast, run_in_chunks
from vlselect.shards import shard_rows

log = logging.getLogger(__name__)


def resolve_max_length(model, tokenizer, max_length: int | None) -> int:
    """The input length limit: ``max_length`` if given, else the smaller of the tokenizer's and the model's limits."""
    if max_length is not None:
        return int(max_length)
    limits = [tokenizer.model_max_length] if tokenizer.model_max_length < 1_000_000 else []
    if getattr(model.config, "max_position_embeddings", None):
        limits.append(model.config.max_position_embeddings)
    if not limits:
        raise ValueError("neither the tokenizer nor the model states a maximum input length; pass max_length")
    return int(min(limits))


def reward_score_single(model, tokenizer, instruction: str, answer: str, device, max_length: int) -> float:
    """Reference reward of one example at batch size one (as the original code); for tests and the benchmark."""
    device = torch.device(device)
    # Lists, not strings: a string call drops an empty answer ("" reads as no pair), a list call keeps it.
    enc = tokenizer([instruction], [answer], truncation=True, max_length=max_length, return_tensors="pt").to(device)
    with torch.inference_mode(), autocast(device):
        return float(model(**enc).logits[0, 0].float())


def score_reward(*, manifest: str, out: str, path: str, batch_size: int = 64, device: str = "auto",
                 max_length: int | None = None, shard: int = 0, n_shards: int = 1) -> None:
    """Score each (instruction, answer) pair with a reward model; writes ``out`` (sample_id, score, status).

    ``path`` is a local model directory or a model id already in the Hugging Face cache.
    """
    dev = pick_device(device)
    df = pd.read_parquet(manifest, columns=["sample_id", "instruction", "answer"])
    df = df.iloc[shard_rows(len(df), shard, n_shards)].reset_index(drop=True)
    model, tokenizer = load_reward(path=path, device=dev)
    limit = resolve_max_length(model, tokenizer, max_length)
    instructions, answers = df["instruction"].tolist(), df["answer"].tolist()

    # One untruncated tokenisation gives both the sort key and the truncation count.
    lengths = np.array([len(ids) for ids in tokenizer(instructions, answers, truncation=False)["input_ids"]]
                       if len(df) else [], dtype=int)
    n_truncated = int((lengths > limit).sum())
    if n_truncated:
        log.warning("%d of %d inputs exceed %d tokens and are truncated (longest side first)", n_truncated, len(df), limit)
    order = np.argsort(-lengths, kind="stable")  # longest first: an out-of-memory error shows up at once
    scores = np.full(len(df), np.nan)
    state = {"chunk": batch_size}

    def run(a: int, b: int) -> np.ndarray:
        idx = order[a:b]
        enc = tokenizer([instructions[i] for i in idx], [answers[i] for i in idx], padding=True, truncation=True,
                        max_length=limit, return_tensors="pt").to(dev)
        with autocast(dev):
            return model(**enc).logits[:, 0].float().cpu().numpy()

    with torch.inference_mode():
        for start in tqdm(range(0, len(df), batch_size), desc="reward", file=sys.stderr, unit="batch"):
            stop = min(start + batch_size, len(df))
            parts = run_in_chunks(lambda a, b: run(start + a, start + b), stop - start, batch_size, state)
            scores[order[start:stop]] = np.concatenate(parts)
    result = pd.DataFrame({"sample_id": df["sample_id"], "score": scores, "status": "ok"})
    metadata = {"indicator": "reward", "model": path, "checksum": hf_checksum(path), "prompt_version": None,
                "max_length": limit, "n_truncated": n_truncated, "shard": [shard, n_shards]}
    write_parquet(result, out, metadata=metadata)
    log.info("reward scores for %d examples (%d truncated) -> %s", len(result), n_truncated, out)
