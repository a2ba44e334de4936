"""Function composition for tokenizer.json's ``Sequence`` steps (normalizers, decoders)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def compose(steps: Sequence[Callable[[T], T]]) -> Callable[[T], T]:
    """One function that applies ``steps`` in order, each to the previous one's result."""
    steps = tuple(steps)

    def apply_all(value: T) -> T:
        for step in steps:
            value = step(value)
        return value

    return apply_all
