"""A fake MiniGPT-4 checkout's train.py for tests: checks the rendered stage-2 config like the real script would
read it, then writes output_dir/<timestamp>/checkpoint_{last epoch}.pth the way MiniGPT-4's runner names them."""

import argparse
import sys
import time
from pathlib import Path

import yaml

parser = argparse.ArgumentParser()
parser.add_argument("--cfg-path", required=True)
args = parser.parse_args()
cfg = yaml.safe_load(Path(args.cfg_path).read_text())

errors = []
for key in ("ckpt", "llama_model"):
    if not cfg["model"].get(key):
        errors.append(f"model.{key} missing")
storage = Path(cfg["datasets"]["cc_sbu_align"]["build_info"]["storage"])
if not (storage / "filter_cap.json").exists() or not (storage / "image").is_dir():
    errors.append(f"storage {storage} is not a cc_sbu_align folder")
run = cfg["run"]
for key in ("output_dir", "max_epoch", "iters_per_epoch", "seed", "init_lr"):
    if key not in run:
        errors.append(f"run.{key} missing")
if errors:
    print("bad config: " + "; ".join(errors), file=sys.stderr)
    sys.exit(2)

out = Path(run["output_dir"]) / time.strftime("%Y%m%d%H%M%S")
out.mkdir(parents=True, exist_ok=True)
(out / f"checkpoint_{int(run['max_epoch']) - 1}.pth").write_bytes(b"fake checkpoint")
print(f"trained {run['max_epoch']} epochs x {run['iters_per_epoch']} iters")
