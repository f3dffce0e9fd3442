"""What a pass shows while it runs: running averages kept as (sum, count) and reduced over ranks as sums (never
as averages of averages), and the progress display (a tqdm bar on a terminal, plain lines otherwise)."""
from __future__ import annotations

import sys

from tqdm import tqdm

from common import terminal
from common.parallel.distributed import DistContext, all_reduce_sum


class AverageMeter:
    """Sum and count of a value; ``avg`` is their ratio, ``val`` the last value seen."""

    def __init__(self, name: str, fmt: str = ":f") -> None:
        self.name, self.fmt = name, fmt
        self.val = self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        """Add ``n`` samples whose mean is ``val``."""
        self.add(val * n, n)
        self.val = val

    def add(self, total: float, n: int) -> None:
        """Add ``n`` samples whose values sum to ``total`` (exact for counts, unlike ``update(mean, n)``)."""
        self.sum += total
        self.count += n
        self.val = total / n if n else 0.0

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def all_reduce(self, ctx: DistContext) -> None:
        """Replace sum and count by their totals over all ranks."""
        self.sum, count = all_reduce_sum([self.sum, float(self.count)], ctx)
        self.count = round(count)

    def __str__(self) -> str:
        return ("{name} {val" + self.fmt + "} ({avg" + self.fmt + "})").format(name=self.name, val=self.val,
                                                                               avg=self.avg)


class ProgressMeter:
    """Plain ``Epoch: [3][ 40/500]  Loss ...`` lines for logs that are not a terminal."""

    def __init__(self, num_batches: int, meters: list[AverageMeter], prefix: str = "") -> None:
        width = len(str(num_batches))
        self.batch_fmt = "[{:" + str(width) + "d}/" + str(num_batches) + "]"
        self.meters, self.prefix = meters, prefix

    def line(self, batch: int) -> str:
        return "\t".join([self.prefix + self.batch_fmt.format(batch)] + [str(m) for m in self.meters])


class Progress:
    """A tqdm bar when stderr is a terminal, else ProgressMeter lines every ``print_freq`` batches."""

    def __init__(self, total: int, meters: list[AverageMeter], prefix: str, print_freq: int, enabled: bool) -> None:
        self.total, self.meters, self.print_freq = total, meters, max(1, print_freq)
        tty = enabled and terminal.is_terminal(sys.stderr)
        self.bar = tqdm(total=total, desc=prefix.strip(), dynamic_ncols=True, leave=False) if tty else None
        self.plain = ProgressMeter(total, meters, prefix) if enabled and not tty else None

    def step(self, i: int) -> None:
        last = i == self.total - 1
        if self.bar is not None:
            self.bar.update(1)
            if i % self.print_freq == 0 or last:
                self.bar.set_postfix_str(" ".join(f"{m.name} {m.avg:.3f}" for m in self.meters[-3:]))
        elif self.plain is not None and (i % self.print_freq == 0 or last):
            print(self.plain.line(i), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
