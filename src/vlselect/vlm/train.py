"""Stage-2 fine-tuning of a VLM on an exported training set (cc_sbu_align or llava), through its family's adapter.

Two backends:

* ``transformers``: loads the base model (``AutoModelForImageTextToText`` + ``AutoProcessor``), trains
  ``trainable`` with the loss on the assistant's answers only, and saves only what was trained
  (``trainable.safetensors``, float32, LoRA adapters included) plus ``finetune.json``, which records everything
  :func:`vlselect.vlm.load.load_finetuned` needs to rebuild the model. Checkpoints every ``checkpoint_every``
  optimizer steps and at each epoch's end let a killed job resume and still end with the same weights as an
  uninterrupted run. Under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel and every
  step's examples are shared out among the ranks; rank 0 alone writes.
* ``minigpt4``: the official MiniGPT-4 repository's own stage-2 training (:mod:`vlselect.vlm.minigpt4`).

:func:`finetune_seeds` trains one model per seed on the same data (a genuine label is the mean over seeds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from vlselect.io import atomic_dir, atomic_path, read_json, sha256_file, write_json
from vlselect.runtime import pick_device, seed_everything
from vlselect.vlm.base import VLMAdapter, adapter_class
from vlselect.vlm.data import load_training_set, training_set_file
from vlselect.vlm.load import DEFAULT_LORA, add_lora, load_base

log = logging.getLogger(__name__)

TRAINABLE_SETS = ("projection", "lora", "full")
# the name part peft gives every LoRA parameter
LORA_PARAMS = "lora_"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def answer_loss(model, batch: dict):
    """Mean cross-entropy over the labelled (answer) tokens; computed here so the masking is explicit."""
    import torch.nn.functional as F

    out = model(**{k: v for k, v in batch.items() if k != "labels"})
    logits = out.logits[:, -batch["labels"].shape[1]:, :]
    shift_logits = logits[:, :-1, :].float()
    shift_labels = batch["labels"][:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=-100)


def _n_answer_tokens(batch: dict) -> int:
    """The tokens :func:`answer_loss` averages over."""
    return int((batch["labels"][:, 1:] != -100).sum())


def trained_names(adapter: VLMAdapter, trainable: str | list[str]) -> list[str]:
    """The parameter-name substrings trained in full: ``projection`` (and ``lora``, whose adapters come on top) the
    adapter's projection, ``full`` the projection and the language model, or a list of substrings as given."""
    if isinstance(trainable, str):
        if trainable not in TRAINABLE_SETS:
            raise ValueError(f"finetune.trainable must be one of {', '.join(TRAINABLE_SETS)} or a list of parameter-"
                             f"name substrings, got {trainable!r}")
        return list(adapter.projection) + (list(adapter.language_model) if trainable == "full" else [])
    if not trainable:
        raise ValueError("finetune.trainable is an empty list; name at least one parameter-name substring")
    return list(trainable)


def prepare_model(base_model: str, device, *, trainable: str | list[str], lora: dict | None, template: str | None,
                  model_dtype: str, gradient_checkpointing: bool, family: str) -> tuple[VLMAdapter, dict, object]:
    """Load the base model for training and return (its adapter, {name: trained parameter}, the torch dtype the
    frozen weights were loaded in).

    The frozen weights stay in ``model_dtype``; the trained ones (LoRA adapters included) are float32, so that
    small updates are not rounded away. The base model's ``nn.Dropout`` layers are off (LoRA's own dropout stays as
    configured). Dropout that a model applies inside its attention functions is left alone: BLIP-2's Q-Former keeps
    its attention dropout in training, as it always did here (the toy world's labels were made that way).
    """
    import torch

    model, processor = load_base(base_model, device, dtype=model_dtype)
    frozen_dtype = model.dtype
    # an adapter may name its projection only once it has seen the model (the generic family looks for it)
    adapter = adapter_class(model, family)(model, processor, template)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    names = trained_names(adapter, trainable)
    if trainable == "lora":
        add_lora(model, adapter.language_model, lora)
        names.append(LORA_PARAMS)
    params = {}
    for name, p in model.named_parameters():
        p.requires_grad_(any(t in name for t in names))
        if p.requires_grad:
            p.data = p.data.float()
            params[name] = p
    if not params:
        raise ValueError(f"no parameter name contains any of {names}; check finetune.trainable against the model")
    if gradient_checkpointing:
        # non-reentrant: the frozen inputs of a checkpointed block need no requires_grad for the gradients to flow
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return adapter, params, frozen_dtype


def _distributed(device: str) -> tuple[int, int, object]:
    """(rank, world size, torch device). Under torchrun (WORLD_SIZE > 1) joins the process group once: NCCL with
    one GPU per rank (LOCAL_RANK), gloo on CPUs."""
    import torch
    import torch.distributed as dist

    dev = pick_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), world, dev


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def schedule(n: int, *, seed: int, epochs: int, steps: int | None, step_size: int) -> list[tuple[np.ndarray, int]]:
    """Each optimizer step's example indices, with the number of epochs complete once that step is done.

    Epoch e visits the examples in an order drawn from (seed, e) only, so a resumed run sees the same batches.
    With ``steps`` None each of ``epochs`` epochs is cut into steps of ``step_size`` examples (the last one may be
    smaller); with ``steps`` the epochs' orders follow each other and are cut into ``steps`` full steps, so that
    training sets of different sizes can be compared at the same number of equal steps.
    """
    if steps is None:
        out = []
        for epoch in range(epochs):
            order = np.random.default_rng([seed, epoch]).permutation(n)
            out += [(order[i:i + step_size], epoch + int(i + step_size >= n)) for i in range(0, n, step_size)]
        return out
    n_epochs = -(-steps * step_size // n)
    stream = np.concatenate([np.random.default_rng([seed, e]).permutation(n) for e in range(n_epochs)])
    return [(stream[s * step_size:(s + 1) * step_size], (s + 1) * step_size // n) for s in range(steps)]


def _save_ckpt(ckpt_dir: Path, params: dict, optimizer, scaler, epoch: int, step: int, rng_state,
               fingerprint: str) -> None:
    import torch

    state = {"epoch": epoch, "step": step, "fingerprint": fingerprint,
             "params": {k: v.detach().cpu() for k, v in params.items()}, "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "rng": rng_state}
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt_dir / "state.pt") as tmp:
        torch.save(state, tmp)


def _rng_state(dev) -> dict:
    import torch

    state = {"cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _set_rng_state(state: dict, dev) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


def _finetune_transformers(*, base_model, train_dir, out_dir, trainable, lora, template, instruction, epochs, steps,
                           batch_size, grad_accum, lr, seed, model_dtype, gradient_checkpointing, checkpoint_every,
                           family, device) -> dict:
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    rank, world, dev = _distributed(device)
    seed_everything(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    adapter, params, frozen_dtype = prepare_model(
        base_model, dev, trainable=trainable, lora=lora, template=template, model_dtype=model_dtype,
        gradient_checkpointing=gradient_checkpointing, family=family)
    model = adapter.model
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    # bf16 autocast on GPUs, and wherever frozen half-precision weights meet the float32 trained ones
    amp_dtype = torch.float16 if frozen_dtype == torch.float16 else torch.bfloat16
    amp = dev.type == "cuda" or frozen_dtype != torch.float32
    scaler = torch.amp.GradScaler(dev.type, enabled=amp and amp_dtype == torch.float16)  # fp16 gradients underflow
    examples = load_training_set(train_dir, instruction)
    plan = schedule(len(examples), seed=seed, epochs=epochs, steps=steps, step_size=batch_size * grad_accum * world)

    # the checkpoint lives beside the output (out_dir itself only appears, atomically, when training is done)
    ckpt_dir = Path(str(out_dir) + ".ckpt")
    # a checkpoint from other data or settings (epochs and steps aside) must not be resumed
    lora_used = DEFAULT_LORA | (lora or {}) if trainable == "lora" else None
    fingerprint = sha256_text(json.dumps([
        str(Path(base_model).resolve()), sha256_file(training_set_file(train_dir)), trainable, lora_used, family,
        adapter.template, instruction, batch_size, grad_accum, world, lr, seed, model_dtype, steps is None]))
    start = 0
    state = torch.load(ckpt_dir / "state.pt", weights_only=True) if (ckpt_dir / "state.pt").exists() else None
    if state is not None and (state.get("fingerprint") != fingerprint or state["step"] >= len(plan)):
        log.warning("ignoring checkpoint %s: it was written for other data or settings, or for more steps", ckpt_dir)
        state = None
    if state is not None:
        with torch.no_grad():
            for k, v in state["params"].items():
                params[k].copy_(v.to(dev))
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], dev)
        start = int(state["step"])
        log.info("resuming from %s after step %d (epoch %d)", ckpt_dir, start, state["epoch"])

    loss_sum, token_sum = 0.0, 0
    for step in tqdm(range(start, len(plan)), desc="fine-tune", file=sys.stderr, disable=rank != 0,
                     initial=start, total=len(plan)):
        idx, epochs_done = plan[step]
        shard = np.array_split(idx, world)[rank]
        # a rank left without examples by a short last step still joins the gradient all-reduce, with weight 0
        micro = [shard[i:i + batch_size] for i in range(0, len(shard), batch_size)]
        batches = [adapter.train_batch([examples[j].conversation() for j in m]) for m in micro or [idx[:1]]]
        counts = [_n_answer_tokens(b) for b in batches] if micro else [0]
        total = torch.tensor(sum(counts), device=dev)
        if world > 1:
            torch.distributed.all_reduce(total)
        optimizer.zero_grad(set_to_none=True)
        for i, (batch, n) in enumerate(zip(batches, counts)):
            batch = {k: v.to(dev) for k, v in batch.items()}
            # DDP averages the ranks' gradients: weighting each micro-batch by its share of the step's answer
            # tokens (times the world size) makes the update the token mean over the whole step
            with net.no_sync() if world > 1 and i < len(batches) - 1 else nullcontext():
                with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=amp):
                    loss = answer_loss(net, batch)
                scaler.scale(loss * (n * world / total.item())).backward()
            loss_sum += loss.item() * n
            token_sum += n
        scaler.step(optimizer)
        scaler.update()
        epoch_end = epochs_done > (plan[step - 1][1] if step else 0)
        if epoch_end and rank == 0:
            log.info("epoch %d done (step %d): mean answer loss %.4f", epochs_done, step + 1, loss_sum / token_sum)
            loss_sum, token_sum = 0.0, 0
        if rank == 0 and step + 1 < len(plan) and (epoch_end or (step + 1) % checkpoint_every == 0):
            _save_ckpt(ckpt_dir, params, optimizer, scaler, epochs_done, step + 1, _rng_state(dev), fingerprint)

    info = {"backend": "transformers", "family": adapter.family, "base_model": str(Path(base_model).resolve()),
            "trainable": trained_names(adapter, trainable), "lora": lora_used, "model_dtype": model_dtype,
            "template": adapter.template, "instruction": instruction, "epochs": epochs, "steps": steps,
            "optimizer_steps": len(plan), "batch_size": batch_size, "grad_accum": grad_accum, "world_size": world,
            "lr": lr, "seed": seed, "n_examples": len(examples),
            "n_trained_params": int(sum(p.numel() for p in params.values()))}
    if rank == 0:
        with atomic_dir(out_dir) as tmp:
            save_file({k: v.detach().cpu().float().contiguous() for k, v in params.items()},
                      tmp / "trainable.safetensors")
            write_json(info, tmp / "finetune.json")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    _barrier(world)
    return info


def finetune_seeds(*, seeds: list[int], train_dir: str, out_dir: str, **settings) -> list[dict]:
    """Fine-tune one model per seed on the same training set, into ``out_dir/seed_<s>`` each.

    A genuine label from one fine-tune carries the noise of that run's data order; the mean over a few seeds is a
    steadier label (BENCHMARKS.md), and :func:`vlselect.evaluate.evaluate` averages such a dir. ``settings`` are
    :func:`finetune`'s other arguments. Finished seeds wait in ``<out_dir>.seeds`` (discarded if the data or the
    settings change), so a killed job resumes at its first unfinished seed, and within it at its last checkpoint;
    ``out_dir`` appears only when every seed is done. Returns each seed's finetune.json content.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {seeds}; check labels.seeds")
    rank, world, _ = _distributed(settings.get("device", "auto"))
    staging = Path(str(out_dir) + ".seeds")
    stamp = staging / "settings.sha256"
    fingerprint = sha256_text(json.dumps([{k: v for k, v in settings.items() if k != "device"},
                                          sha256_file(training_set_file(train_dir))], sort_keys=True))
    if rank == 0:
        if staging.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
            log.warning("discarding %s: its finished seeds were trained on other data or with other settings", staging)
            shutil.rmtree(staging)
        staging.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
    _barrier(world)
    infos = []
    for seed in seeds:
        done = staging / f"seed_{seed}"
        if (done / "finetune.json").exists():
            log.info("seed %d was trained before this run (%s); keeping it", seed, done)
            infos.append(read_json(done / "finetune.json"))
        else:
            log.info("seed %d (%d of %d)", seed, seeds.index(seed) + 1, len(seeds))
            infos.append(finetune(train_dir=train_dir, out_dir=str(done), seed=seed, **settings))
    if rank == 0:
        with atomic_dir(out_dir) as tmp:
            for seed in seeds:
                os.replace(staging / f"seed_{seed}", tmp / f"seed_{seed}")
        stamp.unlink()
        # the minigpt4 backend's work dirs (the checkpoints its finetune.json points to) stay where they were written
        if not any(staging.iterdir()):
            staging.rmdir()
    _barrier(world)
    return infos


def finetune(*, base_model: str | None, train_dir: str, out_dir: str, backend: str = "transformers",
             trainable: str | list[str] = "projection", lora: dict | None = None, template: str | None = None,
             instruction: str = "Describe this image in detail.", epochs: int = 3, steps: int | None = None,
             batch_size: int = 16, grad_accum: int = 1, lr: float = 1e-3, seed: int = 0,
             model_dtype: str = "float32", gradient_checkpointing: bool = False, checkpoint_every: int = 200,
             family: str = "auto", device: str = "auto", minigpt4: dict | None = None) -> dict:
    """Fine-tune the base VLM on an exported training set (MiniGPT-4 stage 2) and write ``out_dir``.

    ``trainable``: ``projection`` (MiniGPT-4's stage 2), ``lora`` (LoRA adapters with the ``lora`` settings
    {r, alpha, dropout, targets} on the language model, the projection trained in full), ``full`` (language model
    and projection), or a list of parameter-name substrings; the vision tower is always frozen. Only what is trained
    is saved (``trainable.safetensors`` + ``finetune.json``), so 30 subset fine-tunes cost 30 small files, not 30
    models. ``template`` (None: the family's own) is how a conversation is rendered; ``instruction`` is the user
    turn of a cc_sbu_align set. An optimizer step takes ``batch_size`` x ``grad_accum`` examples per process;
    ``steps`` (when set) fixes the number of steps, else ``epochs`` passes are made. ``family`` forces an adapter
    (``auto``: by the model's type). Returns the finetune.json content.
    """
    if backend == "transformers":
        if not base_model:
            raise ValueError("the transformers backend needs base_model (a local model dir); set models.vlm.path")
        counts = {"batch_size": batch_size, "grad_accum": grad_accum, "checkpoint_every": checkpoint_every,
                  "epochs": epochs} | ({"steps": steps} if steps is not None else {})
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"finetune.{name} must be at least 1, got {value}")
        return _finetune_transformers(
            base_model=base_model, train_dir=train_dir, out_dir=out_dir, trainable=trainable, lora=lora,
            template=template, instruction=instruction, epochs=epochs, steps=steps, batch_size=batch_size,
            grad_accum=grad_accum, lr=lr, seed=seed, model_dtype=model_dtype,
            gradient_checkpointing=gradient_checkpointing, checkpoint_every=checkpoint_every, family=family,
            device=device)
    if backend == "minigpt4":
        if not minigpt4:
            raise ValueError("backend minigpt4 needs the finetune.minigpt4 settings (repo, ckpt, llama_model, command)")
        from vlselect.vlm import minigpt4 as official

        return official.finetune_official(train_dir=train_dir, out_dir=out_dir, epochs=epochs, batch_size=batch_size,
                                          lr=lr, seed=seed, minigpt4=minigpt4)
    raise ValueError(f"unknown finetune backend {backend!r}; use 'transformers' or 'minigpt4'")
