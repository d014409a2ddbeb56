"""Throughput of the batched CLIP and reward scoring against a per-example loop (batch size one, as the original).

Same model, same data, one run; prints examples/second for both and their ratio. Uses the trained toy
models under results/toy/models if present, else freshly initialised models of the same size (speed does
not depend on the weights). Data: a synthetic manifest of coloured-shape images with 3-sentence answers.

    PYTHONPATH=src python bench/scoring_throughput.py --n 256 --batch-size 64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageDraw

from vlselect.models import load_clip, load_reward
from vlselect.scoring.clip import clip_score_single, score_clip
from vlselect.scoring.reward import resolve_max_length, reward_score_single, score_reward
from vlselect.toy.train_clip import MODEL_NAME, WEIGHTS_NAME, toy_clip_config
from vlselect.toy.train_reward import build_model, build_tokenizer

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220), "yellow": (230, 220, 40)}


def make_manifest(folder: Path, n: int) -> Path:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        img = Image.new("RGB", (64, 64), (245, 245, 245))
        draw = ImageDraw.Draw(img)
        sentences = []
        for _ in range(3):
            colour, row, col = rng.choice(list(COLOURS)), rng.randint(0, 1), rng.randint(0, 1)
            draw.rectangle([col * 32 + 4, row * 32 + 4, col * 32 + 28, row * 32 + 28], fill=COLOURS[colour])
            sentences.append(f"There is a {colour} square in the {['top', 'bottom'][row]} {['left', 'right'][col]}.")
        path = folder / f"img{i:05d}.png"
        img.save(path)
        rows.append({"sample_id": f"b{i:05d}", "image_path": str(path), "image_sha256": "", "source": "bench",
                     "instruction": "Describe this image in detail.", "answer": " ".join(sentences)})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")
    return folder / "manifest.parquet"


def toy_models(folder: Path, manifest: pd.DataFrame, models_dir: Path) -> tuple[dict, str, str]:
    """(clip kwargs, reward path, where they came from): trained toy models if present, else fresh ones."""
    clip_dir, reward_dir = models_dir / "clip", models_dir / "reward"
    if (clip_dir / WEIGHTS_NAME).is_file() and (reward_dir / "config.json").is_file():
        return ({"model": MODEL_NAME, "pretrained": str(clip_dir / WEIGHTS_NAME), "model_config_dir": str(clip_dir)},
                str(reward_dir), "trained toy models")
    import open_clip
    from safetensors.torch import save_model

    (folder / "clip").mkdir()
    (folder / "clip" / f"{MODEL_NAME}.json").write_text(json.dumps(toy_clip_config()))
    open_clip.add_model_config(folder / "clip")
    save_model(open_clip.create_model(MODEL_NAME), str(folder / "clip" / WEIGHTS_NAME))
    tokenizer = build_tokenizer(manifest["answer"].tolist())
    build_model(len(tokenizer), tokenizer.pad_token_id).save_pretrained(folder / "reward")
    tokenizer.save_pretrained(folder / "reward")
    return ({"model": MODEL_NAME, "pretrained": str(folder / "clip" / WEIGHTS_NAME),
             "model_config_dir": str(folder / "clip")}, str(folder / "reward"), "freshly initialised toy-size models")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="examples")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models-dir", default="results/toy/models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest_path = make_manifest(folder, args.n)
        manifest = pd.read_parquet(manifest_path)
        clip_kw, reward_path, origin = toy_models(folder, manifest, Path(args.models_dir))
        print(f"{args.n} examples, {origin}, device {args.device}, {args.threads} thread(s), "
              f"batch size {args.batch_size}")

        t = time.perf_counter()
        score_clip(manifest=str(manifest_path), out=str(folder / "clip.parquet"), batch_size=args.batch_size,
                   num_workers=args.num_workers, device=args.device, **clip_kw)
        clip_batched = args.n / (time.perf_counter() - t)
        model, preprocess, tokenizer = load_clip(**clip_kw, device=device)
        t = time.perf_counter()
        for row in manifest.itertuples():
            clip_score_single(model, preprocess, tokenizer, row.image_path, row.answer, device)
        clip_single = args.n / (time.perf_counter() - t)

        t = time.perf_counter()
        score_reward(manifest=str(manifest_path), out=str(folder / "reward.parquet"), path=reward_path,
                     batch_size=args.batch_size, device=args.device)
        reward_batched = args.n / (time.perf_counter() - t)
        rmodel, rtok = load_reward(path=reward_path, device=device)
        limit = resolve_max_length(rmodel, rtok, None)
        t = time.perf_counter()
        for row in manifest.itertuples():
            reward_score_single(rmodel, rtok, row.instruction, row.answer, device, limit)
        reward_single = args.n / (time.perf_counter() - t)

    # The batched timings include loading the model and writing the file; the loops do not.
    print(f"clip   batched {clip_batched:8.1f} ex/s   per-example {clip_single:8.1f} ex/s   "
          f"ratio {clip_batched / clip_single:5.1f}x")
    print(f"reward batched {reward_batched:8.1f} ex/s   per-example {reward_single:8.1f} ex/s   "
          f"ratio {reward_batched / reward_single:5.1f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
