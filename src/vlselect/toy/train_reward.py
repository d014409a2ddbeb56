"""Train the toy world's tiny reward model on corpus/preferences.parquet.

A WordPiece tokenizer is built from the corpus text (whole words plus character pieces) with the
`tokenizers` library and wrapped as a PreTrainedTokenizerFast; the model is a two-layer BERT (hidden 64) with one output, trained with the
pairwise Bradley-Terry loss -log sigmoid(r(chosen) - r(rejected)) as reward models such as
OpenAssistant/reward-model-deberta-v3-large-v2 are. Both are saved with save_pretrained, so the
scoring step loads the toy model through the same Auto classes as a real one.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from vlselect.io import atomic_dir, write_json
from vlselect.runtime import seed_everything

log = logging.getLogger(__name__)

MAX_LENGTH = 256  # the toy answers (with their flaws) fit, so truncation never hides a flaw
VOCAB_SIZE = 4000
HELD_OUT_FRACTION = 0.1


def build_tokenizer(texts: list[str]):
    """A lower-casing WordPiece tokenizer for ``texts``, with BERT's [CLS] A [SEP] B [SEP] pair template.

    The vocabulary is built here rather than by the `tokenizers` WordPiece trainer, whose token ids follow Rust's
    per-process hash order: two runs would get different ids and so different reward models. Here it is the
    special tokens, every character (alone and as a ``##`` continuation, so no word is unknown), then whole words
    by frequency (ties alphabetical) up to ``VOCAB_SIZE``: the same texts always give the same ids.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for t in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t)))
    chars = sorted({c for w in counts for c in w})
    vocab = specials + chars + ["##" + c for c in chars]
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    vocab += words[: max(0, VOCAB_SIZE - len(vocab))]
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=MAX_LENGTH, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]")


def build_model(vocab_size: int, pad_token_id: int):
    """A freshly initialised two-layer BERT reward model (one output)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=MAX_LENGTH, num_labels=1,
                        pad_token_id=pad_token_id, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


def _rewards(model, tokenizer, instructions: list[str], answers: list[str], chunk: int = 16) -> torch.Tensor:
    """Rewards of (instruction, answer) pairs, computed in chunks of similar length.

    One repetition loop in a batch would pad every row to its length (four times the real tokens on the toy
    corpus); sorted chunks pad little, and each row's reward is the same either way.
    """
    enc = tokenizer(instructions, answers, truncation=True, max_length=MAX_LENGTH)
    order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
    out = [None] * len(order)
    for a in range(0, len(order), chunk):
        rows = order[a:a + chunk]
        batch = tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc.keys()}, return_tensors="pt")
        for i, r in zip(rows, model(**batch).logits[:, 0]):
            out[i] = r
    return torch.stack(out)


def train_toy_reward(*, corpus_dir: str, out_dir: str, steps: int, batch_size: int, lr: float, seed: int) -> None:
    """Train the toy reward model; writes a transformers model dir (+ tokenizer, metrics.json) to ``out_dir``.

    metrics.json holds the held-out pair accuracy (share of unseen preference pairs where the chosen
    answer gets the higher reward), the loss at the start and end of training and the training time.
    """
    seed_everything(seed)
    prefs = pd.read_parquet(f"{corpus_dir}/preferences.parquet", columns=["instruction", "chosen", "rejected", "flaw"])
    if len(prefs) < 20:
        raise ValueError(f"{corpus_dir}/preferences.parquet has {len(prefs)} pairs; the toy reward model needs at "
                         "least 20 (raise toy.corpus_size)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(prefs))
    n_held = max(10, int(round(HELD_OUT_FRACTION * len(prefs))))
    held, train = prefs.iloc[order[:n_held]], prefs.iloc[order[n_held:]]

    # The tokenizer sees only the training pairs' text, so held-out accuracy is honest.
    tokenizer = build_tokenizer(pd.concat([train["instruction"], train["chosen"], train["rejected"]]).tolist())
    model = build_model(len(tokenizer), tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=True)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(steps), desc="train toy reward", file=sys.stderr):
        batch = train.iloc[rng.choice(len(train), size=min(batch_size, len(train)), replace=False)]
        instr = batch["instruction"].tolist()
        rewards = _rewards(model, tokenizer, instr + instr, batch["chosen"].tolist() + batch["rejected"].tolist())
        chosen, rejected = rewards[: len(batch)], rewards[len(batch):]
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - start
    model.eval()

    with torch.inference_mode():
        instr = held["instruction"].tolist()
        chosen = torch.cat([_rewards(model, tokenizer, instr[i:i + 64], held["chosen"].tolist()[i:i + 64])
                            for i in range(0, len(held), 64)])
        rejected = torch.cat([_rewards(model, tokenizer, instr[i:i + 64], held["rejected"].tolist()[i:i + 64])
                              for i in range(0, len(held), 64)])
    correct = (chosen > rejected).numpy()
    by_flaw = {flaw: float(correct[(held["flaw"] == flaw).to_numpy()].mean()) for flaw in sorted(held["flaw"].unique())}
    window = max(1, min(20, steps // 5))
    metrics = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "n_train": len(train), "n_held_out": n_held,
        "loss_start": float(np.mean(losses[:window])), "loss_end": float(np.mean(losses[-window:])),
        "pair_accuracy": float(correct.mean()), "pair_accuracy_by_flaw": by_flaw,
        "train_seconds": round(train_seconds, 1),
    }
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(metrics, tmp / "metrics.json")
    log.info("toy reward model: held-out pair accuracy %.3f, loss %.3f -> %.3f, %.0f s",
             metrics["pair_accuracy"], metrics["loss_start"], metrics["loss_end"], train_seconds)
