"""Train the toy world's tiny open_clip models on the pre-training corpus.

A toy CLIP is a custom open_clip architecture ("vlselect-toy-clip") registered from a JSON config and using
open_clip's bundled BPE tokenizer, so the scoring code loads it exactly as it would load ViT-bigG-14. Two image
towers are offered (:func:`toy_clip_config`):

- ``resnet``, the scoring CLIP: open_clip's ModifiedResNet (RN50's layout, one bottleneck per stage, width 16).
  Convolutions see shapes: the right caption beats its twin with one shape made false for 0.76 of held-out
  images, where every ViT recipe tried stayed near chance (0.55 to 0.60; BENCHMARKS.md).
- ``vit``, the toy VLM's image tower: a 64-px ViT with 8-px patches and fixed 2-D sine-cosine position embeddings,
  two layers of width 64, laid out as transformers' Blip2 vision tower (vlselect.toy.train_vlm.clip_vision_tower),
  as MiniGPT-4 looks through EVA-CLIP's ViT.

Both share the text transformer (two layers of width 64) and the training recipe. It is contrastive, with the text
side computed the way the CLIP score computes it (mean of L2-normalised sentence embeddings, see
vlselect.scoring.clip), so that the score measures what training optimised.

With ``hard_negatives`` each image also meets its caption's twins, one per kind of fact the caption states
(colour, count, position, shape), each with that one fact made false (:func:`vlselect.toy.describe.swap_attribute`),
as in NegCLIP. Random captions differ from the right one in almost everything, so a model trained on them alone
learns the scene's gist and barely notices a single wrong colour, which is the commonest flaw of the instruction
data. Only the edited sentence is new to the text encoder (encode_answers encodes each distinct sentence once).
The ViT learns positions only with all of fixed position embeddings, a twin of every kind for every caption and
about 2,000 steps; it learns them after some 800 steps.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vlselect.io import atomic_path, write_json
from vlselect.runtime import seed_everything
from vlselect.scoring.clip import encode_answers, encode_images
from vlselect.toy.describe import TWIN_KINDS, swap_attribute
from vlselect.validate import load_rgb

log = logging.getLogger(__name__)

MODEL_NAME = "vlselect-toy-clip"
WEIGHTS_NAME = "open_clip_model.safetensors"
HELD_OUT_FRACTION = 0.1
N_CANDIDATES = 10  # retrieval: the right caption among this many
TOWERS = ("resnet", "vit")


def toy_clip_config(image_size: int = 64, tower: str = "resnet") -> dict:
    """open_clip model config of a toy CLIP (keys as in open_clip/model_configs/*.json).

    ``tower`` is ``resnet`` (the scoring CLIP) or ``vit`` (the toy VLM's image tower); see the module docstring.
    """
    if tower == "resnet":
        # a list of layers makes open_clip build its ModifiedResNet; width 16 gives 512 channels at the last stage,
        # pooled by attention (head width 64) over its 2x2 grid at 64 px
        vision = {"image_size": image_size, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64}
    elif tower == "vit":
        # no_ln_pre: the same layer layout as transformers' Blip2 vision tower, so the toy VLM can see through
        # this ViT once it is trained (vlselect.toy.train_vlm.clip_vision_tower)
        vision = {"image_size": image_size, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8,
                  "no_ln_pre": True, "pos_embed_type": "sin_cos_2d"}
    else:
        raise ValueError(f"unknown toy CLIP tower {tower!r}; use one of {TOWERS}")
    return {
        "embed_dim": 64,
        "vision_cfg": vision,
        # Sentences of the toy captions are short; 32 tokens hold them with room to spare and cost far less than 77.
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


def train_toy_clip(*, corpus_dir: str, out_dir: str, steps: int, batch_size: int, lr: float, seed: int,
                   image_size: int = 64, hard_negatives: bool = True, tower: str = "resnet") -> None:
    """Train a toy CLIP on corpus/captions.parquet; writes its config JSON, weights and metrics.json to ``out_dir``.

    metrics.json holds the held-out retrieval accuracy (right caption among 10 for images never trained on),
    the held-out hard-negative accuracy (the caption scores above its twin with one fact made false), also by
    kind of fact, the loss at the start and end of training, and the training time.
    """
    import open_clip
    from safetensors.torch import save_model

    seed_everything(seed)
    corpus = Path(corpus_dir)
    captions = pd.read_parquet(corpus / "captions.parquet", columns=["image_path", "caption", "objects"])
    if len(captions) < 2 * N_CANDIDATES:
        raise ValueError(f"{corpus}/captions.parquet has {len(captions)} rows; the toy CLIP needs at least "
                         f"{2 * N_CANDIDATES} (raise toy.corpus_size)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / f"{MODEL_NAME}.json"
    write_json(toy_clip_config(image_size, tower), config_path)
    open_clip.add_model_config(config_path)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)

    # Decode every image once (the corpus is small); fp16 storage halves the memory.
    images = torch.stack([preprocess(load_rgb(str(corpus / p))).half() for p in
                          tqdm(captions["image_path"], desc="decode corpus", file=sys.stderr)])
    texts = captions["caption"].tolist()
    twin_pairs = caption_twins(captions, seed)
    twins = [[twin for twin, _ in pairs] for pairs in twin_pairs]
    rng = np.random.default_rng(seed)
    held, train = held_out_split(len(captions), rng)

    # fused: one pass over each tensor; unfused, updating the 49k x 64 token embedding took a seventh of a step
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, fused=True)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    device = torch.device("cpu")
    losses = []
    start = time.perf_counter()
    model.train()
    for step in tqdm(range(steps), desc="train toy clip", file=sys.stderr):
        idx = rng.choice(train, size=min(batch_size, len(train)), replace=False)
        img = encode_images(model, images[idx].float(), device)
        negatives = [twin for i in idx for twin in twins[i]] if hard_negatives else []
        txt, _ = encode_answers(model, tokenizer, [texts[i] for i in idx] + negatives, device)
        txt = torch.nn.functional.normalize(txt, dim=-1)
        # images choose among every caption and twin of the batch; captions choose among the images only
        logits = model.logit_scale.exp() * img @ txt.T
        target = torch.arange(len(idx))
        loss = (torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits[:, :len(idx)].T, target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
    train_seconds = time.perf_counter() - start
    model.eval()

    accuracy = _retrieval_accuracy(model, tokenizer, images[held].float(), [texts[i] for i in held], rng)
    twin_by_kind = twin_accuracy_by_kind(model, tokenizer, images, texts, twin_pairs, held)
    twin_accuracy = twin_by_kind.pop("all", None)
    with atomic_path(out / WEIGHTS_NAME, ".safetensors") as tmp:
        save_model(model, str(tmp))
    window = max(1, min(20, steps // 5))
    metrics = {
        "model": MODEL_NAME, "tower": tower, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "hard_negatives": hard_negatives,
        "n_train": int(len(train)), "n_held_out": int(len(held)),
        "loss_start": float(np.mean(losses[:window])), "loss_end": float(np.mean(losses[-window:])),
        "retrieval_accuracy_at_1_of_10": accuracy, "hard_negative_accuracy": twin_accuracy,
        "hard_negative_accuracy_by_kind": twin_by_kind,
        "train_seconds": round(train_seconds, 1),
    }
    write_json(metrics, out / "metrics.json")
    log.info("toy CLIP (%s tower): held-out retrieval accuracy %.3f (right caption among %d), caption above its "
             "one-fact twin %s (by kind %s), loss %.3f -> %.3f, %.0f s", tower, accuracy, N_CANDIDATES,
             "n/a (no twins)" if twin_accuracy is None else f"{twin_accuracy:.3f}",
             {k: round(v, 3) for k, v in twin_by_kind.items()}, metrics["loss_start"], metrics["loss_end"],
             train_seconds)


def _retrieval_accuracy(model, tokenizer, images: torch.Tensor, texts: list[str], rng) -> float:
    """Share of held-out images whose own caption scores highest among it and 9 other held-out captions."""
    device = torch.device("cpu")
    with torch.inference_mode():
        img = encode_images(model, images, device)
        txt = torch.cat([encode_answers(model, tokenizer, texts[i:i + 256], device)[0]
                         for i in range(0, len(texts), 256)])
    sims = (img @ txt.T).numpy()
    hits = 0
    for i in range(len(texts)):
        others = rng.choice(np.delete(np.arange(len(texts)), i), size=N_CANDIDATES - 1, replace=False)
        hits += int(sims[i, i] > sims[i, others].max())
    return hits / len(texts)


def caption_twins(captions: pd.DataFrame, seed: int) -> list[list[tuple[str, str]]]:
    """Each caption's twins as (twin, kind of edit): one per kind of fact it states (:func:`swap_attribute`).

    The twins have their own random stream, so switching them off leaves the training batches as they were.
    """
    rng = np.random.default_rng([seed, 1])
    out = []
    for text, objects in zip(captions["caption"], captions["objects"]):
        objects = json.loads(objects)
        made = (swap_attribute(text, objects, rng, kinds=(kind,)) for kind in TWIN_KINDS)
        out.append([twin for twin in made if twin is not None])
    return out


def held_out_split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(held-out rows, training rows) of ``n`` captions: the first draw of the training stream ``rng``."""
    order = rng.permutation(n)
    n_held = max(N_CANDIDATES, int(round(HELD_OUT_FRACTION * n)))
    return order[:n_held], order[n_held:]


def twin_wins(model, tokenizer, images: torch.Tensor, texts: list[str], twins: list[str]) -> np.ndarray:
    """Per image, whether its caption's CLIP score beats its twin's (one fact false)."""
    device = torch.device("cpu")
    with torch.inference_mode():
        img = encode_images(model, images, device)
        right = torch.cat([encode_answers(model, tokenizer, texts[a:a + 256], device)[0]
                           for a in range(0, len(texts), 256)])
        wrong = torch.cat([encode_answers(model, tokenizer, twins[a:a + 256], device)[0]
                           for a in range(0, len(twins), 256)])
    return ((img * right).sum(-1) > (img * wrong).sum(-1)).numpy()


def twin_accuracy_by_kind(model, tokenizer, images: torch.Tensor, texts: list[str],
                          twins: list[list[tuple[str, str]]], rows) -> dict[str, float]:
    """Share of (image, twin) pairs of ``rows`` where the caption beats the twin (:func:`twin_wins`), per kind
    of edit and over all ("all"); empty when those captions have no twins."""
    pairs = [(i, twin, kind) for i in rows for twin, kind in twins[i]]
    if not pairs:
        return {}
    rows_of = torch.tensor([i for i, _, _ in pairs])
    wins = twin_wins(model, tokenizer, images[rows_of].float(), [texts[i] for i, _, _ in pairs],
                     [twin for _, twin, _ in pairs])
    kinds = pd.Series([kind for _, _, kind in pairs])
    return {k: float(v) for k, v in pd.Series(wins.astype(np.float64)).groupby(kinds).mean().items()} | {
        "all": float(wins.mean())}
