"""Image/answer embeddings (shared with the CLIP score) and the once-fitted PCA."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA

from test_clip_reward import make_corpus, make_manifest
from vlselect.features import embed, fit_pca
from vlselect.io import write_npy, write_parquet
from vlselect.scoring.clip import score_clip
from vlselect.shards import gather_features
from vlselect.toy.train_clip import MODEL_NAME, train_toy_clip

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    corpus = root / "corpus"
    captions = make_corpus(corpus, 40)
    train_toy_clip(corpus_dir=str(corpus), out_dir=str(root / "clip"), steps=5, batch_size=8, lr=1e-3, seed=0)
    manifest = make_manifest(corpus, captions, root / "manifest.parquet", 16)
    clip = {"model": MODEL_NAME, "pretrained": str(root / "clip" / "open_clip_model.safetensors"),
            "model_config_dir": str(root / "clip")}
    return root, manifest, clip


def test_embed_matches_clip_score_and_shards(setup):
    root, manifest, clip = setup
    embed(manifest=str(root / "manifest.parquet"), out_dir=str(root / "f_all"), batch_size=5, device="cpu", **clip)
    image, text = np.load(root / "f_all" / "image.npy"), np.load(root / "f_all" / "text.npy")
    assert image.dtype == np.float32 and image.shape == (16, 64) and text.shape == (16, 64)
    assert pd.read_parquet(root / "f_all" / "ids.parquet")["sample_id"].tolist() == manifest["sample_id"].tolist()
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)
    assert np.all(text[1] == 0)  # the empty answer has no sentence to embed

    # The CLIP score is exactly the dot product of these features (one code path for both).
    score_clip(manifest=str(root / "manifest.parquet"), out=str(root / "clip.parquet"), batch_size=16, device="cpu",
               **clip)
    scores = pd.read_parquet(root / "clip.parquet")
    ok = (scores["status"] == "ok").to_numpy()
    np.testing.assert_allclose(scores["score"][ok], 100 * (image * text).sum(1)[ok], atol=1e-4)

    dirs = []
    for shard in range(2):
        out = root / f"f_{shard}"
        embed(manifest=str(root / "manifest.parquet"), out_dir=str(out), batch_size=3, device="cpu", shard=shard,
              n_shards=2, **clip)
        dirs.append(str(out))
    gather_features(inputs=dirs, out_dir=str(root / "f_gathered"))
    np.testing.assert_allclose(np.load(root / "f_gathered" / "image.npy"), image, atol=1e-5)
    np.testing.assert_allclose(np.load(root / "f_gathered" / "text.npy"), text, atol=1e-5)


def test_embed_with_hf_text_encoder(setup, tmp_path):
    from transformers import BertConfig, BertModel

    from vlselect.toy.train_reward import build_tokenizer

    root, manifest, clip = setup
    tokenizer = build_tokenizer(manifest["answer"].tolist())
    encoder = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=256))
    encoder.save_pretrained(tmp_path / "enc")
    tokenizer.save_pretrained(tmp_path / "enc")
    embed(manifest=str(root / "manifest.parquet"), out_dir=str(tmp_path / "mean"), batch_size=4, device="cpu",
          text_encoder=str(tmp_path / "enc"), pooling="mean", **clip)
    embed(manifest=str(root / "manifest.parquet"), out_dir=str(tmp_path / "cls"), batch_size=16, device="cpu",
          text_encoder=str(tmp_path / "enc"), pooling="cls", **clip)
    mean, cls = np.load(tmp_path / "mean" / "text.npy"), np.load(tmp_path / "cls" / "text.npy")
    assert mean.shape == cls.shape == (16, 32)
    # Reference: mean over the real tokens of one unpadded example.
    enc = tokenizer([manifest["answer"][0]], return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.eval()(**enc).last_hidden_state[0]
    np.testing.assert_allclose(mean[0], hidden.mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(cls[0], hidden[0].numpy(), atol=1e-5)


def test_fit_pca_fits_once_on_all_rows(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(50, 12)).astype(np.float32) * np.linspace(3, 0.1, 12, dtype=np.float32)
    text = rng.normal(size=(50, 8)).astype(np.float32)
    write_npy(image, tmp_path / "image.npy")
    write_npy(text, tmp_path / "text.npy")
    write_parquet(pd.DataFrame({"sample_id": [f"s{i}" for i in range(50)]}), tmp_path / "ids.parquet")
    fit_pca(features_dir=str(tmp_path), out=str(tmp_path / "pca.parquet"), pca_dim=3, seed=0)
    df = pd.read_parquet(tmp_path / "pca.parquet")
    assert list(df.columns) == ["sample_id"] + [f"img_pc{j}" for j in range(3)] + [f"txt_pc{j}" for j in range(3)]
    np.testing.assert_allclose(df[[f"img_pc{j}" for j in range(3)]], PCA(3, random_state=0).fit_transform(image),
                               atol=1e-4)
    np.testing.assert_allclose(df[[f"txt_pc{j}" for j in range(3)]], PCA(3, random_state=0).fit_transform(text),
                               atol=1e-4)
    # A PCA fitted on part of the rows gives different axes, so this would catch per-shard fitting.
    assert not np.allclose(PCA(3, random_state=0).fit(image[:25]).transform(image), df[["img_pc0", "img_pc1",
                                                                                      "img_pc2"]], atol=1e-2)
    comps = np.load(tmp_path / "pca_components.npz")
    np.testing.assert_allclose((image - comps["img_mean"]) @ comps["img_components"].T,
                               df[["img_pc0", "img_pc1", "img_pc2"]], atol=1e-4)
    with pytest.raises(ValueError, match="pca_dim"):
        fit_pca(features_dir=str(tmp_path), out=str(tmp_path / "p2.parquet"), pca_dim=20)
