"""Model loaders for the scoring and feature steps: open_clip models and transformers reward/text models.

Nothing here downloads: every model comes from a local file or directory, or from a cache that
already holds it. A missing model is an error that says what to pass instead, because a silent
download on a cluster node without internet would hang or fail far from its cause.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from vlselect.io import sha256_file

log = logging.getLogger(__name__)


def load_clip(*, model: str, pretrained: str | None, model_config_dir: str | None = None, device="cpu",
              cache_dir: str | None = None):
    """Load an open_clip model for inference; returns (model, preprocess, tokenizer).

    ``model`` is an open_clip architecture name (built in, or defined by a JSON config in
    ``model_config_dir``, which is registered first) or ``local-dir:/path`` holding an
    open_clip_config.json and weights. ``pretrained`` is a checkpoint path (.safetensors, or a
    .bin/.pt read with weights_only=True) or an open_clip pretrained tag whose weights already sit in
    ``cache_dir`` (or open_clip's default caches). The model is returned in eval mode on ``device``.
    """
    import open_clip

    if model_config_dir is not None:
        if not Path(model_config_dir).is_dir():
            raise FileNotFoundError(f"model_config_dir {model_config_dir} does not exist; point it at the folder "
                                    "holding the open_clip model config JSON")
        open_clip.add_model_config(model_config_dir)
    if model.startswith("hf-hub:"):
        raise ValueError(f"model {model!r} would be fetched from the Hugging Face hub, which this tool never does; "
                         "download the repository yourself and pass model='local-dir:/path/to/it'")
    kwargs = {}
    if model.startswith("local-dir:"):
        checkpoint = None
    else:
        if model not in open_clip.list_models():
            raise ValueError(f"unknown open_clip model {model!r}; pass a built-in name, a name defined by a JSON "
                             "config in model_config_dir, or 'local-dir:/path'")
        if not pretrained:
            raise ValueError(f"no pretrained weights given for {model!r}; a randomly initialised CLIP gives meaningless "
                             "scores, so pass a checkpoint path or a cached pretrained tag")
        checkpoint, kwargs = _resolve_clip_checkpoint(model, pretrained, cache_dir)
    clip, _, preprocess = open_clip.create_model_and_transforms(
        model, pretrained=checkpoint, device=device, **kwargs)
    clip.eval()
    tokenizer = open_clip.get_tokenizer(model)
    log.info("loaded open_clip %s (%s) on %s", model, pretrained, device)
    return clip, preprocess, tokenizer


def clip_checksum(*, model: str, pretrained: str | None, cache_dir: str | None = None) -> str:
    """Identity of the CLIP weights for score metadata: sha256 of the checkpoint file, or the pretrained tag."""
    if model.startswith("local-dir:"):
        return _dir_checksum(Path(model[len("local-dir:"):]))
    if pretrained and os.path.isfile(pretrained):
        return sha256_file(pretrained)
    return f"tag:{pretrained}"


def _resolve_clip_checkpoint(model: str, pretrained: str, cache_dir: str | None) -> tuple[str, dict]:
    """Map ``pretrained`` to a local checkpoint file, plus the preprocessing a pretrained tag was trained with."""
    import open_clip

    if os.path.isfile(pretrained):
        return pretrained, {}
    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag_cfg:
        raise FileNotFoundError(f"pretrained {pretrained!r} is neither a file nor a known open_clip tag for {model!r}; "
                                "pass the path of a local checkpoint")
    local = _cached_tag_file(tag_cfg, cache_dir)
    if local is None:
        raise FileNotFoundError(
            f"the weights for {model!r} / {pretrained!r} are not in the local cache (cache_dir={cache_dir!r}) and this "
            "tool never downloads; fetch them on a machine with internet and pass the checkpoint path as "
            "'pretrained', or set models.clip.cache_dir to the cache that holds them")
    # A tag carries the normalisation (and activation) it was trained with; keep them when loading from the file.
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    return local, {"force_preprocess_cfg": preprocess, "force_quick_gelu": bool(tag_cfg.get("quick_gelu", False))}


def _cached_tag_file(tag_cfg: dict, cache_dir: str | None) -> str | None:
    if tag_cfg.get("file") and os.path.isfile(tag_cfg["file"]):
        return tag_cfg["file"]
    if tag_cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(tag_cfg["hf_hub"])  # "org/repo/" names no file: try the defaults
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    if tag_cfg.get("url"):
        root = cache_dir or os.path.expanduser("~/.cache/clip")
        candidate = os.path.join(root, os.path.basename(tag_cfg["url"]))
        if os.path.isfile(candidate):
            return candidate
    return None


def load_reward(*, path: str, device="cpu"):
    """Load a transformers sequence-classification reward model and its tokenizer; returns (model, tokenizer).

    ``path`` is a local directory or a model id already in the Hugging Face cache (local_files_only).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not path:
        raise ValueError("no reward model path given; set models.reward.path to a local model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise FileNotFoundError(f"cannot load reward model {path!r} from local files ({exc}); pass a local directory "
                                "or a model id that is already in the Hugging Face cache") from exc
    if model.config.num_labels != 1:
        raise ValueError(f"reward model {path!r} has {model.config.num_labels} output labels; a reward model has one")
    model.to(device).eval()
    return model, tokenizer


def load_text_encoder(*, path: str, device="cpu"):
    """Load a transformers encoder (AutoModel) and tokenizer from local files for answer embeddings."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise FileNotFoundError(f"cannot load text encoder {path!r} from local files ({exc}); pass a local directory "
                                "or a model id already in the Hugging Face cache, or use text_encoder: clip") from exc
    model.to(device).eval()
    return model, tokenizer


def hf_checksum(path: str) -> str:
    """Identity of a transformers model for metadata: hash of a local directory's weights, else the cached revision."""
    local = Path(path)
    if local.is_dir():
        return _dir_checksum(local)
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(path, "config.json")
    if isinstance(hit, str):
        return f"revision:{Path(hit).parent.name}"  # snapshots/<commit>/config.json
    raise FileNotFoundError(f"{path!r} is neither a local directory nor in the Hugging Face cache")


def _dir_checksum(folder: Path) -> str:
    """sha256 over the weight files of a model folder (name and content hash of each, sorted)."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if not files:
        raise FileNotFoundError(f"no weight files (.safetensors/.bin/.pt) in {folder}")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{sha256_file(p)}\n".encode())
    return h.hexdigest()
