"""Evaluation suites: readers for the toy layout and for the paper's benchmarks in their official layouts, prompts,
and metrics.

A suite is named in config either by a plain string (a toy-layout suite under ``evaluate.suite_root``) or by an
entry ``{name, format, path, split, images, metric, limit, prompt}`` (:func:`load_suite`). Formats and the files each
reads (``path`` is the folder of the official release unless said otherwise; ``images`` overrides the image folder):

* ``toy``: ``{root}/{suite}/{split}.jsonl``, images relative to the suite dir (the toy world's contract);
* ``vqa_json``: a JSON list of ``{"image", "question", "answers": [...]}``; ``mc_parquet``: a ScienceQA-like parquet
  (``question``, ``choices``, ``answer`` index, ``image_path``); both are ``path`` files, for hand-made exports;
* ``okvqa`` / ``vqav2``: ``OpenEnded_mscoco_{split}2014_questions.json`` + ``mscoco_{split}2014_annotations.json``
  (VQAv2: the same names with a ``v2_`` prefix), images ``{split}2014/COCO_{split}2014_{image_id:012d}.jpg``;
* ``gqa``: ``{split}_balanced_questions.json`` (a dict question id -> ``imageId``, ``question``, ``answer``),
  images ``images/{imageId}.jpg``;
* ``scienceqa``: ``problems.json`` + ``pid_splits.json``, the problems of ``split`` that have an image, images
  ``images/{split}/{pid}/image.png``; the hint goes before the question as its context;
* ``iconqa`` (multiple choice, ``choose_txt``) and ``iconqa_fill`` (``fill_in_blank``): ``problems.json`` +
  ``pid_splits.json`` (keys ``choose_txt_{split}``, ``fill_in_blank_{split}``), images
  ``iconqa/{split}/{ques_type}/{pid}/image.png``;
* ``vsr``: ``{split}.jsonl`` (the ``splits/random`` or ``splits/zeroshot`` folder) with ``image``, ``caption`` and
  ``label`` (1 true, 0 false), images ``images/{image}`` (COCO 2017);
* ``flickr30k``: Karpathy's ``dataset_flickr30k.json`` (``images`` with ``filename``, ``split``, ``sentences[].raw``),
  images ``flickr30k-images/{filename}``;
* ``nocaps``: ``nocaps_{split}_4500_captions.json`` (COCO caption format; only ``val`` ships captions), images
  ``images/{file_name}``;
* ``vcr_oc`` / ``vcr_mci``: the InstructionGPT-4 paper's VCR object counting and multi-class identification, which
  it takes from GVT's GVTBench: ``vcr_oc.json`` / ``vcr_mci.json``, lists of ``{image_id, text_in, text_out,
  n_obj_exist}`` built from VCR's validation images, images ``vcr1images/{image_id}``. One file each, no splits:
  they belong in the final table only;
* ``llava_bench``: LLaVA-Bench (in-the-wild or COCO) ``questions.jsonl`` (``question_id``, ``image``, ``text``,
  ``category``), ``context.jsonl`` (``image``, ``caption``), ``answers_gpt4.jsonl`` (``question_id``, ``text``),
  images ``images/{image}``; answered for the pairwise judge (:mod:`vlselect.judge`), not scored automatically.

Metrics (``score_suite`` scores a whole suite; every metric but the corpus-level captioning ones is a mean of
per-item scores from ``score_item``):

* ``vqa``: the toy containment match (LVLM-eHub style): a normalised reference contained, on word boundaries, in the
  normalised prediction; ``mc``: the option letter at the start, else exactly one option's text in the prediction;
  ``caption_f1``: the toy world's attribute F1;
* ``vqa_acc``: the official VQA accuracy: the prediction and the ten human answers normalised like the official
  evaluation (:func:`vqa_normalise`), min(#matching humans / 3, 1) averaged over the ten leave-one-human-out subsets of
  nine;
* ``exact``: the normalised prediction equals a normalised reference (GQA, IconQA fill-in-the-blank);
* ``yesno``: the first yes/no (or true/false) word of the prediction against the item's answer (VSR, VCR MCI);
* ``count``: the first number of the prediction equals the item's count (VCR OC);
* ``cider`` / ``bleu4``: corpus-level CIDEr-D / BLEU-4 through pycocoevalcap after its PTB tokenizer (needs java);
* ``judged``: no automatic score (LLaVA-Bench); the suite's score is None.
"""

from __future__ import annotations

import itertools
import json
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import pandas as pd

from vlselect.io import read_json

METRICS = ("vqa", "mc", "caption_f1", "vqa_acc", "exact", "yesno", "count", "cider", "bleu4", "judged")
CORPUS_METRICS = ("cider", "bleu4")
LETTERS = string.ascii_uppercase

# The instruction shown to the model per kind of task: {question} is the item's question (for ``statement``, the
# claim to check) and {options} its lettered options. evaluate.prompts in config overrides any of them by kind.
PROMPTS = {
    "short": "{question}\nAnswer the question using a single word or phrase.",
    "choice": "{question}\nOptions: {options}\nAnswer with the option's letter from the given choices directly.",
    "yesno": "{question}\nAnswer yes or no.",
    "statement": "Is this statement about the image true? {question}\nAnswer yes or no.",
    "caption": "Describe the image in one sentence.",
    "open": "{question}",
}
# The toy suites keep the question style the toy VLM was pre-trained on.
TOY_PROMPTS = {"mc": "{question} Options: {options}"}


@dataclass(frozen=True)
class Item:
    id: str
    image_path: str  # absolute
    question: str
    answer: str
    choices: list[str] | None = None
    metric: str = "vqa"
    objects: list[dict] | None = None
    # every reference: the accepted answers (vqa, exact), the ten human answers with repeats (vqa_acc), the reference
    # captions (cider, bleu4); empty means [answer]
    answers: list[str] = field(default_factory=list)
    prompt: str = "{question}"  # the instruction template (PROMPTS)
    meta: dict | None = None  # what a judge may use besides the question (LLaVA-Bench: category, context)


@dataclass(frozen=True)
class Format:
    """A benchmark layout: its reader ``read(path, split, images) -> items`` and its defaults."""

    read: Callable[[Path, str, Path], list[Item]]
    metric: str
    prompt: str  # a PROMPTS kind
    images: str  # the image folder relative to path


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


def _release_file(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; the suite's path must be the folder of the official release")
    return path


def _read_json(path: Path):
    return read_json(_release_file(path))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _release_file(path).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------------------------
# readers: the toy layout and hand-made exports


def load_toy_suite(name: str, root: str, split: str = "val") -> list[Item]:
    """Load ``{root}/{name}/{split}.jsonl`` (the toy world's suite layout)."""
    suite_dir = Path(root) / name
    path = suite_dir / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"suite file {path} not found; build the toy world or set evaluate.suite_root")
    items = []
    for r in _read_jsonl(path):
        if r["metric"] not in METRICS:
            raise ValueError(f"{path}: item {r['id']} has unknown metric {r['metric']!r}; use one of {METRICS}")
        items.append(Item(id=str(r["id"]), image_path=_abs(suite_dir, r["image"]), question=r["question"],
                          answer=str(r["answer"]), choices=r.get("choices"), metric=r["metric"],
                          objects=r.get("objects"), prompt=TOY_PROMPTS.get(r["metric"], "{question}")))
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
                          question=r.question, answer=choices[k], choices=choices, metric="mc",
                          prompt=TOY_PROMPTS["mc"]))
    return _check_images(items, str(path))


# ----------------------------------------------------------------------------------------------------------------
# readers: the official releases (see the module docstring for each layout)


def _read_vqa(prefix: str):
    def read(path: Path, split: str, images: Path) -> list[Item]:
        questions = _read_json(path / f"{prefix}OpenEnded_mscoco_{split}2014_questions.json")["questions"]
        annotations = _read_json(path / f"{prefix}mscoco_{split}2014_annotations.json")["annotations"]
        by_qid = {a["question_id"]: a for a in annotations}
        items = []
        for q in questions:
            humans = [a["answer"] for a in by_qid[q["question_id"]]["answers"]]
            items.append(Item(id=str(q["question_id"]), question=q["question"],
                              image_path=str(images / f"COCO_{split}2014_{q['image_id']:012d}.jpg"),
                              answer=max(humans, key=humans.count), answers=humans))
        return items
    return read


def _read_gqa(path: Path, split: str, images: Path) -> list[Item]:
    questions = _read_json(path / f"{split}_balanced_questions.json")
    return [Item(id=str(qid), image_path=str(images / f"{q['imageId']}.jpg"), question=q["question"],
                 answer=q["answer"]) for qid, q in questions.items()]


def _read_problems(path: Path, split_key: str) -> list[tuple[str, dict]]:
    """(pid, problem) for the pids that ``pid_splits.json`` lists under ``split_key`` (ScienceQA, IconQA)."""
    problems = _read_json(path / "problems.json")
    splits = _read_json(path / "pid_splits.json")
    if split_key not in splits:
        raise ValueError(f"{path / 'pid_splits.json'} has no split {split_key!r} (it has {sorted(splits)})")
    return [(str(pid), problems[str(pid)]) for pid in splits[split_key]]


def _read_scienceqa(path: Path, split: str, images: Path) -> list[Item]:
    items = []
    for pid, p in _read_problems(path, split):
        if not p.get("image"):  # the paper's ScienceQA is its image subset
            continue
        question = f"Context: {p['hint']}\n{p['question']}" if p.get("hint") else p["question"]
        items.append(Item(id=pid, image_path=str(images / split / pid / p["image"]), question=question,
                          answer=p["choices"][p["answer"]], choices=list(p["choices"])))
    return items


def _read_iconqa(ques_type: str):
    def read(path: Path, split: str, images: Path) -> list[Item]:
        items = []
        for pid, p in _read_problems(path, f"{ques_type}_{split}"):
            image = str(images / split / ques_type / pid / "image.png")
            if ques_type == "choose_txt":
                items.append(Item(id=pid, image_path=image, question=p["question"],
                                  answer=p["choices"][p["answer"]], choices=list(p["choices"])))
            else:
                items.append(Item(id=pid, image_path=image, question=p["question"], answer=str(p["answer"])))
        return items
    return read


def _read_vsr(path: Path, split: str, images: Path) -> list[Item]:
    return [Item(id=f"{split}_{i}", image_path=str(images / r["image"]), question=r["caption"],
                 answer="yes" if int(r["label"]) == 1 else "no")
            for i, r in enumerate(_read_jsonl(path / f"{split}.jsonl"))]


def _read_flickr30k(path: Path, split: str, images: Path) -> list[Item]:
    rows = _read_json(path / "dataset_flickr30k.json")["images"]
    return [Item(id=str(r["imgid"]), image_path=str(images / r["filename"]), question="",
                 answer=r["sentences"][0]["raw"], answers=[s["raw"] for s in r["sentences"]])
            for r in rows if r["split"] == split]


def _read_nocaps(path: Path, split: str, images: Path) -> list[Item]:
    data = _read_json(path / f"nocaps_{split}_4500_captions.json")
    captions: dict[int, list[str]] = {}
    for a in data.get("annotations", []):
        captions.setdefault(a["image_id"], []).append(a["caption"])
    if not captions:
        raise ValueError(f"nocaps {split} has no captions (only val ships them; test is scored by the nocaps server)")
    return [Item(id=str(im["id"]), image_path=str(images / im["file_name"]), question="",
                 answer=captions[im["id"]][0], answers=captions[im["id"]], meta={"domain": im.get("domain")})
            for im in data["images"]]


def _read_gvtbench(file: str):
    def read(path: Path, split: str, images: Path) -> list[Item]:
        # the answers read "3" (counting) and "Yes." / "No." (identification)
        return [Item(id=f"{file}_{i}", image_path=str(images / r["image_id"]), question=r["text_in"],
                     answer=r["text_out"].strip().rstrip(".").lower(), meta={"n_obj_exist": r.get("n_obj_exist")})
                for i, r in enumerate(_read_json(path / f"{file}.json"))]
    return read


def _read_llava_bench(path: Path, split: str, images: Path) -> list[Item]:
    context = {c["image"]: c for c in _read_jsonl(path / "context.jsonl")}
    gpt4 = {a["question_id"]: a["text"] for a in _read_jsonl(path / "answers_gpt4.jsonl")}
    items = []
    for q in _read_jsonl(path / "questions.jsonl"):
        caption = context.get(q["image"], {}).get("caption", "")
        items.append(Item(id=str(q["question_id"]), image_path=str(images / q["image"]), question=q["text"],
                          answer=gpt4.get(q["question_id"], ""),
                          meta={"category": q.get("category"),
                                # in-the-wild gives one caption string, LLaVA-Bench COCO a list of lines
                                "context": "\n".join(caption) if isinstance(caption, list) else caption}))
    return items


FORMATS: dict[str, Format] = {
    "okvqa": Format(_read_vqa(""), "vqa_acc", "short", "{split}2014"),
    "vqav2": Format(_read_vqa("v2_"), "vqa_acc", "short", "{split}2014"),
    "gqa": Format(_read_gqa, "exact", "short", "images"),
    "scienceqa": Format(_read_scienceqa, "mc", "choice", "images"),
    "iconqa": Format(_read_iconqa("choose_txt"), "mc", "choice", "iconqa"),
    "iconqa_fill": Format(_read_iconqa("fill_in_blank"), "exact", "short", "iconqa"),
    "vsr": Format(_read_vsr, "yesno", "statement", "images"),
    "flickr30k": Format(_read_flickr30k, "cider", "caption", "flickr30k-images"),
    "nocaps": Format(_read_nocaps, "cider", "caption", "images"),
    "vcr_oc": Format(_read_gvtbench("vcr_oc"), "count", "short", "vcr1images"),
    "vcr_mci": Format(_read_gvtbench("vcr_mci"), "yesno", "yesno", "vcr1images"),
    "llava_bench": Format(_read_llava_bench, "judged", "open", "images"),
}
SUITE_FORMATS = ("toy", "vqa_json", "mc_parquet", *FORMATS)


def suite_name(spec) -> str:
    """The name a suite's results go under: the string itself or the entry's ``name``."""
    return spec if isinstance(spec, str) else spec["name"]


def effective_split(spec, split: str) -> str:
    """The split a suite reads: the entry's own ``split`` when it names one, else the stage's (val or test)."""
    return (spec.get("split") or split) if isinstance(spec, dict) else split


def load_suite(spec, root: str | None = None, split: str = "val") -> tuple[str, list[Item]]:
    """Return (name, items) for a suite: a toy-layout name under ``root`` or a config entry.

    An entry is ``{name, format, path, split, images, metric, limit, prompt}``: ``format`` one of
    :data:`SUITE_FORMATS`, ``split`` the benchmark's own split name (default: ``split``, the stage's), ``metric`` and
    ``prompt`` (a template with {question} and {options}) replace the format's defaults, ``limit`` keeps the first
    items.
    """
    if isinstance(spec, str):
        if root is None:
            raise ValueError(f"suite {spec!r} is a toy-layout name but no suite_root was given")
        return spec, load_toy_suite(spec, root, split)
    fmt, name, split = spec.get("format", "toy"), spec["name"], effective_split(spec, split)
    if fmt == "toy":
        items = load_toy_suite(name, spec.get("path") or root, split)
    elif fmt == "vqa_json":
        items = load_vqa_json(spec["path"], name)
    elif fmt == "mc_parquet":
        items = load_mc_parquet(spec["path"], name)
    elif fmt in FORMATS:
        form = FORMATS[fmt]
        path = Path(spec["path"]).resolve()
        images = Path(spec.get("images") or path / form.images.format(split=split)).resolve()
        metric = spec.get("metric") or form.metric
        if metric not in METRICS:
            raise ValueError(f"suite {name!r}: unknown metric {metric!r}; use one of {METRICS}")
        prompt = spec.get("prompt") or PROMPTS[form.prompt]
        items = [replace(it, metric=metric, prompt=prompt) for it in form.read(path, split, images)]
        # only the kept items' images need to be there
        return name, _check_images(items[:spec.get("limit") or None], f"{name} ({fmt}, {split})")
    else:
        raise ValueError(f"suite {name!r}: unknown format {fmt!r}; use one of {SUITE_FORMATS}")
    return name, items[:spec.get("limit") or None]


def with_prompts(suites: list, prompts: dict | None) -> list:
    """The suite entries with ``evaluate.prompts`` applied: an entry without its own ``prompt`` gets the configured
    prompt of its format's kind. Toy-layout suites keep theirs. Done before the entries reach a job, so the prompt in
    use is part of the job's params and a changed prompt re-runs the evaluations."""
    prompts = prompts or {}
    unknown = sorted(set(prompts) - set(PROMPTS))
    if unknown:
        raise ValueError(f"evaluate.prompts has unknown kind(s) {unknown}; the kinds are {sorted(PROMPTS)}")
    out = []
    for spec in suites:
        kind = FORMATS[spec["format"]].prompt if isinstance(spec, dict) and spec.get("format") in FORMATS else None
        if kind in prompts and not spec.get("prompt"):
            spec = {**spec, "prompt": prompts[kind]}
        out.append(spec)
    return out


def is_judged(spec) -> bool:
    """Whether a suite has no automatic score (LLaVA-Bench): the pairwise judge compares its answers instead."""
    return isinstance(spec, dict) and (
        spec.get("metric") or getattr(FORMATS.get(spec.get("format")), "metric", None)) == "judged"


def check_suite_use(label_suites: list, final_suites: list) -> None:
    """Refuse, when the DAG is built, a suite read for both the labels (validation) and the final table (test), and a
    judged suite (LLaVA-Bench) among the label suites, which need an automatic score.

    Two entries are the same data when they read the same format, path and split, whatever their names; plain names
    (toy layout) read ``val`` for labels and ``test`` for the final table and so never collide.
    """
    judged = [suite_name(s) for s in label_suites if is_judged(s)]
    if judged:
        raise ValueError(f"labels.suites {judged} have no automatic score (judged); a label needs one. Put them in "
                         "final.suites and judge.suite")

    def key(spec, split):
        if isinstance(spec, str):
            return ("toy", spec, split)
        location = str(Path(spec["path"]).resolve()) if spec.get("path") else spec["name"]
        return (spec.get("format", "toy"), location, effective_split(spec, split))

    labels = {key(s, "val"): suite_name(s) for s in label_suites}
    clashes = [(labels[key(s, "test")], suite_name(s), key(s, "test")) for s in final_suites
               if key(s, "test") in labels]
    if clashes:
        raise ValueError("a suite is used both for the labels and for the final table, so the final table would "
                         "measure the data the selector was fitted on: "
                         + "; ".join(f"labels.suites {a!r} and final.suites {b!r} both read {k[0]} {k[1]} split "
                                     f"{k[2]!r}" for a, b, k in clashes)
                         + ". Give labels a validation split and the final table a test split.")


# ----------------------------------------------------------------------------------------------------------------
# prompts


def format_question(item: Item) -> str:
    """The instruction shown to the model: the item's prompt template filled with its question and lettered options."""
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(item.choices or []))
    return item.prompt.format(question=item.question, options=options)


# ----------------------------------------------------------------------------------------------------------------
# metrics

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_WORD_TO_DIGIT = {w: str(i) for i, w in enumerate(_NUMBERS)}
_ARTICLES = {"a", "an", "the"}


def normalise(text: str) -> list[str]:
    """Lowercase words without punctuation or articles, with number words as digits (the toy containment match)."""
    text = text.lower().translate(str.maketrans({c: " " for c in string.punctuation}))
    return [_WORD_TO_DIGIT.get(w, w) for w in text.split() if w not in _ARTICLES]


# The official VQA evaluation's answer normalisation: these characters are dropped (when the text has one next to a
# space, or a digit-comma-digit) or else replaced by a space; a period is dropped unless a digit follows it; number
# words up to ten ("none" too) become digits; articles go; a contraction written without its apostrophes regains them.
_VQA_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_VQA_NUMBERS = {"none": "0", **_WORD_TO_DIGIT}
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")
# contractions in their written form; the official list maps each spelling with some apostrophes left out back to
# it, except spellings that are words of their own ("its", "were", "well", "ill", "id", "hell", "shell", "wed")
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't mightn't've might've "
    "mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've she's should've shouldn't shouldn't've "
    "somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd "
    "something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've "
    "'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've "
    "who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd "
    "you'd've you'll you're you've"
).split()


def _contraction_spellings() -> dict[str, str]:
    spellings = {}
    for word in _CONTRACTIONS:
        parts = word.split("'")
        for kept in itertools.product(("'", ""), repeat=len(parts) - 1):
            spelling = parts[0] + "".join(k + p for k, p in zip(kept, parts[1:]))
            if spelling != word:
                spellings[spelling] = word
    return spellings


_VQA_CONTRACTIONS = _contraction_spellings()


def vqa_normalise(text: str) -> str:
    """An answer as the official VQA evaluation compares it (punctuation, periods, number words, articles,
    contractions)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _VQA_PUNCT:
        drop = p + " " in text or " " + p in text or _COMMA_IN_NUMBER.search(text)
        out = out.replace(p, "" if drop else " ")
    text = _PERIOD.sub("", out)
    words = [_VQA_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _contains(words: list[str], ref: list[str]) -> bool:
    n = len(ref)
    return n > 0 and any(words[i:i + n] == ref for i in range(len(words) - n + 1))


def vqa_correct(prediction: str, references: list[str]) -> float:
    """1.0 when any normalised reference appears, as whole words, in the normalised prediction."""
    words = normalise(prediction)
    return float(any(_contains(words, normalise(r)) for r in references))


def vqa_accuracy(prediction: str, humans: list[str]) -> float:
    """The official VQA accuracy of ``prediction`` against the human answers (ten in VQA/OK-VQA, repeats kept).

    Each human in turn is left out, the prediction scores min(#other humans who gave it / 3, 1), and the scores are
    averaged; so with 10 humans, 3 or more agreeing give 1.0 and 2 agreeing give 0.6.
    """
    pred = vqa_normalise(prediction)
    matches = [vqa_normalise(h) == pred for h in humans]
    total = sum(matches)
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(humans)


def exact_match(prediction: str, references: list[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference."""
    pred = vqa_normalise(prediction)
    return float(any(pred == vqa_normalise(r) for r in references))


_YES_NO = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}


def yesno_correct(prediction: str, answer: str) -> float:
    """1.0 when the first yes/no (or true/false) word of the prediction is the answer ("yes" or "no")."""
    said = next((_YES_NO[w] for w in vqa_normalise(prediction).split() if w in _YES_NO), None)
    return float(said == _YES_NO.get(answer.strip().lower().rstrip("."), answer))


def count_correct(prediction: str, answer: str) -> float:
    """1.0 when the first number in the prediction (number words up to ten included) is the answer."""
    said = next((w for w in vqa_normalise(prediction).split() if w.isdigit()), None)
    return float(said is not None and int(said) == int(answer))


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
    """The per-item score of the item's metric; corpus-level and judged metrics have none (use :func:`score_suite`)."""
    refs = item.answers or [item.answer]
    if item.metric == "vqa":
        return vqa_correct(prediction, refs)
    if item.metric == "vqa_acc":
        return vqa_accuracy(prediction, refs)
    if item.metric == "exact":
        return exact_match(prediction, refs)
    if item.metric == "yesno":
        return yesno_correct(prediction, item.answer)
    if item.metric == "count":
        return count_correct(prediction, item.answer)
    if item.metric == "mc":
        return mc_correct(prediction, item.choices or [], item.answer)
    if item.metric == "caption_f1":
        from vlselect.toy.world import attribute_f1

        if item.objects is None:
            raise ValueError(f"item {item.id} uses caption_f1 but has no objects")
        return float(attribute_f1(prediction, item.objects))
    if item.metric in CORPUS_METRICS + ("judged",):
        raise ValueError(f"item {item.id}: {item.metric} scores a whole suite, not an item; use score_suite")
    raise ValueError(f"item {item.id}: unknown metric {item.metric!r}")


def caption_scores(items: list[Item], predictions: list[str]) -> dict[str, tuple[float, list[float]]]:
    """{"cider": (corpus score, per item), "bleu4": (...)} through pycocoevalcap, as the COCO caption evaluation
    computes them: captions lowercased and tokenised by the PTB tokenizer (java), CIDEr-D with document frequencies
    from this suite's references, BLEU-4 over the corpus."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = [str(i) for i in range(len(items))]  # item ids need not be unique across a caption file's images
    tokenizer = PTBTokenizer()
    refs = tokenizer.tokenize({k: [{"caption": r} for r in (it.answers or [it.answer])] for k, it in zip(keys, items)})
    preds = tokenizer.tokenize({k: [{"caption": p}] for k, p in zip(keys, predictions)})
    cider, cider_items = Cider().compute_score(refs, preds)
    bleu, bleu_items = Bleu(4).compute_score(refs, preds, verbose=0)
    return {"cider": (float(cider), [float(x) for x in cider_items]),
            "bleu4": (float(bleu[3]), [float(x) for x in bleu_items[3]])}


def score_suite(items: list[Item], predictions: list[str]) -> tuple[float | None, list[float | None]]:
    """(suite score, per-item scores) for one suite's predictions, in item order.

    Items of a suite share one metric. Per-item metrics give their mean; CIDEr and BLEU-4 are corpus-level (their
    per-item values are the per-image scores of that corpus computation); a judged suite (LLaVA-Bench) has no
    automatic score: None, and None per item.
    """
    if len(items) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} items")
    metrics = {it.metric for it in items}
    if len(metrics) != 1:
        raise ValueError(f"a suite's items must share one metric, got {sorted(metrics)}")
    (metric,) = metrics
    if metric == "judged":
        return None, [None] * len(items)
    if metric in CORPUS_METRICS:
        return caption_scores(items, predictions)[metric]
    per_item = [score_item(it, p) for it, p in zip(items, predictions)]
    return sum(per_item) / len(per_item), per_item
