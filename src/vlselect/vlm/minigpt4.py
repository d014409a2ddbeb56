"""MiniGPT-4's official checkpoints and official training code, brought into this project's Blip2 layout.

Two ways in:

* :func:`convert_minigpt4` turns the official weights (a MiniGPT-4 ``.pth``, BLIP-2's EVA ViT-g and Q-Former, a
  Vicuna/Llama directory) into a transformers ``Blip2ForConditionalGeneration`` with a Llama text model, the same
  shape as the toy VLM, so every step (fine-tuning, evaluation) treats MiniGPT-4 like any other family.
* :func:`finetune_official` runs the official repository's own ``train.py`` on a cc_sbu_align export, and
  :func:`load_official_output` evaluates what it wrote in-process, through the converter.

Everything here follows the official repository (github.com/Vision-CAIR/MiniGPT-4) at commit
d94738a7626ec43eba6c2cddf3cd2043f1a9689a (HEAD, 2024-09-02): the parameter names of minigpt4/models/{eva_vit,
Qformer,minigpt4,base_model}.py, the registry names, and the keys that train.py, the runner and the model's
``from_config`` read from train_configs/minigpt4_stage2_finetune.yaml and its Llama-2 variant.

Only MiniGPT-4's Vicuna variant (``pretrain_vicuna0``) has a Blip2 layout: the Llama-2 variant has no Q-Former (it
projects groups of four ViT tokens), so the converter rejects it; its official training still runs here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from vlselect.io import atomic_dir, atomic_path, read_json, write_json
from vlselect.runtime import pick_device

log = logging.getLogger(__name__)

OFFICIAL_COMMIT = "d94738a7626ec43eba6c2cddf3cd2043f1a9689a"
DEFAULT_COMMAND = "torchrun --nproc-per-node {gpus} train.py --cfg-path {cfg}"
# BLIP-2's image preprocessing (minigpt4/processors/blip_processors.py: bicubic resize, OpenAI CLIP statistics)
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# The official model's head widths: create_eva_vit_g builds 1408 // 88 heads, the Q-Former is bert-base (64 wide).
# Tensor shapes do not record them, so they are arguments with these defaults.
VIT_HEAD_DIM = 88
QFORMER_HEAD_DIM = 64

# official name -> Blip2 name; q_bias/v_bias keep a temporary name until they are merged into the qkv bias
_RENAMES = [
    (r"visual_encoder\.cls_token", r"vision_model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", r"vision_model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (r"visual_encoder\.blocks\.(\d+)\.norm([12])\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm\2.\3"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.([qv]_bias)", r"vision_model.encoder.layers.\1.self_attn.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
     r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"ln_vision\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", r"qformer.layernorm.\1"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.attention.\3.\4"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention|intermediate_query|output_query)\."
     r"(output\.)?(dense|LayerNorm)\.(weight|bias)", r"qformer.encoder.layer.\1.\2.\3\4.\5"),
    (r"query_tokens", r"query_tokens"),
    (r"llama_proj\.(weight|bias)", r"language_projection.\1"),
    (r"llama_model\.(.+)", r"language_model.\1"),
]
# Keys the official model drops itself (MiniGPT4.init_Qformer sets the Q-Former's text embeddings, text
# feed-forward and LM head to None; BLIP-2's own heads are not part of MiniGPT-4), so they are not errors.
_DROPPED = [
    r"Qformer\.cls\..+",
    r"Qformer\.bert\.embeddings\.(word_embeddings\..+|position_embeddings\..+|position_ids)",
    r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\..+",
    r"(t5_proj|t5_model|opt_proj|opt_model|vision_proj|text_proj|itm_head)\..+",
    r"temp",
]


# ----------------------------------------------------------------------------------------------------------------
# conversion


def _load_pth(path) -> dict:
    """The state dict in an official ``.pth``: the runner and LAVIS save it under "model", eva_vit_g.pth bare."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj["model"] if isinstance(obj.get("model"), dict) else obj


def _to_blip2(state: dict, *, vit_depth: int | None = None) -> tuple[dict, dict]:
    """(Blip2 name -> tensor, Blip2 name -> official name) for an official state dict.

    ViT blocks at or past ``vit_depth`` are dropped, as the official loader drops the blocks of eva_vit_g.pth that
    its ``depth`` does not build. Raises on keys that are neither renamed nor dropped by the official model.
    """
    import torch

    out, origin, unknown = {}, {}, []
    for key, tensor in state.items():
        if any(re.fullmatch(p, key) for p in _DROPPED):
            continue
        block = re.match(r"visual_encoder\.blocks\.(\d+)\.", key)
        if block and vit_depth is not None and int(block.group(1)) >= vit_depth:
            continue
        for pattern, repl in _RENAMES:
            if re.fullmatch(pattern, key):
                name = re.sub(pattern, repl, key)
                out[name], origin[name] = tensor, key
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} keys have no place in MiniGPT-4's Blip2 layout: {_names(unknown)}")
    # EVA keeps separate q and v biases and no k bias; Blip2's fused qkv bias is (q, zeros, v)
    for q_name in [n for n in out if n.endswith("self_attn.q_bias")]:
        prefix = q_name[: -len("q_bias")]
        if prefix + "v_bias" not in out:
            raise ValueError(f"missing key {origin[q_name].replace('q_bias', 'v_bias')} beside {origin[q_name]}")
        q, v = out.pop(q_name), out.pop(prefix + "v_bias")
        out[prefix + "qkv.bias"] = torch.cat([q, torch.zeros_like(v), v])
        origin[prefix + "qkv.bias"] = origin.pop(q_name)
        origin.pop(prefix + "v_bias")
    orphans = [origin[n] for n in out if n.endswith("self_attn.v_bias")]
    if orphans:
        raise ValueError(f"missing the q_bias beside {_names(orphans)}")
    return out, origin


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _count(tensors: dict, pattern: str) -> int:
    return len({m.group(1) for k in tensors if (m := re.match(pattern, k))})


def _blip2_config(tensors: dict, text_config, *, image_token_id: int, vit_head_dim: int, qformer_head_dim: int):
    """A Blip2Config sized from the converted tensors' shapes (nothing about ViT-g is assumed)."""
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig

    for required in ("vision_model.embeddings.position_embedding", "vision_model.embeddings.patch_embedding.weight",
                     "vision_model.encoder.layers.0.mlp.fc1.weight", "query_tokens",
                     "qformer.encoder.layer.0.intermediate_query.dense.weight",
                     "qformer.encoder.layer.0.crossattention.attention.key.weight"):
        if required not in tensors:
            raise ValueError(f"the checkpoints hold no {required}: pass the ViT (eva_vit_g.pth) and the Q-Former "
                             "(blip2_pretrained_flant5xxl.pth) unless the MiniGPT-4 checkpoint holds them")
    width = tensors["vision_model.embeddings.patch_embedding.weight"].shape[0]
    patch = tensors["vision_model.embeddings.patch_embedding.weight"].shape[-1]
    grid = math.isqrt(tensors["vision_model.embeddings.position_embedding"].shape[1] - 1)
    qformer_width = tensors["query_tokens"].shape[-1]
    qformer_layers = _count(tensors, r"qformer\.encoder\.layer\.(\d+)\.")
    cross = sorted(int(m.group(1)) for k in tensors
                   if (m := re.fullmatch(r"qformer\.encoder\.layer\.(\d+)\.crossattention\.attention\.key\.weight", k)))
    # cross-attention sits on every layer whose index is a multiple of the frequency (Qformer.py, BertLayer)
    freq = cross[1] if len(cross) > 1 else qformer_layers
    if cross != list(range(0, qformer_layers, freq)):
        raise ValueError(f"the Q-Former cross-attends in layers {cross}, not every n-th layer from 0 as BLIP-2 does")
    for name, w, head in (("ViT", width, vit_head_dim), ("Q-Former", qformer_width, qformer_head_dim)):
        if w % head:
            raise ValueError(f"the {name} is {w} wide, not a multiple of its head width {head}; pass the right one")
    vision = Blip2VisionConfig(
        image_size=grid * patch, patch_size=patch, hidden_size=width,
        intermediate_size=tensors["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(tensors, r"vision_model\.encoder\.layers\.(\d+)\."),
        num_attention_heads=width // vit_head_dim, hidden_act="gelu", qkv_bias=True,
        # EVA's blocks use 1e-6; MiniGPT-4's ln_vision (Blip2's post_layernorm here) uses torch's 1e-5, which one
        # Blip2 setting cannot express: the difference is eps / variance of the ViT features, far below fp16's
        layer_norm_eps=1e-6)
    qformer = Blip2QFormerConfig(
        hidden_size=qformer_width, num_hidden_layers=qformer_layers,
        num_attention_heads=qformer_width // qformer_head_dim,
        intermediate_size=tensors["qformer.encoder.layer.0.intermediate_query.dense.weight"].shape[0],
        encoder_hidden_size=tensors["qformer.encoder.layer.0.crossattention.attention.key.weight"].shape[1],
        cross_attention_frequency=freq, hidden_act="gelu", layer_norm_eps=1e-12)
    return Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                       text_config=text_config.to_dict(), num_query_tokens=tensors["query_tokens"].shape[1],
                       image_token_index=image_token_id)


def _image_tokenizer(llama_model):
    """The Llama tokenizer with an ``<image>`` AddedToken (Blip2Processor needs one) and a pad token."""
    from transformers import AddedToken, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama_model, local_files_only=True)
    if "<image>" not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [AddedToken("<image>", normalized=False, special=True)]},
                               replace_extra_special_tokens=False)
    if tok.pad_token is None:
        # MiniGPT-4 pads with "$$"; any existing token will do, as padded positions are masked
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def convert_minigpt4(*, ckpt: str, llama_model: str, out_dir: str, vit: str | None = None, qformer: str | None = None,
                     dtype: str = "float16", vit_depth: int | None = None, vit_head_dim: int = VIT_HEAD_DIM,
                     qformer_head_dim: int = QFORMER_HEAD_DIM) -> dict:
    """Convert official MiniGPT-4 weights into a Blip2 + Llama model dir (safetensors) with its Blip2Processor.

    ``ckpt``: a stage-1 or stage-2 MiniGPT-4 checkpoint (pretrained_minigpt4.pth, prerained_minigpt4_7b.pth or a
    runner's checkpoint_*.pth: ``llama_proj`` and whatever else was trained); ``vit``: eva_vit_g.pth; ``qformer``:
    BLIP-2's blip2_pretrained_flant5xxl.pth (Q-Former, query tokens, ln_vision); ``llama_model``: the Vicuna/Llama
    HF directory. They are merged in the official loading order (ViT, then Q-Former checkpoint, then ``ckpt``), so a
    later file's tensors win, and every key must either have a place in the Blip2 layout or be one the official
    model drops itself: anything else, or any part left without weights, is an error that names the keys.
    ``vit_depth``: how many ViT blocks to keep when the file holds more (the official builds ``depth=39``; default:
    all). ``out_dir`` appears atomically and loads with AutoModelForImageTextToText / AutoProcessor; the ``<image>``
    token added to the tokenizer is never generated. Returns the sizes found (also in ``out_dir/conversion.json``).
    """
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, LlamaForCausalLM
    from transformers.image_utils import PILImageResampling

    if dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    state = {}
    if vit:
        state |= {f"visual_encoder.{k}": t for k, t in _load_pth(vit).items()}
    if qformer:
        state |= _load_pth(qformer)
    state |= _load_pth(ckpt)
    tensors, origin = _to_blip2(state, vit_depth=vit_depth)
    proj, cls = tensors.get("language_projection.weight"), tensors.get("vision_model.embeddings.class_embedding")
    if proj is not None and cls is not None and proj.shape[1] == 4 * cls.shape[-1]:
        raise ValueError(f"{ckpt}: llama_proj takes four ViT tokens at a time, as MiniGPT-4's Llama-2 variant does; "
                         "that variant has no Q-Former and no Blip2 layout, so only the Vicuna variant converts")

    tok = _image_tokenizer(llama_model)
    llm = LlamaForCausalLM.from_pretrained(llama_model, dtype=torch_dtype, local_files_only=True)
    # language-model tensors in the MiniGPT-4 checkpoint (llama_model.*) win over the Llama dir's
    tensors = {f"language_model.{k}": t for k, t in llm.state_dict().items()} | tensors
    # rows for tokens the tokenizer gained (<image>): the mean embedding, as transformers' resizing does
    for name in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        rows = tensors[name]
        if len(tok) > rows.shape[0]:
            tensors[name] = torch.cat([rows, rows.float().mean(0, keepdim=True).to(rows.dtype)
                                       .expand(len(tok) - rows.shape[0], -1)])
    text_config = llm.config
    text_config.vocab_size = max(len(tok), text_config.vocab_size)
    image_token_id = tok.convert_tokens_to_ids("<image>")
    config = _blip2_config(tensors, text_config, image_token_id=image_token_id, vit_head_dim=vit_head_dim,
                           qformer_head_dim=qformer_head_dim)
    if vit_depth is not None and config.vision_config.num_hidden_layers != vit_depth:
        raise ValueError(f"vit_depth is {vit_depth}, but the ViT weights hold "
                         f"{config.vision_config.num_hidden_layers} blocks")
    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing, unknown = expected - set(tensors), set(tensors) - expected
    if missing:
        raise ValueError(f"the checkpoints leave {len(missing)} parameters of the Blip2 model without weights: "
                         f"{_names(missing)}; pass --vit / --qformer if the MiniGPT-4 checkpoint lacks them")
    if unknown:
        raise ValueError(f"{len(unknown)} keys do not fit the Blip2 model sized from the checkpoints: "
                         f"{_names(origin.get(k, k) for k in unknown)}")
    model.load_state_dict({k: t.to(torch_dtype) for k, t in tensors.items()}, strict=True, assign=True)
    model.generation_config = llm.generation_config
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.suppress_tokens = [image_token_id]

    size = config.vision_config.image_size
    image_processor = BlipImageProcessor(size={"height": size, "width": size}, resample=PILImageResampling.BICUBIC,
                                         image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), do_convert_rgb=True)
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tok,
                               num_query_tokens=config.num_query_tokens)
    info = {"sources": {"ckpt": str(ckpt), "vit": vit and str(vit), "qformer": qformer and str(qformer),
                        "llama_model": str(llama_model)},
            "official_commit": OFFICIAL_COMMIT, "dtype": dtype, "image_size": size,
            "vision_layers": config.vision_config.num_hidden_layers,
            "qformer_layers": config.qformer_config.num_hidden_layers,
            "num_query_tokens": config.num_query_tokens, "image_token_id": image_token_id}
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json(info, tmp / "conversion.json")
    log.info("converted MiniGPT-4 (%s) into %s", ckpt, out_dir)
    return info


# ----------------------------------------------------------------------------------------------------------------
# the official repository's training


def _cc_sbu_align_ids(train_dir) -> list[str]:
    """The image ids of a cc_sbu_align export, checked the way the official CCSBUAlignDataset opens them."""
    train_dir = Path(train_dir)
    anns = read_json(train_dir / "filter_cap.json")["annotations"]
    if not anns:
        raise ValueError(f"{train_dir}/filter_cap.json holds no annotations; an empty set cannot be fine-tuned")
    ids = [str(a["image_id"]) for a in anns]
    absent = [i for i in ids if not (train_dir / "image" / f"{i}.jpg").exists()]
    if absent:
        raise ValueError(f"{train_dir}: the official dataset reads image/<image_id>.jpg only, and "
                         f"{len(absent)} images are not there as .jpg: {_names(absent, 4)}")
    return ids


def render_official_config(*, minigpt4: dict, train_dir, output_dir, epochs: int, batch_size: int, lr: float,
                           seed: int) -> dict:
    """The official stage-2 config for this training set: train_configs/minigpt4_stage2_finetune.yaml (or
    minigpt4_llama2_stage2_finetune.yaml for ``model_type: pretrain_llama2``) at the matched commit, with this
    run's paths, epochs, batch size, learning rate and seed. The HEAD files' learning-rate ratios are kept
    (min_lr = init_lr / 3, warmup_lr = init_lr / 30) and its 200 warm-up steps, at most one epoch.
    ``llama_model`` (and ``q_former_model`` when ``minigpt4.qformer`` is set) override the model-type defaults,
    which otherwise point at a placeholder and a download.
    """
    for key in ("repo", "ckpt", "llama_model"):
        if not minigpt4.get(key):
            raise ValueError(f"finetune.minigpt4.{key} is not set; the minigpt4 backend needs the official checkout, "
                             "the stage-1 checkpoint and the Vicuna/Llama weights (local paths)")
    model_type = minigpt4.get("model_type", "pretrain_vicuna0")
    variants = {"pretrain_vicuna0": ("###", "###Human: {} ###Assistant: ", "minigpt4_finetune"),
                "pretrain_llama2": ("</s>", "[INST] {} [/INST] ", "minigpt4_llama2_finetune")}
    if model_type not in variants:
        raise ValueError(f"finetune.minigpt4.model_type {model_type!r} is not one the official MiniGPT-4 registers: "
                         f"{', '.join(variants)}")
    end_sym, template, job_name = variants[model_type]
    gpus = int(minigpt4.get("gpus", 1))
    # each of the gpus ranks draws batch_size examples per iteration
    iters = minigpt4.get("iters_per_epoch") or -(-len(_cc_sbu_align_ids(train_dir)) // (batch_size * gpus))
    model = {"arch": "minigpt4", "model_type": model_type, "max_txt_len": 160, "end_sym": end_sym,
             "prompt_path": "prompts/alignment.txt", "prompt_template": template,
             "ckpt": str(Path(minigpt4["ckpt"]).resolve()), "llama_model": str(Path(minigpt4["llama_model"]).resolve())}
    if minigpt4.get("qformer") and model_type == "pretrain_vicuna0":
        model["q_former_model"] = str(Path(minigpt4["qformer"]).resolve())
    return {
        "model": model,
        "datasets": {"cc_sbu_align": {"batch_size": batch_size,
                                      "vis_processor": {"train": {"name": "blip2_image_train", "image_size": 224}},
                                      "text_processor": {"train": {"name": "blip_caption"}},
                                      "build_info": {"storage": str(Path(train_dir).resolve())}}},
        "run": {"task": "image_text_pretrain", "lr_sched": "linear_warmup_cosine_lr", "init_lr": lr,
                "min_lr": lr / 3, "warmup_lr": lr / 30, "weight_decay": 0.05, "max_epoch": epochs,
                "iters_per_epoch": iters, "num_workers": 4, "warmup_steps": min(200, iters), "seed": seed,
                "output_dir": str(Path(output_dir).resolve()), "amp": True, "resume_ckpt_path": None,
                "evaluate": False, "train_splits": ["train"], "device": "cuda", "world_size": 1,
                "dist_url": "env://", "distributed": True, "wandb_log": bool(minigpt4.get("wandb_log", False)),
                "job_name": job_name},
    }


def _convert_settings(minigpt4: dict) -> dict:
    """The converter's arguments for the base model the official run started from."""
    def path(key):
        return str(Path(minigpt4[key]).resolve()) if minigpt4.get(key) else None

    return {"ckpt": path("ckpt"), "llama_model": path("llama_model"), "vit": path("vit"), "qformer": path("qformer"),
            "dtype": minigpt4.get("dtype", "float16"), "vit_depth": minigpt4.get("vit_depth")}


def _cache_key(convert: dict) -> str:
    """Names a converted base by its sources, their sizes and times, so a replaced file gets a new conversion."""
    stamps = {k: [os.stat(v).st_size, os.stat(v).st_mtime_ns] for k, v in convert.items()
              if k in ("ckpt", "vit", "qformer") and v}
    return hashlib.sha256(json.dumps([convert, stamps], sort_keys=True).encode()).hexdigest()[:16]


def finetune_official(*, train_dir: str | os.PathLike, out_dir: str | os.PathLike, epochs: int, batch_size: int,
                      lr: float, seed: int, minigpt4: dict) -> dict:
    """Run the official repository's stage 2 (its train.py) on a cc_sbu_align export and write ``out_dir``.

    The run works in ``<out_dir>.minigpt4`` (config ``stage2.yaml``, the runner's ``output/<job id>/``); a killed
    run's checkpoints are cleared first so they cannot pass for this run's. ``minigpt4.command`` runs in
    ``minigpt4.repo`` with ``{gpus}`` (torchrun's --nproc-per-node) and ``{cfg}`` filled in; with ``minigpt4.vit``
    the run finds eva_vit_g.pth in its own torch hub cache instead of downloading it. ``out_dir/finetune.json``
    (returned) names the last epoch's checkpoint and where :func:`load_official_output` caches the converted base
    (``minigpt4.convert_dir``, default ``minigpt4_base/`` beside ``out_dir``).
    """
    import yaml

    repo = Path(minigpt4.get("repo") or "")
    if not (repo / "train.py").exists():
        raise FileNotFoundError(f"finetune.minigpt4.repo {repo} holds no train.py; point it at a MiniGPT-4 checkout")
    n_examples = len(_cc_sbu_align_ids(train_dir))
    work = Path(str(out_dir) + ".minigpt4")
    output = work / "output"
    shutil.rmtree(output, ignore_errors=True)
    cfg = render_official_config(minigpt4=minigpt4, train_dir=train_dir, output_dir=output, epochs=epochs,
                                 batch_size=batch_size, lr=lr, seed=seed)
    cfg_path = work / "stage2.yaml"
    with atomic_path(cfg_path, ".yaml") as tmp:
        tmp.write_text(f"# official MiniGPT-4 stage 2 (matched to commit {OFFICIAL_COMMIT})\n"
                       + yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ)
    if minigpt4.get("vit"):
        # create_eva_vit_g always calls download_cached_file(.../eva_vit_g.pth), which looks in torch's hub cache
        hub = work / "torch_home" / "hub" / "checkpoints"
        hub.mkdir(parents=True, exist_ok=True)
        (hub / "eva_vit_g.pth").unlink(missing_ok=True)
        (hub / "eva_vit_g.pth").symlink_to(Path(minigpt4["vit"]).resolve())
        env["TORCH_HOME"] = str((work / "torch_home").resolve())
    gpus = int(minigpt4.get("gpus", 1))
    cmd = minigpt4.get("command", DEFAULT_COMMAND).format(gpus=gpus, cfg=shlex.quote(str(cfg_path.resolve())))
    log.info("running the official MiniGPT-4 stage 2: %s (cwd %s)", cmd, repo)
    proc = subprocess.run(cmd, shell=True, cwd=repo, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"MiniGPT-4 training command failed with exit code {proc.returncode}: {cmd}; "
                           f"see its output above and the config at {cfg_path}")
    # the runner saves checkpoint_<epoch>.pth after every epoch, counting from 0
    ckpts = sorted(output.glob(f"*/checkpoint_{epochs - 1}.pth"))
    if len(ckpts) != 1:
        raise RuntimeError(f"MiniGPT-4 finished but wrote {len(ckpts)} checkpoint_{epochs - 1}.pth under {output}, "
                           "not one")
    convert = _convert_settings(minigpt4)
    convert_dir = Path(minigpt4.get("convert_dir") or Path(out_dir).resolve().parent / "minigpt4_base")
    info = {"backend": "minigpt4", "official_commit": OFFICIAL_COMMIT, "model_type": cfg["model"]["model_type"],
            "base_model": convert["ckpt"], "trainable": ["llama_proj"], "checkpoint": str(ckpts[0].resolve()),
            "config": str(cfg_path.resolve()), "command": cmd, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "seed": seed, "n_examples": n_examples, "convert": convert,
            "converted_base": str(convert_dir.resolve() / _cache_key(convert))}
    with atomic_dir(out_dir) as tmp:
        write_json(info, tmp / "finetune.json")
    return info


def _converted_base(convert: dict, target: Path) -> Path:
    """``target``, converting into it first unless an earlier call (or a concurrent job) already did."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        convert_minigpt4(out_dir=str(staging / "model"), **convert)
        try:
            os.rename(staging / "model", target)
        except OSError:
            # another job renamed its conversion into place first (rename never replaces a non-empty dir)
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_official_output(path: str | os.PathLike, device="auto"):
    """(model, processor) for a :func:`finetune_official` output: the converted base model with the trained
    checkpoint's tensors (``llama_proj``, and anything else the run trained) in place, in eval mode on ``device``.

    The base is converted once per set of sources into the ``converted_base`` dir named in finetune.json and reused
    by every later call, so 30 subsets share one conversion.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(path)
    info = read_json(path / "finetune.json")
    if info.get("backend") != "minigpt4":
        raise ValueError(f"{path} was not written by the official MiniGPT-4 backend (backend "
                         f"{info.get('backend', 'transformers')!r})")
    base = _converted_base(info["convert"], Path(info["converted_base"]))
    model = AutoModelForImageTextToText.from_pretrained(base, dtype="auto", local_files_only=True)
    processor = AutoProcessor.from_pretrained(base, local_files_only=True)
    trained, origin = _to_blip2(_load_pth(info["checkpoint"]), vit_depth=info["convert"].get("vit_depth"))
    own = model.state_dict()
    unknown = [origin[k] for k in trained if k not in own]
    if unknown:
        raise ValueError(f"{info['checkpoint']}: {_names(unknown)} have no place in the converted base {base}")
    with torch.no_grad():
        for name, tensor in trained.items():
            if tensor.shape != own[name].shape:
                raise ValueError(f"{info['checkpoint']}: {origin[name]} has shape {tuple(tensor.shape)}, the base "
                                 f"{base} {tuple(own[name].shape)}; was it trained from another base?")
            own[name].copy_(tensor)
    model.to(pick_device(device))
    model.eval()
    return model, processor
