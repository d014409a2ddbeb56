"""Every VLM family on a tiny randomly initialised model of its real architecture: the adapter is picked by model
type, a training batch labels exactly the assistant's answers (and each answer's closing token), gradients reach
only the parameters asked for, and generation gives one answer per question from a left-padded batch."""

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from test_evaluate import make_toy_suites
from test_vlm_finetune import make_llava_dir, make_train_dir
from vlselect import cli
from vlselect.vlm import Conversation, adapter_class, chat, load_adapter
from vlselect.vlm.tiny import FAMILIES, LLAVA_NEXT_TEMPLATE, build_tiny_vlm
from vlselect.vlm.train import answer_loss, prepare_model

torch.set_num_threads(1)

# (tiny family, adapter family forced on it): every family under auto (a tiny family is named as the adapter family
# that serves it), and the generic adapter on a LLaVA
CASES = [(f, "auto") for f in FAMILIES] + [("llava", "generic")]

CONVERSATIONS = [
    # two images of different shapes: LLaVA-NeXT and Qwen give them different numbers of image tokens
    Conversation(Image.new("RGB", (32, 32), (200, 30, 30)),
                 [("What is in the image?", "A red square."), ("Which colour is it?", "It is red, like a rose.")]),
    Conversation(Image.new("RGB", (64, 40), (30, 30, 200)), [("Describe this image in detail.", "A blue field")]),
]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {f: build_tiny_vlm(f, str(root / f)) for f in FAMILIES}


def load(path, family="auto"):
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    cls = adapter_class(model, family)
    return cls(model, processor)


def labelled_runs(labels: torch.Tensor) -> list[list[int]]:
    """The labelled positions of one row, as runs of consecutive positions."""
    runs = []
    for pos in (labels != -100).nonzero().flatten().tolist():
        if runs and runs[-1][-1] == pos - 1:
            runs[-1].append(pos)
        else:
            runs.append([pos])
    return runs


def test_every_family_builds_small_and_loads_back_as_its_real_classes(tiny_dirs):
    classes = {"minigpt4": ("Blip2ForConditionalGeneration", "Blip2Processor"),
               "instructblip": ("InstructBlipForConditionalGeneration", "InstructBlipProcessor"),
               "llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
               "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
               "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
               "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor")}
    assert set(tiny_dirs) == set(classes)
    for family, path in tiny_dirs.items():
        model = AutoModelForImageTextToText.from_pretrained(path)
        assert sum(p.numel() for p in model.parameters()) < 2_000_000, family
        assert (type(model).__name__, type(AutoProcessor.from_pretrained(path)).__name__) == classes[family]


def test_the_seed_fixes_the_weights(tiny_dirs, tmp_path):
    same = load_file(f"{build_tiny_vlm('qwen2_vl', str(tmp_path / 'a'), seed=0)}/model.safetensors")
    other = load_file(f"{build_tiny_vlm('qwen2_vl', str(tmp_path / 'b'), seed=1)}/model.safetensors")
    first = load_file(f"{tiny_dirs['qwen2_vl']}/model.safetensors")
    assert all(torch.equal(first[k], same[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("family,forced", CASES)
def test_train_batch_labels_exactly_the_answers_and_their_closing_tokens(tiny_dirs, family, forced):
    adapter = load(tiny_dirs[family], forced)
    assert adapter.family == (family if forced == "auto" else forced)
    tok = adapter.processor.tokenizer
    batch = adapter.train_batch(CONVERSATIONS)
    assert batch["labels"].shape == batch["input_ids"].shape
    for row, conversation in enumerate(CONVERSATIONS):
        runs = labelled_runs(batch["labels"][row])
        assert len(runs) == len(conversation.turns)
        for run, (_, answer) in zip(runs, conversation.turns):
            ids = batch["input_ids"][row, run].tolist()
            assert batch["labels"][row, run].tolist() == ids
            assert tok.decode(ids[:-1]).strip() == answer
            assert ids[-1] in tok.all_special_ids  # the token that closes the answer, so the model learns to stop
    # right padding: each row's text starts at position 0
    assert batch["attention_mask"][:, 0].all()


@pytest.mark.parametrize("trainable", ["projection", "lora"])
@pytest.mark.parametrize("family,forced", CASES)
def test_gradients_reach_only_the_trained_parameters(tiny_dirs, family, forced, trainable):
    adapter, params, _ = prepare_model(tiny_dirs[family], "cpu", trainable=trainable, lora=None, template=None,
                                       model_dtype="float32", gradient_checkpointing=False, family=forced)
    names = set(params)
    assert names and all(any(s in n for s in adapter.projection) or "lora_" in n for n in names)
    assert any(any(s in n for s in adapter.projection) for n in names)
    assert any("lora_" in n for n in names) == (trainable == "lora")
    loss = answer_loss(adapter.model, adapter.train_batch(CONVERSATIONS))
    assert math.isfinite(loss.item())
    loss.backward()
    for name, p in adapter.model.named_parameters():
        assert (p.grad is not None) == (name in names), name
    assert all(params[n].grad.abs().sum() > 0 for n in names if "lora_A" not in n)  # LoRA's B starts at zero


@pytest.mark.parametrize("family,forced", CASES)
def test_generate_answers_each_question_from_a_left_padded_batch(tiny_dirs, family, forced, monkeypatch):
    adapter = load(tiny_dirs[family], forced)
    seen = {}
    real_generate = adapter.model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real_generate(**kwargs)

    monkeypatch.setattr(adapter.model, "generate", spy)
    questions = ["What is in the image?", "Describe this image in great detail, please, and name every colour."]
    answers = adapter.generate([c.image for c in CONVERSATIONS], questions, max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    mask = seen["attention_mask"]
    assert mask[:, -1].all() and not mask[0, 0]  # the shorter prompt is padded on the left
    assert seen["do_sample"] is False


def test_generic_adapter_trains_the_projection_its_model_has_or_fails_clearly(tiny_dirs, monkeypatch):
    settings = {"lora": None, "template": None, "model_dtype": "float32", "gradient_checkpointing": False}
    _, params, _ = prepare_model(tiny_dirs["qwen2_vl"], "cpu", trainable="projection", family="generic", **settings)
    assert params and all("visual.merger" in n for n in params)
    monkeypatch.setattr(chat.ChatAdapter, "projection", ("mm_projector",))  # a model whose projection is unknown
    with pytest.raises(ValueError, match="no parameter name contains any of"):
        prepare_model(tiny_dirs["llava"], "cpu", trainable="projection", family="generic", **settings)


def test_an_answer_the_template_leaves_open_is_closed_with_eos(tiny_dirs):
    # llava-hf's LLaVA-1.5 template ends an answer with a space, where LLaVA was trained with </s>
    llava = load(tiny_dirs["llava"])
    tok = llava.processor.tokenizer
    assert tok.eos_token not in llava.processor.apply_chat_template(
        [{"role": "assistant", "content": [{"type": "text", "text": "A blue field"}]}])
    batch = llava.train_batch(CONVERSATIONS[1:])
    (run,) = labelled_runs(batch["labels"][0])
    assert batch["input_ids"][0, run[-1]] == tok.eos_token_id
    # Qwen's template closes answers itself
    assert load(tiny_dirs["qwen2_vl"]).closing == "<|im_end|>"


def test_instructblip_qformer_reads_the_question_with_the_image(tiny_dirs):
    adapter = load(tiny_dirs["instructblip"])
    qtok = adapter.processor.qformer_tokenizer
    batch = adapter.train_batch(CONVERSATIONS)
    first_questions = [c.turns[0][0] for c in CONVERSATIONS]
    assert qtok.batch_decode(batch["qformer_input_ids"], skip_special_tokens=True) == first_questions
    gen = adapter.generation_batch([c.image for c in CONVERSATIONS], ["Which colour?", "How many?"])
    assert qtok.batch_decode(gen["qformer_input_ids"], skip_special_tokens=True) == ["Which colour?", "How many?"]
    # the language model sees the image's query tokens first, then BOS, as InstructBlipProcessor and LAVIS build it
    q, tok = adapter.model.config.num_query_tokens, adapter.processor.tokenizer
    image_id = adapter.model.config.image_token_index
    for ids in (batch["input_ids"][0], gen["input_ids"][-1]):
        start = int((ids == tok.pad_token_id).long().argmin()) if ids[0] == tok.pad_token_id else 0
        assert ids[start:start + q].tolist() == [image_id] * q and ids[start + q] == tok.bos_token_id


def test_chat_adapter_takes_a_jinja_template_and_refuses_a_minigpt4_one(tiny_dirs):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dirs["llava"])
    processor = AutoProcessor.from_pretrained(tiny_dirs["llava"])
    adapter = chat.LlavaAdapter(model, processor, LLAVA_NEXT_TEMPLATE)
    text = processor.tokenizer.decode(adapter.train_batch(CONVERSATIONS[:1])["input_ids"][0])
    assert "[INST]" in text and "USER:" not in text
    with pytest.raises(ValueError, match="Jinja"):
        chat.LlavaAdapter(model, processor, "###Human: <Img><ImageHere></Img> {instruction} ###Assistant: {answer}")


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_cli")
    return {"projection": make_train_dir(root / "cc_sbu_align", 4), "lora": make_llava_dir(root / "llava", 4),
            "suites": make_toy_suites(root / "suites", n=3)}


@pytest.mark.parametrize("family,forced", CASES)
def test_finetune_and_evaluate_steps_as_the_rules_call_them(tiny_dirs, cli_data, family, forced, tmp_path):
    """Two optimizer steps with each trainable set (projection on a cc_sbu_align export, LoRA on a two-turn llava
    export, bf16 frozen weights with gradient checkpointing), saved, reloaded, generating and evaluated."""
    base = dict(AutoModelForImageTextToText.from_pretrained(tiny_dirs[family]).named_parameters())
    runs = {"projection": {}, "lora": {"model_dtype": "bfloat16", "gradient_checkpointing": True}}
    for trainable, settings in runs.items():
        out = tmp_path / trainable
        params = {"trainable": trainable, "steps": 2, "batch_size": 2, "lr": 0.01, "family": forced,
                  "instruction": "Describe this image in detail.", "device": "cpu"} | settings
        assert cli.main(["finetune", "--base-model", tiny_dirs[family], "--train-dir", str(cli_data[trainable]),
                         "--out-dir", str(out), "--params", json.dumps(params)]) == 0
        info = json.loads((out / "finetune.json").read_text())
        assert info["family"] == (family if forced == "auto" else forced)
        assert info["optimizer_steps"] == 2
        trained = load_file(out / "trainable.safetensors")
        assert any("lora_" in n for n in trained) == (trainable == "lora")
        assert any(not torch.equal(t, base[n]) for n, t in trained.items() if n in base)  # the projection moved

        adapter = load_adapter(out, "cpu")
        assert adapter.family == info["family"]
        reloaded = dict(adapter.model.named_parameters())
        assert all(torch.equal(reloaded[n], t.to(reloaded[n].dtype)) for n, t in trained.items())
        assert len(adapter.generate([c.image for c in CONVERSATIONS], ["What?", "Which colour?"],
                                    max_new_tokens=3)) == 2

        report_path = tmp_path / f"{trainable}.json"
        eval_params = {"suites": ["toy-vqa", "toy-mc"], "split": "val", "batch_size": 2, "max_new_tokens": 3,
                       "device": "cpu"}
        assert cli.main(["evaluate", "--model-dir", str(out), "--suite-root", str(cli_data["suites"]),
                         "--out", str(report_path), "--params", json.dumps(eval_params)]) == 0
        report = json.loads(report_path.read_text())
        assert {name: s["n"] for name, s in report["suites"].items()} == {"toy-vqa": 3, "toy-mc": 3}
        assert all(isinstance(it["prediction"], str) for s in report["suites"].values() for it in s["items"])
