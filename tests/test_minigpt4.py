"""MiniGPT-4's official checkpoints and training code (vlselect.vlm.minigpt4), on tiny synthetic weights.

The synthetic checkpoints use the official key names (github.com/Vision-CAIR/MiniGPT-4 at commit
d94738a7626ec43eba6c2cddf3cd2043f1a9689a: minigpt4/models/eva_vit.py, Qformer.py, minigpt4.py) at tiny shapes, and
the reference forward pass below is written from that module layout, not from transformers.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from vlselect.vlm import minigpt4 as mg

torch.set_num_threads(1)
FIXTURE_REPO = Path(__file__).parent / "fixtures_minigpt4"
PATCH, GRID, VIT_WIDTH, VIT_HEAD, VIT_MLP = 14, 2, 24, 8, 40
QF_WIDTH, QF_HEAD, QF_LAYERS, QF_FREQ, QF_MLP, N_QUERY = 16, 8, 3, 2, 32, 4
LLM_WIDTH = 32
SEG0, SEG1 = "###Human: <Img>", "</Img> describe this image ###Assistant:"


def _rand(gen, *shape, scale=0.2):
    return torch.randn(*shape, generator=gen) * scale


def _norm(gen, prefix, width):
    return {f"{prefix}.weight": 1 + _rand(gen, width, scale=0.1), f"{prefix}.bias": _rand(gen, width, scale=0.1)}


def _linear(gen, prefix, n_out, n_in):
    return {f"{prefix}.weight": _rand(gen, n_out, n_in, scale=n_in ** -0.5), f"{prefix}.bias": _rand(gen, n_out)}


def eva_vit_state(gen, blocks: int) -> dict:
    """eva_vit_g.pth's layout: a bare state dict of the EVA VisionTransformer (q_bias/v_bias, no k bias)."""
    w = {"cls_token": _rand(gen, 1, 1, VIT_WIDTH), "pos_embed": _rand(gen, 1, GRID * GRID + 1, VIT_WIDTH),
         "patch_embed.proj.weight": _rand(gen, VIT_WIDTH, 3, PATCH, PATCH, scale=0.05),
         "patch_embed.proj.bias": _rand(gen, VIT_WIDTH)}
    for i in range(blocks):
        p = f"blocks.{i}"
        w |= _norm(gen, f"{p}.norm1", VIT_WIDTH) | _norm(gen, f"{p}.norm2", VIT_WIDTH)
        w[f"{p}.attn.qkv.weight"] = _rand(gen, 3 * VIT_WIDTH, VIT_WIDTH, scale=VIT_WIDTH ** -0.5)
        w[f"{p}.attn.q_bias"], w[f"{p}.attn.v_bias"] = _rand(gen, VIT_WIDTH), _rand(gen, VIT_WIDTH)
        w |= _linear(gen, f"{p}.attn.proj", VIT_WIDTH, VIT_WIDTH)
        w |= _linear(gen, f"{p}.mlp.fc1", VIT_MLP, VIT_WIDTH) | _linear(gen, f"{p}.mlp.fc2", VIT_WIDTH, VIT_MLP)
    return w


def qformer_state(gen) -> dict:
    """blip2_pretrained_flant5xxl.pth's "model": ln_vision, the BERT Q-Former (cross-attention every QF_FREQ-th
    layer), query_tokens, and parts MiniGPT-4 drops (text embeddings and feed-forward, LM head, t5_proj)."""
    w = {"query_tokens": _rand(gen, 1, N_QUERY, QF_WIDTH, scale=0.5)} | _norm(gen, "ln_vision", VIT_WIDTH)
    w |= _norm(gen, "Qformer.bert.embeddings.LayerNorm", QF_WIDTH)
    w |= {"Qformer.bert.embeddings.word_embeddings.weight": _rand(gen, 30, QF_WIDTH),
          "Qformer.bert.embeddings.position_embeddings.weight": _rand(gen, 12, QF_WIDTH),
          "Qformer.bert.embeddings.position_ids": torch.arange(12)[None],
          "Qformer.cls.predictions.bias": _rand(gen, 30), "t5_proj.weight": _rand(gen, 8, QF_WIDTH),
          "t5_proj.bias": _rand(gen, 8)}
    for i in range(QF_LAYERS):
        p = f"Qformer.bert.encoder.layer.{i}"
        kinds = [("attention", QF_WIDTH)] + ([("crossattention", VIT_WIDTH)] if i % QF_FREQ == 0 else [])
        for kind, kv_width in kinds:
            w |= _linear(gen, f"{p}.{kind}.self.query", QF_WIDTH, QF_WIDTH)
            w |= _linear(gen, f"{p}.{kind}.self.key", QF_WIDTH, kv_width)
            w |= _linear(gen, f"{p}.{kind}.self.value", QF_WIDTH, kv_width)
            w |= _linear(gen, f"{p}.{kind}.output.dense", QF_WIDTH, QF_WIDTH)
            w |= _norm(gen, f"{p}.{kind}.output.LayerNorm", QF_WIDTH)
        for branch in ("", "_query"):  # "" is the text branch MiniGPT-4 drops
            w |= _linear(gen, f"{p}.intermediate{branch}.dense", QF_MLP, QF_WIDTH)
            w |= _linear(gen, f"{p}.output{branch}.dense", QF_WIDTH, QF_MLP)
            w |= _norm(gen, f"{p}.output{branch}.LayerNorm", QF_WIDTH)
    return w


def build_tokenizer():
    """A word-level tokenizer without <image> (the converter adds it), like the toy VLM's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator([SEG0, SEG1, "a red square in the top left"],
                           trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Official-layout files at tiny shapes: the ViT (one block more than the model uses), the Q-Former checkpoint,
    a stage-1 MiniGPT-4 checkpoint and a Vicuna-like Llama dir."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("official")
    gen = torch.Generator().manual_seed(0)
    torch.save(eva_vit_state(gen, blocks=3), root / "eva_vit_g.pth")
    torch.save({"model": qformer_state(gen)}, root / "blip2_pretrained_flant5xxl.pth")
    torch.save({"model": _linear(gen, "llama_proj", LLM_WIDTH, QF_WIDTH)}, root / "pretrained_minigpt4.pth")
    tok = build_tokenizer()
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=LLM_WIDTH, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                       max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                       tie_word_embeddings=False))
    llm.save_pretrained(root / "vicuna")
    tok.save_pretrained(root / "vicuna")
    return {"ckpt": str(root / "pretrained_minigpt4.pth"), "vit": str(root / "eva_vit_g.pth"),
            "qformer": str(root / "blip2_pretrained_flant5xxl.pth"), "llama_model": str(root / "vicuna")}


def convert(official, out, **overrides):
    return mg.convert_minigpt4(**(official | overrides), out_dir=str(out), dtype="float32", vit_depth=2,
                               vit_head_dim=VIT_HEAD, qformer_head_dim=QF_HEAD)


# ----------------------------------------------------------------------------------------------------------------
# the reference: MiniGPT-4's forward pass written from the official module layout


def _heads(x, width):
    return x.reshape(x.shape[0], x.shape[1], -1, width).transpose(1, 2)


def _attend(q, k, v):
    out = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1) @ v
    return out.transpose(1, 2).flatten(2)


def eva_forward(w, image, depth):
    """VisionTransformer.forward_features of eva_vit.py over the first ``depth`` blocks."""
    x = F.conv2d(image, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=PATCH).flatten(2)
    x = torch.cat([w["cls_token"].expand(len(image), -1, -1), x.transpose(1, 2)], dim=1) + w["pos_embed"]
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (VIT_WIDTH,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps=1e-6)
        bias = torch.cat([w[p + "attn.q_bias"], torch.zeros_like(w[p + "attn.v_bias"]), w[p + "attn.v_bias"]])
        q, k, v = F.linear(h, w[p + "attn.qkv.weight"], bias).chunk(3, dim=-1)
        h = _attend(_heads(q, VIT_HEAD), _heads(k, VIT_HEAD), _heads(v, VIT_HEAD))
        x = x + F.linear(h, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        h = F.layer_norm(x, (VIT_WIDTH,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])),
                         w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
    return x


def bert_attention(w, p, hidden, context):
    """BertAttention of Qformer.py: self- or cross-attention, then dense + residual + LayerNorm."""
    q, k, v = (_heads(F.linear(src, w[f"{p}self.{n}.weight"], w[f"{p}self.{n}.bias"]), QF_HEAD)
               for n, src in (("query", hidden), ("key", context), ("value", context)))
    out = F.linear(_attend(q, k, v), w[p + "output.dense.weight"], w[p + "output.dense.bias"])
    return F.layer_norm(out + hidden, (QF_WIDTH,), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                        eps=1e-12)


def qformer_forward(w, image_embeds):
    """Qformer.bert(query_embeds=query_tokens, encoder_hidden_states=image_embeds): the query branch only."""
    x = w["query_tokens"].expand(len(image_embeds), -1, -1)
    x = F.layer_norm(x, (QF_WIDTH,), w["Qformer.bert.embeddings.LayerNorm.weight"],
                     w["Qformer.bert.embeddings.LayerNorm.bias"], eps=1e-12)
    for i in range(QF_LAYERS):
        p = f"Qformer.bert.encoder.layer.{i}."
        x = bert_attention(w, p + "attention.", x, x)
        if i % QF_FREQ == 0:
            x = bert_attention(w, p + "crossattention.", x, image_embeds)
        h = F.gelu(F.linear(x, w[p + "intermediate_query.dense.weight"], w[p + "intermediate_query.dense.bias"]))
        h = F.linear(h, w[p + "output_query.dense.weight"], w[p + "output_query.dense.bias"])
        x = F.layer_norm(h + x, (QF_WIDTH,), w[p + "output_query.LayerNorm.weight"],
                         w[p + "output_query.LayerNorm.bias"], eps=1e-12)
    return x


def minigpt4_logits(official, image, seg0_ids, seg1_ids):
    """MiniGPT4.encode_img, then get_context_emb's <ImageHere> splice into the Llama input embeddings."""
    from transformers import LlamaForCausalLM

    vit = torch.load(official["vit"], weights_only=True)
    qf = torch.load(official["qformer"], weights_only=True)["model"]
    proj = torch.load(official["ckpt"], weights_only=True)["model"]
    # ln_vision is a plain nn.LayerNorm (eps 1e-5)
    image_embeds = F.layer_norm(eva_forward(vit, image, depth=2), (VIT_WIDTH,), qf["ln_vision.weight"],
                                qf["ln_vision.bias"])
    img = F.linear(qformer_forward(qf, image_embeds), proj["llama_proj.weight"], proj["llama_proj.bias"])
    llm = LlamaForCausalLM.from_pretrained(official["llama_model"]).eval()
    embed = llm.get_input_embeddings()
    embeds = torch.cat([embed(seg0_ids), img, embed(seg1_ids)], dim=1)
    return llm(inputs_embeds=embeds).logits


# ----------------------------------------------------------------------------------------------------------------
# the converter


def test_converted_model_matches_official_forward(official, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlselect.cli import main

    main(["convert-minigpt4", "--ckpt", official["ckpt"], "--vit", official["vit"], "--qformer", official["qformer"],
          "--llama-model", official["llama_model"], "--out-dir", str(tmp_path / "blip2"), "--dtype", "float32",
          "--vit-depth", "2", "--vit-head-dim", str(VIT_HEAD), "--qformer-head-dim", str(QF_HEAD)])
    info = json.loads((tmp_path / "blip2" / "conversion.json").read_text())
    assert info["vision_layers"] == 2 and info["qformer_layers"] == QF_LAYERS and info["image_size"] == PATCH * GRID
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "blip2").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "blip2")
    assert type(model).__name__ == "Blip2ForConditionalGeneration"
    assert model.config.text_config.model_type == "llama"
    assert model.config.qformer_config.cross_attention_frequency == QF_FREQ
    assert model.config.vision_config.num_attention_heads == VIT_WIDTH // VIT_HEAD
    assert processor.image_processor.size == {"height": PATCH * GRID, "width": PATCH * GRID}
    assert tuple(processor.image_processor.image_mean) == pytest.approx(mg.IMAGE_MEAN)
    assert processor.num_query_tokens == N_QUERY

    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    assert image_id == model.config.image_token_id and model.generation_config.suppress_tokens == [image_id]
    vocab = image_id  # the Llama's own vocabulary; <image> came last
    seg0 = torch.tensor([[tok.bos_token_id] + tok(SEG0, add_special_tokens=False).input_ids])
    seg1 = torch.tensor([tok(SEG1, add_special_tokens=False).input_ids])
    image = torch.randn(2, 3, PATCH * GRID, PATCH * GRID, generator=torch.Generator().manual_seed(1))
    ids = torch.cat([seg0, torch.full((1, N_QUERY), image_id), seg1], dim=1).expand(2, -1)
    with torch.no_grad():
        want = minigpt4_logits(official, image, seg0.expand(2, -1), seg1.expand(2, -1))
        got = model(input_ids=ids, pixel_values=image).logits
    assert got.shape[-1] == vocab + 1
    torch.testing.assert_close(got[..., :vocab], want, atol=1e-5, rtol=0)
    # the images matter: a different image gives different logits after the image tokens
    with torch.no_grad():
        other = model(input_ids=ids, pixel_values=image.flip(0)).logits
    assert (other[0, -1] - got[0, -1]).abs().max() > 1e-3


def test_converter_names_unknown_missing_and_unsupported_keys(official, tmp_path):
    vit = torch.load(official["vit"], weights_only=True)
    torch.save(vit | {"blocks.0.attn.relative_position_bias_table": torch.zeros(3, 3)}, tmp_path / "vit_extra.pth")
    with pytest.raises(ValueError, match=r"visual_encoder\.blocks\.0\.attn\.relative_position_bias_table"):
        convert(official, tmp_path / "a", vit=str(tmp_path / "vit_extra.pth"))

    qf = torch.load(official["qformer"], weights_only=True)["model"]
    torch.save({"model": {k: v for k, v in qf.items() if not k.startswith("ln_vision")}}, tmp_path / "qf.pth")
    with pytest.raises(ValueError, match=r"without weights: vision_model\.post_layernorm\.bias"):
        convert(official, tmp_path / "b", qformer=str(tmp_path / "qf.pth"))

    # MiniGPT-4's Llama-2 variant: no Q-Former, llama_proj over four concatenated ViT tokens
    torch.save({"model": {"llama_proj.weight": torch.zeros(LLM_WIDTH, 4 * VIT_WIDTH),
                          "llama_proj.bias": torch.zeros(LLM_WIDTH)}}, tmp_path / "llama2.pth")
    with pytest.raises(ValueError, match="Llama-2 variant"):
        convert(official, tmp_path / "c", ckpt=str(tmp_path / "llama2.pth"), qformer=None)
    assert not any((tmp_path / d).exists() for d in "abc")


# ----------------------------------------------------------------------------------------------------------------
# the official backend

# The keys of train_configs/minigpt4_stage2_finetune.yaml at commit d94738a7626ec43eba6c2cddf3cd2043f1a9689a, plus
# model.llama_model and model.q_former_model (read by MiniGPT4.from_config; defaulted by the model-type yaml).
HEAD_MODEL_KEYS = {"arch", "model_type", "max_txt_len", "end_sym", "prompt_path", "prompt_template", "ckpt",
                   "llama_model", "q_former_model"}
HEAD_DATASET_KEYS = {"batch_size", "vis_processor", "text_processor", "build_info"}
HEAD_RUN_KEYS = {"task", "lr_sched", "init_lr", "min_lr", "warmup_lr", "weight_decay", "max_epoch", "iters_per_epoch",
                 "num_workers", "warmup_steps", "seed", "output_dir", "amp", "resume_ckpt_path", "evaluate",
                 "train_splits", "device", "world_size", "dist_url", "distributed", "wandb_log", "job_name"}


def make_train_dir(path: Path, n: int, ext: str = ".jpg") -> Path:
    (path / "image").mkdir(parents=True)
    anns = []
    for i in range(n):
        Image.new("RGB", (40, 40), (20 * i % 255, 80, 160)).save(path / "image" / f"img_{i:03d}{ext}")
        anns.append({"image_id": f"img_{i:03d}", "caption": f"a red square in the top left {i}"})
    (path / "filter_cap.json").write_text(json.dumps({"annotations": anns}))
    return path


def test_rendered_config_matches_the_official_head(official, tmp_path):
    train = make_train_dir(tmp_path / "train", 10)
    settings = official | {"repo": str(FIXTURE_REPO), "gpus": 2}
    cfg = mg.render_official_config(minigpt4=settings, train_dir=train, output_dir=tmp_path / "out", epochs=3,
                                    batch_size=2, lr=3e-5, seed=42)
    assert set(cfg) == {"model", "datasets", "run"}
    assert set(cfg["model"]) == HEAD_MODEL_KEYS
    assert set(cfg["datasets"]) == {"cc_sbu_align"} and set(cfg["datasets"]["cc_sbu_align"]) == HEAD_DATASET_KEYS
    assert set(cfg["run"]) == HEAD_RUN_KEYS
    # registry names at that commit
    assert (cfg["model"]["arch"], cfg["model"]["model_type"]) == ("minigpt4", "pretrain_vicuna0")
    assert cfg["run"]["task"] == "image_text_pretrain" and cfg["run"]["lr_sched"] == "linear_warmup_cosine_lr"
    ds = cfg["datasets"]["cc_sbu_align"]
    assert ds["vis_processor"]["train"] == {"name": "blip2_image_train", "image_size": 224}
    assert ds["text_processor"]["train"] == {"name": "blip_caption"} and ds["batch_size"] == 2
    assert cfg["model"]["prompt_template"] == "###Human: {} ###Assistant: " and cfg["model"]["end_sym"] == "###"
    # 10 examples in batches of 2 on each of 2 GPUs; the HEAD file's 3e-5 / 1e-5 / 1e-6 learning rates
    assert cfg["run"]["iters_per_epoch"] == 3 and cfg["run"]["warmup_steps"] == 3
    assert (cfg["run"]["min_lr"], cfg["run"]["warmup_lr"]) == pytest.approx((1e-5, 1e-6))
    assert cfg["run"]["wandb_log"] is False and cfg["model"]["q_former_model"] == str(Path(official["qformer"]))

    llama2 = mg.render_official_config(minigpt4=settings | {"model_type": "pretrain_llama2"}, train_dir=train,
                                       output_dir=tmp_path / "out", epochs=3, batch_size=2, lr=3e-5, seed=42)
    assert llama2["model"]["prompt_template"] == "[INST] {} [/INST] " and llama2["model"]["end_sym"] == "</s>"
    assert llama2["run"]["job_name"] == "minigpt4_llama2_finetune" and "q_former_model" not in llama2["model"]
    with pytest.raises(ValueError, match="pretrain_vicuna0, pretrain_llama2"):
        mg.render_official_config(minigpt4=settings | {"model_type": "pretrain_vicuna"}, train_dir=train,
                                  output_dir=tmp_path / "out", epochs=3, batch_size=2, lr=3e-5, seed=42)


def test_official_backend_trains_then_evaluates_in_process(official, tmp_path, monkeypatch):
    # a torchrun stand-in on PATH that records its arguments and runs the script in one process
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/torchrun_args\nshift 2\n'
                                      f'exec {sys.executable} "$@"\n')
    (bin_dir / "torchrun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    train = make_train_dir(tmp_path / "train", 20)
    settings = official | {"repo": str(FIXTURE_REPO), "gpus": 2, "dtype": "float32", "vit_depth": 2}
    monkeypatch.chdir(tmp_path)  # relative output paths, as the workflow passes them
    out = Path("models") / "subset_0"
    info = mg.finetune_official(train_dir=train, out_dir=out, epochs=2, batch_size=4, lr=3e-5, seed=7,
                                minigpt4=settings)
    assert json.loads((out / "finetune.json").read_text()) == info and info["backend"] == "minigpt4"
    assert info["checkpoint"].endswith("checkpoint_1.pth") and Path(info["checkpoint"]).exists()
    assert (tmp_path / "torchrun_args").read_text().split()[:2] == ["--nproc-per-node", "2"]
    cfg = yaml.safe_load(Path(info["config"]).read_text())
    assert cfg["run"]["iters_per_epoch"] == 3 and cfg["run"]["seed"] == 7 and cfg["run"]["init_lr"] == 3e-5
    assert Path(info["converted_base"]).parent == tmp_path / "models" / "minigpt4_base"

    monkeypatch.setattr(mg, "convert_minigpt4", _tiny_heads(mg.convert_minigpt4))
    model, processor = mg.load_official_output(out, "cpu")
    trained = torch.load(info["checkpoint"], weights_only=True)["model"]
    base = torch.load(official["ckpt"], weights_only=True)["model"]
    torch.testing.assert_close(model.language_projection.weight, trained["llama_proj.weight"])
    assert not torch.allclose(model.language_projection.weight, base["llama_proj.weight"])
    inputs = processor(images=Image.new("RGB", (40, 40), (200, 30, 30)), text=SEG0, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    new = generated[0, -3:].tolist()
    assert len(new) == 3 and processor.tokenizer.convert_tokens_to_ids("<image>") not in new

    # a second output (another seed) reuses the converted base instead of converting again
    out2 = Path("models") / "subset_1"
    info2 = mg.finetune_official(train_dir=train, out_dir=out2, epochs=1, batch_size=4, lr=3e-5, seed=8,
                                 minigpt4=settings)
    assert info2["converted_base"] == info["converted_base"]
    monkeypatch.setattr(mg, "convert_minigpt4", lambda **kw: pytest.fail("converted twice"))
    model2, _ = mg.load_official_output(out2, "cpu")
    assert not torch.allclose(model2.language_projection.weight, model.language_projection.weight)

    # the official run fails on a config it cannot use; the error says so and no output appears
    with pytest.raises(RuntimeError, match="exit code 2"):
        mg.finetune_official(train_dir=train, out_dir=tmp_path / "bad", epochs=1, batch_size=4, lr=3e-5, seed=7,
                             minigpt4=settings | {"llama_model": str(tmp_path / "nowhere")})
    assert not (tmp_path / "bad").exists()
    # the official dataset opens image/<id>.jpg only
    with pytest.raises(ValueError, match=r"\.jpg only"):
        mg.finetune_official(train_dir=make_train_dir(tmp_path / "png", 2, ext=".png"), out_dir=tmp_path / "png_out",
                             epochs=1, batch_size=4, lr=3e-5, seed=7, minigpt4=settings)


def _tiny_heads(convert_minigpt4):
    """The converter with this file's head widths (the backend passes only its config keys)."""
    def wrapped(**kw):
        return convert_minigpt4(**kw, vit_head_dim=VIT_HEAD, qformer_head_dim=QF_HEAD)
    return wrapped
