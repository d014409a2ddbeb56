"""The tiny VLM: pre-training, the MiniGPT-4 (Blip2) adapter, stage-2 fine-tuning (projection, LoRA, full; epochs or
steps; accumulation; bf16; DDP), resume after a kill. The official MiniGPT-4 backend is tested in test_minigpt4.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from vlselect.toy.train_vlm import build_model, build_processor, _build_tokenizer
from vlselect.vlm import Blip2Adapter, Conversation, finetune, finetune_seeds, load_finetuned, load_training_set
from vlselect.vlm import train as ft
from vlselect.vlm.blip2 import DEFAULT_TEMPLATE, split_template

torch.set_num_threads(1)
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 60, 220)}
CELLS = [("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right")]


def draw_example(rng):
    """A 64-px image with one or two coloured squares, its objects and a caption."""
    im = Image.new("RGB", (64, 64), (250, 250, 250))
    d = ImageDraw.Draw(im)
    objects = []
    for cell in rng.permutation(4)[: rng.integers(1, 3)]:
        row, col = CELLS[cell]
        colour = list(COLOURS)[rng.integers(3)]
        x, y = (8 if col == "left" else 40), (8 if row == "top" else 40)
        d.rectangle([x, y, x + 16, y + 16], fill=COLOURS[colour])
        objects.append({"shape": "square", "colour": colour, "size": "large", "row": row, "col": col})
    caption = " , ".join(f"a {o['colour']} square in the {o['row']} {o['col']}" for o in objects) + " ."
    return im, objects, caption


def make_train_dir(path: Path, n: int, seed: int = 0) -> Path:
    """A cc_sbu_align export (filter_cap.json + image/) of synthetic examples."""
    rng = np.random.default_rng(seed)
    (path / "image").mkdir(parents=True)
    anns = []
    for i in range(n):
        im, _, caption = draw_example(rng)
        im.save(path / "image" / f"toy_{i:05d}.jpg")
        anns.append({"image_id": f"toy_{i:05d}", "caption": caption})
    (path / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    return path


def make_base_model(path: Path, attention_dropout: bool = True) -> Path:
    """An untrained tiny VLM dir (pre-training quality is tested separately; fine-tuning only needs the shape).

    Fine-tuning turns the ``nn.Dropout`` layers off, but the Q-Former's attention dropout stays on in training;
    ``attention_dropout=False`` makes a model whose training steps are deterministic functions of their batch.
    """
    rng = np.random.default_rng(1)
    tok = _build_tokenizer([draw_example(rng)[2] for _ in range(50)] + ["###Human: ###Assistant: describe image"])
    model = build_model(tok, image_size=64, seed=0)
    if not attention_dropout:
        model.config.qformer_config.attention_probs_dropout_prob = 0.0
    model.save_pretrained(path)
    build_processor(tok, image_size=64, num_query_tokens=8).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def nodrop_base(tmp_path_factory):
    return make_base_model(tmp_path_factory.mktemp("nodrop"), attention_dropout=False)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    return make_train_dir(tmp_path_factory.mktemp("data") / "subset", 20)


def make_llava_dir(path: Path, n: int, seed: int = 0) -> Path:
    """A llava export (llava.json + images/) whose conversations have two turns each."""
    rng = np.random.default_rng(seed)
    (path / "images").mkdir(parents=True)
    entries = []
    for i in range(n):
        im, objects, caption = draw_example(rng)
        im.save(path / "images" / f"toy_{i:05d}.png")
        entries.append({"id": f"toy_{i:05d}", "image": f"images/toy_{i:05d}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe this image in detail."}, {"from": "gpt", "value": caption},
            {"from": "human", "value": "what colour is the square ?"}, {"from": "gpt", "value": objects[0]["colour"]}]})
    (path / "llava.json").write_text(json.dumps(entries))
    return path


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def adapter(base):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return Blip2Adapter(AutoModelForImageTextToText.from_pretrained(base), AutoProcessor.from_pretrained(base))


def load_weights(out: Path) -> dict:
    return load_file(out / "trainable.safetensors")


def assert_same(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def test_split_template_places_image_and_answer():
    prompt, suffix = split_template(DEFAULT_TEMPLATE, "What colour?")
    assert prompt == "###Human: <Img><ImageHere></Img> What colour? ###Assistant: "
    assert suffix == ""
    assert split_template("Q: {instruction} A: {answer}", "x")[0].startswith("<ImageHere>")
    with pytest.raises(ValueError, match="answer"):
        split_template("no slot {instruction}", "x")


def test_loss_only_on_answer_tokens(adapter):
    img = Image.new("RGB", (64, 64))
    answers = ["a red square", "a blue square in the top left"]
    batch = adapter.train_batch([Conversation(img, [("Describe this image in detail.", a)]) for a in answers])
    tok = adapter.processor.tokenizer
    for i, answer in enumerate(answers):
        labelled = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert labelled == tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert (batch["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum(1).tolist() == [8, 8]
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # right padding for training
    # the whole row: bos, the prompt around the image's query tokens, the answer, eos (MiniGPT-4's layout)
    image = tok.convert_tokens_to_ids("<image>")
    expected = ([tok.bos_token_id] + ids(tok, "###Human: <Img>") + [image] * 8
                + ids(tok, "</Img> Describe this image in detail. ###Assistant: ") + ids(tok, answers[1])
                + [tok.eos_token_id])
    assert batch["input_ids"][1].tolist() == expected


def test_multi_turn_conversation_labels_every_answer_and_shows_the_image_once(adapter):
    tok = adapter.processor.tokenizer
    conv = Conversation(Image.new("RGB", (64, 64)), [("Describe this image in detail.", "a red square"),
                                                      ("what colour is the square ?", "red")])
    batch = adapter.train_batch([conv])
    row, labels = batch["input_ids"][0].tolist(), batch["labels"][0]
    assert row.count(tok.convert_tokens_to_ids("<image>")) == 8
    assert labels[labels != -100].tolist() == ids(tok, "a red square") + [tok.eos_token_id] + ids(tok, "red") + [
        tok.eos_token_id]
    second = ids(tok, "###Human: what colour is the square ? ###Assistant: ")  # no <Img></Img> in later turns
    assert row[-len(second) - 2:-2] == second


def test_generation_batch_is_left_padded(adapter):
    img = Image.new("RGB", (64, 64))
    batch = adapter.generation_batch([img, img], ["what colour ?", "Describe this image in detail."])
    assert "labels" not in batch
    assert batch["attention_mask"][:, -1].tolist() == [1, 1] and batch["attention_mask"][0, 0] == 0
    answers = adapter.generate([img, img], ["what colour ?", "Describe this image in detail."], max_new_tokens=3)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_training_sets_of_both_export_formats(train_dir, tmp_path):
    cc = load_training_set(train_dir, "Describe this image in detail.")
    assert len(cc) == 20 and cc[0].turns[0][0] == "Describe this image in detail." and cc[0].image_path.exists()
    llava = load_training_set(make_llava_dir(tmp_path / "llava", 3), "ignored")
    assert llava[0].turns[0][0] == "Describe this image in detail." and len(llava[0].turns) == 2
    assert llava[0].turns[1] == ("what colour is the square ?", llava[0].turns[1][1])
    assert llava[0].conversation().image.mode == "RGB"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "llava.json").write_text(json.dumps([{"id": "x", "image": "a.png", "conversations": [
        {"from": "gpt", "value": "hi"}]}]))
    with pytest.raises(ValueError, match="alternate human and gpt"):
        load_training_set(bad, "")


def test_finetune_saves_only_trainable_and_loads_on_base(base, train_dir, tmp_path):
    out = tmp_path / "model"
    info = finetune(base_model=str(base), train_dir=str(train_dir), out_dir=str(out), epochs=1, batch_size=8,
                    lr=1e-2, device="cpu")
    assert sorted(p.name for p in out.iterdir()) == ["finetune.json", "trainable.safetensors"]
    saved = load_file(out / "trainable.safetensors")
    assert saved and all("language_projection" in k for k in saved)
    recorded = json.loads((out / "finetune.json").read_text())
    assert recorded == info
    assert recorded["n_examples"] == 20 and recorded["trainable"] == ["language_projection"]
    assert recorded["family"] == "minigpt4" and recorded["template"] == DEFAULT_TEMPLATE
    assert recorded["optimizer_steps"] == 3  # 20 examples in batches of 8
    assert Path(recorded["base_model"]) == base.resolve()
    assert not Path(str(out) + ".ckpt").exists()

    model, _ = load_finetuned(out, "cpu")
    from transformers import AutoModelForImageTextToText

    plain = AutoModelForImageTextToText.from_pretrained(base)
    for name, p in model.named_parameters():
        if name in saved:
            assert torch.equal(p, saved[name]) and not torch.equal(p, dict(plain.named_parameters())[name])
        else:
            assert torch.equal(p, dict(plain.named_parameters())[name]), name


def _die_after_first_checkpoint(monkeypatch, out, **kw):
    """Run :func:`finetune` into ``out`` until its first checkpoint is written, then stop as a killed job would;
    return the checkpoint's state."""
    real_save = ft._save_ckpt

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ft, "_save_ckpt", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(out_dir=str(out), **kw)
    monkeypatch.setattr(ft, "_save_ckpt", real_save)
    return torch.load(Path(str(out) + ".ckpt") / "state.pt", weights_only=True)


def test_resume_after_kill_gives_same_weights(base, train_dir, tmp_path, monkeypatch):
    kw = dict(base_model=str(base), train_dir=str(train_dir), epochs=3, batch_size=8, lr=1e-2, seed=3, device="cpu")
    finetune(out_dir=str(tmp_path / "straight"), **kw)

    out = tmp_path / "resumed"
    assert _die_after_first_checkpoint(monkeypatch, out, **kw)["epoch"] == 1
    assert not out.exists()  # a partial run never leaves an output dir that looks complete
    finetune(out_dir=str(out), **kw)

    # a checkpoint left by other settings is not resumed
    _die_after_first_checkpoint(monkeypatch, tmp_path / "stale", **{**kw, "lr": 5e-3})
    finetune(out_dir=str(tmp_path / "stale"), **kw)
    a, b = load_file(tmp_path / "straight" / "trainable.safetensors"), load_file(out / "trainable.safetensors")
    d = load_file(tmp_path / "stale" / "trainable.safetensors")
    assert all(torch.equal(a[k], d[k]) for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    finetune(out_dir=str(tmp_path / "other_seed"), **{**kw, "seed": 4})
    c = load_file(tmp_path / "other_seed" / "trainable.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_finetune_killed_with_sigkill_resumes_to_the_same_weights(base, train_dir, tmp_path):
    """A real process killed with SIGKILL mid-run (no exception, no clean-up) resumes from its last checkpoint
    and ends with the weights of an uninterrupted run."""
    import signal
    import time

    settings = {"steps": 300, "checkpoint_every": 5, "batch_size": 4, "lr": 1e-2, "seed": 5, "device": "cpu"}
    finetune(base_model=str(base), train_dir=str(train_dir), out_dir=str(tmp_path / "straight"), **settings)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vlselect.cli", "finetune", "--base-model", str(base), "--train-dir",
           str(train_dir), "--out-dir", str(out), "--params", json.dumps(settings)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    checkpoint = Path(str(out) + ".ckpt") / "state.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists(), "the run ended before it could be killed"
    killed_at = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < killed_at < settings["steps"]
    subprocess.run(cmd, env=env, check=True, stderr=subprocess.DEVNULL)
    assert_same(load_weights(tmp_path / "straight"), load_weights(out))


def test_resume_mid_epoch_with_steps_gives_same_weights(base, train_dir, tmp_path, monkeypatch):
    kw = dict(base_model=str(base), train_dir=str(train_dir), steps=5, checkpoint_every=2, batch_size=4, lr=1e-2,
              seed=2, device="cpu", trainable=["language_projection", "language_model"])
    finetune(out_dir=str(tmp_path / "straight"), **kw)
    out = tmp_path / "resumed"
    state = _die_after_first_checkpoint(monkeypatch, out, **kw)
    assert state["step"] == 2 and state["epoch"] == 0  # every 2 steps, before the first epoch (5 steps) ends
    finetune(out_dir=str(out), **kw)
    assert_same(load_weights(tmp_path / "straight"), load_weights(out))


def test_finetune_seeds_one_model_per_seed_and_resume(base, train_dir, tmp_path, monkeypatch):
    kw = dict(base_model=str(base), train_dir=str(train_dir), epochs=1, batch_size=8, lr=1e-2, device="cpu")
    out = tmp_path / "seeds"
    # killed while training the second seed: the first stays finished, nothing looks complete
    real_finetune = ft.finetune
    calls = []

    def die_on_second(**kwargs):
        calls.append(kwargs["seed"])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_finetune(**kwargs)

    monkeypatch.setattr(ft, "finetune", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        finetune_seeds(seeds=[5, 6], out_dir=str(out), **kw)
    assert not out.exists()
    assert (tmp_path / "seeds.seeds" / "seed_5" / "finetune.json").exists()
    first = load_file(tmp_path / "seeds.seeds" / "seed_5" / "trainable.safetensors")

    calls.clear()
    monkeypatch.setattr(ft, "finetune", lambda **kwargs: calls.append(kwargs["seed"]) or real_finetune(**kwargs))
    infos = finetune_seeds(seeds=[5, 6], out_dir=str(out), **kw)
    assert calls == [6]  # seed 5 was kept, not retrained
    assert [i["seed"] for i in infos] == [5, 6]
    assert sorted(p.name for p in out.iterdir()) == ["seed_5", "seed_6"]
    assert not (tmp_path / "seeds.seeds").exists()
    five, six = (load_file(out / f"seed_{s}" / "trainable.safetensors") for s in (5, 6))
    assert all(torch.equal(first[k], five[k]) for k in first)
    assert not all(torch.equal(five[k], six[k]) for k in five)  # the seeds are different runs
    single = tmp_path / "single"
    finetune(out_dir=str(single), seed=6, **kw)
    assert all(torch.equal(six[k], v) for k, v in load_file(single / "trainable.safetensors").items())

    # finished seeds from other settings are discarded, not mixed into the new run
    monkeypatch.setattr(ft, "finetune", die_on_second)
    calls[:] = [0]
    with pytest.raises(KeyboardInterrupt):
        finetune_seeds(seeds=[5, 6], out_dir=str(tmp_path / "stale"), **kw)
    calls.clear()
    monkeypatch.setattr(ft, "finetune", lambda **kwargs: calls.append(kwargs["seed"]) or real_finetune(**kwargs))
    finetune_seeds(seeds=[5, 6], out_dir=str(tmp_path / "stale"), **{**kw, "lr": 5e-3})
    assert calls == [5, 6]
    with pytest.raises(ValueError, match="distinct"):
        finetune_seeds(seeds=[1, 1], out_dir=str(tmp_path / "dup"), **kw)


def test_finetune_errors_are_clear(base, train_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="filter_cap.json"):
        finetune(base_model=str(base), train_dir=str(tmp_path), out_dir=str(tmp_path / "o"), device="cpu")
    with pytest.raises(ValueError, match="no parameter name"):
        finetune(base_model=str(base), train_dir=str(train_dir), out_dir=str(tmp_path / "o"), trainable=["nope"],
                 device="cpu")
    with pytest.raises(ValueError, match="projection, lora, full"):
        finetune(base_model=str(base), train_dir=str(train_dir), out_dir=str(tmp_path / "o"), trainable="half",
                 device="cpu")
    with pytest.raises(ValueError, match="no linear layer named"):
        finetune(base_model=str(base), train_dir=str(train_dir), out_dir=str(tmp_path / "o"), trainable="lora",
                 lora={"targets": ["qkv"]}, device="cpu")
    with pytest.raises(ValueError, match="unknown VLM family"):
        finetune(base_model=str(base), train_dir=str(train_dir), out_dir=str(tmp_path / "o"), family="nope",
                 device="cpu")
    with pytest.raises(ValueError, match="backend"):
        finetune(base_model=str(base), train_dir=str(train_dir), out_dir=str(tmp_path / "o"), backend="x")


def test_minigpt4_backend_hands_over_to_the_official_training(train_dir, tmp_path, monkeypatch):
    from vlselect.vlm import minigpt4

    calls = []
    monkeypatch.setattr(minigpt4, "finetune_official", lambda **kw: calls.append(kw) or {"backend": "minigpt4"})
    settings = {"repo": "/checkout", "ckpt": "/stage1.pth", "llama_model": "/vicuna"}
    info = finetune(base_model=None, train_dir=str(train_dir), out_dir=str(tmp_path / "mg"), backend="minigpt4",
                    epochs=2, batch_size=4, lr=3e-5, seed=7, minigpt4=settings)
    assert info == {"backend": "minigpt4"}
    assert calls == [{"train_dir": str(train_dir), "out_dir": str(tmp_path / "mg"), "epochs": 2, "batch_size": 4,
                      "lr": 3e-5, "seed": 7, "minigpt4": settings}]


def test_lora_finetune_saves_adapters_and_reloads_to_the_same_logits(base, train_dir, tmp_path, monkeypatch):
    trained = {}
    real_prepare = ft.prepare_model

    def keep_model(*args, **kwargs):
        trained["adapter"], params, dtype = real_prepare(*args, **kwargs)
        return trained["adapter"], params, dtype

    monkeypatch.setattr(ft, "prepare_model", keep_model)
    out = tmp_path / "lora"
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "targets": ["q_proj", "v_proj"]}
    info = finetune(base_model=str(base), train_dir=str(train_dir), out_dir=str(out), trainable="lora", lora=lora,
                    steps=2, batch_size=4, lr=1e-2, device="cpu")
    saved = load_weights(out)
    lora_keys = [k for k in saved if "lora_" in k]
    # 2 layers x (q_proj, v_proj) x (lora_A, lora_B), and the projection in full
    assert len(lora_keys) == 8 and all(".q_proj." in k or ".v_proj." in k for k in lora_keys)
    assert all(k.startswith("language_model.") for k in lora_keys)
    assert {k for k in saved if "lora_" not in k} == {"language_projection.weight", "language_projection.bias"}
    assert all(saved[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)  # lora_B starts at zero: it trained
    assert all(v.dtype == torch.float32 for v in saved.values())
    assert info["lora"] == lora and info["trainable"] == ["language_projection"] and info["optimizer_steps"] == 2

    model, processor = load_finetuned(out, "cpu")
    assert not model.training
    batch = Blip2Adapter(model, processor).train_batch(
        [ex.conversation() for ex in load_training_set(train_dir, "Describe this image in detail.")[:3]])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    memory = trained["adapter"].model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, memory(**inputs).logits, atol=1e-6, rtol=1e-6)
        from transformers import AutoModelForImageTextToText

        plain = AutoModelForImageTextToText.from_pretrained(base).eval()
        assert not torch.allclose(plain(**inputs).logits, memory(**inputs).logits, atol=1e-3)


def test_steps_fix_the_number_of_optimizer_steps_whatever_the_set_size(base, train_dir, tmp_path, monkeypatch):
    plan = ft.schedule(3, seed=0, epochs=1, steps=4, step_size=2)
    assert [len(idx) for idx, _ in plan] == [2, 2, 2, 2] and [e for _, e in plan] == [0, 1, 2, 2]
    assert sorted(np.concatenate([idx for idx, _ in plan])[:3]) == [0, 1, 2]  # epoch by epoch, every example once
    assert [len(idx) for idx, _ in ft.schedule(5, seed=0, epochs=2, steps=None, step_size=2)] == [2, 2, 1, 2, 2, 1]

    counted = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: counted.append(1) or real_step(self, *a, **k))
    small = make_train_dir(tmp_path / "small", 3, seed=4)
    for data, name in ((train_dir, "big"), (small, "small")):
        counted.clear()
        info = finetune(base_model=str(base), train_dir=str(data), out_dir=str(tmp_path / name), steps=5, epochs=1,
                        batch_size=4, lr=1e-2, device="cpu")
        assert len(counted) == 5 and info["optimizer_steps"] == 5


def test_grad_accum_gives_the_update_of_the_bigger_batch(nodrop_base, train_dir, tmp_path):
    kw = dict(base_model=str(nodrop_base), train_dir=str(train_dir), steps=3, lr=1e-2, seed=1, device="cpu",
              trainable=["language_projection", "language_model"])
    finetune(out_dir=str(tmp_path / "b4"), batch_size=4, **kw)
    finetune(out_dir=str(tmp_path / "b2x2"), batch_size=2, grad_accum=2, **kw)
    finetune(out_dir=str(tmp_path / "b2"), batch_size=2, **kw)
    b4, acc, b2 = (load_weights(tmp_path / n) for n in ("b4", "b2x2", "b2"))
    # equal gradients up to rounding; Adam's first steps divide by |gradient|, which lifts the rounding of the
    # near-zero ones to ~1e-5, still far below what a different batch does
    assert_same(b4, acc, atol=1e-4)
    assert not all(torch.allclose(b4[k], b2[k], atol=1e-3) for k in b4)


def test_bf16_weights_with_float32_trained_parameters(base, train_dir, tmp_path):
    adapter, params, dtype = ft.prepare_model(str(base), torch.device("cpu"), trainable="lora", lora=None,
                                              template=None, model_dtype="bfloat16", gradient_checkpointing=True,
                                              family="auto")
    assert dtype == torch.bfloat16 and adapter.model.is_activation_checkpointing
    frozen = {n: p for n, p in adapter.model.named_parameters() if not p.requires_grad}
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen.values())
    assert all(p.dtype == torch.float32 for p in params.values())
    assert any("lora_" in n for n in params) and not any("vision_model" in n for n in params)
    plain, _, _ = ft.prepare_model(str(base), torch.device("cpu"), trainable="full", lora=None, template=None,
                                   model_dtype="float32", gradient_checkpointing=False, family="auto")
    assert not plain.model.is_activation_checkpointing

    out = tmp_path / "bf16"
    info = finetune(base_model=str(base), train_dir=str(train_dir), out_dir=str(out), trainable="lora", steps=2,
                    batch_size=4, lr=1e-2, model_dtype="bfloat16", gradient_checkpointing=True, device="cpu")
    assert info["model_dtype"] == "bfloat16"
    assert all(v.dtype == torch.float32 for v in load_weights(out).values())
    model, _ = load_finetuned(out, "cpu")
    assert model.language_model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16


def test_llava_export_trains_on_every_turn(base, tmp_path, adapter):
    data = make_llava_dir(tmp_path / "llava", 6)
    examples = load_training_set(data, "unused for llava")
    batch = adapter.train_batch([examples[0].conversation()])
    tok = adapter.processor.tokenizer
    (caption, colour) = (examples[0].turns[0][1], examples[0].turns[1][1])
    labels = batch["labels"][0]
    assert labels[labels != -100].tolist() == ids(tok, caption) + [tok.eos_token_id] + ids(tok, colour) + [
        tok.eos_token_id]
    info = finetune(base_model=str(base), train_dir=str(data), out_dir=str(tmp_path / "out"), steps=2, batch_size=3,
                    lr=1e-2, device="cpu")
    assert info["n_examples"] == 6 and (tmp_path / "out" / "trainable.safetensors").exists()


def test_two_processes_under_torchrun_match_one_with_the_whole_batch(nodrop_base, train_dir, tmp_path):
    kw = dict(base_model=str(nodrop_base), train_dir=str(train_dir), steps=2, lr=1e-2, seed=1, device="cpu",
              trainable=["language_projection", "language_model"])
    finetune(out_dir=str(tmp_path / "single"), batch_size=4, **kw)
    params = {k: v for k, v in kw.items() if k not in ("base_model", "train_dir")} | {"batch_size": 2}
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "vlselect.cli", "finetune", "--base-model", str(nodrop_base), "--train-dir", str(train_dir),
         "--out-dir", str(tmp_path / "ddp"), "--params", json.dumps(params)],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "ddp" / "finetune.json").read_text())
    assert info["world_size"] == 2 and info["batch_size"] == 2
    assert_same(load_weights(tmp_path / "single"), load_weights(tmp_path / "ddp"), atol=1e-4)


def test_train_toy_vlm_learns_captions(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlselect.toy.train_vlm import train_toy_vlm

    rng = np.random.default_rng(5)
    corpus = tmp_path / "corpus"
    (corpus / "images").mkdir(parents=True)
    rows, qa = [], []
    for i in range(260):
        im, objects, caption = draw_example(rng)
        im.save(corpus / "images" / f"c{i}.png")
        rows.append({"image_path": f"images/c{i}.png", "caption": caption, "objects": json.dumps(objects)})
        o = objects[0]
        qa.append({"image_path": f"images/c{i}.png", "question": f"What colour is the square in the {o['row']} {o['col']}?",
                   "answer": o["colour"], "choices": None, "metric": "vqa"})
    pd.DataFrame(rows).to_parquet(corpus / "captions.parquet")
    pd.DataFrame(qa).to_parquet(corpus / "qa.parquet")
    metrics = train_toy_vlm(corpus_dir=str(corpus), out_dir=str(tmp_path / "vlm"), steps=150, batch_size=16,
                            lr=2e-3, seed=0, n_heldout=60)
    assert metrics["heldout_caption_f1"] > metrics["untrained_caption_f1"] + 0.3
    assert 0.0 <= metrics["heldout_qa_accuracy"] <= 1.0 and metrics["qa_share"] == 0.5
    assert json.loads((tmp_path / "vlm" / "metrics.json").read_text()) == metrics
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm")
    proc = AutoProcessor.from_pretrained(tmp_path / "vlm")
    assert type(model).__name__ == "Blip2ForConditionalGeneration"
    assert model.config.text_config.model_type == "llama" and proc.image_processor.size["height"] == 64


def test_toy_clip_image_tower_carries_over_to_the_vlm_unchanged(tmp_path):
    """The toy VLM sees through the toy CLIP's ViT: same weights, same token features (MiniGPT-4's EVA-CLIP analog)."""
    import open_clip
    import torch
    from safetensors.torch import save_model
    from transformers import Blip2VisionConfig, Blip2VisionModel

    from vlselect.toy.train_clip import MODEL_NAME, WEIGHTS_NAME, toy_clip_config
    from vlselect.toy.train_vlm import clip_vision_tower

    (tmp_path / f"{MODEL_NAME}.json").write_text(json.dumps(toy_clip_config(64, tower="vit")))
    open_clip.add_model_config(tmp_path / f"{MODEL_NAME}.json")
    torch.manual_seed(0)
    clip = open_clip.create_model(MODEL_NAME, pretrained=None).eval()
    with torch.no_grad():  # open_clip starts some of these at zero or one; move them so the test sees every weight
        for name, p in clip.visual.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(clip, str(tmp_path / WEIGHTS_NAME))

    config, state = clip_vision_tower(tmp_path)
    tower = Blip2VisionModel(Blip2VisionConfig(**config)).eval()
    tower.load_state_dict(state, strict=True)
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        v = clip.visual
        expected = v.ln_post(v.transformer(v._embeds(pixels)))
        got = tower(pixel_values=pixels).last_hidden_state
    assert got.shape == expected.shape == (3, 65, 64)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_a_clip_with_a_pre_norm_or_a_resnet_tower_is_refused(tmp_path):
    from vlselect.toy.train_clip import MODEL_NAME, toy_clip_config
    from vlselect.toy.train_vlm import clip_vision_tower

    cfg = toy_clip_config(64, tower="vit")
    cfg["vision_cfg"].pop("no_ln_pre")
    (tmp_path / f"{MODEL_NAME}.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no_ln_pre"):
        clip_vision_tower(tmp_path)
    # the scoring CLIP's tower is a ResNet, which Blip2 cannot hold
    (tmp_path / f"{MODEL_NAME}.json").write_text(json.dumps(toy_clip_config(64, tower="resnet")))
    with pytest.raises(ValueError, match="ResNet image tower.*toy.models.vision"):
        clip_vision_tower(tmp_path)


def test_a_base_model_dir_is_evaluated_in_the_configured_dtype(base):
    from vlselect.vlm import load_adapter

    assert load_adapter(base, "cpu", model_dtype="bfloat16").model.dtype == torch.bfloat16
    assert load_adapter(base, "cpu").model.dtype == torch.float32
