"""Text of the toy world: clean descriptions of a scene, the flaws applied to them, and attribute F1.

A scene is a list of objects, each a dict {"shape", "colour", "size", "row", "col"} (row/col 0-2 on a 3x3
grid). :func:`describe` writes a correct description with varied wording; the ``flaw_*`` functions turn one
into a flawed answer of a known kind; :func:`attribute_f1` scores any text against a scene by the
(colour, shape) and count facts it states, which is what evaluation (caption_f1) and the oracle judge use.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

from vlselect.text import distinct_sentence_share, split_sentences

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# Flaws a reader can see in the text alone (what the toy reward model may learn) and flaws that need the image.
TEXT_FLAWS = ("repetition", "filler", "truncation", "short")
CONTENT_FLAWS = ("hallucination", "other_image")
FLAWS = CONTENT_FLAWS + TEXT_FLAWS

# Two phrasings per grid cell, so position wording varies as much as the rest.
_POSITIONS = {
    (0, 0): ("in the top left corner", "in the upper left"),
    (0, 1): ("at the top", "in the top middle"),
    (0, 2): ("in the top right corner", "in the upper right"),
    (1, 0): ("on the left", "in the middle of the left side"),
    (1, 1): ("in the centre", "in the middle of the image"),
    (1, 2): ("on the right", "in the middle of the right side"),
    (2, 0): ("in the bottom left corner", "in the lower left"),
    (2, 1): ("at the bottom", "in the bottom middle"),
    (2, 2): ("in the bottom right corner", "in the lower right"),
}

_OVERVIEW = ("There are {n} objects in the image{bg}.", "The image shows {n} shapes{bg}.",
             "The picture contains {n} coloured shapes{bg}.", "I can see {n} shapes in this image{bg}.",
             "This image has {n} objects arranged on a grid{bg}.")
_OVERVIEW_ONE = ("There is one object in the image{bg}.", "The image shows a single shape{bg}.",
                 "The picture contains one coloured shape{bg}.")
_LIST = ("The image shows {n} shapes{bg}: {items}.", "There are {n} objects{bg}: {items}.",
         "This picture contains {n} shapes{bg}, namely {items}.")
_LIST_ONE = ("The image shows a single shape{bg}: {item}.", "There is one object{bg}, {item}.")
_OBJECT = ("There is a {size} {colour} {shape} {pos}.", "A {size} {colour} {shape} sits {pos}.",
           "{Pos}, there is a {size} {colour} {shape}.", "{Pos} you can see a {size} {colour} {shape}.",
           "The {colour} {shape} {pos} is {size}.")
# longest first, so a phrase is never matched by a shorter one inside it
_POSITION_RE = re.compile("|".join(re.escape(p) for p in sorted((p for ps in _POSITIONS.values() for p in ps),
                                                                  key=len, reverse=True)), re.IGNORECASE)
_RELATION = {"left": "{a} is to the left of {b}.", "right": "{a} is to the right of {b}.",
             "above": "{a} is above {b}.", "below": "{a} is below {b}."}
BACKGROUND_PHRASES = {"plain": " on a plain light grey background", "dark": " on a dark background",
                      "striped": " on a striped background", "noisy": " on a noisy, grainy background",
                      "gradient": " on a background that fades from light to dark"}

FILLER = ("This is a beautiful image that captures a moment of quiet simplicity.",
          "The composition is balanced and pleasing to the eye.",
          "It evokes a sense of calm and order.",
          "The artist has clearly paid attention to detail.",
          "Overall, it is a lovely picture that invites the viewer to look closer.",
          "The scene tells a story that is open to interpretation.",
          "Such images remind us of the beauty of everyday things.",
          "The lighting creates a warm and inviting atmosphere.",
          "There is a lot going on here, and every part has its place.")
SHORT = ("Shapes.", "An image.", "Some objects.", "Colours.", "A picture.", "Geometry.", "Nice picture.")


def pick(rng: np.random.Generator, seq: Sequence):
    """One element of ``seq`` (numpy's choice would turn strings into numpy scalars)."""
    return seq[int(rng.integers(len(seq)))]


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def _label(obj: dict) -> str:
    return f"the {obj['colour']} {obj['shape']}"


def _relation(a: dict, b: dict, rng: np.random.Generator) -> str:
    """A true spatial relation of ``a`` to ``b`` (they occupy different cells)."""
    options = []
    if a["col"] != b["col"]:
        options.append("left" if a["col"] < b["col"] else "right")
    if a["row"] != b["row"]:
        options.append("above" if a["row"] < b["row"] else "below")
    s = _RELATION[pick(rng, options)].format(a=_label(a), b=_label(b))
    return s[0].upper() + s[1:]


def describe_sentences(objects: Sequence[dict], rng: np.random.Generator, *, background: str | None = None,
                       said_count: int | None = None, background_share: float = 0.5) -> list[str]:
    """The sentences (1-5) of a description of ``objects``; ``said_count`` replaces the true count (a lie).

    ``background_share`` is the probability that the overview names the background (when one is given).
    """
    if not objects:
        raise ValueError("describe needs at least one object")
    if background is not None and background not in BACKGROUND_PHRASES:
        raise ValueError(f"unknown background {background!r}; use one of {sorted(BACKGROUND_PHRASES)}")
    n = len(objects) if said_count is None else said_count
    # Dataset answers name the background about half the time (sources differ in style, and real answers sometimes
    # say so); the pre-training corpus always does, as alt-text-like captions that state the scene.
    bg = BACKGROUND_PHRASES[background] if background is not None and rng.random() < background_share else ""
    objs = list(objects)
    if rng.random() < 0.3:  # mostly reading order, sometimes not
        rng.shuffle(objs)
    if rng.random() < 0.35:
        # one sentence listing every object
        items = [f"a {o['size']} {o['colour']} {o['shape']} {pick(rng, _POSITIONS[o['row'], o['col']])}"
                 for o in objs]
        if n == 1:
            sentences = [pick(rng, _LIST_ONE).format(bg=bg, item=items[0])]
        else:
            joined = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
            sentences = [pick(rng, _LIST).format(n=number_word(n), bg=bg, items=joined)]
    else:
        overview = pick(rng, _OVERVIEW_ONE) if n == 1 else pick(rng, _OVERVIEW)
        sentences = [overview.format(n=number_word(n), bg=bg)]
        for o in objs:
            pos = pick(rng, _POSITIONS[o["row"], o["col"]])
            s = pick(rng, _OBJECT).format(size=o["size"], colour=o["colour"], shape=o["shape"], pos=pos,
                                          Pos=pos[0].upper() + pos[1:])
            sentences.append(s)
    # A relation between two objects that the text can name unambiguously, when there is room for it.
    pairs = _unique_objects(objects)
    if len(sentences) < 5 and len(pairs) >= 2 and rng.random() < 0.6:
        i, j = rng.choice(len(pairs), size=2, replace=False)
        sentences.append(_relation(pairs[int(i)], pairs[int(j)], rng))
    return sentences


def _unique_objects(objects: Iterable[dict]) -> list[dict]:
    """Objects whose (colour, shape) occurs once in the scene, so "the red circle" names exactly one."""
    objects = list(objects)
    keys = [(o["colour"], o["shape"]) for o in objects]
    return [o for o, k in zip(objects, keys) if keys.count(k) == 1]


def describe(objects: Sequence[dict], rng: np.random.Generator, *, background: str | None = None,
             background_share: float = 0.5) -> str:
    """A clean, correct description of ``objects`` (1-5 sentences) with wording drawn from ``rng``."""
    return " ".join(describe_sentences(objects, rng, background=background, background_share=background_share))


# ---- flaws -------------------------------------------------------------------------------------------------

def hallucinate(objects: Sequence[dict], rng: np.random.Generator, *,
                background: str | None = None) -> tuple[str, str]:
    """A description with one wrong fact (colour, shape, count or position); returns (text, kind of lie)."""
    objects = [dict(o) for o in objects]
    kind = pick(rng, ("colour", "shape", "count", "position"))
    if kind == "count":
        n = len(objects)
        # never "one" for several objects, so a lie keeps the plural templates grammatical
        wrong = [m for m in range(max(2, n - 2), n + 3) if m != n]
        return " ".join(describe_sentences(objects, rng, background=background, said_count=pick(rng, wrong))), kind
    k = int(rng.integers(len(objects)))
    present = {(o["colour"], o["shape"]) for o in objects}
    if kind == "colour":
        # a colour that makes a (colour, shape) pair absent from the scene, so the lie is a checkable fact
        options = [c for c in COLOURS if (c, objects[k]["shape"]) not in present]
        objects[k]["colour"] = pick(rng, options)
    elif kind == "shape":
        options = [s for s in SHAPES if (objects[k]["colour"], s) not in present]
        objects[k]["shape"] = pick(rng, options)
    else:
        taken = {(o["row"], o["col"]) for o in objects}
        free = [cell for cell in sorted(_POSITIONS) if cell not in taken]
        objects[k]["row"], objects[k]["col"] = pick(rng, free)
    return describe(objects, rng, background=background), kind


TWIN_KINDS = ("colour", "count", "position", "shape")


def swap_attribute(text: str, objects: Sequence[dict], rng: np.random.Generator,
                   kinds: Sequence[str] = TWIN_KINDS) -> tuple[str, str] | None:
    """(``text`` with one stated fact made false by the smallest edit, kind of edit), or None when it states none.

    The fact is a colour or a shape of a named object (to a pair absent from the scene), the count, or a
    position (to a free cell), each kind of ``kinds`` equally likely when the text offers it. The toy CLIP trains
    on such twins as hard negatives: telling a caption from its twin takes the image, which is what it needs to
    see a hallucinated answer, whose lie is as small.
    """
    unknown = set(kinds) - set(TWIN_KINDS)
    if unknown:
        raise ValueError(f"unknown twin kind(s) {sorted(unknown)}; use {TWIN_KINDS}")
    if not objects:
        return None  # without the scene no edit is known to be false
    present = {(o["colour"], o["shape"]) for o in objects}
    lower = text.lower()  # same length as text, so its match spans index text too
    edits: dict[str, list[tuple[int, int, list[str]]]] = {}
    for m in _PAIR_RE.finditer(lower):
        colour, shape = m.group(1), m.group(2)
        colours = [c for c in COLOURS if (c, shape) not in present]
        shapes = [s for s in SHAPES if (colour, s) not in present]
        if colours:
            edits.setdefault("colour", []).append((m.start(1), m.end(1), colours))
        if shapes:
            edits.setdefault("shape", []).append((m.start(2), m.end(2), shapes))
    n = len(objects)
    for m in _COUNT_RE.finditer(lower):
        if n >= 2 and m.group(1) in NUMBER_WORDS:  # "one object" has no plural twin that stays grammatical
            wrong = [number_word(k) for k in range(max(2, n - 2), n + 3) if k != n]
            edits.setdefault("count", []).append((m.start(1), m.end(1), wrong))
    taken = {(o["row"], o["col"]) for o in objects}
    free = [phrase for cell, phrases in sorted(_POSITIONS.items()) if cell not in taken for phrase in phrases]
    for m in _POSITION_RE.finditer(text):
        if free:
            edits.setdefault("position", []).append((m.start(), m.end(), free))
    edits = {k: v for k, v in edits.items() if k in kinds}
    if not edits:
        return None
    kind = pick(rng, sorted(edits))
    start, end, options = pick(rng, edits[kind])
    new = pick(rng, options)
    if text[start].isupper():
        new = new[0].upper() + new[1:]
    return text[:start] + new + text[end:], kind


def repeat(sentences: list[str], rng: np.random.Generator) -> str:
    """Loop one sentence 3-8 times and never recover, like a degenerate decoder."""
    i = int(rng.integers(len(sentences)))
    times = int(rng.integers(3, 9))
    return " ".join(sentences[:i] + [sentences[i]] * times)


def truncate(text: str, rng: np.random.Generator) -> str:
    """Cut ``text`` mid-sentence at a word boundary between 30% and 80% of its words (no final full stop)."""
    words = text.split()
    if len(words) < 3:
        raise ValueError(f"cannot truncate a text of {len(words)} words: {text!r}")
    lo, hi = max(2, int(0.3 * len(words))), max(2, int(0.8 * len(words)))
    k = int(rng.integers(lo, hi + 1))
    # never end on a sentence boundary: the cut must be visible
    while k > 1 and words[k - 1].endswith((".", ":", ",")):
        k -= 1
    return " ".join(words[:k])


def filler(rng: np.random.Generator) -> str:
    """Generic praise with no content about the image."""
    n = int(rng.integers(2, 5))
    idx = rng.choice(len(FILLER), size=n, replace=False)
    return " ".join(FILLER[int(i)] for i in idx)


def short(rng: np.random.Generator) -> str:
    return pick(rng, SHORT)


def apply_text_flaw(flaw: str, text_sentences: list[str], rng: np.random.Generator) -> str:
    """Apply a text-visible flaw to a description given as sentences."""
    if flaw == "repetition":
        return repeat(text_sentences, rng)
    if flaw == "truncation":
        return truncate(" ".join(text_sentences), rng)
    if flaw == "filler":
        return filler(rng)
    if flaw == "short":
        return short(rng)
    raise ValueError(f"{flaw!r} is not a text-visible flaw; use one of {TEXT_FLAWS}")


# ---- attribute F1 --------------------------------------------------------------------------------------------

_PAIR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\s+(" + "|".join(SHAPES) + r")s?\b")
_COUNT_RE = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r"|single|\d+)\s+(?:(?:coloured|colored|different|"
                       r"distinct|geometric)\s+)?(?:objects?|shapes?|items?)\b")


def parse_attributes(text: str) -> set[tuple]:
    """Facts a text states: ("object", colour, shape) for each "<colour> <shape>" and ("count", n) for "<n> shapes"."""
    text = text.lower()
    facts: set[tuple] = {("object", c, s) for c, s in _PAIR_RE.findall(text)}
    for word in _COUNT_RE.findall(text):
        n = 1 if word == "single" else int(word) if word.isdigit() else NUMBER_WORDS.index(word)
        facts.add(("count", n))
    return facts


def scene_facts(objects: Sequence[dict]) -> set[tuple]:
    """The facts a complete, correct description of ``objects`` states (see :func:`parse_attributes`)."""
    return {("object", o["colour"], o["shape"]) for o in objects} | {("count", len(objects))}


def attribute_f1(text: str, objects: Sequence[dict]) -> float:
    """F1 between the facts ``text`` states and the scene's facts: 1.0 for a complete correct description.

    Precision punishes wrong colours, shapes and counts (hallucinations) and repeated sentences: a sentence said
    again states nothing new, so precision is scaled by the share of distinct sentences (as n-gram caption metrics
    clip repeated n-grams). Without that, a decoder stuck in a loop over true sentences scored as well as a clean
    description, and subset labels could not see that loops in the training data teach a model to loop.
    Recall punishes omissions (truncated or content-free answers). A text stating no fact scores 0.
    """
    said, real = parse_attributes(text), scene_facts(objects)
    hit = len(said & real)
    if hit == 0:
        return 0.0
    precision, recall = hit / len(said) * distinct_sentence_share(text), hit / len(real)
    return 2 * precision * recall / (precision + recall)
