"""Length score: characters or tokens, scaled by max_len; shards; clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlselect.io import read_parquet_metadata, write_parquet
from vlselect.scoring.length import score_length

ANSWERS = ["", "short one", "a much longer answer with many words in it", "x" * 2000]


@pytest.fixture
def manifest(tmp_path):
    df = pd.DataFrame({"sample_id": [f"s{i}" for i in range(4)], "image_path": "/nonexistent.png",
                       "image_sha256": "0", "instruction": "Describe.", "answer": ANSWERS, "source": "t"})
    write_parquet(df, tmp_path / "m.parquet")
    return str(tmp_path / "m.parquet")


def test_chars(manifest, tmp_path):
    score_length(manifest=manifest, out=str(tmp_path / "l.parquet"), max_len=100)
    df = pd.read_parquet(tmp_path / "l.parquet")
    assert df["sample_id"].tolist() == ["s0", "s1", "s2", "s3"] and set(df["status"]) == {"ok"}
    np.testing.assert_allclose(df["score"], [10 * len(a) / 100 for a in ANSWERS])
    meta = read_parquet_metadata(tmp_path / "l.parquet")
    assert meta["indicator"] == "length" and meta["unit"] == "chars" and meta["n_over_max_len"] == 1


def test_default_max_len_and_shard(manifest, tmp_path):
    score_length(manifest=manifest, out=str(tmp_path / "l.parquet"), shard=1, n_shards=2)
    df = pd.read_parquet(tmp_path / "l.parquet")
    assert df["sample_id"].tolist() == ["s2", "s3"]
    np.testing.assert_allclose(df["score"], [10 * len(ANSWERS[2]) / 1009, 10 * 2000 / 1009])


def test_tokens_with_local_tokenizer(manifest, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for a in ANSWERS for w in a.split()})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]"] + words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    score_length(manifest=manifest, out=str(tmp_path / "l.parquet"), unit="tokens", max_len=10,
                 tokenizer=str(tmp_path / "tok"))
    df = pd.read_parquet(tmp_path / "l.parquet")
    np.testing.assert_allclose(df["score"], [0.0, 2.0, 9.0, 1.0])  # 0, 2, 9 and 1 whitespace words


def test_errors(manifest, tmp_path):
    with pytest.raises(ValueError, match="tokenizer"):
        score_length(manifest=manifest, out=str(tmp_path / "l.parquet"), unit="tokens")
    with pytest.raises(ValueError, match="chars"):
        score_length(manifest=manifest, out=str(tmp_path / "l.parquet"), unit="words")
    assert not (tmp_path / "l.parquet").exists()


def test_repeats_once_counts_each_distinct_sentence_once(tmp_path):
    clean = "A red circle sits at the top. A blue square is below it."
    looped = clean + " A blue square is below it." * 4 + " a BLUE square is below  it!"
    df = pd.DataFrame({"sample_id": ["clean", "looped"], "image_path": "/nonexistent.png", "image_sha256": "0",
                       "instruction": "Describe.", "answer": [clean, looped], "source": "t"})
    write_parquet(df, tmp_path / "m.parquet")
    for repeats in ("count", "once"):
        score_length(manifest=str(tmp_path / "m.parquet"), out=str(tmp_path / f"{repeats}.parquet"), max_len=100,
                     repeats=repeats)
    count, once = (pd.read_parquet(tmp_path / f"{r}.parquet")["score"].tolist() for r in ("count", "once"))
    assert count == [10 * len(clean) / 100, 10 * len(looped) / 100]
    assert once == [10 * len(clean) / 100] * 2  # the loop says what the clean answer says, no more
    assert read_parquet_metadata(tmp_path / "once.parquet")["repeats"] == "once"
    with pytest.raises(ValueError, match="repeats"):
        score_length(manifest=str(tmp_path / "m.parquet"), out=str(tmp_path / "x.parquet"), repeats="drop")
