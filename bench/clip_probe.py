"""What does the toy CLIP's image embedding know? Linear probes for where objects are and what shape they have.

On corpus images (held-out corpus images are not needed: the probes only ask what the embedding encodes), a
logistic regression per grid cell predicts from the L2-normalised image embedding whether an object occupies
the cell, and, for images with an object in the cell, its shape and its colour. Probes are fitted on 80% of
the images and scored on the rest; the majority-class rate is printed beside each. An embedding that carries
no position cannot tell a true position from a false one, whatever the text side does.

    PYTHONPATH=src python bench/clip_probe.py results/toy/models/clip [other/clip ...] [--corpus results/toy/corpus]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression

from vlselect.models import load_clip
from vlselect.scoring.clip import encode_images
from vlselect.toy.train_clip import MODEL_NAME, WEIGHTS_NAME
from vlselect.validate import load_rgb

CELLS = (0, 4, 8)  # top left, centre, bottom right


def probe(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(held-out accuracy of a logistic regression from ``x`` to ``y``, majority-class rate of the held-out part)."""
    n = int(0.8 * len(y))
    clf = LogisticRegression(max_iter=3000).fit(x[:n], y[:n])
    return float(clf.score(x[n:], y[n:])), float(pd.Series(y[n:]).value_counts(normalize=True).iloc[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="toy CLIP folders (open_clip_model.safetensors + config JSON)")
    parser.add_argument("--corpus", default="results/toy/corpus")
    parser.add_argument("--n", type=int, default=3000, help="corpus images to probe")
    args = parser.parse_args()
    caps = pd.read_parquet(f"{args.corpus}/captions.parquet").iloc[: args.n]
    scenes = [json.loads(o) for o in caps["objects"]]
    where = [{o["row"] * 3 + o["col"]: o for o in objects} for objects in scenes]
    print("| model | " + " | ".join(f"cell {c}: occupied / shape / colour" for c in CELLS) + " |\n|--|"
          + "--|" * len(CELLS))
    for folder in args.models:
        model, preprocess, _ = load_clip(model=MODEL_NAME, pretrained=f"{folder}/{WEIGHTS_NAME}",
                                         model_config_dir=folder, device="cpu")
        with torch.inference_mode():
            x = torch.cat([encode_images(model, torch.stack([preprocess(load_rgb(f"{args.corpus}/{p}"))
                                                             for p in caps["image_path"][a:a + 256]]),
                                         torch.device("cpu")) for a in range(0, len(caps), 256)]).numpy()
        cells = []
        for c in CELLS:
            rows = np.array([i for i, w in enumerate(where) if c in w])
            figures = [probe(x, np.array([c in w for w in where])),
                       probe(x[rows], np.array([where[i][c]["shape"] for i in rows])),
                       probe(x[rows], np.array([where[i][c]["colour"] for i in rows]))]
            cells.append(" / ".join(f"{acc:.2f} ({base:.2f})" for acc, base in figures))
        print(f"| {folder} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
