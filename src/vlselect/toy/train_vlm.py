"""Pre-train the toy world's tiny MiniGPT-4-shaped VLM (the stage-1 analog).

A transformers ``Blip2ForConditionalGeneration`` (tiny ViT + Q-Former + linear projection + 2-layer Llama) with a
word-level tokenizer trained here on the corpus text. Stage 1 trains every part but the (frozen, CLIP) vision tower
on the corpus's clean captions and questions, both in MiniGPT-4's conversation template. MiniGPT-4 needs no such
step because Vicuna already follows the ``###Human: ... ###Assistant:`` format; a language model trained from
scratch learns it here, describing included. An earlier version taught captions only with a plain prompt: the base
model then answered "Describe this image in detail." with one word, and a projection-only stage 2 could not teach
it to describe, whatever its data (every subset's caption score was near 0). Starting from a model that describes,
a stage-2 fine-tune can move it up on clean data and down on flawed data, which is what the labels measure (the toy
config trains the language model there too: with the projection alone the tiny model's writing barely moved).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from vlselect.io import atomic_dir, write_json
from vlselect.runtime import seed_everything
from vlselect.vlm import Blip2Adapter, Conversation, answer_loss
from vlselect.vlm.blip2 import DEFAULT_TEMPLATE

log = logging.getLogger(__name__)

# words of the stage-2 template and the suites' questions, so they get their own (untrained) ids instead of <unk>
INSTRUCTION = "Describe this image in detail."
EXTRA_TEXT = [DEFAULT_TEMPLATE, "<Img> </Img> ###Human: ###Assistant:", "Describe this image in detail.",
              "what colour shape size how many is are there the a an of in to left right above below which "
              "answer with option letter from given choices"]


def _build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()  # splits words and punctuation
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"], min_frequency=1)
    tk.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>")
    # Blip2Processor needs image_token as an AddedToken (a plain str breaks it): ARCHITECTURE.md section 7
    tok.add_special_tokens({"additional_special_tokens": [AddedToken("<image>", normalized=False, special=True)]})
    return tok


def clip_vision_tower(clip_dir: str | Path) -> tuple[dict, dict]:
    """(Blip2VisionConfig keyword arguments, ``vision_model`` state dict) holding the toy CLIP's image tower.

    MiniGPT-4 looks at images through a pre-trained, frozen CLIP-family ViT. The toy CLIP's ViT (open_clip,
    ``no_ln_pre``) has exactly the layer layout of transformers' Blip2 vision tower, so its weights carry over
    unchanged and the tower computes the same token features (tested).
    """
    from safetensors.torch import load_file
    import torch

    from vlselect.io import read_json
    from vlselect.toy.train_clip import MODEL_NAME, WEIGHTS_NAME

    clip_dir = Path(clip_dir)
    cfg = read_json(clip_dir / f"{MODEL_NAME}.json")["vision_cfg"]
    if isinstance(cfg["layers"], list):
        raise ValueError(f"{clip_dir} holds a toy CLIP with a ResNet image tower, and Blip2's vision tower is a ViT; "
                         "point the VLM at a toy CLIP trained with tower 'vit' (toy.models.vision)")
    if not cfg.get("no_ln_pre"):
        raise ValueError(f"{clip_dir}: the toy CLIP has a pre-norm (no_ln_pre unset), which Blip2's vision tower "
                         "lacks; retrain it with the current vlselect (delete the folder and re-run)")
    w = {k[len("visual."):]: t for k, t in load_file(clip_dir / WEIGHTS_NAME).items() if k.startswith("visual.")}
    width, layers = cfg["width"], cfg["layers"]
    config = {"image_size": cfg["image_size"], "patch_size": cfg["patch_size"], "hidden_size": width,
              "intermediate_size": int(width * cfg.get("mlp_ratio", 4.0)), "num_hidden_layers": layers,
              "num_attention_heads": width // cfg["head_width"], "layer_norm_eps": 1e-5, "hidden_act": "gelu",
              "qkv_bias": True}
    state = {"embeddings.class_embedding": w["class_embedding"].reshape(1, 1, width),
             "embeddings.patch_embedding.weight": w["conv1.weight"],
             "embeddings.patch_embedding.bias": torch.zeros(width),  # open_clip's patch conv has no bias
             "embeddings.position_embedding": w["positional_embedding"].unsqueeze(0),
             "post_layernorm.weight": w["ln_post.weight"], "post_layernorm.bias": w["ln_post.bias"]}
    names = {"attn.in_proj_weight": "self_attn.qkv.weight", "attn.in_proj_bias": "self_attn.qkv.bias",
             "attn.out_proj.weight": "self_attn.projection.weight", "attn.out_proj.bias": "self_attn.projection.bias",
             "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
             "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
             "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
             "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias"}
    for i in range(layers):
        state |= {f"encoder.layers.{i}.{b}": w[f"transformer.resblocks.{i}.{a}"] for a, b in names.items()}
    return config, state


def build_model(tokenizer, *, image_size: int, num_query_tokens: int = 8, vision_hidden: int = 64,
                text_hidden: int = 128, seed: int = 0, vision: dict | None = None):
    """A freshly initialised tiny Blip-2 (Llama decoder) whose vocabulary matches ``tokenizer``.

    ``vision``: Blip2VisionConfig keyword arguments (e.g. from :func:`clip_vision_tower`) instead of the default
    tiny ViT.
    """
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig, Blip2VisionConfig
    from transformers import LlamaConfig

    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    # Blip2VisionConfig's default initializer_range (1e-10) suits loading pre-trained weights, not training from
    # scratch: the vision tower would start as a constant.
    vision = Blip2VisionConfig(**(vision or {"image_size": image_size, "patch_size": 8, "hidden_size": vision_hidden,
                                              "intermediate_size": 2 * vision_hidden, "num_hidden_layers": 2,
                                              "num_attention_heads": 4}), initializer_range=0.02)
    vision_hidden = vision.hidden_size
    qformer = Blip2QFormerConfig(hidden_size=vision_hidden, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=2 * vision_hidden, encoder_hidden_size=vision_hidden,
                                 cross_attention_frequency=1)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=text_hidden, intermediate_size=2 * text_hidden,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                         text_config=text.to_dict(), num_query_tokens=num_query_tokens,
                         image_token_index=image_token_id)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    # transformers starts the Q-Former's queries at zero (real checkpoints overwrite them); identical queries stay
    # identical under training, and the model would see the image through one pooled vector
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_processor(tokenizer, *, image_size: int, num_query_tokens: int):
    from transformers import Blip2Processor, BlipImageProcessor

    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size}, do_resize=True)
    return Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=num_query_tokens)


def caption_f1(model, processor, images, objects, *, template=DEFAULT_TEMPLATE, instruction="", batch_size=64,
               max_new_tokens=48) -> float:
    """Mean attribute F1 of greedy captions against the objects (vlselect.toy.world.attribute_f1)."""
    from vlselect.toy.world import attribute_f1

    adapter = Blip2Adapter(model, processor, template)
    scores = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        preds = adapter.generate(chunk, [instruction] * len(chunk), max_new_tokens=max_new_tokens)
        scores += [attribute_f1(p, o) for p, o in zip(preds, objects[i:i + batch_size])]
    return float(np.mean(scores))


def _qa_instruction(row) -> str:
    from vlselect.suites import Item, format_question

    choices = None if row["choices"] is None else list(row["choices"])
    return format_question(Item(id="", image_path="", question=row["question"], answer=row["answer"],
                                choices=choices, metric=row["metric"]))


def train_toy_vlm(*, corpus_dir: str, out_dir: str, steps: int = 1500, batch_size: int = 32, lr: float = 1e-3,
                  seed: int = 0, image_size: int = 64, num_query_tokens: int = 8, n_heldout: int = 200,
                  qa_share: float = 0.5, caption_template: str = DEFAULT_TEMPLATE,
                  clip_dir: str | None = None) -> dict:
    """Train the tiny VLM on ``corpus_dir`` (captions.parquet, qa.parquet + images/) and save it to ``out_dir``.

    Each batch mixes captions (``caption_template`` with the instruction "Describe this image in detail.") and, for
    a ``qa_share`` of its rows, the corpus's question-answer pairs in the conversation template: the analog of
    MiniGPT-4's language model, which could already converse before its visual alignment. With ``clip_dir`` (the
    toy CLIP's folder) the model sees through that CLIP's image tower, frozen, as MiniGPT-4 sees through EVA-CLIP;
    without it, through a ViT trained here from scratch. ``out_dir`` loads with AutoModelForImageTextToText and
    AutoProcessor; ``out_dir/metrics.json`` records the held-out caption attribute F1 of the trained model and of an
    untrained one (the trained one must be far above) and the held-out QA accuracy.
    """
    import torch
    from PIL import Image
    from tqdm import tqdm

    seed_everything(seed)
    corpus_dir = Path(corpus_dir)
    df = pd.read_parquet(corpus_dir / "captions.parquet")
    qa = pd.read_parquet(corpus_dir / "qa.parquet")
    if len(df) <= n_heldout:
        raise ValueError(f"the corpus has {len(df)} captions; need more than n_heldout={n_heldout}")
    if list(qa["image_path"]) != list(df["image_path"]):
        raise ValueError(f"{corpus_dir}: qa.parquet and captions.parquet must list the same images in the same order; "
                         "rebuild the toy world")
    images = []
    for p in df["image_path"]:
        with Image.open(corpus_dir / p) as im:
            images.append(im.convert("RGB"))
    captions = df["caption"].tolist()
    objects = [json.loads(o) for o in df["objects"]]
    questions = [_qa_instruction(r) for r in qa.to_dict("records")]
    answers = qa["answer"].tolist()
    n_train = len(df) - n_heldout

    tokenizer = _build_tokenizer(captions[:n_train] + questions[:n_train] + EXTRA_TEXT)
    processor = build_processor(tokenizer, image_size=image_size, num_query_tokens=num_query_tokens)
    vision, vision_state = clip_vision_tower(clip_dir) if clip_dir else (None, None)
    model = build_model(tokenizer, image_size=image_size, num_query_tokens=num_query_tokens, seed=seed, vision=vision)
    if vision_state is not None:
        model.vision_model.load_state_dict(vision_state, strict=True)
        model.vision_model.requires_grad_(False)
    held_imgs, held_objs = images[n_train:], objects[n_train:]
    model.eval()
    f1_untrained = caption_f1(model, processor, held_imgs, held_objs, template=caption_template,
                              instruction=INSTRUCTION)

    # captions in the caption template, questions in MiniGPT-4's: one adapter (prompt format) each
    cap_adapter = Blip2Adapter(model, processor, caption_template)
    qa_adapter = Blip2Adapter(model, processor, DEFAULT_TEMPLATE)
    n_qa = int(round(qa_share * batch_size))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    rng = np.random.default_rng(seed)
    model.train()
    t0 = time.time()
    bar = tqdm(range(steps), desc="train toy vlm", file=sys.stderr)
    for step in bar:
        cap_idx = rng.choice(n_train, size=batch_size - n_qa, replace=False)
        qa_idx = rng.choice(n_train, size=n_qa, replace=False)
        loss = 0.0
        for adapter, idx, turns in (
                (cap_adapter, cap_idx, [(INSTRUCTION, captions[i]) for i in cap_idx]),
                (qa_adapter, qa_idx, [(questions[i], answers[i]) for i in qa_idx])):
            if len(idx):
                batch = adapter.train_batch([Conversation(images[i], [turn]) for i, turn in zip(idx, turns)])
                loss = loss + answer_loss(model, batch) * len(idx) / batch_size
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.time() - t0
    model.eval()
    f1_trained = caption_f1(model, processor, held_imgs, held_objs, template=caption_template,
                            instruction=INSTRUCTION)
    qa_acc = _qa_accuracy(model, processor, held_imgs, qa.iloc[n_train:])
    metrics = {"heldout_caption_f1": f1_trained, "untrained_caption_f1": f1_untrained, "heldout_qa_accuracy": qa_acc,
               "n_heldout": n_heldout, "n_train": n_train, "steps": steps, "batch_size": batch_size, "lr": lr,
               "seed": seed, "qa_share": qa_share, "final_loss": loss.item(), "train_seconds": round(train_s, 1),
               "caption_template": caption_template, "vision_tower": "toy CLIP (frozen)" if clip_dir else "trained here"}
    log.info("held-out caption F1: trained %.3f, untrained %.3f; held-out QA accuracy %.3f",
             f1_trained, f1_untrained, qa_acc)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        write_json(metrics, tmp / "metrics.json")
    return metrics


def _qa_accuracy(model, processor, images, qa: pd.DataFrame, *, batch_size: int = 64) -> float:
    """Accuracy on held-out corpus questions, scored like the suites they mirror."""
    from vlselect.suites import Item, score_item

    rows = qa.to_dict("records")
    items = [Item(id=str(i), image_path="", question=r["question"], answer=r["answer"],
                  choices=None if r["choices"] is None else list(r["choices"]), metric=r["metric"])
             for i, r in enumerate(rows)]
    adapter = Blip2Adapter(model, processor, DEFAULT_TEMPLATE)
    scores = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        questions = [_qa_instruction(r) for r in rows[i:i + batch_size]]
        preds = adapter.generate(images[i:i + batch_size], questions, max_new_tokens=8)
        scores += [score_item(it, p) for it, p in zip(chunk, preds)]
    return float(np.mean(scores))
