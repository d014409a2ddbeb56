"""A fake MiniGPT-4 checkout's train.py for tests.

It reads the rendered stage-2 config the way the official code at commit d94738a7626ec43eba6c2cddf3cd2043f1a9689a
reads it (train.py, common/config.py, the registry, runners/runner_base.py, tasks, the cc_sbu_align builder and
dataset, MiniGPT4.from_config), and fails as those would: on a missing key, on a name nothing registers, on a file
that would be downloaded (this machine has no network). Then it "trains" the projection (shifts the stage-1
checkpoint's llama_proj by seed + 1) and saves output_dir/<job id>/checkpoint_<epoch>.pth for every epoch, with the
trainable tensors under "model" as the runner does.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

# what the official registry holds under these kinds (only the names a stage-2 run can meet)
MODEL_TYPES = {"minigpt4": {"pretrain_vicuna0", "pretrain_llama2"}}
TASKS = {"image_text_pretrain"}
LR_SCHEDULERS = {"linear_warmup_step_lr", "linear_warmup_cosine_lr"}
BUILDERS = {"cc_sbu", "cc_sbu_align", "laion"}
PROCESSORS = {"blip_caption", "blip2_image_train", "blip2_image_eval"}

parser = argparse.ArgumentParser()
parser.add_argument("--cfg-path", required=True)
parser.add_argument("--options", nargs="+")
args = parser.parse_args()
cfg = yaml.safe_load(Path(args.cfg_path).read_text())
errors = []


def need(section: dict, key: str, where: str):
    if key not in section:
        errors.append(f"{where}.{key} missing")
    return section.get(key)


model = cfg["model"]
if model.get("arch") not in MODEL_TYPES:
    errors.append(f"model.arch {model.get('arch')!r} is not registered")
elif model.get("model_type") not in MODEL_TYPES[model["arch"]]:
    errors.append(f"model.model_type {model.get('model_type')!r} is not a type of {model['arch']}")
ckpt = need(model, "ckpt", "model")
if ckpt and "model" not in torch.load(ckpt, map_location="cpu", weights_only=True):
    errors.append(f"model.ckpt {ckpt} has no 'model' state dict")
if not Path(model.get("llama_model") or "/nonexistent").is_dir():
    errors.append("model.llama_model is not a local directory")
if model.get("model_type") == "pretrain_vicuna0" and not Path(model.get("q_former_model", "https://")).is_file():
    errors.append("model.q_former_model is not a local file: the Q-Former would be downloaded")
if not (Path(torch.hub.get_dir()) / "checkpoints" / "eva_vit_g.pth").is_file():
    errors.append("eva_vit_g.pth is not in torch's hub cache: the ViT would be downloaded")
prompts = Path(model.get("prompt_path", "")).read_text().splitlines() if model.get("prompt_path") else []
if not any("<ImageHere>" in p for p in prompts) or "{}" not in model.get("prompt_template", ""):
    errors.append("model.prompt_path / prompt_template give no prompt with <ImageHere>")

for name, ds in cfg["datasets"].items():
    if name not in BUILDERS:
        errors.append(f"dataset {name!r} is not registered")
    need(ds, "batch_size", f"datasets.{name}")
    for kind in ("vis_processor", "text_processor"):
        if ds.get(kind, {}).get("train", {}).get("name") not in PROCESSORS:
            errors.append(f"datasets.{name}.{kind}.train.name is not a registered processor")
    storage = Path(ds.get("build_info", {}).get("storage", "/nonexistent"))
    cap = storage / "filter_cap.json"
    if not cap.exists():
        errors.append(f"storage {storage} has no filter_cap.json")
    else:
        for ann in json.loads(cap.read_text())["annotations"]:
            if not (storage / "image" / f"{ann['image_id']}.jpg").exists():
                errors.append(f"storage {storage} has no image/{ann['image_id']}.jpg")
                break

run = cfg["run"]
for key in ("task", "lr_sched", "init_lr", "min_lr", "weight_decay", "max_epoch", "num_workers", "seed", "output_dir",
            "evaluate", "device", "distributed", "wandb_log"):
    need(run, key, "run")
if run.get("wandb_log"):
    need(run, "job_name", "run")
if run.get("distributed"):
    need(run, "world_size", "run")
    need(run, "dist_url", "run")
if run.get("task") not in TASKS:
    errors.append(f"run.task {run.get('task')!r} is not registered")
if run.get("lr_sched") not in LR_SCHEDULERS:
    errors.append(f"run.lr_sched {run.get('lr_sched')!r} is not registered")
if "train" not in run.get("train_splits", []):
    errors.append("run.train_splits holds no 'train': nothing would be trained")
if errors:
    print("bad config: " + "; ".join(errors), file=sys.stderr)
    sys.exit(2)

state = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
trained = {k: v + (run["seed"] + 1) for k, v in state.items() if k.startswith("llama_proj.")}
out = Path(run["output_dir"]) / time.strftime("%Y%m%d%H%M")
out.mkdir(parents=True, exist_ok=True)
for epoch in range(int(run["max_epoch"])):
    torch.save({"model": trained, "optimizer": {}, "config": cfg, "scaler": None, "epoch": epoch},
               out / f"checkpoint_{epoch}.pth")
print(f"trained {run['max_epoch']} epochs x {run.get('iters_per_epoch')} iters")
