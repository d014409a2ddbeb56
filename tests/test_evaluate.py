"""Suites (loaders for the toy and real-benchmark layouts, metrics) and evaluate()."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from test_vlm_finetune import draw_example, make_base_model, make_train_dir
from vlselect.evaluate import evaluate
from vlselect.vlm import finetune, finetune_seeds
from vlselect.suites import load_suite, mc_correct, normalise, vqa_correct

torch.set_num_threads(1)


def test_vqa_metric_normalises_like_lvlm_ehub():
    assert normalise("The Red, circle!") == ["red", "circle"]
    assert vqa_correct("There are three shapes.", ["3"]) == 1.0
    assert vqa_correct("i see 2 squares", ["two"]) == 1.0
    assert vqa_correct("A RED square", ["red"]) == 1.0
    assert vqa_correct("a reddish square", ["red"]) == 0.0  # whole words only
    assert vqa_correct("top left", ["bottom left"]) == 0.0
    assert vqa_correct("it is in the top left corner", ["no", "top left"]) == 1.0


def test_mc_metric_accepts_letters_or_option_text():
    choices = ["red", "blue", "dark red"]
    assert mc_correct("B", choices, "blue") == 1.0
    assert mc_correct("(B) blue", choices, "blue") == 1.0
    assert mc_correct("A.", choices, "blue") == 0.0
    assert mc_correct("A large blue square", choices, "blue") == 1.0  # text, not letter A
    assert mc_correct("dark red", choices, "dark red") == 1.0
    assert mc_correct("dark red", choices, "red") == 0.0
    assert mc_correct("red or blue", choices, "red") == 0.0  # two options named: not an answer


def test_real_benchmark_layouts(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "gqa.json").write_text(json.dumps([
        {"image": "a.png", "question": "What colour?", "answers": ["red", "red", "maroon"]},
        {"id": "q2", "image": str(tmp_path / "a.png"), "question": "How many?", "answers": ["2"]}]))
    name, items = load_suite({"name": "gqa", "format": "vqa_json", "path": str(tmp_path / "gqa.json")})
    assert name == "gqa" and [it.answer for it in items] == ["red", "2"] and items[1].id == "q2"
    assert items[0].answers == ["maroon", "red"] and items[0].image_path == str(tmp_path / "a.png")

    pd.DataFrame({"question": ["Which?"], "choices": [["cat", "dog"]], "answer": [1],
                  "image_path": ["a.png"]}).to_parquet(tmp_path / "sqa.parquet")
    name, items = load_suite({"name": "sqa", "format": "mc_parquet", "path": str(tmp_path / "sqa.parquet")})
    assert items[0].answer == "dog" and items[0].choices == ["cat", "dog"] and items[0].metric == "mc"

    pd.DataFrame({"question": ["Which?"], "choices": [["cat"]], "answer": [3],
                  "image_path": ["a.png"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="outside"):
        load_suite({"name": "bad", "format": "mc_parquet", "path": str(tmp_path / "bad.parquet")})
    (tmp_path / "missing.json").write_text(json.dumps([{"image": "nope.png", "question": "q", "answers": ["a"]}]))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_suite({"name": "m", "format": "vqa_json", "path": str(tmp_path / "missing.json")})


def make_toy_suites(root, n=12):
    """Toy-layout suites (vqa + mc) in the contract's jsonl format."""
    rng = np.random.default_rng(9)
    for suite in ("toy-vqa", "toy-mc"):
        d = root / suite
        (d / "images").mkdir(parents=True)
        lines = []
        for i in range(n):
            im, objects, _ = draw_example(rng)
            im.save(d / "images" / f"{i}.png")
            rec = {"id": f"{suite}-{i}", "image": f"images/{i}.png", "question": "What colour is the square?",
                   "answer": objects[0]["colour"], "choices": None, "metric": "vqa", "objects": objects}
            if suite == "toy-mc":
                rec.update(choices=["red", "green", "blue"], metric="mc")
            lines.append(json.dumps(rec))
        (d / "val.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    base = make_base_model(tmp / "base")
    data = make_train_dir(tmp / "data", 16)
    finetune(base_model=str(base), train_dir=str(data), out_dir=str(tmp / "ft"), epochs=1, batch_size=8, lr=1e-2,
             device="cpu")
    return tmp, base, make_toy_suites(tmp / "suites")


def test_evaluate_writes_contract_json_and_is_batch_invariant(setup):
    tmp, base, suites = setup
    big = evaluate(model_dir=str(tmp / "ft"), suites=["toy-vqa", "toy-mc"], out=str(tmp / "e1.json"),
                   suite_root=str(suites), batch_size=64, max_new_tokens=6, device="cpu")
    assert json.loads((tmp / "e1.json").read_text()) == big
    assert set(big["suites"]) == {"toy-vqa", "toy-mc"}
    for s in big["suites"].values():
        assert s["n"] == 12 and len(s["items"]) == 12
        assert s["accuracy"] == pytest.approx(np.mean([it["correct"] for it in s["items"]]))
        assert set(s["items"][0]) == {"id", "question", "reference", "prediction", "correct", "image"}
    assert big["mean"] == pytest.approx(np.mean([s["accuracy"] for s in big["suites"].values()]))
    # left padding in batched generation must not change any answer
    small = evaluate(model_dir=str(tmp / "ft"), suites=["toy-vqa", "toy-mc"], out=str(tmp / "e2.json"),
                     suite_root=str(suites), batch_size=5, max_new_tokens=6, device="cpu")
    assert [i["prediction"] for s in small["suites"].values() for i in s["items"]] == \
        [i["prediction"] for s in big["suites"].values() for i in s["items"]]


def test_evaluate_averages_a_dir_of_seeds(setup):
    tmp, base, suites = setup
    seeds = tmp / "seeds"
    finetune_seeds(seeds=[0, 1], base_model=str(base), train_dir=str(tmp / "data"), out_dir=str(seeds), epochs=1,
                   batch_size=8, lr=3e-2, device="cpu")
    kw = dict(suites=["toy-vqa", "toy-mc"], suite_root=str(suites), max_new_tokens=6, device="cpu")
    each = [evaluate(model_dir=str(seeds / f"seed_{s}"), out=str(tmp / f"one{s}.json"), **kw) for s in (0, 1)]
    both = evaluate(model_dir=str(seeds), out=str(tmp / "both.json"), **kw)
    for name in ("toy-vqa", "toy-mc"):
        assert both["suites"][name]["accuracy"] == pytest.approx(np.mean([e["suites"][name]["accuracy"] for e in each]))
        assert both["seeds"]["1"]["suites"][name]["items"] == each[1]["suites"][name]["items"]
    assert both["mean"] == pytest.approx(np.mean([e["mean"] for e in each]))
    assert both["seed_sd"] == pytest.approx(np.std([e["mean"] for e in each], ddof=1))
    # labels.seeds 1: a dir of one seed is that seed's result, with no spread to report
    shutil.copytree(seeds / "seed_0", tmp / "one" / "seed_0")
    one = evaluate(model_dir=str(tmp / "one"), out=str(tmp / "one.json"), **kw)
    assert one["mean"] == pytest.approx(each[0]["mean"]) and one["seed_sd"] is None and list(one["seeds"]) == ["0"]


def test_evaluate_base_model_dir_and_errors(setup):
    tmp, base, suites = setup
    res = evaluate(model_dir=str(base), suites=["toy-vqa"], out=str(tmp / "base.json"), suite_root=str(suites),
                   max_new_tokens=4, device="cpu")
    assert res["suites"]["toy-vqa"]["n"] == 12
    with pytest.raises(FileNotFoundError, match="val.jsonl"):
        evaluate(model_dir=str(base), suites=["toy-count"], out=str(tmp / "x.json"), suite_root=str(suites),
                 device="cpu")
    with pytest.raises(FileNotFoundError, match="neither"):
        evaluate(model_dir=str(tmp), suites=["toy-vqa"], out=str(tmp / "x.json"), suite_root=str(suites))


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs java")
def test_evaluate_scores_a_caption_suite_at_corpus_level(setup):
    from test_suites import test_flickr30k_karpathy_reader
    from vlselect.suites import caption_scores

    tmp, base, _ = setup
    root = tmp / "flickr"
    test_flickr30k_karpathy_reader(root)  # writes a Karpathy-layout Flickr30k with one test image
    spec = {"name": "flickr30k", "format": "flickr30k", "path": str(root), "split": "test"}
    report = evaluate(model_dir=str(tmp / "ft"), suites=[spec], out=str(tmp / "cap.json"), batch_size=4,
                      max_new_tokens=6, device="cpu")
    result = report["suites"]["flickr30k"]
    _, items = load_suite(spec)
    cider, per_item = caption_scores(items, [it["prediction"] for it in result["items"]])["cider"]
    assert result["accuracy"] == pytest.approx(cider) and [it["correct"] for it in result["items"]] == per_item
    assert result["items"][0]["image"] == items[0].image_path


def test_a_judged_suite_keeps_its_answers_and_stays_out_of_the_mean(setup):
    """LLaVA-Bench-like suites have no automatic score: their answers are kept for the judge, accuracy is None,
    and the mean is over the scored suites only, for one model and for a dir of seeds alike."""
    tmp, base, suites = setup
    judged = suites / "toy-judged"
    (judged / "images").mkdir(parents=True, exist_ok=True)
    lines = (suites / "toy-vqa" / "val.jsonl").read_text().splitlines()
    rows = [json.loads(line) | {"metric": "judged"} for line in lines]
    for row in rows:
        shutil.copy(suites / "toy-vqa" / row["image"], judged / row["image"])
    (judged / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seeds = tmp / "seeds_for_judged"
    for s in (0, 1):
        shutil.copytree(tmp / "ft", seeds / f"seed_{s}", dirs_exist_ok=True)
    for model_dir in (tmp / "ft", seeds):
        out = evaluate(model_dir=str(model_dir), suites=["toy-vqa", "toy-judged"], out=str(tmp / "judged.json"),
                       suite_root=str(suites), batch_size=16, max_new_tokens=6, device="cpu")
        assert out["suites"]["toy-judged"]["accuracy"] is None
        assert out["mean"] == pytest.approx(out["suites"]["toy-vqa"]["accuracy"])
    assert len(out["seeds"]["0"]["suites"]["toy-judged"]["items"]) == 12
