"""The toy world generator: file contracts, determinism, flaw rates, pictures that match their objects,
no image shared between parts, preference pairs with text-visible flaws only, and attribute F1."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlselect.toy.describe import NUMBER_WORDS, hallucinate, split_sentences, swap_attribute
from vlselect.toy.world import (COLOURS, FLAWS, RGB, SHAPES, STYLES, SUITES, TEXT_FLAWS, attribute_f1,
                                build_toy_world, describe, parse_attributes, random_objects, render)

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = dict(seed=0, n_examples=120, corpus_size=60, suite_size={"val": 10, "test": 10})


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    build_toy_world(out_dir=str(out), **SMALL)
    return out


def suite_items(world: Path, suite: str, split: str) -> list[dict]:
    return [json.loads(line) for line in (world / "suites" / suite / f"{split}.jsonl").read_text().splitlines()]


def test_writes_exactly_the_contract_files(world):
    top = sorted(p.name for p in world.iterdir())
    assert top == ["corpus", "dataset", "suites", "truth.parquet"], top
    ann = json.loads((world / "dataset" / "filter_cap.json").read_text())["annotations"]
    truth = pd.read_parquet(world / "truth.parquet")
    assert [a["image_id"] for a in ann] == truth["sample_id"].tolist()
    assert sorted(p.name for p in (world / "dataset" / "image").iterdir()) == sorted(f"{a['image_id']}.jpg" for a in ann)
    assert list(truth.columns) == ["sample_id", "source", "flaws", "clean", "objects"]
    assert truth["sample_id"].is_unique and set(truth["source"]) == {"s0", "s1", "s2", "s3", "s4"}
    assert (truth["clean"] == (truth["flaws"] == "")).all()
    assert {f for fl in truth["flaws"] if fl for f in fl.split(",")} <= set(FLAWS)

    caps = pd.read_parquet(world / "corpus" / "captions.parquet")
    assert list(caps.columns) == ["image_path", "caption", "objects"] and len(caps) == SMALL["corpus_size"]
    assert all((world / "corpus" / p).is_file() for p in caps["image_path"])
    prefs = pd.read_parquet(world / "corpus" / "preferences.parquet")
    assert list(prefs.columns) == ["instruction", "chosen", "rejected", "flaw"] and len(prefs) >= len(caps)

    assert sorted(p.name for p in (world / "suites").iterdir()) == sorted(SUITES)
    for suite in SUITES:
        for split in ("val", "test"):
            items = suite_items(world, suite, split)
            assert len(items) == SMALL["suite_size"][split]
            for it in items:
                assert set(it) == {"id", "image", "question", "answer", "choices", "metric", "objects"}
                assert (world / "suites" / suite / it["image"]).is_file()
                assert it["metric"] in {"vqa", "mc", "caption_f1"}
                assert it["choices"] is None or it["answer"] in it["choices"]


def test_same_seed_is_byte_identical_in_another_process(world, tmp_path):
    # another interpreter with another hash seed: set iteration order must not leak into the files
    code = f"from vlselect.toy.world import build_toy_world; build_toy_world(out_dir={str(tmp_path)!r}, **{SMALL!r})"
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    assert tree_hashes(tmp_path) == tree_hashes(world)


def test_another_seed_gives_other_files(world, tmp_path):
    build_toy_world(out_dir=str(tmp_path), **{**SMALL, "seed": 1})
    a, b = tree_hashes(world), tree_hashes(tmp_path)
    assert a.keys() == b.keys()
    same = [k for k in a if a[k] == b[k]]
    assert not same, same


def test_flaw_rate_rises_by_source_and_overall_share_is_plausible(tmp_path):
    build_toy_world(out_dir=str(tmp_path), seed=3, n_examples=600, corpus_size=10, suite_size={"val": 1, "test": 1})
    truth = pd.read_parquet(tmp_path / "truth.parquet")
    sizes = truth["source"].value_counts()
    assert sizes.max() - sizes.min() <= 1  # sources of equal size
    share = 1 - truth.groupby("source")["clean"].mean()
    assert share["s0"] < share["s1"] < share["s3"] < share["s4"] and share["s0"] < share["s2"] < share["s4"], share
    assert 0.40 < 1 - truth["clean"].mean() < 0.70
    kinds = Counter(f for fl in truth["flaws"] if fl for f in fl.split(","))
    assert set(kinds) == set(FLAWS), kinds
    assert (truth["flaws"].str.count(",") == 1).sum() > 0  # some answers carry two flaws


def test_flawed_answers_show_their_flaw(world):
    ann = json.loads((world / "dataset" / "filter_cap.json").read_text())["annotations"]
    truth = pd.read_parquet(world / "truth.parquet")
    for a, flaws, objs in zip(ann, truth["flaws"], truth["objects"]):
        text, flaws, objs = a["caption"], set(flaws.split(",")) - {""}, json.loads(objs)
        if not flaws:
            assert attribute_f1(text, objs) == 1.0, text
        if "truncation" in flaws:
            assert not text.endswith("."), text
        if "repetition" in flaws:
            assert Counter(split_sentences(text)).most_common(1)[0][1] >= 2, text
        if flaws & {"filler", "short"}:
            assert attribute_f1(text, objs) == 0.0, text
        if flaws == {"short"}:
            assert len(text.split()) <= 3, text
        if "other_image" in flaws and "truncation" not in flaws:
            assert attribute_f1(text, objs) < 1.0, text


def _colour_mask(arr: np.ndarray, colour: str, tol: float) -> np.ndarray:
    return np.abs(arr.astype(int) - np.array(RGB[colour])).sum(axis=-1) <= tol


def _check_objects_drawn(path: Path, objects: list[dict], tol: float) -> None:
    """Each declared object's colour fills part of its cell; no object colour shows in an empty cell."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    cell = arr.shape[0] / 3
    occupied = {(o["row"], o["col"]): o for o in objects}
    margin = 2  # JPEG ringing may bleed a pixel past a shape's edge
    for r in range(3):
        for c in range(3):
            y0, y1 = int(r * cell) + margin, int((r + 1) * cell) - margin
            x0, x1 = int(c * cell) + margin, int((c + 1) * cell) - margin
            patch = arr[y0:y1, x0:x1]
            if (r, c) in occupied:
                assert _colour_mask(patch, occupied[r, c]["colour"], tol).sum() >= 8, (path, r, c)
            else:
                stray = sum(int(_colour_mask(patch, col, tol).sum()) for col in COLOURS)
                assert stray == 0, (path, r, c, stray)


def test_images_show_their_declared_objects(world):
    truth = pd.read_parquet(world / "truth.parquet")
    for sid, objs in zip(truth["sample_id"], truth["objects"]):
        _check_objects_drawn(world / "dataset" / "image" / f"{sid}.jpg", json.loads(objs), tol=60)
    caps = pd.read_parquet(world / "corpus" / "captions.parquet")
    for p, objs in zip(caps["image_path"], caps["objects"]):
        _check_objects_drawn(world / "corpus" / p, json.loads(objs), tol=0)  # PNG: exact colours
    for suite in SUITES:
        for it in suite_items(world, suite, "test"):
            _check_objects_drawn(world / "suites" / suite / it["image"], it["objects"], tol=0)


def test_kmeans_on_pixels_finds_the_sources(world):
    """Each source has its own background style, so even raw thumbnails cluster by source."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    truth = pd.read_parquet(world / "truth.parquet")
    thumbs = []
    for sid in truth["sample_id"]:
        with Image.open(world / "dataset" / "image" / f"{sid}.jpg") as im:
            thumbs.append(np.asarray(im.convert("RGB").resize((16, 16), Image.BILINEAR), dtype=float).ravel() / 255)
    labels = KMeans(len(STYLES), n_init=10, random_state=0).fit_predict(np.stack(thumbs))
    assert adjusted_rand_score(truth["source"], labels) > 0.8


def test_shapes_and_sizes_are_drawn_distinctly():
    areas = {}
    for shape in SHAPES:
        img = np.asarray(render([{"shape": shape, "colour": "blue", "size": "large", "row": 1, "col": 1}],
                                "plain", 64, np.random.default_rng(0)))
        areas[shape] = int(_colour_mask(img, "blue", 0).sum())
        small = np.asarray(render([{"shape": shape, "colour": "blue", "size": "small", "row": 1, "col": 1}],
                                  "plain", 64, np.random.default_rng(0)))
        assert _colour_mask(small, "blue", 0).sum() < 0.6 * areas[shape], shape
    assert len(set(areas.values())) == len(SHAPES), areas


def test_no_image_is_shared_between_dataset_corpus_and_suites(world):
    pngs = sorted((world / "corpus").rglob("*.png")) + sorted((world / "suites").rglob("*.png"))
    pixels = {}
    for p in pngs:
        with Image.open(p) as im:
            pixels[p] = np.asarray(im.convert("RGB"))
    digests = Counter(hashlib.sha256(a.tobytes()).hexdigest() for a in pixels.values())
    assert max(digests.values()) == 1
    # the dataset is JPEG: compare it with any PNG of the same scene by pixel difference
    scene_of = {}
    caps = pd.read_parquet(world / "corpus" / "captions.parquet")
    for p, objs in zip(caps["image_path"], caps["objects"]):
        scene_of.setdefault(json.dumps(json.loads(objs), sort_keys=True), []).append(world / "corpus" / p)
    for suite in SUITES:
        for split in ("val", "test"):
            for it in suite_items(world, suite, split):
                scene_of.setdefault(json.dumps(it["objects"], sort_keys=True), []).append(
                    world / "suites" / suite / it["image"])
    truth = pd.read_parquet(world / "truth.parquet")
    for sid, objs in zip(truth["sample_id"], truth["objects"]):
        for p in scene_of.get(json.dumps(json.loads(objs), sort_keys=True), []):
            with Image.open(world / "dataset" / "image" / f"{sid}.jpg") as im:
                diff = np.abs(np.asarray(im.convert("RGB")).astype(int) - pixels[p].astype(int)).mean()
            assert diff > 2, (sid, p)


def test_preferences_carry_one_text_visible_flaw(world):
    prefs = pd.read_parquet(world / "corpus" / "preferences.parquet")
    assert set(prefs["flaw"]) == set(TEXT_FLAWS)
    assert (prefs["chosen"] != prefs["rejected"]).all()
    for chosen, rejected, flaw in zip(prefs["chosen"], prefs["rejected"], prefs["flaw"]):
        # no fact in the rejected answer that the chosen one lacks: no hallucination, no other image
        assert parse_attributes(rejected) <= parse_attributes(chosen), (chosen, rejected)
        if flaw == "truncation":
            assert chosen.startswith(rejected) and not rejected.endswith(".")
        if flaw == "repetition":
            assert Counter(split_sentences(rejected)).most_common(1)[0][1] >= 3


def _check_question(it: dict) -> None:
    """The item's question names its objects unambiguously and its answer is right."""
    objs = it["objects"]
    spatial = it["choices"] == ["yes", "no"]
    if it["metric"] in ("vqa", "mc") and not it["question"].startswith("How many") and not spatial:
        m = re.fullmatch(r"What colour is the (\w+)\?", it["question"])
        if m:
            (o,) = [o for o in objs if o["shape"] == m.group(1)]
            assert it["answer"] == o["colour"]
        m = re.fullmatch(r"(?:What shape is the (\w+) object|Which shape is (\w+))\?", it["question"])
        if m:
            (o,) = [o for o in objs if o["colour"] == (m.group(1) or m.group(2))]
            assert it["answer"] == o["shape"]
        m = re.fullmatch(r"Is the (\w+) small or large\?", it["question"])
        if m:
            (o,) = [o for o in objs if o["shape"] == m.group(1)]
            assert it["answer"] == o["size"]
        if it["metric"] == "mc":
            assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4 and it["answer"] in it["choices"]
    elif it["question"].startswith("How many"):
        assert it["answer"] == ["zero", "one", "two", "three", "four"][len(objs)]
    elif spatial:
        m = re.fullmatch(r"Is the (\w+) (\w+) (to the left of|to the right of|above|below) the (\w+) (\w+)\?",
                         it["question"])
        (a,) = [o for o in objs if (o["colour"], o["shape"]) == m.group(1, 2)]
        (b,) = [o for o in objs if (o["colour"], o["shape"]) == m.group(4, 5)]
        holds = {"to the left of": a["col"] < b["col"], "to the right of": a["col"] > b["col"],
                 "above": a["row"] < b["row"], "below": a["row"] > b["row"]}[m.group(3)]
        assert it["answer"] == ("yes" if holds else "no") and it["choices"] == ["yes", "no"]
    else:
        assert it["metric"] == "caption_f1" and attribute_f1(it["answer"], objs) == 1.0


def test_suite_questions_are_unambiguous_and_right(world):
    for split in ("val", "test"):
        for suite in SUITES:
            for it in suite_items(world, suite, split):
                _check_question(it)


def test_corpus_has_a_right_question_per_image_and_captions_name_the_background(world):
    caps = pd.read_parquet(world / "corpus" / "captions.parquet")
    qa = pd.read_parquet(world / "corpus" / "qa.parquet")
    assert list(qa.columns) == ["image_path", "question", "answer", "choices", "metric"]
    assert list(qa["image_path"]) == list(caps["image_path"])
    for cap, q in zip(caps.to_dict("records"), qa.to_dict("records")):
        _check_question({**q, "choices": None if q["choices"] is None else list(q["choices"]),
                         "objects": json.loads(cap["objects"])})
    assert {q["metric"] for q in qa.to_dict("records")} == {"vqa", "mc"}
    # the toy CLIP learns the sources' styles from these words (dataset answers name it only half the time)
    assert all("background" in c for c in caps["caption"])


def test_attribute_f1_rewards_correct_and_punishes_wrong_facts():
    rng = np.random.default_rng(7)
    for _ in range(50):
        objs = random_objects(rng)
        assert attribute_f1(describe(objs, rng), objs) == 1.0
        text, kind = hallucinate(objs, rng)
        if kind != "position":  # a wrong position is not an attribute fact
            assert attribute_f1(text, objs) < 1.0, (text, objs)
    objs = [{"shape": "circle", "colour": "red", "size": "large", "row": 0, "col": 0},
            {"shape": "square", "colour": "blue", "size": "small", "row": 2, "col": 2}]
    assert parse_attributes("There are 2 shapes: a large Red circle and two blue squares.") == {
        ("count", 2), ("object", "red", "circle"), ("object", "blue", "square")}
    assert attribute_f1("There are two objects: a red circle and a blue square.", objs) == 1.0
    assert attribute_f1("There are two objects: a green circle and a blue square.", objs) == pytest.approx(2 / 3)
    assert attribute_f1("A red circle.", objs) == pytest.approx(0.5)
    assert attribute_f1("This is a beautiful image.", objs) == 0.0
    # a loop states no new fact but costs precision: 2 distinct sentences of 4 halve it (F1 2/3 from 1)
    loop = "There are two objects. A red circle and a blue square. A red circle and a blue square. a RED circle and a blue  square!"
    assert attribute_f1(loop, objs) == pytest.approx(2 * 0.5 / 1.5)


def test_attribute_f1_punishes_the_datasets_repetition_loops(world):
    ann = json.loads((world / "dataset" / "filter_cap.json").read_text())["annotations"]
    truth = pd.read_parquet(world / "truth.parquet")
    looped = truth["flaws"] == "repetition"
    assert looped.sum() > 5
    for a, objs in zip(np.array(ann)[looped.to_numpy()], truth.loc[looped, "objects"]):
        text, objs = a["caption"], json.loads(objs)
        unlooped = " ".join(dict.fromkeys(split_sentences(text)))  # every sentence once, in order
        assert attribute_f1(text, objs) < attribute_f1(unlooped, objs), text


def test_swap_attribute_makes_one_small_false_edit():
    rng = np.random.default_rng(3)
    kinds = set()
    for _ in range(200):
        objs = random_objects(rng)
        text = describe(objs, rng, background="plain")
        swapped = swap_attribute(text, objs, rng)
        assert swapped is not None
        twin, said_kind = swapped
        assert twin != text
        before, after = text.split(), twin.split()
        changed = [b.strip(".,:").lower() for a, b in zip(before, after) if a != b]
        if len(before) == len(after) and len(changed) == 1 and changed[0] in COLOURS + SHAPES + NUMBER_WORDS:
            kind = "colour" if changed[0] in COLOURS else "shape" if changed[0] in SHAPES else "count"
            # the edit names a (colour, shape) absent from the scene, or the wrong number of objects
            assert attribute_f1(twin, objs) < 1.0, (text, twin)
        else:
            kind = "position"  # another cell's phrase; attribute F1 does not check positions
            assert len(split_sentences(twin)) == len(split_sentences(text))
            assert not set(parse_attributes(twin)) ^ set(parse_attributes(text))
        assert said_kind == kind, (text, twin, said_kind)
        kinds.add(kind)
    assert kinds == {"colour", "shape", "count", "position"}
    assert swap_attribute("There is a red circle.", [], rng) is None  # no scene, no known lie
    # a twin of a chosen kind, or None when the text states no fact of that kind
    objs = [{"shape": "circle", "colour": "red", "size": "large", "row": 0, "col": 0}]
    text = "There is a large red circle in the top left corner."
    for kind in ("colour", "shape", "position"):
        assert swap_attribute(text, objs, rng, kinds=(kind,))[1] == kind
    assert swap_attribute(text, objs, rng, kinds=("count",)) is None  # "one object" has no grammatical twin
    with pytest.raises(ValueError, match="unknown twin kind"):
        swap_attribute(text, objs, rng, kinds=("size",))
    assert swap_attribute("A nice picture.", objs, rng) is None  # no fact to falsify


@pytest.mark.parametrize("bad", [{"flaw_rates": [0.1] * 6}, {"flaw_rates": [0.5, 1.2]},
                                 {"suite_size": {"val": 3}}, {"n_examples": 1}, {"image_size": 16}])
def test_bad_arguments_are_refused_with_a_clear_message(tmp_path, bad):
    with pytest.raises(ValueError, match="flaw_rates|suite_size|n_examples|image_size"):
        build_toy_world(out_dir=str(tmp_path), **{**SMALL, **bad})
    assert not any(tmp_path.iterdir())  # nothing half-written
