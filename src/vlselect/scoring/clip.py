"""CLIP score: how well an answer describes its image (InstructionGPT-4, section 3.1).

The answer is split into sentences (the first 10 are kept, as CLIP's text encoder reads at most 77
tokens); each sentence is encoded and L2-normalised, the sentence embeddings are averaged, and the
score is 100 x the dot product of that mean with the L2-normalised image embedding. The mean is NOT
renormalised, so the score equals the average of the per-sentence CLIP scores (100 x cosine): a
sentence that contradicts the image lowers the score in proportion, whereas renormalising would
reward answers whose sentences all point the same way. Answers without any sentence are "skipped".

This module also holds the batched image/answer encoder that features.embed reuses
(:func:`embed_rows`), so scoring and features compute embeddings in exactly one way.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from vlselect.io import write_parquet
from vlselect.models import clip_checksum, load_clip
from vlselect.runtime import pick_device
from vlselect.shards import shard_rows
from vlselect.text import split_sentences as text_sentences
from vlselect.validate import load_rgb

log = logging.getLogger(__name__)

MAX_SENTENCES = 10


def split_sentences(text: str, max_sentences: int = MAX_SENTENCES) -> list[str]:
    """The answer's first ``max_sentences`` non-empty sentences (:func:`vlselect.text.split_sentences`)."""
    return text_sentences(text)[:max_sentences]


def autocast(device: torch.device):
    """fp16 autocast on CUDA (half the memory, tensor cores); plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def encode_images(model, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """L2-normalised image embeddings (fp32) for a batch of preprocessed images."""
    with autocast(device):
        emb = model.encode_image(images.to(device, non_blocking=True))
    return torch.nn.functional.normalize(emb.float(), dim=-1)


def encode_answers(model, tokenizer, answers: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the L2-normalised embeddings of each answer's sentences (not renormalised).

    Returns (embeddings [n, d] fp32, sentence counts [n]); an answer without sentences gets a zero row
    and count 0. Each distinct sentence of the batch is encoded once, all in one forward pass: repetition
    loops and templated answers repeat sentences, and a sentence's embedding does not depend on its
    neighbours. Gradients flow when the caller does not disable them (the toy CLIP trains through this
    very function).
    """
    index: dict[str, int] = {}
    sentence_ids, owner = [], []
    for i, answer in enumerate(answers):
        for part in split_sentences(answer):
            sentence_ids.append(index.setdefault(part, len(index)))
            owner.append(i)
    counts = torch.bincount(torch.tensor(owner, dtype=torch.long), minlength=len(answers)).to(device)
    if not index:
        return torch.zeros(len(answers), _embed_dim(model), device=device), counts
    with autocast(device):
        emb = model.encode_text(tokenizer(list(index)).to(device, non_blocking=True))
    emb = torch.nn.functional.normalize(emb.float(), dim=-1)[torch.tensor(sentence_ids, device=device)]
    total = torch.zeros(len(answers), emb.shape[-1], device=device, dtype=emb.dtype)
    total = total.index_add(0, torch.tensor(owner, device=device), emb)
    return total / counts.clamp(min=1).unsqueeze(-1).to(emb.dtype), counts


def _embed_dim(model) -> int:
    return int(model.visual.output_dim)


class _ImageDataset(torch.utils.data.Dataset):
    """Preprocessed images for DataLoader workers; a file that fails to decode yields ok=False, not a crash."""

    def __init__(self, paths: list[str], preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.preprocess(load_rgb(self.paths[i])), True, ""
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return None, False, f"{type(exc).__name__}: {exc}"


def _collate(items):
    ok = [it[1] for it in items]
    good = [it[0] for it in items if it[1]]
    images = torch.stack(good) if good else None
    return images, ok, [it[2] for it in items]


def run_in_chunks(fn, n: int, chunk: int, on_oom_state: dict | None = None) -> list:
    """Apply ``fn(start, stop)`` over ``range(n)`` in chunks; on CUDA out-of-memory halve the chunk and retry.

    ``on_oom_state`` (a dict with key "chunk") carries the reduced chunk size across calls, so after one
    out-of-memory error the rest of the run keeps the smaller size instead of failing again each batch.
    """
    state = on_oom_state if on_oom_state is not None else {"chunk": chunk}
    state.setdefault("chunk", chunk)
    results, start = [], 0
    while start < n:
        size = state["chunk"]
        try:
            results.append(fn(start, min(start + size, n)))
            start += size
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise RuntimeError("out of GPU memory even at batch size 1; use a smaller model or a larger GPU")
            state["chunk"] = size // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("CUDA out of memory at batch size %d; retrying with %d", size, state["chunk"])
    return results


def embed_manifest_shard(*, manifest: str, model: str, pretrained: str | None, model_config_dir: str | None,
                         cache_dir: str | None, batch_size: int, num_workers: int, device, shard: int,
                         n_shards: int):
    """This shard's manifest rows and their :func:`embed_rows` result, with the CLIP model loaded once.

    Shared by the CLIP score and the feature embeddings so both read the same rows the same way.
    """
    df = pd.read_parquet(manifest, columns=["sample_id", "image_path", "answer"])
    df = df.iloc[shard_rows(len(df), shard, n_shards)].reset_index(drop=True)
    clip, preprocess, tokenizer = load_clip(model=model, pretrained=pretrained, model_config_dir=model_config_dir,
                                            device=device, cache_dir=cache_dir)
    return df, embed_rows(clip, preprocess, tokenizer, image_paths=df["image_path"].tolist(),
                          answers=df["answer"].tolist(), batch_size=batch_size, num_workers=num_workers,
                          device=device)


def embed_rows(model, preprocess, tokenizer, *, image_paths: list[str], answers: list[str], batch_size: int,
               num_workers: int, device: torch.device):
    """Batched CLIP embeddings of images and answers, in input order.

    Returns (image [n, d] fp32 L2-normalised, text [n, d] fp32 sentence mean, image_ok [n] bool,
    n_sentences [n] int, errors [n] str). Images are decoded by DataLoader workers; each batch is sent
    to the model in chunks whose size halves on CUDA out-of-memory.
    """
    loader = torch.utils.data.DataLoader(
        _ImageDataset(list(image_paths), preprocess), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=_collate, pin_memory=device.type == "cuda")
    state = {"chunk": batch_size}
    img_out, txt_out, ok_out, n_out, err_out = [], [], [], [], []
    offset = 0
    with torch.inference_mode():
        for images, ok, errors in tqdm(loader, desc="clip", file=sys.stderr, unit="batch"):
            n = len(ok)
            batch_answers = answers[offset:offset + n]
            ok_t = torch.tensor(ok)
            img = torch.full((n, _embed_dim(model)), float("nan"))
            if images is not None:
                parts = run_in_chunks(lambda a, b: encode_images(model, images[a:b], device).cpu(),
                                      len(images), batch_size, state)
                img[ok_t] = torch.cat(parts)
            txt_parts = run_in_chunks(lambda a, b: encode_answers(model, tokenizer, batch_answers[a:b], device),
                                      n, batch_size, state)
            img_out.append(img)
            txt_out.append(torch.cat([t.cpu() for t, _ in txt_parts]))
            n_out.append(torch.cat([c.cpu() for _, c in txt_parts]))
            ok_out += ok
            err_out += errors
            offset += n
    if not img_out:
        d = _embed_dim(model)
        return np.zeros((0, d), np.float32), np.zeros((0, d), np.float32), np.zeros(0, bool), np.zeros(0, int), []
    return (torch.cat(img_out).numpy(), torch.cat(txt_out).numpy(), np.array(ok_out, dtype=bool),
            torch.cat(n_out).numpy(), err_out)


def clip_score_single(model, preprocess, tokenizer, image_path: str, answer: str, device) -> float:
    """Reference CLIP score of one example, one sentence at a time (batch size one, as the original code).

    Used by the tests and the benchmark to check the batched pipeline; NaN when the answer has no sentence.
    """
    device = torch.device(device)
    sentences = split_sentences(answer)
    if not sentences:
        return float("nan")
    with torch.inference_mode():
        image = preprocess(load_rgb(image_path)).unsqueeze(0)
        img = encode_images(model, image, device)[0]
        embs = []
        for sentence in sentences:
            with autocast(device):
                e = model.encode_text(tokenizer([sentence]).to(device))
            embs.append(torch.nn.functional.normalize(e.float(), dim=-1)[0])
        return float(100.0 * torch.dot(torch.stack(embs).mean(0), img))


def score_clip(*, manifest: str, out: str, model: str, pretrained: str | None, model_config_dir: str | None = None,
               cache_dir: str | None = None, batch_size: int = 128, num_workers: int = 0, device: str = "auto",
               shard: int = 0, n_shards: int = 1) -> None:
    """Score each (image, answer) pair with CLIP: 100 x image embedding . mean sentence embedding.

    Writes ``out`` (sample_id, score, status) for this shard's rows in manifest order; an image that fails
    to decode gets status "failed", an answer without sentences "skipped", both with score NaN.
    """
    df, (img, txt, ok, n_sent, errors) = embed_manifest_shard(
        manifest=manifest, model=model, pretrained=pretrained, model_config_dir=model_config_dir,
        cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers, device=pick_device(device),
        shard=shard, n_shards=n_shards)
    scores = 100.0 * (img * txt).sum(axis=1)
    status = np.where(~ok, "failed", np.where(n_sent == 0, "skipped", "ok"))
    scores = np.where(status == "ok", scores, np.nan)
    for sid, err in zip(df["sample_id"], errors):
        if err:
            log.warning("image of %s could not be decoded: %s", sid, err)
    result = pd.DataFrame({"sample_id": df["sample_id"], "score": scores.astype(float), "status": status})
    metadata = {"indicator": "clip", "model": model, "pretrained": pretrained,
                "checksum": clip_checksum(model=model, pretrained=pretrained, cache_dir=cache_dir),
                "prompt_version": None, "max_sentences": MAX_SENTENCES, "shard": [shard, n_shards]}
    write_parquet(result, out, metadata=metadata)
    log.info("clip scores for %d examples (%d failed, %d skipped) -> %s", len(result),
             int((status == "failed").sum()), int((status == "skipped").sum()), out)
