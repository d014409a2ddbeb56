"""Sentences of an answer, and the repeated ones a looping decoder writes.

One definition for every step that reads sentences: CLIP scores an answer sentence by sentence, the length
indicator can count each distinct sentence once, and the toy caption metric counts repeats against precision.
"""

from __future__ import annotations

import re

# A sentence ends at ., ! or ? followed by white space (or the end of the text).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """The non-empty sentences of ``text``, each with its final punctuation."""
    parts = (p.strip() for p in _SENTENCE_END.split(text.strip()))
    return [p for p in parts if p]


def sentence_key(sentence: str) -> str:
    """What makes two sentences the same: case, spacing and final punctuation ignored."""
    return " ".join(sentence.lower().rstrip(".!? ").split())


def drop_repeated_sentences(text: str) -> str:
    """``text`` with every sentence that repeats an earlier one removed (the first of each is kept, in order)."""
    seen, kept = set(), []
    for s in split_sentences(text):
        key = sentence_key(s)
        if key not in seen:
            seen.add(key)
            kept.append(s)
    return " ".join(kept)


def distinct_sentence_share(text: str) -> float:
    """Share of the sentences of ``text`` that repeat no earlier one: 1.0 without repeats (or sentences)."""
    keys = [sentence_key(s) for s in split_sentences(text)]
    return len(set(keys)) / len(keys) if keys else 1.0
