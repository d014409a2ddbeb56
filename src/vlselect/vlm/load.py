"""Loading VLMs: a base model dir, a fine-tune output dir on its base, or either as a ready adapter."""

from __future__ import annotations

import os
from pathlib import Path

from vlselect.io import read_json
from vlselect.runtime import pick_device
from vlselect.vlm.base import VLMAdapter, adapter_class

DTYPES = ("float32", "bfloat16", "float16", "auto")
# the schema's finetune.lora defaults, for calls made outside the workflow
DEFAULT_LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def load_base(path: str | os.PathLike, device, dtype: str = "float32"):
    """Load (model, processor) from a transformers model dir, in eval mode on ``device``, the weights in ``dtype``
    (``auto``: as the checkpoint stores them). Nothing is downloaded."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if dtype not in DTYPES:
        raise ValueError(f"model_dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not Path(path, "config.json").exists():
        raise FileNotFoundError(f"{path} is not a transformers model dir (no config.json); train or point to one")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model.to(pick_device(device)).eval()
    return model, processor


def add_lora(model, language_model: tuple[str, ...], lora: dict | None) -> None:
    """Inject LoRA adapters (peft) in place into the linear layers of the language model (modules whose name holds
    one of ``language_model``) whose last name is one of ``lora["targets"]``; the model keeps its class, so it
    generates and saves as before."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    settings = DEFAULT_LORA | (lora or {})
    targets = [name for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in settings["targets"]
               and any(part in name for part in language_model)]
    if not targets:
        raise ValueError(f"no linear layer named {settings['targets']} in the language model "
                         f"({', '.join(language_model)}); check finetune.lora.targets")
    config = LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                        target_modules=targets)
    inject_adapter_in_model(config, model)


def load_finetuned(path: str | os.PathLike, device="auto", base_model: str | None = None):
    """Return (model, processor): a fine-tune output dir's trained weights (and LoRA adapters) on its base model.

    An output of the official MiniGPT-4 repository (``"backend": "minigpt4"``) goes through its converter.
    """
    from safetensors.torch import load_file

    path = Path(path)
    info = read_json(path / "finetune.json")
    if info.get("backend", "transformers") == "minigpt4":
        from vlselect.vlm import minigpt4

        return minigpt4.load_official_output(path, device)
    model, processor = load_base(base_model or info["base_model"], device, dtype=info.get("model_dtype", "float32"))
    if info.get("lora"):
        add_lora(model, adapter_class(model, info.get("family", "auto")).language_model, info["lora"])
    trained = load_file(path / "trainable.safetensors")
    missing = set(trained) - set(dict(model.named_parameters()))
    if missing:
        raise ValueError(f"{path}: trained params {sorted(missing)[:3]} are not in the base model; wrong base_model?")
    model.load_state_dict(trained, strict=False)
    model.eval()  # the injected LoRA dropout layers start in training mode
    return model, processor


def load_adapter(model_dir: str | os.PathLike, device="auto", *, base_model: str | None = None,
                 template: str | None = None, family: str = "auto", model_dtype: str = "float32") -> VLMAdapter:
    """The adapter for evaluating ``model_dir``: a fine-tune output (``finetune.json``) on its base, or a model dir.

    ``template`` and ``family`` (unless ``auto``) override what the fine-tune recorded; a model dir records
    neither, so its family comes from its config's model type and its template is the family's default, and its
    weights load in ``model_dtype`` (a fine-tune's load in the dtype it was trained with).
    """
    model_dir = Path(model_dir)
    if (model_dir / "finetune.json").exists():
        info = read_json(model_dir / "finetune.json")
        model, processor = load_finetuned(model_dir, device, base_model=base_model)
    elif (model_dir / "config.json").exists():
        info = {}
        model, processor = load_base(model_dir, device, dtype=model_dtype)
    else:
        raise FileNotFoundError(f"{model_dir} is neither a fine-tune output (finetune.json) nor a model dir "
                                "(config.json)")
    cls = adapter_class(model, info.get("family", "auto") if family == "auto" else family)
    return cls(model, processor, template or info.get("template"))
