"""The numeric limits and default sizes that flags, checkpoints and preprocessing share, and ``Number``, the
argparse ``type=`` that enforces them."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

TRAIN_CROP_SIZE = 224
VAL_RESIZE_SIZE = 256
VAL_CROP_SIZE = 224
MAX_PIXELS = 4096  # crop and resize sizes above this are typing mistakes: 4096^2 RGB is 48 MiB per image
MAX_WIDTH_MULT = 4.0  # GhostNet's published widths are 0.5 to 1.3; 4.0 already has about 80 M parameters
MAX_DIST_TIMEOUT = 7 * 24 * 3600.0  # a week; datetime.timedelta overflows on absurd values


@dataclass(frozen=True)
class Number:
    """An argparse ``type=`` that reads an int or a finite float and refuses it outside [low, high].

    ``low_open`` / ``high_open`` exclude the bound itself. The bounds are attributes so that tests can derive the
    values that must be refused from a parser's actions.
    """

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within the bounds."""
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        """The accepted values in words, e.g. ``an integer in [1, 4096]`` or ``a positive number``."""
        word = "an integer" if self.kind is int else "a number"
        low, high = (None if b is None else str(int(b)) if self.kind is int else f"{b:g}"
                     for b in (self.low, self.high))
        if low is not None and high is not None:
            return f"{word} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if high is not None:
            return f"{word} {'<' if self.high_open else '<='} {high}"
        if low is None:
            return f"a finite {word.split()[-1]}"
        if (self.low == 0 and self.low_open) or (self.kind is int and self.low == 1 and not self.low_open):
            return f"a positive {word.split()[-1]}"
        return f"{word} {'>' if self.low_open else '>='} {low}"
