# Shared helpers: config validation, result paths, and JSON params for the vlselect CLI.
import json
from pathlib import Path

from vlselect.config import check_real_run, validate_config
from vlselect.resources import group_resources
from vlselect.shards import parse_scatteritem

validate_config(config)
check_real_run(config)

R = config["results"]
TOY = config["dataset"]["format"] == "toy"
INDICATORS = ["clip", "reward", "length", "gpt"]
SCORE_FILES = expand(f"{R}/scores/{{indicator}}.parquet", indicator=INDICATORS)
SUBSETS = list(range(config["labels"]["n_subsets"]))
SUITES = config["labels"]["suites"]

report: "../report/workflow.rst"

scattergather:
    shards=config["scoring"]["shards"],


def as_json(value):
    """Settings reach the CLI as one JSON string, so Snakemake reruns a job when its settings change.

    Wrapped in a function of the wildcards because Snakemake would read the JSON's braces as wildcards.
    """
    text = to_json(value)
    return lambda wildcards: text


def to_json(value):
    return json.dumps(value, sort_keys=True)


# Training sets are written in the dataset's own layout where it carries more than cc_sbu_align can (LLaVA's
# instructions and multi-turn conversations)
EXPORT_FORMAT = "llava" if config["dataset"]["format"] == "llava" else "cc_sbu_align"
FT_BACKEND = config["finetune"]["backend"]
FT_MINIGPT4 = config["finetune"]["minigpt4"]


def toy_inputs(*paths):
    """Inputs that exist only in the toy world, where the workflow builds its own data and models."""
    return list(paths) if TOY else []


def final_models():
    """Models in the comparison: the base model and each method with its seeds ('full' once: it has no sampling)."""
    names = ["base"]
    for method in config["final"]["methods"]:
        seeds = 1 if method == "full" else config["final"]["seeds"]
        names += [f"{method}_seed{s}" for s in range(seeds)]
    return names


def selection_key(method, seed):
    """Where a final model's training selection lives: random draws anew per seed, the others are fixed."""
    return f"random{seed}" if method == "random" else method


def all_targets():
    targets = [f"{R}/final/table.md", f"{R}/final/judge.json"]
    targets += expand(f"{R}/selection/{{method}}/dataset", method=config["selection"]["methods"])
    targets += report_targets()
    return targets


# In the toy world the workflow trains its own tiny models; otherwise config.models names real ones.
if TOY:
    DATA_ROOT = f"{R}/toy/dataset"
    CLIP = {"model": "vlselect-toy-clip", "pretrained": f"{R}/toy/models/clip/open_clip_model.safetensors",
            "model_config_dir": f"{R}/toy/models/clip"}
    REWARD = f"{R}/toy/models/reward"
    # models.vlm.path puts another VLM (a tiny LLaVA, say) through the toy world in place of the toy one
    VLM = config["models"]["vlm"]["path"] or f"{R}/toy/models/vlm"
    SUITE_ROOT = f"{R}/toy/suites"
else:
    DATA_ROOT = config["dataset"]["root"]
    CLIP = {k: v for k, v in config["models"]["clip"].items() if v is not None}
    REWARD = config["models"]["reward"]["path"]
    VLM = config["models"]["vlm"]["path"]
    SUITE_ROOT = config["evaluate"]["suite_root"]



# Resources per rule group: memory from the size of the checkpoints each group loads (unless set), memory and
# runtime times Snakemake's `attempt`, GPUs as configured. The floors are what the toy world's jobs need.
RES = config["resources"]
VLM_CHECKPOINTS = [VLM] if FT_BACKEND == "transformers" else [FT_MINIGPT4.get("ckpt"), FT_MINIGPT4.get("llama_model")]
SCORING_RESOURCES = group_resources(RES["scoring"], [CLIP.get("pretrained"), REWARD], floor=8000)


def vlm_resources(group, runtime_factor=1):
    """Resources of the fine-tune or evaluate group; label jobs run labels.seeds models, so their runtime scales."""
    return group_resources(RES[group], VLM_CHECKPOINTS, floor=4000, runtime_factor=runtime_factor)
