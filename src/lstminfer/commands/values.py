"""argparse ``type=`` callables: every value a flag takes is checked as it is parsed (finite, in range), so a
bad one is a one-line usage error (exit 2) before any work starts: `--duration nan` once hung `bench`,
`--seed -1` ended in numpy's traceback.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from lstminfer.errors import UserError

# numpy's and torch's generators both take seeds in [0, 2**32): the widest range every consumer accepts.
MAX_SEED = 2**32 - 1


def _number(kind: type, low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], Any]:
    """A `type=` for argparse: `kind` (int or float), finite, in [low, high] (or (low, high] if low_open)."""
    what = "an integer" if kind is int else "a number"
    if low == 0 and high == math.inf:  # the usual cases, in words
        word = "positive" if low_open else "non-negative"
        must = f"a {word} {'integer' if kind is int else 'finite number'}"
    else:
        must = f"{what} from {kind(low)} to {kind(high)}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < low or (low_open and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"must be {must}, got {text!r}")
        return value

    parse.__name__ = must
    return parse


positive_int = _number(int, 0, low_open=True)
non_negative_int = _number(int, 0)
seed_int = _number(int, 0, MAX_SEED)
positive_float = _number(float, 0, low_open=True)
non_negative_float = _number(float, 0)
port_number = _number(int, 0, 65535)


def int_list(text: str) -> tuple[int, ...]:
    """A `type=` for comma-separated positive integers (a sweep's lengths and batches)."""
    values = []
    for item in (v.strip() for v in text.split(",")):
        if item:
            values.append(positive_int(item))
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers")
    return tuple(values)


def parse_int_list(text: str, flag_name: str) -> list[int]:
    """int_list for a value read after parsing: a UserError naming the flag."""
    try:
        return list(int_list(text))
    except argparse.ArgumentTypeError as err:
        raise UserError(f"--{flag_name}: {err}") from None


def precision_list(text: str) -> tuple[str, ...]:
    from lstminfer.backends.base import PRECISIONS

    values = tuple(split_list(text) or ())
    if not values or any(v not in PRECISIONS for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} must be a comma-separated list of {', '.join(PRECISIONS)}")
    return values


def split_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [item.strip() for item in text.split(",") if item.strip()]
