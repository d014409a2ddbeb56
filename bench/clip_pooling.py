"""Would another way of pooling sentence scores see hallucinations better? CLIP AUC per flaw, on a finished toy run.

The CLIP score averages the per-sentence CLIP scores of an answer (vlselect.scoring.clip). A hallucinated answer
states one false fact, usually in one sentence, so the mean dilutes it. This bench scores every dataset answer
six ways from the same sentence and image embeddings and prints, per single flaw, the AUC between unflawed answers
and answers with that flaw (0.5: cannot tell them apart):

- mean: the CLIP score as the workflow computes it; min: the worst sentence;
- cmean, cmin: each sentence's score minus its mean score over 512 other dataset images (a sentence that matches
  every image says little about this one);
- zmean, zmin: that difference divided by the sentence's standard deviation over those images.

    PYTHONPATH=src python bench/clip_pooling.py [--results results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from hallucination_kinds import lie_kind
from vlselect.models import load_clip
from vlselect.scoring.clip import encode_images, split_sentences
from vlselect.validate import load_rgb

POOLS = ("mean", "min", "cmean", "cmin", "zmean", "zmin")


def pooled_scores(r: Path, answers: list[str], image_paths: list[str], n_reference: int = 512) -> pd.DataFrame:
    """One row per answer, one column per pooling of :data:`POOLS` (NaN for an answer without sentences)."""
    clip_dir = r / "toy" / "models" / "clip"
    model, preprocess, tokenizer = load_clip(model="vlselect-toy-clip",
                                             pretrained=str(clip_dir / "open_clip_model.safetensors"),
                                             model_config_dir=str(clip_dir))
    device = torch.device("cpu")
    sentences = [split_sentences(a) for a in answers]
    distinct = sorted({s for ss in sentences for s in ss})
    index = {s: i for i, s in enumerate(distinct)}
    with torch.inference_mode():
        images = torch.cat([encode_images(model, torch.stack([preprocess(load_rgb(p)) for p in image_paths[i:i + 256]]),
                                          device) for i in range(0, len(image_paths), 256)])
        text = torch.cat([torch.nn.functional.normalize(model.encode_text(tokenizer(distinct[i:i + 512])).float(), dim=-1)
                          for i in range(0, len(distinct), 512)])
        reference = images[np.random.default_rng(0).choice(len(images), n_reference, replace=False)]
        ref_sim = 100 * text @ reference.T
    ref_mean, ref_std = ref_sim.mean(1).numpy(), ref_sim.std(1).numpy()
    rows = []
    for i, ss in enumerate(sentences):
        if not ss:
            rows.append(dict.fromkeys(POOLS, np.nan))
            continue
        j = np.array([index[s] for s in ss])
        sim = (100 * text[j] @ images[i]).numpy()
        centred = sim - ref_mean[j]
        z = centred / ref_std[j]
        rows.append({"mean": sim.mean(), "min": sim.min(), "cmean": centred.mean(), "cmin": centred.min(),
                     "zmean": z.mean(), "zmin": z.min()})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    r = Path(parser.parse_args().results)
    t = pd.read_parquet(r / "toy" / "truth.parquet").merge(
        pd.read_parquet(r / "manifest.parquet", columns=["sample_id", "answer", "image_path"]), on="sample_id")
    t = pd.concat([t, pooled_scores(r, t["answer"].tolist(), t["image_path"].tolist())], axis=1)
    t["kind"] = t["flaws"]
    lies = t["flaws"] == "hallucination"
    t.loc[lies, "kind"] = [f"hallucination: {lie_kind(a, json.loads(o))}"
                           for a, o in zip(t.loc[lies, "answer"], t.loc[lies, "objects"])]
    clean = t[t["clean"]]
    print("| single flaw | n | " + " | ".join(POOLS) + " |\n|--|--:|" + "--:|" * len(POOLS))
    for kind, g in t[~t["clean"] & ~t["flaws"].str.contains(",")].groupby("kind"):
        y = np.r_[np.ones(len(clean)), np.zeros(len(g))]
        aucs = [roc_auc_score(y, np.nan_to_num(np.r_[clean[p], g[p]], nan=-1e9)) for p in POOLS]
        print(f"| {kind} | {len(g)} | " + " | ".join(f"{a:.3f}" for a in aucs) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
