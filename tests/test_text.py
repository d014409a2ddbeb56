"""Sentences and repeated sentences (vlselect.text), shared by CLIP scoring, the length indicator and the toy metric."""

from __future__ import annotations

import pytest

from vlselect.text import distinct_sentence_share, drop_repeated_sentences, sentence_key, split_sentences


def test_split_sentences_keeps_punctuation_and_an_unfinished_tail():
    assert split_sentences("  One here.  Two there!\nThree? and a tail") == ["One here.", "Two there!", "Three?",
                                                                              "and a tail"]
    assert split_sentences("3.5 is a number. Next") == ["3.5 is a number.", "Next"]
    assert split_sentences(" ") == []


def test_repeats_ignore_case_spacing_and_final_punctuation():
    assert sentence_key("A  Red circle!") == sentence_key("a red circle.") == "a red circle"
    text = "A red circle. A blue square. a RED  circle! A blue square. A green star"
    assert drop_repeated_sentences(text) == "A red circle. A blue square. A green star"
    assert distinct_sentence_share(text) == pytest.approx(3 / 5)
    assert distinct_sentence_share("No repeats. None at all.") == 1.0
    assert distinct_sentence_share("") == 1.0 and drop_repeated_sentences("") == ""
