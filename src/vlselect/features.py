"""Image and answer embeddings, and their PCA reduction (the selector's and the clustering's features).

``embed`` writes raw embeddings in manifest order: image.npy (CLIP image tower, L2-normalised) and
text.npy (the answer: by default the CLIP text tower's mean over the first 10 sentences, computed by
the same code as the CLIP score; or a transformers encoder with mean or [CLS] pooling). ``fit_pca``
then fits one PCA per modality, once, on all rows, so every example is projected by the same axes
whatever shard or subset it falls in.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vlselect.io import atomic_path, write_npy, write_parquet
from vlselect.models import load_text_encoder
from vlselect.runtime import pick_device
from vlselect.scoring.clip import autocast, embed_manifest_shard, run_in_chunks

log = logging.getLogger(__name__)


def embed(*, manifest: str, out_dir: str, model: str, pretrained: str | None, model_config_dir: str | None = None,
          cache_dir: str | None = None, batch_size: int = 128, num_workers: int = 0, device: str = "auto",
          text_encoder: str = "clip", pooling: str = "mean", shard: int = 0, n_shards: int = 1) -> None:
    """Embed this shard's images and answers; writes image.npy, text.npy (float32) and ids.parquet to ``out_dir``.

    ``text_encoder`` is "clip" (CLIP text tower, sentence mean as in the CLIP score) or the local path of a
    transformers encoder, pooled by ``pooling`` ("mean" over real tokens, or "cls").
    """
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', not {pooling!r}")
    dev = pick_device(device)
    df, (image, text, ok, _, errors) = embed_manifest_shard(
        manifest=manifest, model=model, pretrained=pretrained, model_config_dir=model_config_dir,
        cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers, device=dev, shard=shard,
        n_shards=n_shards)
    if not ok.all():
        bad = [f"{sid} ({err})" for sid, err, good in zip(df["sample_id"], errors, ok) if not good]
        raise RuntimeError(f"{len(bad)} images could not be decoded, e.g. {bad[:3]}; the manifest should hold only "
                           "validated examples, so re-run the validate step")
    if text_encoder != "clip":
        text = encode_texts_hf(df["answer"].tolist(), path=text_encoder, pooling=pooling, batch_size=batch_size,
                               device=dev)
    out = Path(out_dir)
    write_npy(image.astype(np.float32), out / "image.npy")
    write_npy(text.astype(np.float32), out / "text.npy")
    write_parquet(df[["sample_id"]], out / "ids.parquet",
                  metadata={"model": model, "pretrained": pretrained, "text_encoder": text_encoder, "pooling": pooling})
    log.info("embedded %d examples: image %s, text %s -> %s", len(df), image.shape, text.shape, out)


def encode_texts_hf(texts: list[str], *, path: str, pooling: str, batch_size: int, device) -> np.ndarray:
    """Embeddings of ``texts`` from a transformers encoder: mean over non-padding tokens, or the first ([CLS]) token."""
    model, tokenizer = load_text_encoder(path=path, device=device)
    limit = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 10**9))
    state = {"chunk": batch_size}
    out = []

    def run(a: int, b: int) -> torch.Tensor:
        enc = tokenizer(texts[a:b], padding=True, truncation=True, max_length=limit, return_tensors="pt").to(device)
        with autocast(device):
            hidden = model(**enc).last_hidden_state.float()
        if pooling == "cls":
            return hidden[:, 0].cpu()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu()

    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc="text encoder", file=sys.stderr, unit="batch"):
            stop = min(start + batch_size, len(texts))
            out += run_in_chunks(lambda a, b: run(start + a, start + b), stop - start, batch_size, state)
    return torch.cat(out).numpy()


def fit_pca(*, features_dir: str, out: str, pca_dim: int = 6, seed: int = 0) -> None:
    """Fit one PCA per modality on ALL rows of features_dir (once) and write the projections to ``out``.

    Writes pca.parquet (sample_id, img_pc0.., txt_pc0..) and, beside it, pca_components.npz with each
    PCA's mean, components and explained variance, so new examples can be projected the same way.
    """
    from sklearn.decomposition import PCA

    folder = Path(features_dir)
    ids = pd.read_parquet(folder / "ids.parquet")["sample_id"]
    result = pd.DataFrame({"sample_id": ids})
    arrays = {}
    for prefix, name in (("img", "image"), ("txt", "text")):
        x = np.load(folder / f"{name}.npy")
        if len(x) != len(ids):
            raise ValueError(f"{name}.npy has {len(x)} rows but ids.parquet {len(ids)}; re-run the embed step")
        if pca_dim > min(x.shape):
            raise ValueError(f"pca_dim {pca_dim} exceeds what {len(x)} rows of {x.shape[1]} dimensions allow; "
                             "lower features.pca_dim")
        pca = PCA(n_components=pca_dim, random_state=seed).fit(x)
        z = pca.transform(x)
        for j in range(pca_dim):
            result[f"{prefix}_pc{j}"] = z[:, j].astype(np.float32)
        arrays |= {f"{prefix}_mean": pca.mean_, f"{prefix}_components": pca.components_,
                   f"{prefix}_explained_variance_ratio": pca.explained_variance_ratio_}
        log.info("%s PCA: %d dims explain %.1f%% of the variance", name, pca_dim,
                 100 * pca.explained_variance_ratio_.sum())
    write_parquet(result, out, metadata={"pca_dim": pca_dim, "seed": seed, "n_rows": len(ids)})
    with atomic_path(Path(out).parent / "pca_components.npz", ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
