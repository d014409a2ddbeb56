"""Evaluation suites: readers for the benchmarks' official layouts (fixtures written here in those layouts), the
official metrics on hand-computed cases, suite entries in config, prompts and split hygiene."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vlselect.config import ConfigError, load_schema, validate_config
from vlselect.suites import (METRICS, PROMPTS, SUITE_FORMATS, Item, caption_scores, check_suite_use, count_correct,
                             exact_match, format_question, load_suite, score_suite, vqa_accuracy, vqa_normalise,
                             with_prompts, yesno_correct)

JAVA = shutil.which("java") is not None


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------------------------------------------
# metrics


def test_vqa_accuracy_averages_min_matches_over_three_across_leave_one_out_subsets():
    others = ["cat"] * 10
    # 2 of 10 humans said "2": leaving out one of those two, 1 of the other 9 matches (1/3); leaving out any of the
    # eight others, 2 match (2/3); (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert vqa_accuracy("2", ["2", "2"] + others[:8]) == pytest.approx(0.6)
    # 1 of 10: 0 when that human is left out, 1/3 for the other nine: 9/3/10 = 0.3
    assert vqa_accuracy("2", ["2"] + others[:9]) == pytest.approx(0.3)
    # 3 of 10: leaving out a matching one leaves 2 (2/3), else 3 (1): (3 * 2/3 + 7) / 10 = 0.9
    assert vqa_accuracy("2", ["2"] * 3 + others[:7]) == pytest.approx(0.9)
    assert vqa_accuracy("2", ["2"] * 4 + others[:6]) == pytest.approx(1.0)
    assert vqa_accuracy("dog", others) == 0.0
    # the prediction is normalised like the humans' answers: "Two." is "2"
    assert vqa_accuracy("Two.", ["2", "2"] + others[:8]) == pytest.approx(0.6)


def test_vqa_normalisation_rules():
    assert vqa_normalise("Yes!") == "yes"  # punctuation
    assert vqa_normalise("t-shirt") == "t shirt"  # punctuation inside a word becomes a space ...
    assert vqa_normalise("red , blue") == "red blue"  # ... and is dropped next to a space
    assert vqa_normalise("1,000") == "1000"  # a comma between digits goes
    assert vqa_normalise("2.5") == "2.5" and vqa_normalise("a dog.") == "dog"  # periods, except before a digit
    assert vqa_normalise("Two") == "2" and vqa_normalise("none") == "0"  # number words
    assert vqa_normalise("The Cat") == "cat" and vqa_normalise("an apple") == "apple"  # articles
    assert vqa_normalise("dont") == "don't" and vqa_normalise("isnt") == "isn't"  # contractions
    assert vqa_normalise("couldnt've") == "couldn't've" and vqa_normalise("its") == "its"


def test_exact_yesno_and_count_metrics():
    assert exact_match("The table.", ["table"]) == 1.0 and exact_match("a wooden table", ["table"]) == 0.0
    assert yesno_correct("Yes, the cat is under the table.", "yes") == 1.0
    assert yesno_correct("False.", "no") == 1.0 and yesno_correct("No.", "yes") == 0.0
    assert yesno_correct("I cannot tell", "no") == 0.0
    assert count_correct("There are three horses.", "3") == 1.0 and count_correct("2 horses", "3") == 0.0
    assert count_correct("several", "3") == 0.0


@pytest.mark.skipif(not JAVA, reason="pycocoevalcap's PTB tokenizer needs java")
def test_cider_identical_captions_give_ten_and_shared_references_give_zero():
    # CIDEr-D per n-gram order is the clipped, length-penalised cosine of tf-idf vectors, times 10. A candidate equal
    # to its only reference has cosine 1 and no length penalty in every order (both captions have 4-grams): 10.
    refs = ["a man rides a red bike down the street", "two dogs play with a ball in the park"]
    items = [Item(id=str(i), image_path="", question="", answer=r, metric="cider") for i, r in enumerate(refs)]
    score, per_item = score_suite(items, refs)
    assert score == pytest.approx(10.0) and per_item == pytest.approx([10.0, 10.0])
    # when every image has the same reference, every n-gram occurs in all documents: idf 0, so CIDEr 0
    same = [Item(id=str(i), image_path="", question="", answer=refs[0], metric="cider") for i in range(2)]
    assert score_suite(same, [refs[0]] * 2)[0] == pytest.approx(0.0)


@pytest.mark.skipif(not JAVA, reason="pycocoevalcap's PTB tokenizer needs java")
def test_cider_is_corpus_level_and_matches_pycocoevalcap_reference_value():
    refs = [["a man is riding a red bike down the street", "a person rides a bicycle on a road"],
            ["two dogs play with a ball in the park", "dogs running on the grass"],
            ["a plate of food with rice and vegetables", "a dish of rice and greens on a table"]]
    preds = ["a man rides a bike on the street", "two dogs playing in a park", "a plate of rice and vegetables"]
    items = [Item(id=str(i), image_path="", question="", answer=r[0], answers=r, metric="cider")
             for i, r in enumerate(refs)]
    score, per_item = score_suite(items, preds)
    # computed once with pycocoevalcap 1.2 (PTBTokenizer, Cider) on this candidate/reference set
    assert score == pytest.approx(2.0946070502903407, abs=1e-9)
    assert per_item == pytest.approx([1.4785656528172115, 1.2736437592181815, 3.5316117388356294], abs=1e-9)
    # corpus-level: the first image's score changes when another image's references change (document frequencies)
    other = items[:2] + [Item(id="2", image_path="", question="", answer="x", metric="cider",
                              answers=["a man on a red bike", "a man rides down the street"])]
    assert score_suite(other, preds)[1][0] != pytest.approx(per_item[0])
    bleu4 = caption_scores(items, preds)["bleu4"][0]
    assert 0.0 < bleu4 < 1.0


def test_score_suite_means_per_item_scores_and_leaves_judged_suites_unscored():
    items = [Item(id=str(i), image_path="", question="q", answer="2", metric="count") for i in range(4)]
    assert score_suite(items, ["2", "two", "3", "none"]) == (0.5, [1.0, 1.0, 0.0, 0.0])
    judged = [Item(id="1", image_path="", question="q", answer="ref", metric="judged")]
    assert score_suite(judged, ["anything"]) == (None, [None])
    with pytest.raises(ValueError, match="share one metric"):
        score_suite(items[:1] + judged, ["2", "x"])


# ----------------------------------------------------------------------------------------------------------------
# readers, each on a fixture in the benchmark's official layout


def test_okvqa_and_vqav2_readers(tmp_path):
    for prefix, fmt in (("", "okvqa"), ("v2_", "vqav2")):
        root = tmp_path / fmt
        _json(root / f"{prefix}OpenEnded_mscoco_val2014_questions.json", {
            "data_subtype": "val2014", "questions": [{"image_id": 42, "question": "What sport is this?",
                                                      "question_id": 420}]})
        humans = ["tennis"] * 7 + ["squash"] * 3
        _json(root / f"{prefix}mscoco_val2014_annotations.json", {"annotations": [{
            "image_id": 42, "question_id": 420, "answer_type": "other",
            "answers": [{"answer": a, "raw_answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                        for i, a in enumerate(humans)]}]})
        _image(root / "val2014" / "COCO_val2014_000000000042.jpg")
        name, items = load_suite({"name": fmt, "format": fmt, "path": str(root), "split": "val"})
        (it,) = items
        assert name == fmt and it.id == "420" and it.answers == humans and it.answer == "tennis"
        assert it.metric == "vqa_acc" and it.image_path.endswith("val2014/COCO_val2014_000000000042.jpg")
        assert format_question(it) == PROMPTS["short"].format(question="What sport is this?")
        assert score_suite(items, ["Squash."])[0] == pytest.approx(0.9)


def test_gqa_reader(tmp_path):
    _json(tmp_path / "testdev_balanced_questions.json", {
        "20968379": {"imageId": "n288870", "question": "Is the sky dark?", "answer": "no",
                     "fullAnswer": "No, it is not.", "isBalanced": True, "types": {"structural": "verify"}}})
    _image(tmp_path / "images" / "n288870.jpg")
    _, items = load_suite({"name": "gqa", "format": "gqa", "path": str(tmp_path), "split": "testdev"})
    assert [(it.id, it.answer, it.metric) for it in items] == [("20968379", "no", "exact")]
    assert score_suite(items, ["No."])[0] == 1.0


def test_scienceqa_reader_keeps_the_image_subset(tmp_path):
    problems = {
        "7": {"question": "Which animal is a mammal?", "choices": ["frog", "whale"], "answer": 1, "hint": "Look.",
              "image": "image.png", "split": "test", "subject": "natural science"},
        "8": {"question": "Which word is a noun?", "choices": ["run", "cat"], "answer": 1, "hint": "", "image": None,
              "split": "test"},
        "9": {"question": "Which is larger?", "choices": ["ant", "dog", "cat"], "answer": 1, "hint": "",
              "image": "image.png", "split": "val"}}
    _json(tmp_path / "problems.json", problems)
    _json(tmp_path / "pid_splits.json", {"train": [], "val": ["9"], "test": ["7", "8"]})
    _image(tmp_path / "images" / "test" / "7" / "image.png")
    _image(tmp_path / "images" / "val" / "9" / "image.png")
    _, items = load_suite({"name": "sqa", "format": "scienceqa", "path": str(tmp_path), "split": "test"})
    (it,) = items  # problem 8 has no image
    assert it.id == "7" and it.answer == "whale" and it.choices == ["frog", "whale"] and it.metric == "mc"
    assert it.question == "Context: Look.\nWhich animal is a mammal?"
    assert "Options: (A) frog (B) whale" in format_question(it)
    assert score_suite(items, ["B"])[0] == 1.0 and score_suite(items, ["A"])[0] == 0.0
    _, val = load_suite({"name": "sqa", "format": "scienceqa", "path": str(tmp_path)}, split="val")
    assert [it.id for it in val] == ["9"]  # no split in the entry: the stage's split


def test_iconqa_readers_multiple_choice_and_fill_in_the_blank(tmp_path):
    _json(tmp_path / "problems.json", {
        "11": {"question": "How many dots?", "choices": ["3", "5"], "answer": 0, "ques_type": "choose_txt",
               "split": "val"},
        "12": {"question": "What time is shown?", "answer": "7:00", "ques_type": "fill_in_blank", "split": "val"},
        "13": {"question": "Which shape?", "choices": ["image_0.png", "image_1.png"], "answer": 1,
               "ques_type": "choose_img", "split": "val"}})
    _json(tmp_path / "pid_splits.json", {"choose_txt_val": ["11"], "fill_in_blank_val": ["12"],
                                         "choose_img_val": ["13"], "val": ["11", "12", "13"]})
    _image(tmp_path / "iconqa" / "val" / "choose_txt" / "11" / "image.png")
    _image(tmp_path / "iconqa" / "val" / "fill_in_blank" / "12" / "image.png")
    _, mc = load_suite({"name": "iconqa", "format": "iconqa", "path": str(tmp_path), "split": "val"})
    assert [(it.id, it.answer, it.choices, it.metric) for it in mc] == [("11", "3", ["3", "5"], "mc")]
    _, fill = load_suite({"name": "iconqa-fill", "format": "iconqa_fill", "path": str(tmp_path), "split": "val"})
    assert [(it.id, it.answer, it.metric) for it in fill] == [("12", "7:00", "exact")]
    with pytest.raises(ValueError, match="no split 'choose_txt_test'"):
        load_suite({"name": "iconqa", "format": "iconqa", "path": str(tmp_path), "split": "test"})


def test_vsr_reader(tmp_path):
    _jsonl(tmp_path / "test.jsonl", [
        {"image": "000000085637.jpg", "caption": "The cat is under the table.", "label": 1, "relation": "under",
         "subj": "cat", "obj": "table"},
        {"image": "000000085638.jpg", "caption": "The dog is on the bed.", "label": 0, "relation": "on"}])
    _image(tmp_path / "images" / "000000085637.jpg")
    _image(tmp_path / "images" / "000000085638.jpg")
    _, items = load_suite({"name": "vsr", "format": "vsr", "path": str(tmp_path), "split": "test"})
    assert [(it.question, it.answer, it.metric) for it in items] == [
        ("The cat is under the table.", "yes", "yesno"), ("The dog is on the bed.", "no", "yesno")]
    assert "The cat is under the table." in format_question(items[0])
    assert score_suite(items, ["Yes", "yes"])[0] == 0.5


def test_flickr30k_karpathy_reader(tmp_path):
    def image(i, split):
        return {"filename": f"{i}.jpg", "imgid": i, "split": split, "sentids": [2 * i, 2 * i + 1],
                "sentences": [{"raw": f"Caption {k} of image {i}.", "tokens": [], "imgid": i, "sentid": 2 * i + k}
                              for k in range(2)]}
    _json(tmp_path / "dataset_flickr30k.json", {"dataset": "flickr30k",
                                                "images": [image(0, "train"), image(1, "test"), image(2, "val")]})
    for i in range(3):
        _image(tmp_path / "flickr30k-images" / f"{i}.jpg")
    _, items = load_suite({"name": "flickr30k", "format": "flickr30k", "path": str(tmp_path), "split": "test"})
    (it,) = items
    assert it.id == "1" and it.answers == ["Caption 0 of image 1.", "Caption 1 of image 1."] and it.metric == "cider"
    assert format_question(it) == PROMPTS["caption"]


def test_nocaps_reader(tmp_path):
    _json(tmp_path / "nocaps_val_4500_captions.json", {
        "images": [{"id": 0, "file_name": "0013ea2087020901.jpg", "domain": "out-domain", "open_images_id": "x"}],
        "annotations": [{"image_id": 0, "id": i, "caption": f"a lynx in the snow {i}"} for i in range(10)]})
    _image(tmp_path / "images" / "0013ea2087020901.jpg")
    _, items = load_suite({"name": "nocaps", "format": "nocaps", "path": str(tmp_path), "split": "val"})
    (it,) = items
    assert len(it.answers) == 10 and it.meta == {"domain": "out-domain"} and it.metric == "cider"


def test_vcr_counting_and_multiclass_readers(tmp_path):
    _json(tmp_path / "vcr_oc.json", [{"image_id": "movieclips_X/a@1.jpg", "text_in": "How many people are there in the "
                                      "image?", "text_out": "3", "n_obj_exist": 6}])
    _json(tmp_path / "vcr_mci.json", [{"image_id": "lsmdc_Y/b@0.jpg", "text_in": "Does ties exist in the image?",
                                       "text_out": "Yes.", "n_obj_exist": 10}])
    _image(tmp_path / "vcr1images" / "movieclips_X" / "a@1.jpg")
    _image(tmp_path / "vcr1images" / "lsmdc_Y" / "b@0.jpg")
    _, oc = load_suite({"name": "vcr-oc", "format": "vcr_oc", "path": str(tmp_path)}, split="test")
    _, mci = load_suite({"name": "vcr-mci", "format": "vcr_mci", "path": str(tmp_path)}, split="test")
    assert (oc[0].answer, oc[0].metric, mci[0].answer, mci[0].metric) == ("3", "count", "yes", "yesno")
    assert score_suite(oc, ["three people"])[0] == 1.0 and score_suite(mci, ["Yes, a tie."])[0] == 1.0


def write_llava_bench(root, image_src=None):
    """A two-question LLaVA-Bench (in-the-wild) folder in the official layout."""
    _jsonl(root / "questions.jsonl", [
        {"question_id": 0, "image": "001.jpg", "text": "What is unusual about this image?", "category": "complex"},
        {"question_id": 1, "image": "001.jpg", "text": "Describe the image in detail.", "category": "detail"}])
    _jsonl(root / "context.jsonl", [{"id": "001", "image": "001.jpg", "caption": "A red square on black."}])
    _jsonl(root / "answers_gpt4.jsonl", [
        {"question_id": 0, "text": "Nothing is unusual.", "answer_id": "a0", "model_id": "gpt-4-0314"},
        {"question_id": 1, "text": "A red square.", "answer_id": "a1", "model_id": "gpt-4-0314"}])
    if image_src is None:
        _image(root / "images" / "001.jpg")
    else:
        (root / "images").mkdir(parents=True, exist_ok=True)
        shutil.copy(image_src, root / "images" / "001.jpg")
    return root


def test_llava_bench_reader(tmp_path):
    write_llava_bench(tmp_path)
    _, items = load_suite({"name": "llava-bench", "format": "llava_bench", "path": str(tmp_path)}, split="test")
    assert [it.answer for it in items] == ["Nothing is unusual.", "A red square."]
    assert items[0].meta == {"category": "complex", "context": "A red square on black."}
    assert items[0].metric == "judged" and format_question(items[0]) == "What is unusual about this image?"


def test_entry_options_limit_metric_prompt_and_missing_files(tmp_path):
    test_vsr_reader(tmp_path)
    spec = {"name": "vsr", "format": "vsr", "path": str(tmp_path), "split": "test", "limit": 1, "metric": "exact",
            "prompt": "Q: {question} A:"}
    _, items = load_suite(spec)
    assert len(items) == 1 and items[0].metric == "exact" and format_question(items[0]) == \
        "Q: The cat is under the table. A:"
    with pytest.raises(FileNotFoundError, match="dev.jsonl"):
        load_suite({**spec, "split": "dev"})
    (tmp_path / "images" / "000000085637.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_suite(spec)


# ----------------------------------------------------------------------------------------------------------------
# config: entries, prompts, split hygiene


def test_schema_accepts_suite_entries_and_lists_the_same_formats_and_metrics_as_the_code():
    entry = {"name": "okvqa", "format": "okvqa", "path": "/data/okvqa", "split": "val", "limit": 500}
    config = validate_config({"labels": {"suites": ["toy-vqa", entry]}, "final": {"suites": [entry | {"name": "o"}]}})
    assert config["labels"]["suites"][1] == entry and config["evaluate"]["prompts"] == {}
    with pytest.raises(ConfigError, match="labels.suites.0"):
        validate_config({"labels": {"suites": [{"name": "x", "format": "okvqa", "paht": "/d"}]}})
    suite = load_schema()["$defs"]["suite"]["anyOf"][1]["properties"]
    assert tuple(suite["format"]["enum"]) == SUITE_FORMATS and tuple(suite["metric"]["enum"]) == METRICS


def test_configured_prompts_replace_a_kind_unless_an_entry_has_its_own():
    entries = ["toy-vqa", {"name": "g", "format": "gqa", "path": "/g"},
               {"name": "s", "format": "scienceqa", "path": "/s", "prompt": "own"}]
    out = with_prompts(entries, {"short": "Short: {question}", "choice": "ignored here"})
    assert out[0] == "toy-vqa" and out[1]["prompt"] == "Short: {question}" and out[2]["prompt"] == "own"
    assert "prompt" not in entries[1]  # the config itself is left alone
    with pytest.raises(ValueError, match="unknown kind"):
        with_prompts(entries, {"shrt": "x"})


def test_a_suite_read_for_labels_and_final_table_is_refused():
    okvqa = {"name": "okvqa", "format": "okvqa", "path": "/data/okvqa", "split": "val"}
    check_suite_use(["toy-vqa", okvqa], ["toy-vqa", {**okvqa, "split": "test"}])  # toy val vs test; other split
    with pytest.raises(ValueError, match="both read okvqa /data/okvqa split 'val'"):
        check_suite_use([okvqa], [{**okvqa, "name": "renamed"}])
    # without a split the stages read val and test, so the same entry in both is fine
    no_split = {k: v for k, v in okvqa.items() if k != "split"}
    check_suite_use([no_split], [no_split])
    with pytest.raises(ValueError, match="both read"):
        check_suite_use([{**no_split, "split": "test"}], [no_split])
    with pytest.raises(ValueError, match="no automatic score"):
        check_suite_use([{"name": "lb", "format": "llava_bench", "path": "/lb"}], ["toy-vqa"])


def test_vsr_toy_fixture_matches_the_tiny_toy_world(tmp_path):
    """tests/fixtures/vsr_toy restates the tiny toy world's toy-spatial questions in VSR's layout (its README)."""
    import yaml

    from vlselect.suites import load_toy_suite
    from vlselect.toy.world import build_toy_world

    fixture = Path(__file__).parent / "fixtures" / "vsr_toy"
    toy = yaml.safe_load((fixture.parents[1] / "config_tiny.yaml").read_text())["toy"]
    build_toy_world(out_dir=str(tmp_path), **{k: toy[k] for k in ("seed", "n_examples", "corpus_size", "suite_size")})
    images = tmp_path / "suites" / "toy-spatial" / "images"
    for vsr_split, toy_split in (("dev", "val"), ("test", "test")):
        _, items = load_suite({"name": "vsr", "format": "vsr", "path": str(fixture), "split": vsr_split,
                               "images": str(images)})
        truth = load_toy_suite("toy-spatial", str(tmp_path / "suites"), toy_split)
        assert [it.image_path for it in items] == [t.image_path for t in truth]
        assert [it.answer for it in items] == [t.answer for t in truth]
        # "The red star is above the yellow triangle." restates "Is the red star above the yellow triangle?"
        assert [f"Is t{it.question[1:-1].replace(' is ', ' ', 1)}?" for it in items] == [t.question for t in truth]
