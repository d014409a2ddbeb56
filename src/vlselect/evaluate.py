"""Evaluate a VLM (a base model dir or a fine-tune output dir) on evaluation suites.

Answers come from batched greedy generation through the model's adapter (:mod:`vlselect.vlm`), with the same
conversation template the fine-tune used (the suite question as the user turn), so a label measures what the
fine-tuning data taught. Writes the eval JSON of the
contract: per-suite accuracy, n and per-item answers, and "mean" = the mean of the suite accuracies. A genuine
label's dir holds several seeds' fine-tunes; their accuracies are averaged and each seed's answers kept.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from vlselect.io import write_json
from vlselect.runtime import pick_device, seed_everything
from vlselect.suites import format_question, load_suite, score_suite
from vlselect.vlm import VLMAdapter, load_adapter, open_rgb

log = logging.getLogger(__name__)


def seed_dirs(model_dir: str | Path) -> list[Path]:
    """The fine-tunes of a :func:`vlselect.vlm.train.finetune_seeds` output (``seed_<s>`` dirs) in seed order.

    Empty for a single fine-tune or a model dir.
    """
    dirs = [p for p in Path(model_dir).glob("seed_*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[5:]))


def _answer_suites(adapter: VLMAdapter, suites: list, suite_root, split: str, batch_size: int, max_new_tokens: int,
                   dev) -> dict:
    """{suite name: {"accuracy", "n", "items"}} for one model."""
    import torch
    from tqdm import tqdm

    results = {}
    for spec in suites:
        name, items = load_suite(spec, suite_root, split)
        preds = []
        for i in tqdm(range(0, len(items), batch_size), desc=f"eval {name}", file=sys.stderr):
            chunk = items[i:i + batch_size]
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                preds += adapter.generate([open_rgb(it.image_path) for it in chunk],
                                          [format_question(it) for it in chunk], max_new_tokens=max_new_tokens)
        # a suite's score comes whole: CIDEr is a corpus-level metric, not a mean over items
        acc, per_item = score_suite(items, preds)
        # the image and meta (LLaVA-Bench's context) go along for the judge
        rows = [{"id": it.id, "question": it.question, "reference": it.answer, "prediction": p, "correct": c,
                 "image": it.image_path} | ({"meta": it.meta} if it.meta else {})
                for it, p, c in zip(items, preds, per_item)]
        results[name] = {"accuracy": acc, "n": len(rows), "items": rows}
        log.info("%s: score %s on %d items", name, "none (judged)" if acc is None else f"{acc:.3f}", len(rows))
    return results


def _mean_accuracy(results: dict) -> float:
    """Mean over the scored suites; a judged suite (LLaVA-Bench: accuracy None) is compared by the judge instead."""
    return float(np.mean([r["accuracy"] for r in results.values() if r["accuracy"] is not None]))


def _seed_mean(values: list) -> float | None:
    return None if None in values else float(np.mean(values))


def evaluate(*, model_dir: str, suites: list, out: str, suite_root: str | None = None, split: str = "val",
             batch_size: int = 64, max_new_tokens: int = 64, device: str = "auto", base_model: str | None = None,
             template: str | None = None, family: str = "auto", model_dtype: str = "float32") -> dict:
    """Answer every item of ``suites`` with the model in ``model_dir`` and write the eval JSON to ``out``.

    ``suites`` holds toy-layout names (under ``suite_root``) or spec dicts {"name","format","path"} for local copies
    of real benchmarks. ``template`` overrides the one recorded by the fine-tune (the base model has none recorded and
    uses its family's default); ``family`` forces an adapter (``auto``: the one the fine-tune recorded, else the one
    for the model's type), so that the base model is prompted as its fine-tunes were; ``model_dtype`` is the dtype a
    base model dir loads in (a fine-tune loads in the one it was trained with). A dir of several seeds'
    fine-tunes (:func:`seed_dirs`) is evaluated seed by seed: each suite's accuracy is then the mean over seeds,
    ``seeds`` holds every seed's own results and answers, and ``seed_sd`` the spread of the seeds' mean accuracies
    (None for one seed). Returns the written dict.
    """
    if not suites:
        raise ValueError("no suites to evaluate; set labels.suites / final.suites")
    dev = pick_device(device)
    runs = seed_dirs(model_dir)
    per_seed = {}
    for run in runs or [Path(model_dir)]:
        seed_everything(0)
        adapter = load_adapter(run, dev, base_model=base_model, template=template, family=family,
                               model_dtype=model_dtype)
        if runs:
            log.info("seed %s", run.name[5:])
        per_seed[run.name[5:] if runs else "model"] = _answer_suites(
            adapter, suites, suite_root, split, batch_size, max_new_tokens, dev)
    report = {"model_dir": str(model_dir), "split": split}
    if not runs:
        (results,) = per_seed.values()
        report |= {"suites": results, "mean": _mean_accuracy(results)}
    else:
        means = {seed: _mean_accuracy(results) for seed, results in per_seed.items()}
        first = next(iter(per_seed.values()))
        report |= {
            "suites": {name: {"accuracy": _seed_mean([r[name]["accuracy"] for r in per_seed.values()]),
                              "n": first[name]["n"]} for name in first},
            "mean": float(np.mean(list(means.values()))),
            "seed_sd": float(np.std(list(means.values()), ddof=1)) if len(means) > 1 else None,
            "seeds": {seed: {"mean": means[seed], "suites": results} for seed, results in per_seed.items()},
        }
        spread = f" (seed sd {report['seed_sd']:.4f})" if report["seed_sd"] is not None else ""
        log.info("mean over %d seed(s) %.4f%s", len(means), report["mean"], spread)
    write_json(report, out)
    return report
