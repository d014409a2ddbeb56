"""Length score: longer answers tend to be more detailed, so InstructionGPT-4 uses answer length as an indicator.

score = 10 * length / max_len, with length in characters (default) or in tokens of a local tokenizer. The default
max_len 1009 is the longest answer (in characters) of cc_sbu_align, the paper's dataset, which puts scores in [0, 10].
Longer answers are not clipped: the selector sees the true ratio.

``repeats="once"`` measures an answer with its repeated sentences removed
(:func:`vlselect.text.drop_repeated_sentences`). Length stands for detail, and a decoder stuck in a loop writes the
longest answers of all without adding any: counted in full (``repeats="count"``, the paper's indicator), every loop
gets the top length scores, and any positive length weight lifts it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from vlselect.io import write_parquet
from vlselect.shards import shard_rows
from vlselect.text import drop_repeated_sentences

log = logging.getLogger(__name__)


def score_length(*, manifest: str, out: str, unit: str = "chars", max_len: int = 1009, tokenizer: str | None = None,
                 repeats: str = "once", shard: int = 0, n_shards: int = 1) -> None:
    """Score each answer by its length: 10 * len(answer) / max_len; writes ``out`` (sample_id, score, status).

    ``unit="tokens"`` counts tokens of the AutoTokenizer at the local path ``tokenizer`` (no special tokens).
    ``repeats="once"`` counts each distinct sentence once; ``"count"`` (the paper's) counts every sentence.
    """
    if max_len < 1:
        raise ValueError(f"scoring.length.max_len must be at least 1, got {max_len}")
    if repeats not in ("count", "once"):
        raise ValueError(f"scoring.length.repeats must be 'count' or 'once', got {repeats!r}")
    df = pd.read_parquet(manifest, columns=["sample_id", "answer"])
    df = df.iloc[shard_rows(len(df), shard, n_shards)].reset_index(drop=True)
    answers = df["answer"].fillna("").astype(str).tolist()
    if repeats == "once":
        answers = [drop_repeated_sentences(a) for a in answers]
    if unit == "chars":
        lengths = np.array([len(a) for a in answers], dtype=float)
    elif unit == "tokens":
        if not tokenizer:
            raise ValueError("scoring.length.unit is 'tokens' but scoring.length.tokenizer is not set; "
                             "give a local tokenizer path or use unit: chars")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
        ids = tok(answers, add_special_tokens=False)["input_ids"] if answers else []
        lengths = np.array([len(x) for x in ids], dtype=float)
    else:
        raise ValueError(f"scoring.length.unit must be 'chars' or 'tokens', got {unit!r}")
    result = pd.DataFrame({"sample_id": df["sample_id"], "score": 10.0 * lengths / max_len, "status": "ok"})
    n_over = int((lengths > max_len).sum())
    if n_over:
        log.info("%d answers are longer than max_len=%d (scores above 10)", n_over, max_len)
    metadata = {"indicator": "length", "model": unit, "checksum": None, "prompt_version": None,
                "unit": unit, "max_len": max_len, "tokenizer": tokenizer, "repeats": repeats, "n_over_max_len": n_over,
                "shard": [shard, n_shards]}
    write_parquet(result, out, metadata=metadata)
