"""Seconds per fine-tune step and peak memory, per VLM family, through the same adapter and trainable-parameter
setup as ``vlselect finetune``.

Each family runs in its own process so that its peak memory is its own: on the CPU the peak resident set size
(``ru_maxrss``, which includes Python and torch themselves, printed alone as ``base MB``), on CUDA
``torch.cuda.max_memory_allocated``. By default each family is a tiny random model built by
:func:`vlselect.vlm.tiny.build_tiny_vlm`; ``--model-dir`` measures a real checkpoint instead. A step is
``train_batch`` (the processor: chat template, image preprocessing, labels; timed alone as ``batch s``) plus
forward, backward and the optimizer's update; the first step is a warm-up and not counted. The data are synthetic
images with two-turn conversations.

    PYTHONPATH=src python bench/vlm_step.py --steps 5 --batch-size 4 --threads 1
    PYTHONPATH=src python bench/vlm_step.py --model-dir /models/llava-1.5-7b-hf --device cuda \\
        --model-dtype bfloat16 --trainable lora --gradient-checkpointing --image-size 336
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np

from vlselect.vlm.tiny import FAMILIES

ANSWER = ("The image shows a red circle in the top left corner and a blue square below it, with a small green "
          "triangle to the right of the square on a white background.")


def conversations(n: int, image_size: int, seed: int = 0) -> list:
    """``n`` synthetic two-turn conversations, on images of a few different shapes (so that families whose image
    tokens follow the image's shape get varied batches)."""
    from PIL import Image, ImageDraw

    from vlselect.vlm import Conversation

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = image_size, image_size * (1 + i % 2)
        im = Image.new("RGB", (w, h), (250, 250, 250))
        x, y = rng.integers(0, max(1, w // 2)), rng.integers(0, max(1, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        ImageDraw.Draw(im).rectangle([x, y, x + w // 3, y + h // 3], fill=colour)
        out.append(Conversation(im, [("Describe this image in detail.", ANSWER),
                                     ("Which colour is the square?", "It is blue.")]))
    return out


def measure(model_dir: str, family: str, args) -> dict:
    """One family's timing and memory, in this process."""
    import torch

    from vlselect.runtime import pick_device
    from vlselect.vlm.train import answer_loss, prepare_model

    torch.set_num_threads(args.threads)
    dev = pick_device(args.device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    adapter, params, frozen_dtype = prepare_model(
        model_dir, dev, trainable=args.trainable, lora=None, template=None, model_dtype=args.model_dtype,
        gradient_checkpointing=args.gradient_checkpointing, family=family)
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-4)
    # as vlselect.vlm.train: bf16 autocast on GPUs and wherever half-precision frozen weights meet float32 ones
    amp = dev.type == "cuda" or frozen_dtype != torch.float32
    amp_dtype = torch.float16 if frozen_dtype == torch.float16 else torch.bfloat16
    data = conversations(args.batch_size * (args.steps + 1), args.image_size)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step_times, batch_times, n_tokens = [], [], []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        batch = adapter.train_batch(data[step * args.batch_size:(step + 1) * args.batch_size])
        t1 = time.perf_counter()
        batch = {k: v.to(dev) for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=amp_dtype) if amp else nullcontext():
            loss = answer_loss(adapter.model, batch)
        loss.backward()
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if step:  # the first step warms up allocators and kernels
            step_times.append(time.perf_counter() - t0)
            batch_times.append(t1 - t0)
            n_tokens.append(int(batch["attention_mask"].sum()))
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"family": adapter.family, "model": type(adapter.model).__name__,
            "params_m": sum(p.numel() for p in adapter.model.parameters()) / 1e6,
            "trained_m": sum(p.numel() for p in params.values()) / 1e6, "tokens": float(np.mean(n_tokens)),
            "step_s": float(np.median(step_times)), "batch_s": float(np.median(batch_times)),
            "peak_mb": peak, "base_mb": base_rss if dev.type == "cpu" else 0.0, "loss": float(loss.item())}


def run_isolated(family: str, argv: list[str]) -> dict:
    """:func:`measure` in a fresh process, so that its peak memory is its own."""
    out = subprocess.run([sys.executable, __file__, "--one", family, *argv], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), help="tiny families to build and measure")
    parser.add_argument("--model-dir", help="a real checkpoint instead of tiny models (family: --family or auto)")
    parser.add_argument("--family", default="auto", help="adapter family for --model-dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--trainable", default="projection", choices=["projection", "lora", "full"])
    parser.add_argument("--model-dtype", default="float32")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--image-size", type=int, default=32, help="the synthetic images' width in pixels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one family in this process
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.dir, args.one, args)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir:
            targets = [(args.family, args.model_dir)]
        else:
            from vlselect.vlm.tiny import build_tiny_vlm

            targets = [(f, build_tiny_vlm(f, f"{tmp}/{f}")) for f in args.families]
        for family, path in targets:
            rows.append(run_isolated("auto" if not args.model_dir else family, sys.argv[1:] + ["--dir", path]))
    mem = "CUDA peak MB" if args.device.startswith("cuda") else "peak RSS MB"
    print(f"{args.trainable}, batch {args.batch_size}, median of {args.steps} steps after one warm-up, "
          f"{args.model_dtype}, device {args.device}, {args.threads} thread(s), {args.image_size}-px images")
    print(f"| family | model | params M | trained M | tokens/row | s/step | batch s | {mem} | base MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['model']} | {r['params_m']:.2f} | {r['trained_m']:.3f} | "
              f"{r['tokens'] / args.batch_size:.0f} | {r['step_s']:.3f} | {r['batch_s']:.3f} | {r['peak_mb']:.0f} | "
              f"{r['base_mb']:.0f} |")


if __name__ == "__main__":
    main()
