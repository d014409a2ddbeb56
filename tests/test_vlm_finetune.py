"""The tiny VLM: pre-training, stage-2 fine-tuning (transformers and minigpt4 backends), resume after a kill."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from vlselect import finetune as ft
from vlselect.finetune import encode_batch, finetune, finetune_seeds, load_finetuned, split_template
from vlselect.toy.train_vlm import build_model, build_processor, _build_tokenizer

torch.set_num_threads(1)
FIXTURE_REPO = Path(__file__).parent / "fixtures_minigpt4"
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


def make_base_model(path: Path) -> Path:
    """An untrained tiny VLM dir (pre-training quality is tested separately; fine-tuning only needs the shape)."""
    rng = np.random.default_rng(1)
    tok = _build_tokenizer([draw_example(rng)[2] for _ in range(50)] + ["###Human: ###Assistant: describe image"])
    build_model(tok, image_size=64, seed=0).save_pretrained(path)
    build_processor(tok, image_size=64, num_query_tokens=8).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base_model(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    return make_train_dir(tmp_path_factory.mktemp("data") / "subset", 20)


def test_split_template_places_image_and_answer():
    prompt, suffix = split_template(ft.DEFAULT_TEMPLATE, "What colour?")
    assert prompt == "###Human: <Img><ImageHere></Img> What colour? ###Assistant: "
    assert suffix == ""
    assert split_template("Q: {instruction} A: {answer}", "x")[0].startswith("<ImageHere>")
    with pytest.raises(ValueError, match="answer"):
        split_template("no slot {instruction}", "x")


def test_loss_only_on_answer_tokens(base):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(base)
    prompt, _ = split_template(ft.DEFAULT_TEMPLATE, "Describe this image in detail.")
    img = Image.new("RGB", (64, 64))
    batch = encode_batch(proc, 8, [img, img], [prompt, prompt], ["a red square", "a blue square in the top left"])
    tok = proc.tokenizer
    for i, answer in enumerate(["a red square", "a blue square in the top left"]):
        labelled = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert labelled == tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert (batch["input_ids"] == tok.convert_tokens_to_ids("<image>")).sum(1).tolist() == [8, 8]
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # right padding for training


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


def test_resume_after_kill_gives_same_weights(base, train_dir, tmp_path, monkeypatch):
    kw = dict(base_model=str(base), train_dir=str(train_dir), epochs=3, batch_size=8, lr=1e-2, seed=3, device="cpu")
    finetune(out_dir=str(tmp_path / "straight"), **kw)

    # simulate kill -9 right after the first epoch's checkpoint
    real_save = ft._save_ckpt

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ft, "_save_ckpt", save_then_die)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        finetune(out_dir=str(out), **kw)
    assert not out.exists()  # a partial run never leaves an output dir that looks complete
    state = torch.load(Path(str(out) + ".ckpt") / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    monkeypatch.setattr(ft, "_save_ckpt", real_save)
    finetune(out_dir=str(out), **kw)

    # a checkpoint left by other settings is not resumed
    monkeypatch.setattr(ft, "_save_ckpt", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune(out_dir=str(tmp_path / "stale"), **{**kw, "lr": 5e-3})
    monkeypatch.setattr(ft, "_save_ckpt", real_save)
    finetune(out_dir=str(tmp_path / "stale"), **kw)
    a, b = load_file(tmp_path / "straight" / "trainable.safetensors"), load_file(out / "trainable.safetensors")
    d = load_file(tmp_path / "stale" / "trainable.safetensors")
    assert all(torch.equal(a[k], d[k]) for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    finetune(out_dir=str(tmp_path / "other_seed"), **{**kw, "seed": 4})
    c = load_file(tmp_path / "other_seed" / "trainable.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


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
    with pytest.raises(ValueError, match="backend"):
        finetune(base_model=str(base), train_dir=str(train_dir), out_dir=str(tmp_path / "o"), backend="x")


def test_minigpt4_backend_runs_external_train_script(train_dir, tmp_path):
    settings = {"repo": str(FIXTURE_REPO), "ckpt": "/models/prerained_minigpt4_7b.pth", "llama_model": "/models/vicuna",
                "command": sys.executable + " train.py --cfg-path {cfg}", "gpus": 1}
    out = tmp_path / "mg"
    info = finetune(base_model=None, train_dir=str(train_dir), out_dir=str(out), backend="minigpt4", epochs=2,
                    batch_size=4, lr=3e-5, seed=7, minigpt4=settings)
    assert info["checkpoint"].endswith("checkpoint_1.pth") and Path(info["checkpoint"]).exists()
    assert json.loads((out / "finetune.json").read_text())["backend"] == "minigpt4"
    import yaml

    cfg = yaml.safe_load(Path(info["config"]).read_text())
    assert cfg["run"]["iters_per_epoch"] == 5 and cfg["run"]["seed"] == 7 and cfg["run"]["init_lr"] == 3e-5
    assert cfg["model"]["ckpt"] == settings["ckpt"]

    with pytest.raises(RuntimeError, match="exit code 2"):
        finetune(base_model=None, train_dir=str(tmp_path), out_dir=str(tmp_path / "bad"), backend="minigpt4",
                 minigpt4={**settings, "iters_per_epoch": 1})


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
