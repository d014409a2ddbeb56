"""Stage-2 fine-tuning of a MiniGPT-4-shaped VLM on a cc_sbu_align training set.

Two backends:

* ``transformers``: loads ``AutoModelForImageTextToText`` + ``AutoProcessor`` from ``base_model``, freezes
  everything except the parameters whose name contains one of ``trainable`` (MiniGPT-4 trains only its linear
  projection), trains on the conversation template with the loss on the answer tokens only, and saves only the
  trained parameters (``trainable.safetensors``) plus ``finetune.json``. A checkpoint after each epoch lets a
  killed job resume and still end with the same weights as an uninterrupted run.
* ``minigpt4``: renders the official repository's stage-2 YAML config for this training set and runs its train
  script as an external command, then records the newest ``checkpoint_*.pth``.

:func:`finetune_seeds` trains one model per seed on the same data (a genuine label is the mean over seeds).

The prompt/batch helpers here (``split_template``, ``encode_batch``, ``generate``) are shared with
:mod:`vlselect.evaluate` and :mod:`vlselect.toy.train_vlm`, so training and evaluation build the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vlselect.io import atomic_dir, atomic_path, read_json, sha256_file, write_json
from vlselect.runtime import pick_device, seed_everything

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "###Human: <Img><ImageHere></Img> {instruction} ###Assistant: {answer}"
IMAGE_SLOT = "<ImageHere>"


# ----------------------------------------------------------------------------------------------------------------
# prompt building shared by training, evaluation and the toy pre-training


def split_template(template: str, instruction: str) -> tuple[str, str]:
    """Return (prompt, suffix): the template text before ``{answer}`` with the instruction filled in, and after it.

    The image goes where ``<ImageHere>`` stands (MiniGPT-4's convention); a template without it gets the image at
    the very start, where Blip-2 puts its query tokens.
    """
    if "{answer}" not in template:
        raise ValueError(f"the template {template!r} has no '{{answer}}' slot; add one where the answer goes")
    before, after = template.split("{answer}", 1)
    prompt = before.replace("{instruction}", instruction)
    if IMAGE_SLOT not in prompt:
        prompt = IMAGE_SLOT + " " + prompt
    return prompt, after


def _image_token_id(processor) -> int:
    tok = processor.tokenizer
    token = getattr(processor, "image_token", None) or tok.image_token
    token = getattr(token, "content", token)
    return tok.convert_tokens_to_ids(token)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text.strip() else []


def encode_batch(processor, num_query_tokens: int, images, prompts, answers=None, suffix: str = ""):
    """Build model inputs for a batch.

    Each row is ``[bos] prompt-before-image [image]*Q prompt-after-image`` and, for training, ``answer suffix [eos]``
    with labels on the answer (and eos) only. Training batches are right-padded; generation batches (``answers`` is
    None) are left-padded so every row ends where generation starts.
    """
    import torch

    tok = processor.tokenizer
    img_id = _image_token_id(processor)
    rows, label_rows = [], []
    for i, prompt in enumerate(prompts):
        head, tail = prompt.split(IMAGE_SLOT, 1)
        ids = [tok.bos_token_id] + _ids(tok, head) + [img_id] * num_query_tokens + _ids(tok, tail)
        labels = [-100] * len(ids)
        if answers is not None:
            ans = _ids(tok, answers[i] + suffix) + [tok.eos_token_id]
            ids = ids + ans
            labels = labels + ans
        rows.append(ids)
        label_rows.append(labels)
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows, label_rows)):
        n = len(ids)
        sl = slice(0, n) if answers is not None else slice(width - n, width)
        input_ids[i, sl] = torch.tensor(ids)
        attention[i, sl] = 1
        labels[i, sl] = torch.tensor(lab)
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    out = {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixel_values}
    if answers is not None:
        out["labels"] = labels
    return out


def answer_loss(model, batch):
    """Mean cross-entropy over the labelled (answer) tokens; computed here so the masking is explicit."""
    import torch.nn.functional as F

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"])
    logits = out.logits[:, -batch["labels"].shape[1]:, :]
    shift_logits = logits[:, :-1, :].float()
    shift_labels = batch["labels"][:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100)


def generate(model, processor, images, prompts, *, max_new_tokens: int, device) -> list[str]:
    """Greedy answers for a batch of (image, prompt) pairs."""
    import torch

    batch = encode_batch(processor, model.config.num_query_tokens, images, prompts)
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    width = batch["input_ids"].shape[1]
    # transformers returns prompt + continuation for Blip-2 with a Llama decoder; keep the continuation only
    if out.shape[1] >= width and torch.equal(out[:, :width].cpu(), batch["input_ids"].cpu()):
        out = out[:, width:]
    return [s.strip() for s in processor.tokenizer.batch_decode(out, skip_special_tokens=True)]


# ----------------------------------------------------------------------------------------------------------------
# data


def load_cc_sbu_align(train_dir: str | os.PathLike) -> list[tuple[Path, str]]:
    """Read (image path, caption) pairs from a cc_sbu_align export (filter_cap.json + image/)."""
    train_dir = Path(train_dir)
    cap = train_dir / "filter_cap.json"
    if not cap.exists():
        raise FileNotFoundError(f"{cap} not found: train_dir must be a cc_sbu_align export (filter_cap.json + image/)")
    rows = []
    for ann in read_json(cap)["annotations"]:
        hits = sorted((train_dir / "image").glob(f"{ann['image_id']}.*"))
        if not hits:
            raise FileNotFoundError(f"no image for image_id {ann['image_id']!r} under {train_dir / 'image'}")
        rows.append((hits[0], ann["caption"]))
    if not rows:
        raise ValueError(f"{cap} holds no annotations; an empty training set cannot be fine-tuned")
    return rows


def _open_rgb(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


# ----------------------------------------------------------------------------------------------------------------
# transformers backend


def load_base(base_model: str | os.PathLike, device):
    """Load (model, processor) from a transformers model dir, in eval mode on ``device``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if not Path(base_model, "config.json").exists():
        raise FileNotFoundError(f"{base_model} is not a transformers model dir (no config.json); train or point to one")
    model = AutoModelForImageTextToText.from_pretrained(base_model).to(device)
    processor = AutoProcessor.from_pretrained(base_model)
    model.eval()
    return model, processor


def load_finetuned(path: str | os.PathLike, device: str = "auto", base_model: str | None = None):
    """Return (model, processor): the base model of a fine-tune output dir with its trained params applied."""
    from safetensors.torch import load_file

    path = Path(path)
    info = read_json(path / "finetune.json")
    if info.get("backend", "transformers") != "transformers":
        raise ValueError(f"{path} was trained with the {info['backend']} backend; evaluate it with that repository")
    dev = pick_device(device) if isinstance(device, str) else device
    model, processor = load_base(base_model or info["base_model"], dev)
    trained = load_file(path / "trainable.safetensors")
    missing = set(trained) - set(dict(model.named_parameters()))
    if missing:
        raise ValueError(f"{path}: trained params {sorted(missing)[:3]} are not in the base model; wrong base_model?")
    model.load_state_dict(trained, strict=False)
    return model, processor


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _select_trainable(model, trainable: list[str]) -> dict[str, Any]:
    params = {}
    for name, p in model.named_parameters():
        p.requires_grad_(any(t in name for t in trainable))
        if p.requires_grad:
            params[name] = p
    if not params:
        raise ValueError(f"no parameter name contains any of {trainable}; check finetune.trainable against the model")
    return params


def _save_ckpt(ckpt_dir: Path, params: dict, optimizer, epoch: int, rng_state, fingerprint: str) -> None:
    import torch

    state = {"epoch": epoch, "fingerprint": fingerprint, "params": {k: v.detach().cpu() for k, v in params.items()},
             "optimizer": optimizer.state_dict(), "rng": rng_state}
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt_dir / "state.pt") as tmp:
        torch.save(state, tmp)


def _finetune_transformers(*, base_model, train_dir, out_dir, trainable, template, instruction, epochs, batch_size,
                           lr, seed, device) -> dict:
    import torch
    from tqdm import tqdm

    dev = pick_device(device)
    seed_everything(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    model, processor = load_base(base_model, dev)
    params = _select_trainable(model, trainable)
    model.train()
    # dropout off: the trained params only ever see the frozen model's deterministic features
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    data = load_cc_sbu_align(train_dir)
    images = [_open_rgb(p) for p, _ in data]
    answers = [a for _, a in data]
    prompt, suffix = split_template(template, instruction)
    q = model.config.num_query_tokens

    # the checkpoint lives beside the output (out_dir itself only appears, atomically, when training is done)
    ckpt_dir = Path(str(out_dir) + ".ckpt")
    # a checkpoint from other data or settings (epochs aside) must not be resumed: fingerprint what shapes training
    fingerprint = sha256_text(json.dumps([str(Path(base_model).resolve()), sha256_file(Path(train_dir) / "filter_cap.json"),
                                          sorted(trainable), template, instruction, batch_size, lr, seed]))
    start = 0
    state = torch.load(ckpt_dir / "state.pt", weights_only=True) if (ckpt_dir / "state.pt").exists() else None
    if state is not None and state.get("fingerprint") != fingerprint:
        log.warning("ignoring checkpoint %s: it was written for other data or settings", ckpt_dir)
        state = None
    if state is not None:
        with torch.no_grad():
            for k, v in state["params"].items():
                params[k].copy_(v.to(dev))
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = int(state["epoch"])
        log.info("resuming from %s after epoch %d", ckpt_dir, start)

    amp = dev.type == "cuda"
    for epoch in range(start, epochs):
        # the epoch's order depends on (seed, epoch) only, so a resumed run sees the same batches
        order = np.random.default_rng([seed, epoch]).permutation(len(data))
        losses = []
        for i in tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}/{epochs}", file=sys.stderr):
            idx = order[i:i + batch_size]
            batch = encode_batch(processor, q, [images[j] for j in idx], [prompt] * len(idx),
                                 [answers[j] for j in idx], suffix)
            batch = {k: v.to(dev) for k, v in batch.items()}
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                loss = answer_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        log.info("epoch %d: mean answer loss %.4f", epoch + 1, float(np.mean(losses)))
        _save_ckpt(ckpt_dir, params, optimizer, epoch + 1, torch.get_rng_state(), fingerprint)

    from safetensors.torch import save_file

    info = {"backend": "transformers", "base_model": str(Path(base_model).resolve()), "trainable": list(trainable),
            "template": template, "instruction": instruction, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "seed": seed, "n_examples": len(data), "n_trained_params": int(sum(p.numel() for p in params.values()))}
    with atomic_dir(out_dir) as tmp:
        save_file({k: v.detach().cpu().float().contiguous() for k, v in params.items()}, tmp / "trainable.safetensors")
        write_json(info, tmp / "finetune.json")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return info


# ----------------------------------------------------------------------------------------------------------------
# minigpt4 backend


def render_minigpt4_config(*, minigpt4: dict, train_dir, output_dir, epochs, batch_size, lr, seed) -> dict:
    """The stage-2 config of the official MiniGPT-4 repo (train_configs/minigpt4_stage2_finetune.yaml) for this set."""
    for key in ("repo", "ckpt", "llama_model"):
        if not minigpt4.get(key):
            raise ValueError(f"finetune.minigpt4.{key} is not set; the minigpt4 backend needs the checkout, "
                             "the stage-1 checkpoint and the LLaMA/Vicuna weights path")
    iters = minigpt4.get("iters_per_epoch") or max(1, -(-len(load_cc_sbu_align(train_dir)) // batch_size))
    return {
        "model": {"arch": "mini_gpt4", "model_type": minigpt4.get("model_type", "pretrain_vicuna"),
                  "freeze_vit": True, "freeze_qformer": True, "max_txt_len": 160, "end_sym": "###",
                  "prompt_path": "prompts/alignment.txt", "prompt_template": "###Human: {} ###Assistant: ",
                  "ckpt": str(minigpt4["ckpt"]), "llama_model": str(minigpt4["llama_model"])},
        "datasets": {"cc_sbu_align": {"vis_processor": {"train": {"name": "blip2_image_train", "image_size": 224}},
                                      "text_processor": {"train": {"name": "blip_caption"}},
                                      "build_info": {"storage": str(Path(train_dir).resolve())}}},
        "run": {"task": "image_text_pretrain", "lr_sched": "linear_warmup_cosine_lr", "init_lr": lr,
                "min_lr": lr / 3, "warmup_lr": lr / 3, "weight_decay": 0.05, "max_epoch": epochs,
                "iters_per_epoch": iters, "batch_size_train": batch_size, "batch_size_eval": batch_size,
                "num_workers": 4, "warmup_steps": min(200, iters), "seed": seed,
                "output_dir": str(Path(output_dir).resolve()), "amp": True, "resume_ckpt_path": None,
                "evaluate": False, "train_splits": ["train"], "device": "cuda", "world_size": 1,
                "dist_url": "env://", "distributed": True},
    }


def _finetune_minigpt4(*, base_model, train_dir, out_dir, epochs, batch_size, lr, seed, minigpt4) -> dict:
    import yaml

    work = Path(str(out_dir) + ".minigpt4")  # the run's own output (kept beside out_dir; out_dir is atomic)
    work.mkdir(parents=True, exist_ok=True)
    cfg = render_minigpt4_config(minigpt4=minigpt4, train_dir=train_dir, output_dir=work / "output",
                                 epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    cfg_path = work / "stage2.yaml"
    with atomic_path(cfg_path, ".yaml") as tmp:
        tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = minigpt4.get("command", "torchrun --nproc-per-node {gpus} train.py --cfg-path {cfg}")
    cmd = cmd.format(gpus=int(minigpt4.get("gpus", 1)), cfg=shlex.quote(str(cfg_path.resolve())))
    log.info("running MiniGPT-4 stage 2: %s (cwd %s)", cmd, minigpt4["repo"])
    proc = subprocess.run(cmd, shell=True, cwd=minigpt4["repo"])
    if proc.returncode != 0:
        raise RuntimeError(f"MiniGPT-4 training command failed with exit code {proc.returncode}: {cmd}; "
                           f"see its output above and the config at {cfg_path}")
    ckpts = sorted((work / "output").glob("**/checkpoint_*.pth"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise RuntimeError(f"MiniGPT-4 finished but wrote no checkpoint_*.pth under {work / 'output'}")
    info = {"backend": "minigpt4", "base_model": str(minigpt4["ckpt"]), "trainable": ["llama_proj"],
            "checkpoint": str(ckpts[-1].resolve()), "config": str(cfg_path.resolve()), "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "seed": seed, "n_examples": len(load_cc_sbu_align(train_dir))}
    with atomic_dir(out_dir) as tmp:
        write_json(info, tmp / "finetune.json")
    return info


def finetune_seeds(*, seeds: list[int], train_dir: str, out_dir: str, **settings) -> list[dict]:
    """Fine-tune one model per seed on the same training set, into ``out_dir/seed_<s>`` each.

    A genuine label from one fine-tune carries the noise of that run's data order; the mean over a few seeds is a
    steadier label (BENCHMARKS.md), and :func:`vlselect.evaluate.evaluate` averages such a dir. ``settings`` are
    :func:`finetune`'s other arguments. Finished seeds wait in ``<out_dir>.seeds`` (discarded if the data or the
    settings change), so a killed job resumes at its first unfinished seed, and within it at its last finished
    epoch; ``out_dir`` appears only when every seed is done. Returns each seed's finetune.json content.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}; check labels.seeds")
    staging = Path(str(out_dir) + ".seeds")
    stamp = staging / "settings.sha256"
    fingerprint = sha256_text(json.dumps([{k: v for k, v in settings.items() if k != "device"},
                                          sha256_file(Path(train_dir) / "filter_cap.json")], sort_keys=True))
    if staging.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
        log.warning("discarding %s: its finished seeds were trained on other data or with other settings", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    infos = []
    for seed in seeds:
        done = staging / f"seed_{seed}"
        if (done / "finetune.json").exists():
            log.info("seed %d was trained before this run (%s); keeping it", seed, done)
            infos.append(read_json(done / "finetune.json"))
        else:
            log.info("seed %d (%d of %d)", seed, seeds.index(seed) + 1, len(seeds))
            infos.append(finetune(train_dir=train_dir, out_dir=str(done), seed=seed, **settings))
    with atomic_dir(out_dir) as tmp:
        for seed in seeds:
            os.replace(staging / f"seed_{seed}", tmp / f"seed_{seed}")
    stamp.unlink()
    # the minigpt4 backend's work dirs (the checkpoints its finetune.json points to) stay where they were written
    if not any(staging.iterdir()):
        staging.rmdir()
    return infos


def finetune(*, base_model: str | None, train_dir: str, out_dir: str, backend: str = "transformers",
             trainable: list[str] = ("language_projection",), template: str = DEFAULT_TEMPLATE,
             instruction: str = "Describe this image in detail.", epochs: int = 3, batch_size: int = 16,
             lr: float = 1e-3, seed: int = 0, device: str = "auto", lora: dict | None = None,
             minigpt4: dict | None = None) -> dict:
    """Fine-tune the base VLM on a cc_sbu_align training set (MiniGPT-4 stage 2) and write ``out_dir``.

    Only the parameters named in ``trainable`` are trained and saved (``trainable.safetensors`` + ``finetune.json``),
    so 30 subset fine-tunes cost 30 small files, not 30 models. Returns the finetune.json content.
    """
    if lora:
        raise ValueError("LoRA is not implemented in this version; set finetune.lora to null")
    if backend == "transformers":
        if not base_model:
            raise ValueError("the transformers backend needs base_model (a local model dir); set models.vlm.path")
        return _finetune_transformers(base_model=base_model, train_dir=train_dir, out_dir=out_dir,
                                      trainable=list(trainable), template=template, instruction=instruction,
                                      epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    if backend == "minigpt4":
        if not minigpt4:
            raise ValueError("backend minigpt4 needs the finetune.minigpt4 settings (repo, ckpt, llama_model, command)")
        return _finetune_minigpt4(base_model=base_model, train_dir=train_dir, out_dir=out_dir, epochs=epochs,
                                  batch_size=batch_size, lr=lr, seed=seed, minigpt4=minigpt4)
    raise ValueError(f"unknown finetune backend {backend!r}; use 'transformers' or 'minigpt4'")
