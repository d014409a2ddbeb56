"""Pairwise judge: the LLaVA-Bench combination rule, the oracle on a tiny toy world, and the openai backend against
a real local HTTP server (tests/fake_openai.py), both answer orders."""

from __future__ import annotations

import json
import re

import pytest

from fake_openai import FakeOpenAI
from vlselect.io import read_json, write_json
from vlselect.judge import combine_verdicts, judge, merge_judgements, parse_pair

KEY = "sk-test-PLANTED-SECRET-123"
ENV = "VLSELECT_TEST_OPENAI_KEY"


@pytest.mark.parametrize("first,second,expected", [
    ("win", "win", "win"), ("win", "tie", "win"), ("tie", "win", "win"),
    ("tie", "tie", "tie"), ("win", "loss", "tie"), ("loss", "win", "tie"),
    ("loss", "loss", "loss"), ("loss", "tie", "loss"), ("tie", "loss", "loss"),
])
def test_combine_verdicts(first, second, expected):
    assert combine_verdicts(first, second) == expected


def test_combine_rejects_unknown_and_parse_pair_is_strict():
    with pytest.raises(ValueError):
        combine_verdicts("win", "draw")
    assert parse_pair("8 6\nbecause") == (8.0, 6.0) and parse_pair("7.5, 7") == (7.5, 7.0)
    assert parse_pair("Assistant 1: 8") is None and parse_pair("") is None and parse_pair("8") is None


def write_eval(path, items, predictions):
    rows = [{"id": it["id"], "question": it["question"], "reference": it["answer"], "prediction": p, "correct": 0.0}
            for it, p in zip(items, predictions)]
    write_json({"suites": {"toy-caption": {"accuracy": 0.0, "n": len(rows), "items": rows}}, "mean": 0.0,
                "split": "test"}, path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world_mod = pytest.importorskip("vlselect.toy.world", reason="vlselect.toy.world (attribute_f1) not written yet")
    root = tmp_path_factory.mktemp("toy")
    world_mod.build_toy_world(out_dir=str(root), n_examples=10, corpus_size=10, suite_size={"val": 2, "test": 6})
    suite_root = root / "suites"
    items = [json.loads(line) for line in (suite_root / "toy-caption" / "test.jsonl").read_text().splitlines()]
    return suite_root, items


def test_oracle_counts_both_orders(world, tmp_path):
    suite_root, items = world
    good = [it["answer"] for it in items]  # clean descriptions of the true objects
    bad = ["There is nothing to see here."] * len(items)
    # A is better on questions 0-2, worse on 3-4, identical on 5
    a = write_eval(tmp_path / "sel.json", items, good[:3] + bad[3:5] + good[5:])
    b = write_eval(tmp_path / "base.json", items, bad[:3] + good[3:5] + good[5:])
    report = judge(eval_a=a, eval_b=b, out=str(tmp_path / "j.json"), backend="oracle", suite_root=str(suite_root),
                   n_questions=40)
    assert report["counts"] == {"win": 3, "tie": 1, "loss": 2} and report["a"] == "sel" and report["b"] == "base"
    saved = read_json(tmp_path / "j.json")
    assert [q["verdict"] for q in saved["questions"]] == ["win"] * 3 + ["loss"] * 2 + ["tie"]
    assert all(q["verdict_a_first"] and q["verdict_b_first"] for q in saved["questions"])
    limited = judge(eval_a=a, eval_b=b, out=str(tmp_path / "j2.json"), suite_root=str(suite_root), n_questions=4)
    assert limited["counts"] == {"win": 3, "tie": 0, "loss": 1}
    merge_judgements(inputs=[str(tmp_path / "j.json"), str(tmp_path / "j2.json")], out=str(tmp_path / "all.json"))
    assert [c["counts"]["win"] for c in read_json(tmp_path / "all.json")["comparisons"]] == [3, 3]


def test_mismatched_evals_are_rejected(world, tmp_path):
    suite_root, items = world
    a = write_eval(tmp_path / "a.json", items, ["x"] * len(items))
    b = write_eval(tmp_path / "b.json", items[:2], ["x", "x"])
    with pytest.raises(ValueError, match="lacks"):
        judge(eval_a=a, eval_b=b, out=str(tmp_path / "j.json"), suite_root=str(suite_root))


def _answers(prompt):
    first = re.search(r"\[Assistant 1\]\n(.*?)\n\n\[End of Assistant 1\]", prompt, re.S).group(1)
    second = re.search(r"\[Assistant 2\]\n(.*?)\n\n\[End of Assistant 2\]", prompt, re.S).group(1)
    return first, second


def fake_judge(prompt, n):
    first, second = _answers(prompt)
    if "BIASED" in first + second:
        return {"text": "9 2\nThe first is better."}  # always prefers whatever it reads first
    if "BROKEN" in first + second:
        return {"text": "Assistant 1 is better."}
    rate = lambda text: 8 if "GOOD" in text else 3  # noqa: E731
    return {"text": f"{rate(first)} {rate(second)}\nExplanation."}


def test_openai_backend_both_orders_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    items = [{"id": f"q{i}", "question": "Describe this image in detail.", "answer": "ref"} for i in range(5)]
    a = write_eval(tmp_path / "a.json", items, ["GOOD one", "bad", "GOOD", "BIASED x", "BROKEN"])
    b = write_eval(tmp_path / "b.json", items, ["bad", "GOOD two", "GOOD too", "BIASED y", "fine"])
    kw = dict(eval_a=a, eval_b=b, backend="openai", cache_dir=str(tmp_path / "cache"), api_key_env=ENV,
              backoff_s=0.01, max_retries=1)
    with FakeOpenAI(fake_judge, api_key=KEY) as srv:
        report = judge(out=str(tmp_path / "j.json"), base_url=srv.base_url, **kw)
        assert srv.total == 10 and set(srv.counts.values()) == {1}  # each question asked in both orders
        assert report["counts"] == {"win": 1, "tie": 2, "loss": 1} and report["unjudged"] == 1
        q = {x["id"]: x for x in report["questions"]}
        assert (q["q3"]["verdict_a_first"], q["q3"]["verdict_b_first"], q["q3"]["verdict"]) == ("win", "loss", "tie")
        assert q["q4"]["verdict"] is None and q["q4"]["raw"][0] == "Assistant 1 is better."
        assert report["requests_sent"] == 10 and report["prompt_version"]
        again = judge(out=str(tmp_path / "j2.json"), base_url=srv.base_url, **kw)
        assert srv.total == 10 and again["requests_sent"] == 0 and again["counts"] == report["counts"]
        # a budget that covers about two requests: the rest are skipped and reported as unjudged, not guessed
        tight = judge(out=str(tmp_path / "j3.json"), base_url=srv.base_url, **(kw | {
            "cache_dir": str(tmp_path / "cache2"), "max_usd": 0.6, "usd_per_1k_input": 1.0,
            "usd_per_1k_output": 1.0, "concurrency": 1}))
        assert 0 < tight["requests_sent"] < 10 and tight["unjudged"] >= 3
    for path in list((tmp_path).rglob("*")):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes()


def test_openai_backend_needs_endpoint(tmp_path):
    items = [{"id": "q0", "question": "q", "answer": "r"}]
    a = write_eval(tmp_path / "a.json", items, ["x"])
    with pytest.raises(ValueError, match="judge.base_url"):
        judge(eval_a=a, eval_b=a, out=str(tmp_path / "j.json"), backend="openai", cache_dir=str(tmp_path))


def test_none_backend_records_skip(tmp_path):
    items = [{"id": "q0", "question": "q", "answer": "r"}]
    a = write_eval(tmp_path / "a.json", items, ["x"])
    judge(eval_a=a, eval_b=a, out=str(tmp_path / "j.json"), backend="none")
    saved = read_json(tmp_path / "j.json")
    assert saved["counts"] == {"win": 0, "tie": 0, "loss": 0} and "none" in saved["skipped"]


def test_llava_bench_rules_with_the_image_attached_both_orders_cached(tmp_path, monkeypatch):
    import base64

    from test_suites import write_llava_bench
    from vlselect.suites import load_suite

    monkeypatch.setenv(ENV, KEY)
    bench = write_llava_bench(tmp_path / "llava-bench")
    _, items = load_suite({"name": "llava-bench", "format": "llava_bench", "path": str(bench)}, split="test")

    def write(path, predictions):  # the rows evaluate() writes: image and meta go along for the judge
        rows = [{"id": it.id, "question": it.question, "reference": it.answer, "prediction": p, "correct": None,
                 "image": it.image_path, "meta": it.meta} for it, p in zip(items, predictions)]
        write_json({"suites": {"llava-bench": {"accuracy": None, "n": len(rows), "items": rows}}, "split": "test"},
                   path)
        return str(path)

    # a rule file in rule.json's layout: category -> role and prompt
    rules = {f"llava_bench_{c}": {"role": "Assistant", "prompt": f"RULE-{c}: rate both from 1 to 10."}
             for c in ("conv", "detail", "complex")}
    (tmp_path / "rule.json").write_text(json.dumps(rules))
    a = write(tmp_path / "a.json", ["GOOD: a square that is red", "GOOD detail"])
    b = write(tmp_path / "b.json", ["bad", "GOOD too"])
    kw = dict(eval_a=a, eval_b=b, backend="openai", suite="llava-bench", cache_dir=str(tmp_path / "cache"),
              api_key_env=ENV, backoff_s=0.01, max_retries=1, images=True, rules=str(tmp_path / "rule.json"))
    with FakeOpenAI(fake_judge, api_key=KEY) as srv:
        report = judge(out=str(tmp_path / "j.json"), base_url=srv.base_url, **kw)
        assert srv.total == 4 and len(srv.counts) == 4  # two questions, each in both orders
        image_url = "data:image/jpeg;base64," + base64.b64encode((bench / "images" / "001.jpg").read_bytes()).decode()
        assert all(urls == [image_url] for urls in srv.image_urls.values())
        prompts = list(srv.counts)
        assert all(p.startswith("[Context]\nA red square on black.\n\n[Question]\n") for p in prompts)
        assert sum("RULE-complex" in p for p in prompts) == 2 and sum("RULE-detail" in p for p in prompts) == 2
        orders = {_answers(p) for p in prompts if "RULE-complex" in p}
        assert orders == {("GOOD: a square that is red", "bad"), ("bad", "GOOD: a square that is red")}
        assert report["counts"] == {"win": 1, "tie": 1, "loss": 0}
        # A scores 8 + 8, B 3 + 8 (each the mean over both orders): LLaVA-Bench's relative score 100 * 16 / 11
        assert report["relative_score"] == pytest.approx(145.5)
        again = judge(out=str(tmp_path / "j2.json"), base_url=srv.base_url, **kw)
        assert srv.total == 4 and again["requests_sent"] == 0 and again["cache_hits"] == 4
        assert again["counts"] == report["counts"]
        # without the image the same text is a different request, not answered from the image-bearing cache entries
        judge(out=str(tmp_path / "j3.json"), base_url=srv.base_url, **(kw | {"images": False}))
        assert srv.total == 8 and all(srv.counts[p] == 2 and srv.image_urls[p] == [] for p in prompts)
