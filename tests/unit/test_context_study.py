"""The inputs of the text-context study (engines/features/context_study.py): the preceding turns,
nearest kept first within the budget, and the target's span for pooling."""

from __future__ import annotations

from engines.features.context_study import MAX_TARGET_TOKENS, context_inputs

CLS, SEP = 101, 102


def tokenize(text: str) -> list[int]:
    return [len(w) for w in text.split()]  # one piece a word, its length as the id


def test_the_target_follows_its_nearest_preceding_turns_and_is_what_is_pooled() -> None:
    turns = [("a bb", 0), ("ccc", 1), (None, 2), ("dddd ee f", 3)]
    zero = context_inputs([turns], tokenize, CLS, SEP, context=0)
    assert [x.ids for x in zero] == [[CLS, 1, 2, SEP], [CLS, 3, SEP], [CLS, 4, 2, 1, SEP]]  # the empty turn: no item
    assert [x.label for x in zero] == [0, 1, 3]
    two = context_inputs([turns], tokenize, CLS, SEP, context=2)
    last = two[-1]
    assert last.ids == [CLS, 3, SEP, SEP, 4, 2, 1, SEP]  # turns i-1 (no words) and i-2, oldest first
    assert last.ids[last.start : last.stop] == [4, 2, 1]
    assert two[1].ids == [CLS, 1, 2, SEP, 3, SEP] and two[1].ids[two[1].start : two[1].stop] == [3]
    three = context_inputs([turns], tokenize, CLS, SEP, context=3)
    assert three[-1].ids == [CLS, 1, 2, SEP, 3, SEP, SEP, 4, 2, 1, SEP]


def test_the_budget_keeps_the_nearest_turns_whole_and_dialogues_do_not_mix() -> None:
    first = [("x " * 10, 0), ("y " * 5, 0), ("z", 1)]
    item = context_inputs([first], tokenize, CLS, SEP, context=5, budget=8)[-1]
    assert item.ids == [CLS, *[1] * 5, SEP, 1, SEP]  # the 10-word turn did not fit: not cut, dropped
    second = [("w", 2)]
    both = context_inputs([first, second], tokenize, CLS, SEP, context=5)
    assert both[-1].ids == [CLS, 1, SEP] and both[-1].label == 2


def test_a_long_target_is_cut_and_a_target_without_word_pieces_pools_its_separator() -> None:
    long = context_inputs([[("q " * 100, 0)]], tokenize, CLS, SEP, context=0)[0]
    assert long.stop - long.start == MAX_TARGET_TOKENS
    empty = context_inputs([[("ok", 0), ("?", 1)]], lambda t: [] if t == "?" else [7], CLS, SEP, context=1)[-1]
    assert empty.ids == [CLS, 7, SEP, SEP] and empty.ids[empty.start : empty.stop] == [SEP]


def test_a_turns_sentiment_is_carried_as_a_class_and_a_turn_without_one_is_neutral() -> None:
    items = context_inputs([[("a", 0, -1), ("b", 1, 1), ("c", 2, 0)], [("d", 3)]], tokenize, CLS, SEP, context=1)
    assert [x.sentiment for x in items] == [0, 2, 1, 1]
