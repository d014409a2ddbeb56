# Shared helpers: config validation, result paths, and JSON params for the vlselect CLI.
import json
from pathlib import Path

from vlselect.config import check_external_scores, check_gpu_counts, check_real_run, validate_config
from vlselect.resources import group_resources
from vlselect.shards import parse_scatteritem
from vlselect.suites import check_suite_use, is_judged, suite_name, with_prompts

validate_config(config)
check_real_run(config)
check_gpu_counts(config)
check_external_scores(config)
check_suite_use(config["labels"]["suites"], config["final"]["suites"])

R = config["results"]
TOY = config["dataset"]["format"] == "toy"
EXTERNAL = config["selection"]["external_scores"]
# bring-your-own scores provide only the indicators they map; everything downstream reads SCORE_FILES
INDICATORS = list(EXTERNAL["columns"]) if EXTERNAL else ["clip", "reward", "length", "gpt"]
SCORE_FILES = expand(f"{R}/scores/{{indicator}}.parquet", indicator=INDICATORS)
SUBSETS = list(range(config["labels"]["n_subsets"]))
# suite entries with evaluate.prompts applied (what the evaluation jobs get), and the names their results go under
SUITES = with_prompts(config["labels"]["suites"], config["evaluate"]["prompts"])
FINAL_SUITES = with_prompts(config["final"]["suites"], config["evaluate"]["prompts"])
SUITE_NAMES = [suite_name(s) for s in SUITES]
# the table's columns: a judged suite (LLaVA-Bench) has no score of its own and shows in the judge's results
TABLE_SUITE_NAMES = [suite_name(s) for s in FINAL_SUITES if not is_judged(s)]

report: "../report/workflow.rst"

# Steps that call an API (GPT scoring with the length indicator's rule, the judge) run in the main Snakemake
# process, on the submit host: many clusters' compute nodes have no outbound internet.
if config["network_local"]:

    localrules:
        score_text_shard,
        judge_pair,

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
VLM_CHECKPOINTS = [VLM] if FT_BACKEND == "transformers" else [FT_MINIGPT4["ckpt"], FT_MINIGPT4["llama_model"]]
SCORING_RESOURCES = group_resources(RES["scoring"], [CLIP.get("pretrained"), REWARD], floor=8000)


def vlm_resources(group, runtime_factor=1):
    """Resources of the fine-tune or evaluate group; label jobs run labels.seeds models, so their runtime scales."""
    return group_resources(RES[group], VLM_CHECKPOINTS, floor=4000, runtime_factor=runtime_factor)
