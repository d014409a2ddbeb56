"""Evaluation suites: loaders (toy layout and local copies of real benchmarks) and per-item metrics.

A suite is a list of :class:`Item`. Three layouts load:

* ``toy``: ``{root}/{suite}/{split}.jsonl`` with images relative to the suite dir (the toy world's contract);
* ``vqa_json``: a JSON list of ``{"image", "question", "answers": [...]}`` (GQA / OK-VQA style exports), images
  relative to the JSON file's folder unless absolute;
* ``mc_parquet``: a ScienceQA-like parquet with ``question``, ``choices`` (list), ``answer`` (int index) and an image
  path column (``image_path`` or ``image``), paths relative to the parquet's folder unless absolute.

Metrics (each returns 1.0 or 0.0, except caption_f1 in [0, 1]):

* ``vqa``: LVLM-eHub style: a normalised reference (lowercase, no punctuation, no articles, numbers as digits)
  contained, on word boundaries, in the normalised prediction; any of the item's accepted answers counts;
* ``mc``: the option letter ("A", "(B)", "B.") at the start of the prediction, or else exactly the right option's
  text contained in the prediction;
* ``caption_f1``: attribute F1 of the prediction against the item's objects, repeated sentences costing precision
  (``vlselect.toy.world.attribute_f1``).
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

METRICS = ("vqa", "mc", "caption_f1")
LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Item:
    id: str
    image_path: str  # absolute
    question: str
    answer: str
    choices: list[str] | None = None
    metric: str = "vqa"
    objects: list[dict] | None = None
    answers: list[str] = field(default_factory=list)  # every accepted reference (vqa); empty means [answer]


def _abs(base: Path, p: str) -> str:
    path = Path(p)
    return str(path if path.is_absolute() else (base / path).resolve())


def _check_images(items: list[Item], where: str) -> list[Item]:
    missing = [it.image_path for it in items if not Path(it.image_path).exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of suite {where} are missing, e.g. {missing[0]}")
    if not items:
        raise ValueError(f"suite {where} holds no items")
    return items


def load_toy_suite(name: str, root: str, split: str = "val") -> list[Item]:
    """Load ``{root}/{name}/{split}.jsonl`` (the toy world's suite layout)."""
    suite_dir = Path(root) / name
    path = suite_dir / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"suite file {path} not found; build the toy world or set evaluate.suite_root")
    items = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r["metric"] not in METRICS:
            raise ValueError(f"{path}: item {r['id']} has unknown metric {r['metric']!r}; use one of {METRICS}")
        items.append(Item(id=str(r["id"]), image_path=_abs(suite_dir, r["image"]), question=r["question"],
                          answer=str(r["answer"]), choices=r.get("choices"), metric=r["metric"],
                          objects=r.get("objects")))
    return _check_images(items, str(path))


def load_vqa_json(path: str, name: str = "vqa") -> list[Item]:
    """A JSON list of {"image", "question", "answers": [...]} (plus an optional "id"); metric vqa."""
    path = Path(path)
    rows = json.loads(path.read_text())
    items = []
    for i, r in enumerate(rows):
        answers = [str(a) for a in r["answers"]]
        if not answers:
            raise ValueError(f"{path}: row {i} has no answers")
        # the most frequent answer is the one shown as the reference; every listed answer is accepted
        ref = max(answers, key=answers.count)
        items.append(Item(id=str(r.get("id", f"{name}_{i}")), image_path=_abs(path.parent, r["image"]),
                          question=r["question"], answer=ref, metric="vqa", answers=sorted(set(answers))))
    return _check_images(items, str(path))


def load_mc_parquet(path: str, name: str = "mc") -> list[Item]:
    """A ScienceQA-like parquet: question, choices (list), answer (int index), image_path or image; metric mc."""
    path = Path(path)
    df = pd.read_parquet(path)
    img_col = next((c for c in ("image_path", "image") if c in df.columns), None)
    missing = {"question", "choices", "answer"} - set(df.columns)
    if missing or img_col is None:
        raise ValueError(f"{path} lacks columns {sorted(missing) or ['image_path']}; expected question, choices, "
                         "answer (int index) and image_path")
    items = []
    for i, r in enumerate(df.itertuples(index=False)):
        choices = [str(c) for c in r.choices]
        k = int(r.answer)
        if not 0 <= k < len(choices):
            raise ValueError(f"{path}: row {i} answer index {k} is outside its {len(choices)} choices")
        rid = getattr(r, "id", None)
        items.append(Item(id=str(rid if rid is not None else f"{name}_{i}"), image_path=_abs(path.parent, getattr(r, img_col)),
                          question=r.question, answer=choices[k], choices=choices, metric="mc"))
    return _check_images(items, str(path))


def load_suite(spec, root: str | None = None, split: str = "val") -> tuple[str, list[Item]]:
    """Return (name, items) for a suite name (toy layout under ``root``) or a spec dict {"name","format","path"}."""
    if isinstance(spec, str):
        if root is None:
            raise ValueError(f"suite {spec!r} is a toy-layout name but no suite_root was given")
        return spec, load_toy_suite(spec, root, split)
    fmt, name = spec.get("format", "toy"), spec["name"]
    if fmt == "toy":
        return name, load_toy_suite(name, spec.get("path") or root, split)
    if fmt == "vqa_json":
        return name, load_vqa_json(spec["path"], name)
    if fmt == "mc_parquet":
        return name, load_mc_parquet(spec["path"], name)
    raise ValueError(f"suite {name!r}: unknown format {fmt!r}; use toy, vqa_json or mc_parquet")


# ----------------------------------------------------------------------------------------------------------------
# metrics

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_WORD_TO_DIGIT = {w: str(i) for i, w in enumerate(_NUMBERS)}
_ARTICLES = {"a", "an", "the"}


def normalise(text: str) -> list[str]:
    """Lowercase words without punctuation or articles, with number words as digits."""
    text = text.lower().translate(str.maketrans({c: " " for c in string.punctuation}))
    return [_WORD_TO_DIGIT.get(w, w) for w in text.split() if w not in _ARTICLES]


def _contains(words: list[str], ref: list[str]) -> bool:
    n = len(ref)
    return n > 0 and any(words[i:i + n] == ref for i in range(len(words) - n + 1))


def vqa_correct(prediction: str, references: list[str]) -> float:
    """1.0 when any normalised reference appears, as whole words, in the normalised prediction."""
    words = normalise(prediction)
    return float(any(_contains(words, normalise(r)) for r in references))


def mc_correct(prediction: str, choices: list[str], answer: str) -> float:
    """1.0 for the right option letter at the start, or exactly the right option's text in the prediction."""
    k = choices.index(answer)
    # "B", "(B)", "B)", "B." or "B:" at the start; "A large circle" is text, not the letter A
    m = re.match(r"^\s*(?:\(([A-Z])\)|([A-Z])(?:[.:)]|\s*$))", prediction)
    if m and (m.group(1) or m.group(2)) in LETTERS[:len(choices)]:
        return float(LETTERS.index(m.group(1) or m.group(2)) == k)
    words = normalise(prediction)
    hits = {i for i, c in enumerate(choices) if _contains(words, normalise(c))}
    # an option that is part of a longer matched option (e.g. "red" in "dark red") is not a separate hit
    hits = {i for i in hits if not any(j != i and _contains(normalise(choices[j]), normalise(choices[i])) for j in hits)}
    return float(hits == {k})


def score_item(item: Item, prediction: str) -> float:
    if item.metric == "vqa":
        return vqa_correct(prediction, item.answers or [item.answer])
    if item.metric == "mc":
        return mc_correct(prediction, item.choices or [], item.answer)
    if item.metric == "caption_f1":
        from vlselect.toy.world import attribute_f1

        if item.objects is None:
            raise ValueError(f"item {item.id} uses caption_f1 but has no objects")
        return float(attribute_f1(prediction, item.objects))
    raise ValueError(f"item {item.id}: unknown metric {item.metric!r}")


def format_question(item: Item) -> str:
    """The instruction shown to the model: the question, plus lettered options for multiple choice."""
    if item.metric == "mc" and item.choices:
        opts = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(item.choices))
        return f"{item.question} Options: {opts}"
    return item.question
