"""Argument types for the command line: a number out of range is an argparse error (one line,
exit 2) before any data is read, not a traceback from deep inside training."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(kind: Callable[[str], float], text: str) -> float:
    try:
        x = kind(text)
        finite = math.isfinite(x)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a number that fits: {text[:40]!r}") from None
    if not finite:
        raise argparse.ArgumentTypeError(f"must be finite, not {text}")
    return x


def positive_int(text: str) -> int:
    """1 or more."""
    n = int(_number(int, text))
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def count(text: str) -> int:
    """0 or more."""
    n = int(_number(int, text))
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


def positive(text: str) -> float:
    """More than 0."""
    x = _number(float, text)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return x


def non_negative(text: str) -> float:
    """0 or more."""
    x = _number(float, text)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return x


def rate(text: str) -> float:
    """A chance or a fraction: 0 to 1."""
    x = _number(float, text)
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return x


def below_one(text: str) -> float:
    """0 or more and under 1 (a dropout: 1 would drop everything)."""
    x = _number(float, text)
    if not 0 <= x < 1:
        raise argparse.ArgumentTypeError(f"must be 0 or more and under 1, not {text}")
    return x


for _kind, _types in ((int, (positive_int, count)), (float, (positive, non_negative, rate, below_one))):
    for _type in _types:
        _type.number = _kind  # type: ignore[union-attr]  # what a recipe's value must be (engines/recipes.py)


def decibels(text: str) -> float:
    """A gain in dB within +-60 (60 dB down is a line's idle noise, not its speech)."""
    x = _number(float, text)
    if abs(x) > 60:
        raise argparse.ArgumentTypeError(f"must be within -60 and 60 dB, not {x:g}")
    return x
