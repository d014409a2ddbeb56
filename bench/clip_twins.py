"""Which single wrong facts can the toy CLIP see? Held-out captions against their one-fact twins, by kind.

For the corpus images the toy CLIP held out, each caption is paired with its twins from
:func:`vlselect.toy.describe.swap_attribute` (one colour, shape, count or position made false, one per kind, as
drawn for training), and the share where the caption's CLIP score beats the twin's is printed per kind of edit.
Chance is 0.5. Pass several model folders to compare them on the same pairs:

    PYTHONPATH=src python bench/clip_twins.py results/toy/models/clip [other/clip ...] [--corpus results/toy/corpus]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from vlselect.models import load_clip
from vlselect.toy.train_clip import MODEL_NAME, WEIGHTS_NAME, caption_twins, held_out_split, twin_accuracy_by_kind
from vlselect.validate import load_rgb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="toy CLIP folders (open_clip_model.safetensors + config JSON)")
    parser.add_argument("--corpus", default="results/toy/corpus")
    parser.add_argument("--seed", type=int, default=0, help="the toy world's seed (it fixes the held-out split)")
    args = parser.parse_args()
    caps = pd.read_parquet(f"{args.corpus}/captions.parquet")
    # the same held-out images and twins as train_toy_clip draws for this seed
    twins = caption_twins(caps, args.seed)
    held = held_out_split(len(caps), np.random.default_rng(args.seed))[0]
    counts = pd.Series([kind for i in held for _, kind in twins[i]]).value_counts()
    rows = {}
    for folder in args.models:
        model, preprocess, tokenizer = load_clip(model=MODEL_NAME, pretrained=f"{folder}/{WEIGHTS_NAME}",
                                                 model_config_dir=folder, device="cpu")
        # only the held-out images are decoded; the twin accuracy indexes them 0..len(held)-1
        images = torch.stack([preprocess(load_rgb(f"{args.corpus}/{caps['image_path'][i]}")) for i in held])
        rows[folder] = twin_accuracy_by_kind(model, tokenizer, images, [caps["caption"][i] for i in held],
                                             [twins[i] for i in held], range(len(held)))
    columns = ["colour", "count", "shape", "position", "all"]
    print("| model | " + " | ".join(f"{c} ({counts.get(c, counts.sum()) if c != 'all' else counts.sum()})"
                                   for c in columns) + " |\n|--|" + "--:|" * len(columns))
    for folder, shares in rows.items():
        print(f"| {folder} | " + " | ".join(f"{shares.get(c, float('nan')):.3f}" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
