"""The toy world: a miniature of the InstructionGPT-4 experiment that needs no download.

:func:`build_toy_world` draws images of 1-4 coloured shapes on a 3x3 grid and writes, under ``out_dir``:

* ``dataset/``: an instruction set in cc_sbu_align layout (``filter_cap.json`` + ``image/<id>.jpg``) whose
  answers to "Describe this image in detail." are often flawed: hallucination (one wrong colour, shape,
  count or position), other_image (another image's description), truncation, repetition, filler (generic
  text about nothing in the image) and short; some answers have two flaws. Each example comes from one of
  ``len(flaw_rates)`` hidden sources of equal size; a source has its own visual style (background) and its
  own flaw probability, so subsets of the data differ in quality and k-means on images finds the sources.
* ``truth.parquet``: the hidden ground truth (source, flaws, clean, objects); only tests, benchmarks and
  the oracle judge read it, never a scorer.
* ``corpus/``: a separate pre-training corpus for the tiny models: ``images/*.png`` with clean captions
  that always name the background (``captions.parquet``), one question with its answer per image in the style of
  a question suite (``qa.parquet``, the suites' training split; other images than theirs) and ``preferences.parquet`` pairs whose rejected answer carries exactly one
  text-visible flaw (repetition, filler, truncation, short) - never a hallucination or another image's
  description, which the reward model must not learn to see (the CLIP score has to catch those).
* ``suites/{suite}/{val,test}.jsonl`` + ``images/``: evaluation suites mirroring the paper's benchmarks:

  - ``toy-vqa`` (GQA / OK-VQA analog, metric vqa): "What colour is the triangle?" -> "red", "What shape is the
    blue object?", "Is the red circle small or large?" (always about an object the question names uniquely);
  - ``toy-count`` (IconQA / VCR counting analog, metric vqa): "How many objects are in the image?" -> "three";
  - ``toy-spatial`` (VSR analog, metric mc, choices yes/no): "Is the red circle to the left of the blue square?";
  - ``toy-mc`` (ScienceQA analog, metric mc, four options A-D, answer = the right option's text):
    "Which shape is green?" / "What colour is the square?";
  - ``toy-caption`` (Flickr30k / NoCaps analog, metric caption_f1): "Describe this image in detail." scored by
    :func:`attribute_f1` against the item's objects.

Every part has its own random stream derived from ``seed``, and no image (pixel content) occurs twice across
dataset, corpus and suites. The build is deterministic: the same arguments give byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from vlselect.io import atomic_dir, write_json, write_parquet
from vlselect.toy.describe import (COLOURS, FLAWS, SHAPES, SIZES, TEXT_FLAWS, apply_text_flaw,
                                   attribute_f1, describe, describe_sentences, hallucinate, number_word,
                                   parse_attributes, pick, repeat, scene_facts, split_sentences)

__all__ = ["build_toy_world", "describe", "parse_attributes", "attribute_f1", "scene_facts", "render",
           "random_objects", "COLOURS", "SHAPES", "SIZES", "STYLES", "RGB", "FLAWS", "TEXT_FLAWS", "SUITES"]

log = logging.getLogger(__name__)

# Well separated, saturated colours; no background style ever produces one of them exactly (backgrounds are
# grey or faintly tinted), so a pixel of an object colour belongs to an object.
RGB = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (40, 70, 225), "yellow": (240, 220, 30),
       "purple": (150, 45, 195), "orange": (250, 140, 20)}
STYLES = ("plain", "dark", "striped", "noisy", "gradient")  # source k draws on STYLES[k]
SUITES = ("toy-vqa", "toy-count", "toy-spatial", "toy-mc", "toy-caption")
QUESTION_SUITES = SUITES[:4]  # the corpus's question-answer text mirrors these (captioning is the captions)
INSTRUCTION = "Describe this image in detail."
PREFERENCE_INSTRUCTIONS = (INSTRUCTION, "Describe the image.", "What do you see in this picture?",
                           "Give a detailed description of this image.")

# Flaw kinds of a flawed dataset answer (weights) and the share of flawed answers with a second flaw.
FLAW_WEIGHTS = {"hallucination": 0.30, "other_image": 0.15, "truncation": 0.15, "repetition": 0.15,
                "filler": 0.15, "short": 0.10}
TWO_FLAW_SHARE = 0.15
# A second flaw stacks on the first: content first, then a loop, then the cut.
TWO_FLAW_PAIRS = (("hallucination", "repetition"), ("hallucination", "truncation"), ("other_image", "repetition"),
                  ("other_image", "truncation"), ("repetition", "truncation"))
N_OBJECT_WEIGHTS = {1: 0.2, 2: 0.3, 3: 0.3, 4: 0.2}
JPEG = {"format": "JPEG", "quality": 95, "subsampling": 0, "optimize": False}  # 4:4:4 keeps small shapes' colours
PNG = {"format": "PNG", "compress_level": 6}
PREFS_PER_IMAGE = 2

# Independent random streams per part: SeedSequence([seed, PART, ...]).
_DATASET, _CORPUS, _SUITES = 0, 1, 2


# ---- scenes and images ---------------------------------------------------------------------------------------

def random_objects(rng: np.random.Generator, n_min: int = 1, n_max: int = 4) -> list[dict]:
    """1-4 objects in distinct grid cells, sorted in reading order (row, then column)."""
    counts = [n for n in N_OBJECT_WEIGHTS if n_min <= n <= n_max]
    weights = np.array([N_OBJECT_WEIGHTS[n] for n in counts])
    n = counts[int(rng.choice(len(counts), p=weights / weights.sum()))]
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
    return [{"shape": pick(rng, SHAPES), "colour": pick(rng, COLOURS), "size": pick(rng, SIZES),
             "row": c // 3, "col": c % 3} for c in cells]


def _background(style: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The style's background as an HxWx3 uint8 array (grey or faintly tinted, never an object colour)."""
    if style == "plain":
        grey = np.full((size, size), 205, np.uint8)
    elif style == "dark":
        grey = np.full((size, size), 45, np.uint8)
    elif style == "striped":
        period = max(4, size // 8)
        phase = int(rng.integers(period))
        rows = ((np.arange(size) + phase) // (period // 2)) % 2
        grey = np.repeat(np.where(rows, 175, 120).astype(np.uint8)[:, None], size, axis=1)
    elif style == "noisy":
        grey = (128 + rng.integers(-45, 46, size=(size, size))).astype(np.uint8)
    elif style == "gradient":
        v = np.linspace(235, 90, size)[:, None].repeat(size, axis=1)
        # a faint blue tint sets it apart from the grey styles; R != G != B keeps it off the object colours
        return np.stack([v * 0.88, v * 0.94, v], axis=-1).round().astype(np.uint8)
    else:
        raise ValueError(f"unknown style {style!r}; use one of {STYLES}")
    return np.repeat(grey[:, :, None], 3, axis=2)


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx - 0.95 * r, cy + 0.8 * r), (cx + 0.95 * r, cy + 0.8 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    raise ValueError(f"no polygon for shape {shape!r}")


def render(objects: Sequence[dict], style: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw ``objects`` on the style's background; each stays inside its own grid cell (jittered centre)."""
    img = Image.fromarray(_background(style, size, rng), "RGB")
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for o in objects:
        # radius + jitter <= 0.46 cell: objects never cross into a neighbouring cell
        r = (0.40 if o["size"] == "large" else 0.22) * cell
        jx, jy = rng.uniform(-0.06, 0.06, size=2) * cell
        cx, cy = (o["col"] + 0.5) * cell + jx, (o["row"] + 0.5) * cell + jy
        fill = RGB[o["colour"]]
        if o["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o["shape"] == "square":
            h = 0.85 * r
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        else:
            draw.polygon(_shape_points(o["shape"], cx, cy, r), fill=fill)
    return img


def _encode(img: Image.Image, settings: dict) -> bytes:
    buf = io.BytesIO()
    img.save(buf, **settings)
    return buf.getvalue()


class _SceneSource:
    """Draws scenes and their images, refusing any image whose pixels were drawn before in this build."""

    def __init__(self, size: int):
        self.size = size
        self.seen: set[str] = set()

    def draw(self, rng: np.random.Generator, style: str, n_min: int = 1, n_max: int = 4):
        for _ in range(1000):
            objects = random_objects(rng, n_min, n_max)
            img = render(objects, style, self.size, rng)
            key = hashlib.sha256(img.tobytes()).hexdigest()
            if key not in self.seen:
                self.seen.add(key)
                return objects, img
        raise RuntimeError(f"could not draw a new image at image_size={self.size} after 1000 tries; "
                           "raise toy.image_size or lower the number of images")


def _objects_json(objects: Sequence[dict]) -> str:
    return json.dumps(list(objects), sort_keys=True)


# ---- dataset -------------------------------------------------------------------------------------------------

def _flawed_answer(flaws: Sequence[str], objects: list[dict], other: list[dict], style: str,
                   rng: np.random.Generator) -> str:
    """Apply ``flaws`` (content flaw first, truncation last) to a fresh description of ``objects``."""
    first = flaws[0]
    if first == "hallucination":
        sentences = split_sentences(hallucinate(objects, rng, background=style)[0])
    elif first == "other_image":
        # another image's scene, described in that image's own terms (its background is unknown here)
        sentences = describe_sentences(other, rng)
    elif first in TEXT_FLAWS:
        return _text_flawed(flaws, describe_sentences(objects, rng, background=style), rng)
    else:
        raise ValueError(f"unknown flaw {first!r}")
    return _text_flawed(flaws[1:], sentences, rng) if len(flaws) > 1 else " ".join(sentences)


def _text_flawed(flaws: Sequence[str], sentences: list[str], rng: np.random.Generator) -> str:
    if list(flaws) == ["repetition", "truncation"]:
        # a decoder stuck in a loop until it hits its token limit: the last copy is cut mid-sentence
        looped = split_sentences(repeat(sentences, rng))
        last = looped[-1].split()
        return " ".join(looped[:-1] + last[:int(rng.integers(1, len(last)))])
    if len(flaws) != 1:
        raise ValueError(f"unsupported flaw combination {flaws}")
    return apply_text_flaw(flaws[0], sentences, rng)


def _build_dataset(dest: Path, *, seed: int, n_examples: int, flaw_rates: Sequence[float],
                   scenes: _SceneSource) -> pd.DataFrame:
    rng = np.random.default_rng([seed, _DATASET])
    n_sources = len(flaw_rates)
    # balanced sources: equal sizes (up to one), in random order
    sources = rng.permutation(np.arange(n_examples) % n_sources)
    width = max(5, len(str(n_examples - 1)))
    ids = [f"toy_{i:0{width}d}" for i in range(n_examples)]
    scenes_list = []
    (dest / "image").mkdir(parents=True)
    for i in tqdm(range(n_examples), desc="toy dataset images", file=sys.stderr):
        style = STYLES[int(sources[i])]
        objects, img = scenes.draw(rng, style)
        (dest / "image" / f"{ids[i]}.jpg").write_bytes(_encode(img, JPEG))
        scenes_list.append(objects)

    facts = [scene_facts(o) for o in scenes_list]
    names, weights = list(FLAW_WEIGHTS), np.array(list(FLAW_WEIGHTS.values()))
    rows, annotations = [], []
    for i in range(n_examples):
        src = int(sources[i])
        objects, style = scenes_list[i], STYLES[src]
        flaws: tuple[str, ...] = ()
        if rng.random() < flaw_rates[src]:
            if rng.random() < TWO_FLAW_SHARE:
                flaws = pick(rng, TWO_FLAW_PAIRS)
            else:
                flaws = (names[int(rng.choice(len(names), p=weights / weights.sum()))],)
        other = None
        if "other_image" in flaws:
            # another example whose scene states different facts, so the swap is a real error
            candidates = [j for j in range(n_examples) if facts[j] != facts[i]]
            if not candidates:
                raise RuntimeError("every toy image shows the same objects; raise n_examples")
            other = scenes_list[pick(rng, candidates)]
        if flaws:
            answer = _flawed_answer(flaws, objects, other, style, rng)
        else:
            answer = describe(objects, rng, background=style)
        annotations.append({"image_id": ids[i], "caption": answer})
        rows.append({"sample_id": ids[i], "source": f"s{src}", "flaws": ",".join(sorted(flaws)),
                     "clean": not flaws, "objects": _objects_json(objects)})
    write_json({"annotations": annotations}, dest / "filter_cap.json")
    return pd.DataFrame(rows)


# ---- corpus --------------------------------------------------------------------------------------------------

def _build_corpus(dest: Path, *, seed: int, corpus_size: int, scenes: _SceneSource) -> None:
    rng = np.random.default_rng([seed, _CORPUS])
    (dest / "images").mkdir(parents=True)
    width = max(5, len(str(corpus_size - 1)))
    captions, prefs, qa = [], [], []
    # the questions have their own stream, so adding them left the captions and pairs as they were
    qa_rng = np.random.default_rng([seed, _CORPUS, 1])
    for i in tqdm(range(corpus_size), desc="toy corpus", file=sys.stderr):
        # every style, so the tiny models see the dataset's backgrounds without seeing its images
        style = pick(rng, STYLES)
        objects, img = scenes.draw(rng, style)
        rel = f"images/c_{i:0{width}d}.png"
        (dest / rel).write_bytes(_encode(img, PNG))
        captions.append({"image_path": rel, "caption": describe(objects, rng, background=style, background_share=1.0),
                         "objects": _objects_json(objects)})
        qa.append({"image_path": rel, **_corpus_question(objects, qa_rng)})
        for k in rng.choice(len(TEXT_FLAWS), size=PREFS_PER_IMAGE, replace=False):
            flaw = TEXT_FLAWS[int(k)]
            sentences = describe_sentences(objects, rng, background=style)
            prefs.append({"instruction": pick(rng, PREFERENCE_INSTRUCTIONS), "chosen": " ".join(sentences),
                          "rejected": apply_text_flaw(flaw, sentences, rng), "flaw": flaw})
    write_parquet(pd.DataFrame(captions), dest / "captions.parquet", metadata={"seed": seed, "part": "corpus"})
    write_parquet(pd.DataFrame(prefs), dest / "preferences.parquet", metadata={"seed": seed, "part": "corpus"})
    write_parquet(pd.DataFrame(qa), dest / "qa.parquet", metadata={"seed": seed, "part": "corpus"})


def _corpus_question(objects: list[dict], rng: np.random.Generator) -> dict:
    """A question about a corpus image in the style of one of the question suites (their training split)."""
    while True:
        item = _question(pick(rng, QUESTION_SUITES), objects, rng)
        if item is not None:
            return {"question": item["question"], "answer": item["answer"], "choices": item["choices"],
                    "metric": item["metric"]}


# ---- evaluation suites ---------------------------------------------------------------------------------------

def _question(suite: str, objects: list[dict], rng: np.random.Generator) -> dict | None:
    """One question about ``objects`` for ``suite``; None when the scene cannot give an unambiguous one."""
    by_colour = [o for o in objects if sum(p["colour"] == o["colour"] for p in objects) == 1]
    by_shape = [o for o in objects if sum(p["shape"] == o["shape"] for p in objects) == 1]
    if suite == "toy-count":
        q = pick(rng, ("How many objects are in the image?", "How many shapes can you see?",
                       "How many shapes are there in the picture?"))
        return {"question": q, "answer": number_word(len(objects)), "choices": None, "metric": "vqa"}
    if suite == "toy-vqa":
        kinds = [k for k, ok in (("colour", by_shape), ("shape", by_colour), ("size", by_shape)) if ok]
        if not kinds:  # e.g. two red circles: no object is named uniquely
            return None
        kind = pick(rng, kinds)
        if kind == "colour":
            o = pick(rng, by_shape)
            return {"question": f"What colour is the {o['shape']}?", "answer": o["colour"], "choices": None,
                    "metric": "vqa"}
        if kind == "shape":
            o = pick(rng, by_colour)
            return {"question": f"What shape is the {o['colour']} object?", "answer": o["shape"], "choices": None,
                    "metric": "vqa"}
        o = pick(rng, by_shape)
        return {"question": f"Is the {o['shape']} small or large?", "answer": o["size"], "choices": None,
                "metric": "vqa"}
    if suite == "toy-spatial":
        named = [o for o in objects if sum((p["colour"], p["shape"]) == (o["colour"], o["shape"])
                                           for p in objects) == 1]
        if len(named) < 2:
            return None
        i, j = (int(k) for k in rng.choice(len(named), size=2, replace=False))
        a, b = named[i], named[j]
        true = []
        if a["col"] != b["col"]:
            true.append("to the left of" if a["col"] < b["col"] else "to the right of")
        if a["row"] != b["row"]:
            true.append("above" if a["row"] < b["row"] else "below")
        opposite = {"to the left of": "to the right of", "to the right of": "to the left of",
                    "above": "below", "below": "above"}
        rel = pick(rng, true)
        # "no" items ask the opposite of a true relation, never a same-row/column case a reader could argue about
        answer = pick(rng, ("yes", "no"))
        asked = rel if answer == "yes" else opposite[rel]
        return {"question": f"Is the {a['colour']} {a['shape']} {asked} the {b['colour']} {b['shape']}?",
                "answer": answer, "choices": ["yes", "no"], "metric": "mc"}
    if suite == "toy-mc":
        if by_colour and (not by_shape or rng.random() < 0.5):
            o = pick(rng, by_colour)
            others = [s for s in SHAPES if s != o["shape"]]
            question, right = f"Which shape is {o['colour']}?", o["shape"]
        elif by_shape:
            o = pick(rng, by_shape)
            others = [c for c in COLOURS if c != o["colour"]]
            question, right = f"What colour is the {o['shape']}?", o["colour"]
        else:
            return None
        choices = [right] + [others[int(k)] for k in rng.choice(len(others), size=3, replace=False)]
        choices = [choices[int(k)] for k in rng.permutation(4)]
        return {"question": question, "answer": right, "choices": choices, "metric": "mc"}
    if suite == "toy-caption":
        return {"question": INSTRUCTION, "answer": describe(objects, rng), "choices": None, "metric": "caption_f1"}
    raise ValueError(f"unknown suite {suite!r}; use one of {SUITES}")


def _build_suites(dest: Path, *, seed: int, suite_size: dict, scenes: _SceneSource) -> None:
    for si, suite in enumerate(SUITES):
        (dest / suite / "images").mkdir(parents=True)
        # spatial questions need two objects
        n_min = 2 if suite == "toy-spatial" else 1
        for pi, split in enumerate(("val", "test")):
            rng = np.random.default_rng([seed, _SUITES, si, pi])
            lines = []
            for i in range(int(suite_size[split])):
                item = None
                while item is None:
                    style = pick(rng, STYLES)
                    objects, img = scenes.draw(rng, style, n_min=n_min)
                    item = _question(suite, objects, rng)
                item_id = f"{suite}-{split}-{i:04d}"
                rel = f"images/{split}_{i:04d}.png"
                (dest / suite / rel).write_bytes(_encode(img, PNG))
                lines.append(json.dumps({"id": item_id, "image": rel, **item, "objects": objects}, sort_keys=True))
            (dest / suite / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


# ---- entry point ---------------------------------------------------------------------------------------------

def build_toy_world(*, out_dir: str, seed: int = 0, n_examples: int = 3439, image_size: int = 64,
                    corpus_size: int = 6000, suite_size: dict | None = None,
                    flaw_rates: Sequence[float] = (0.15, 0.45, 0.65, 0.85, 0.9)) -> dict:
    """Generate the toy world under ``out_dir``: dataset/, truth.parquet, corpus/ and suites/ (see module doc).

    Deterministic: the same arguments give byte-identical files. ``flaw_rates[k]`` is the probability that
    an answer of hidden source ``s{k}`` is flawed (at most len(STYLES) sources: one visual style each).
    ``suite_size`` is {"val": n, "test": n} items per suite. Returns a small summary (counts, flaw share).
    """
    suite_size = {"val": 128, "test": 100} if suite_size is None else dict(suite_size)
    flaw_rates = [float(r) for r in flaw_rates]
    if not 1 <= len(flaw_rates) <= len(STYLES):
        raise ValueError(f"flaw_rates has {len(flaw_rates)} entries; give 1 to {len(STYLES)} (one per source, "
                         f"each source has its own visual style from {STYLES})")
    if any(not 0.0 <= r <= 1.0 for r in flaw_rates):
        raise ValueError(f"flaw_rates {flaw_rates} must lie in [0, 1]")
    if set(suite_size) != {"val", "test"} or any(int(v) < 1 for v in suite_size.values()):
        raise ValueError(f"suite_size {suite_size} must be {{'val': n, 'test': n}} with n >= 1")
    if n_examples < 2:
        raise ValueError(f"n_examples={n_examples}; the toy dataset needs at least 2 examples")
    if corpus_size < 1:
        raise ValueError(f"corpus_size={corpus_size} must be at least 1")
    if image_size < 24:
        raise ValueError(f"image_size={image_size} is too small to draw shapes on a 3x3 grid; use >= 24")

    out = Path(out_dir)
    scenes = _SceneSource(image_size)
    with atomic_dir(out / "dataset") as tmp:
        truth = _build_dataset(tmp, seed=seed, n_examples=n_examples, flaw_rates=flaw_rates, scenes=scenes)
    with atomic_dir(out / "corpus") as tmp:
        _build_corpus(tmp, seed=seed, corpus_size=corpus_size, scenes=scenes)
    with atomic_dir(out / "suites") as tmp:
        _build_suites(tmp, seed=seed, suite_size=suite_size, scenes=scenes)
    params = {"seed": seed, "n_examples": n_examples, "image_size": image_size, "corpus_size": corpus_size,
              "suite_size": suite_size, "flaw_rates": flaw_rates}
    write_parquet(truth, out / "truth.parquet", metadata=params)
    summary = {"n_examples": n_examples, "flawed_share": float(1 - truth["clean"].mean()),
               "flawed_share_by_source": {s: float(1 - g.mean()) for s, g in truth.groupby("source")["clean"]}}
    log.info("toy world at %s: %s", out, summary)
    return summary
