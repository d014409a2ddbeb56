"""Toy CLIP / reward model training, the model loaders, and the CLIP and reward scores' numerics."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from vlselect.io import read_parquet_metadata, sha256_file
from vlselect.models import load_clip, load_reward
from vlselect.scoring.clip import clip_score_single, run_in_chunks, score_clip, split_sentences
from vlselect.scoring.reward import resolve_max_length, reward_score_single, score_reward
from vlselect.toy.train_clip import MODEL_NAME, train_toy_clip
from vlselect.toy.train_reward import train_toy_reward

torch.set_num_threads(1)

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
SHAPES = ["circle", "square", "triangle"]


def make_corpus(folder, n: int, seed: int = 0) -> pd.DataFrame:
    """Random coloured-shape images with their descriptions (captions.parquet, preferences.parquet) in ``folder``."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows, prefs = [], []
    for i in range(n):
        img = Image.new("RGB", (64, 64), (245, 245, 245))
        draw = ImageDraw.Draw(img)
        sentences, objects = [], []
        for _ in range(rng.randint(1, 3)):
            colour, shape, row, col = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.randint(0, 1), rng.randint(0, 1)
            x, y = col * 32 + 4, row * 32 + 4
            if shape == "circle":
                draw.ellipse([x, y, x + 24, y + 24], fill=COLOURS[colour])
            elif shape == "square":
                draw.rectangle([x, y, x + 24, y + 24], fill=COLOURS[colour])
            else:
                draw.polygon([(x + 12, y), (x, y + 24), (x + 24, y + 24)], fill=COLOURS[colour])
            sentences.append(f"There is a {colour} {shape} in the {['top', 'bottom'][row]} {['left', 'right'][col]}.")
            objects.append({"shape": shape, "colour": colour, "size": "large", "row": row, "col": col})
        path = f"images/c{i:05d}.png"
        img.save(folder / path)
        caption = " ".join(sentences)
        rows.append({"image_path": path, "caption": caption, "objects": json.dumps(objects)})
        flaw = rng.choice(["repetition", "filler", "short"])
        rejected = {"repetition": " ".join([caption] * 3), "filler": caption + " Overall it is a really nice picture.",
                    "short": " ".join(caption.split()[:3])}[flaw]
        prefs.append({"instruction": "Describe this image in detail.", "chosen": caption, "rejected": rejected,
                      "flaw": flaw})
    pd.DataFrame(rows).to_parquet(folder / "captions.parquet")
    pd.DataFrame(prefs).to_parquet(folder / "preferences.parquet")
    return pd.DataFrame(rows)


def make_manifest(corpus, captions: pd.DataFrame, path, n: int) -> pd.DataFrame:
    """A manifest over the corpus images; answers vary in sentence count (one is empty, one has 12 sentences)."""
    answers = captions["caption"].tolist()[:n]
    answers[1] = ""
    answers[2] = " ".join(f"Sentence number {k} is here." for k in range(12))
    # a repetition loop, and a sentence shared with another answer of the batch (each is encoded once)
    answers[4] = " ".join([answers[0]] * 3 + [answers[5]])
    df = pd.DataFrame({
        "sample_id": [f"s{i:03d}" for i in range(n)],
        "image_path": [str(corpus / p) for p in captions["image_path"][:n]],
        "image_sha256": "x", "instruction": "Describe this image in detail.", "answer": answers, "source": "toy",
    })
    df.to_parquet(path)
    return df


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    corpus = root / "corpus"
    captions = make_corpus(corpus, 80)
    train_toy_clip(corpus_dir=str(corpus), out_dir=str(root / "clip"), steps=15, batch_size=16, lr=1e-3, seed=0)
    train_toy_reward(corpus_dir=str(corpus), out_dir=str(root / "reward"), steps=15, batch_size=8, lr=1e-3, seed=0)
    return root, corpus, captions


def test_split_sentences_keeps_first_ten():
    text = " ".join(f"S{k} ends here." for k in range(12)) + "  "
    assert split_sentences(text) == [f"S{k} ends here." for k in range(10)]
    assert split_sentences("No full stop at the end") == ["No full stop at the end"]
    assert split_sentences("  ") == []


def test_training_writes_models_and_reduces_loss(trained):
    root, _, _ = trained
    clip_metrics = json.loads((root / "clip" / "metrics.json").read_text())
    assert clip_metrics["loss_end"] < clip_metrics["loss_start"]
    assert 0.0 <= clip_metrics["retrieval_accuracy_at_1_of_10"] <= 1.0
    assert clip_metrics["hard_negatives"] and 0.0 <= clip_metrics["hard_negative_accuracy"] <= 1.0
    by_kind = clip_metrics["hard_negative_accuracy_by_kind"]
    assert by_kind and set(by_kind) <= {"colour", "count", "position", "shape"}
    assert min(by_kind.values()) <= clip_metrics["hard_negative_accuracy"] <= max(by_kind.values())
    config = json.loads((root / "clip" / f"{MODEL_NAME}.json").read_text())
    assert config["vision_cfg"]["image_size"] == 64 and config["text_cfg"]["layers"] == 2
    assert clip_metrics["tower"] == "resnet" and isinstance(config["vision_cfg"]["layers"], list)
    reward_metrics = json.loads((root / "reward" / "metrics.json").read_text())
    assert reward_metrics["loss_end"] < reward_metrics["loss_start"]
    assert (root / "reward" / "model.safetensors").is_file()


def test_load_clip_restores_the_saved_weights(trained):
    from safetensors.torch import load_file

    root, _, _ = trained
    weights = root / "clip" / "open_clip_model.safetensors"
    model, preprocess, tokenizer = load_clip(model=MODEL_NAME, pretrained=str(weights),
                                             model_config_dir=str(root / "clip"), device="cpu")
    saved = load_file(str(weights))
    state = model.state_dict()
    assert set(saved) == set(state)
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    assert not model.training and tokenizer(["a red circle"]).shape == (1, 32)
    assert type(model.visual).__name__ == "ModifiedResNet"  # the scoring CLIP's tower, open_clip's RN50 layout


def test_toy_clip_with_a_vit_tower_feeds_the_vlm(tmp_path):
    from vlselect.toy.train_vlm import clip_vision_tower

    corpus = tmp_path / "corpus"
    make_corpus(corpus, 24)
    train_toy_clip(corpus_dir=str(corpus), out_dir=str(tmp_path / "vision"), steps=3, batch_size=8, lr=1e-3, seed=0,
                   tower="vit")
    assert json.loads((tmp_path / "vision" / "metrics.json").read_text())["tower"] == "vit"
    config, state = clip_vision_tower(tmp_path / "vision")
    assert config["num_hidden_layers"] == 2 and "encoder.layers.1.self_attn.qkv.weight" in state
    with pytest.raises(ValueError, match="unknown toy CLIP tower 'convnext'"):
        train_toy_clip(corpus_dir=str(corpus), out_dir=str(tmp_path / "bad"), steps=1, batch_size=8, lr=1e-3, seed=0,
                       tower="convnext")


def test_load_clip_refuses_downloads_and_bad_paths(trained):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_clip(model="ViT-B-32", pretrained="openai", device="cpu", cache_dir=str(trained[0] / "empty_cache"))
    with pytest.raises(FileNotFoundError, match="neither a file nor a known"):
        load_clip(model="ViT-B-32", pretrained="/no/such/file.safetensors", device="cpu")
    with pytest.raises(ValueError, match="hub"):
        load_clip(model="hf-hub:org/repo", pretrained=None, device="cpu")


def test_clip_score_batched_equals_single_and_is_batch_size_invariant(trained, tmp_path):
    root, corpus, captions = trained
    clip_dir = root / "clip"
    weights = str(clip_dir / "open_clip_model.safetensors")
    manifest = make_manifest(corpus, captions, tmp_path / "manifest.parquet", 20)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    manifest.loc[3, "image_path"] = str(tmp_path / "broken.png")
    manifest.to_parquet(tmp_path / "manifest.parquet")

    results = {}
    for bs in (1, 7, 64):
        out = tmp_path / f"clip_{bs}.parquet"
        score_clip(manifest=str(tmp_path / "manifest.parquet"), out=str(out), model=MODEL_NAME, pretrained=weights,
                   model_config_dir=str(clip_dir), batch_size=bs, device="cpu")
        results[bs] = pd.read_parquet(out)
    df = results[7]
    assert df["sample_id"].tolist() == manifest["sample_id"].tolist()
    assert df.loc[1, "status"] == "skipped" and df.loc[3, "status"] == "failed"
    assert np.isnan(df.loc[1, "score"]) and np.isnan(df.loc[3, "score"])
    assert (df.drop(index=[1, 3])["status"] == "ok").all()
    for bs in (1, 64):
        np.testing.assert_allclose(results[bs]["score"], df["score"], atol=1e-4, equal_nan=True)

    model, preprocess, tokenizer = load_clip(model=MODEL_NAME, pretrained=weights, model_config_dir=str(clip_dir),
                                             device="cpu")
    for i in (0, 2, 4, 5, 19):
        single = clip_score_single(model, preprocess, tokenizer, manifest.loc[i, "image_path"],
                                   manifest.loc[i, "answer"], "cpu")
        assert abs(single - df.loc[i, "score"]) < 1e-4
    meta = read_parquet_metadata(tmp_path / "clip_7.parquet")
    assert meta["indicator"] == "clip" and meta["checksum"] == sha256_file(weights)


def test_clip_score_shards_cover_the_manifest(trained, tmp_path):
    root, corpus, captions = trained
    make_manifest(corpus, captions, tmp_path / "manifest.parquet", 10)
    kw = dict(manifest=str(tmp_path / "manifest.parquet"), model=MODEL_NAME,
              pretrained=str(root / "clip" / "open_clip_model.safetensors"), model_config_dir=str(root / "clip"),
              batch_size=4, device="cpu")
    score_clip(out=str(tmp_path / "all.parquet"), **kw)
    parts = []
    for shard in range(3):
        score_clip(out=str(tmp_path / f"s{shard}.parquet"), shard=shard, n_shards=3, **kw)
        parts.append(pd.read_parquet(tmp_path / f"s{shard}.parquet"))
    joined = pd.concat(parts, ignore_index=True)
    full = pd.read_parquet(tmp_path / "all.parquet")
    assert joined["sample_id"].tolist() == full["sample_id"].tolist()
    np.testing.assert_allclose(joined["score"], full["score"], atol=1e-5, equal_nan=True)


def test_run_in_chunks_halves_on_out_of_memory():
    seen = []

    def fn(a, b):
        seen.append(b - a)
        if b - a > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return list(range(a, b))

    state = {"chunk": 16}
    parts = run_in_chunks(fn, 21, 16, state)
    assert sum(parts, []) == list(range(21))
    assert state["chunk"] == 4 and seen[:3] == [16, 8, 4]
    assert max(seen[3:]) <= 4  # the smaller size is kept for the rest of the run


def test_reward_score_matches_single_and_counts_truncation(trained, tmp_path):
    root, corpus, captions = trained
    manifest = make_manifest(corpus, captions, tmp_path / "manifest.parquet", 12)
    manifest.loc[4, "answer"] = " ".join(["red circle"] * 400)  # far beyond the toy model's 256 tokens
    manifest.to_parquet(tmp_path / "manifest.parquet")
    path = str(root / "reward")
    results = {}
    for bs in (1, 5):
        out = tmp_path / f"reward_{bs}.parquet"
        score_reward(manifest=str(tmp_path / "manifest.parquet"), out=str(out), path=path, batch_size=bs, device="cpu")
        results[bs] = pd.read_parquet(out)
    df = results[5]
    assert df["sample_id"].tolist() == manifest["sample_id"].tolist() and (df["status"] == "ok").all()
    np.testing.assert_allclose(results[1]["score"], df["score"], atol=1e-4)
    model, tokenizer = load_reward(path=path, device="cpu")
    limit = resolve_max_length(model, tokenizer, None)
    assert limit == 256
    for i in range(len(manifest)):
        single = reward_score_single(model, tokenizer, manifest.loc[i, "instruction"], manifest.loc[i, "answer"],
                                     "cpu", limit)
        assert abs(single - df.loc[i, "score"]) < 1e-4
    meta = read_parquet_metadata(tmp_path / "reward_5.parquet")
    too_long = [i for i in range(len(manifest))
                if len(tokenizer(manifest.loc[i, "instruction"], manifest.loc[i, "answer"])["input_ids"]) > limit]
    assert 4 in too_long
    assert meta["n_truncated"] == len(too_long) and meta["indicator"] == "reward" and len(meta["checksum"]) == 64


def test_load_reward_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="local"):
        load_reward(path=str(tmp_path / "nothing_here"), device="cpu")


def test_reward_tokenizer_ids_are_the_same_in_every_process():
    # The tokenizers WordPiece trainer numbered tokens in Rust's per-process hash order, so two runs trained
    # different reward models. Each process here has its own hash seed; the vocabularies must be identical.
    import subprocess
    import sys

    code = ("import json; from vlselect.toy.train_reward import build_tokenizer; "
            "texts = ['A small red star in the upper left.', 'Two large blue squares, one green circle!'] * 5; "
            "tok = build_tokenizer(texts); print(json.dumps(tok.get_vocab(), sort_keys=True)); "
            "print(tok('a red circle', 'blue stars')['input_ids'])")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    vocab = json.loads(runs[0].splitlines()[0])
    assert {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "red", "##r", "circle"} <= set(vocab)
    assert vocab["[UNK]"] not in json.loads(runs[0].splitlines()[1])  # known words, or spelled from known pieces


def test_toy_clip_trains_without_twins_when_captions_name_no_scene(tmp_path):
    corpus = tmp_path / "corpus"
    captions = make_corpus(corpus, 24)
    captions.assign(objects="[]").to_parquet(corpus / "captions.parquet")  # no scene known: no twin can be made
    train_toy_clip(corpus_dir=str(corpus), out_dir=str(tmp_path / "clip"), steps=3, batch_size=8, lr=1e-3, seed=0)
    metrics = json.loads((tmp_path / "clip" / "metrics.json").read_text())
    assert metrics["hard_negatives"] and metrics["hard_negative_accuracy"] is None
    assert metrics["hard_negative_accuracy_by_kind"] == {}
    assert 0.0 <= metrics["retrieval_accuracy_at_1_of_10"] <= 1.0
