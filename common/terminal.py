"""What a long job shows while it runs, decided one way for every part of the project: a tqdm bar when the stream
it would be drawn on is a terminal, else a plain line now and then, so that a log file never fills with the
carriage returns a bar redraws itself with. ``Ticker`` counts items (the converter's images, the comparison's models);
common/report/progress.py shows the training and evaluation meters by the same ``is_terminal`` rule.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def is_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is an open terminal (a bar can redraw itself there); False for a file, a pipe, a closed
    stream or an object without ``isatty``."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Ticker:
    """``done`` out of ``total`` items: a tqdm bar on ``stream`` (default stderr) when it is a terminal, else a line
    such as ``to shards: 300/1000 img (30%), 12 s, about 28 s left`` printed to stdout each time another
    1/``lines`` of the total is done, and at the end."""

    def __init__(self, total: int, desc: str, unit: str = "it", lines: int = 10, stream: TextIO | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.unit, self.lines = total, desc, unit, max(1, lines)
        self.done, self.start, self.shown = 0, time.perf_counter(), 0
        self.bar = (tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=stream)
                    if is_terminal(stream) else None)

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        step = self.done * self.lines // max(1, self.total)  # how many tenths (by default) are done
        if n and (step > self.shown or self.done >= self.total):
            self.shown = step
            print(self.line(), flush=True)

    def line(self) -> str:
        """The plain progress line: items done, share, seconds so far and an estimate of the seconds left."""
        elapsed = time.perf_counter() - self.start
        share = self.done / self.total if self.total else 1.0
        left = f", about {elapsed * (1 - share) / share:.0f} s left" if 0 < share < 1 else ""
        return f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * share:.0f}%), {elapsed:.0f} s{left}"

    def describe(self, desc: str) -> None:
        """The bar's label (the item in hand); plain lines keep the first label."""
        if self.bar is not None:
            self.bar.set_description(desc)

    def write(self, text: str) -> None:
        """A line of results to stdout, above the bar where there is one."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Ticker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
