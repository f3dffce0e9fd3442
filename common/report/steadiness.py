"""Whether a speed figure can be trusted: the spread of its timed repeats and the load other processes put on the
machine while it was measured, and one warning line when either is too large.

``LoadMeter`` is a context manager: over the ``with`` block it reads the busy CPU time of the cores this process
may use (/proc/stat: user, nice, system, irq, softirq and steal) and subtracts the CPU time of this process and its
children (live ones read from /proc/<pid>/stat, finished ones from ``os.times``), so that what remains is the CPU
time other processes (and, on a virtual machine, the hypervisor's steal) took from those cores: "other processes
used 1.4 of 2 cores". Where /proc/stat does not exist (macOS) the load is unknown, never an error.

``spread_pct`` is the interquartile range of the repeats over their median, in percent; ``verdict`` turns a spread
and a load into None or one line such as ``warning: ghostnet latency is unreliable: repeats spread 23% (limit 10%)
and other processes used 1.4 of 2 cores (limit 0.2); rerun on an idle machine``; ``csv_fields`` gives the columns
that go next to a figure in a CSV.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PROC_STAT = "/proc/stat"
# Neighbouring models in the comparison and the project-against-reference ratios of the benchmarks differ by 10-30%:
# repeats that spread more than 10% around their median cannot rank them.
SPREAD_LIMIT_PCT = 10.0
# Other processes using more than a tenth of the cores on average (0.2 of 2) take time slices from a run that uses
# every core, as the comparison and the benchmarks do; an idle machine's background stays well below it.
LOAD_LIMIT = 0.1
# /proc/stat's per-CPU fields: user nice system idle iowait irq softirq steal (guest time is inside user and nice).
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class Load:
    """What other processes took from the ``cores`` this process may use over ``seconds`` of wall time:
    ``other_seconds`` of CPU time, None where it could not be read."""

    other_seconds: float | None
    cores: int
    seconds: float

    @property
    def other_cores(self) -> float | None:
        """Cores other processes used on average over the run (``other_seconds`` / ``seconds``)."""
        if self.other_seconds is None:
            return None
        return self.other_seconds / self.seconds if self.seconds > 0 else 0.0

    def too_high(self) -> bool:
        """True when other processes used more than ``LOAD_LIMIT`` of the cores on average."""
        return self.other_cores is not None and self.other_cores > LOAD_LIMIT * self.cores

    def describe(self) -> str:
        """``other processes used 1.4 of 2 cores`` (``... unknown`` without /proc/stat)."""
        if self.other_cores is None:
            return f"the load of other processes on the {self.cores} cores is unknown (no {PROC_STAT})"
        return f"other processes used {self.other_cores:.2f} of {self.cores} cores"


def parse_proc_stat(text: str, cpus: Iterable[int] | None) -> float | None:
    """Busy clock ticks of the CPUs ``cpus`` (the lines ``cpuN``; all CPUs, the ``cpu`` line, where ``cpus`` is None
    or names a CPU the text lacks) summed over ``BUSY_FIELDS``; None where the text has no such line."""
    lines = {parts[0]: parts[1:] for parts in (line.split() for line in text.splitlines()) if parts}
    names = [f"cpu{n}" for n in cpus] if cpus is not None else []
    if not names or any(name not in lines for name in names):
        names = ["cpu"]
    if any(name not in lines for name in names):
        return None
    return float(sum(int(lines[name][i]) for name in names for i in BUSY_FIELDS if i < len(lines[name])))


def _usable_cpus() -> list[int] | None:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def _busy_seconds(cpus: list[int] | None) -> float | None:
    try:
        with open(PROC_STAT) as f:
            ticks = parse_proc_stat(f.read(), cpus)
    except OSError:  # not Linux
        return None
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and of its finished children) of every process in /proc."""
    table, tick = {}, os.sysconf("SC_CLK_TCK")
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # it ended while the table was read
            continue
        # after the name: state ppid ... utime stime cutime cstime are fields 14-17 of proc(5), 12-15 here
        table[int(name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / tick)
    return table


def own_cpu_seconds() -> float:
    """CPU seconds of this process, of its finished children (``os.times``) and of every live descendant (with
    their own finished children), so that a DataLoader's workers count as this run's work, not as other load."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(children.get(os.getpid(), ()))
    while todo:
        pid = todo.pop()
        total += table[pid][1]
        todo += children.get(pid, ())
    return total


@dataclass(frozen=True)
class _Reading:
    wall: float
    busy: float | None
    own: float


def _read(cpus: list[int] | None) -> _Reading:
    return _Reading(time.perf_counter(), _busy_seconds(cpus), own_cpu_seconds())


def load_between(start: _Reading, end: _Reading, cores: int) -> Load:
    """The load of other processes between two readings: busy CPU time minus this run's own, never below 0."""
    if start.busy is None or end.busy is None:
        return Load(None, cores, end.wall - start.wall)
    other = (end.busy - start.busy) - (end.own - start.own)
    return Load(max(0.0, other), cores, end.wall - start.wall)


class LoadMeter:
    """``with LoadMeter() as meter: ...`` then ``meter.load``: the load other processes put on the cores this
    process may use during the block (``meter.load`` read inside the block gives the load so far)."""

    def __init__(self) -> None:
        self.cpus = _usable_cpus()
        self.cores = len(self.cpus) if self.cpus is not None else (os.cpu_count() or 1)
        self._start: _Reading | None = None
        self._end: _Reading | None = None

    def __enter__(self) -> LoadMeter:
        self._start, self._end = _read(self.cpus), None
        return self

    def __exit__(self, *exc) -> None:
        self._end = _read(self.cpus)

    @property
    def load(self) -> Load:
        if self._start is None:
            raise RuntimeError("LoadMeter.load is read inside or after its with block")
        return load_between(self._start, self._end or _read(self.cpus), self.cores)


def spread_pct(values: Sequence[float]) -> float | None:
    """The interquartile range of ``values`` (timed repeats) over their median, in percent (quartiles as
    ``statistics.quantiles(method="inclusive")`` computes them); None for fewer than two values."""
    if len(values) < 2:
        return None
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    median = statistics.median(values)
    return 100 * (q3 - q1) / median if median else None


def worst(spreads: Iterable[float | None]) -> float | None:
    """The largest of the known spreads, None where none is known."""
    known = [s for s in spreads if s is not None]
    return max(known) if known else None


def reasons(spread: float | None, load: Load | None) -> list[str]:
    """Why a figure with this spread of repeats and this load is unreliable: none, one or two short phrases."""
    found = []
    if spread is not None and spread > SPREAD_LIMIT_PCT:
        found.append(f"repeats spread {spread:.0f}% (limit {SPREAD_LIMIT_PCT:g}%)")
    if load is not None and load.too_high():
        found.append(f"{load.describe()} (limit {LOAD_LIMIT * load.cores:.2g})")
    return found


def reliable(spread: float | None, load: Load | None) -> str:
    """``no`` when the spread or the load is over its limit; ``yes`` when neither is and at least one is known;
    ``unknown`` when neither could be measured (one timed run, no /proc/stat)."""
    if reasons(spread, load):
        return "no"
    known = spread is not None or (load is not None and load.other_cores is not None)
    return "yes" if known else "unknown"


def verdict(figure: str, spread: float | None, load: Load | None) -> str | None:
    """None, or the one warning line saying why ``figure`` (``ghostnet latency``) is unreliable."""
    found = reasons(spread, load)
    if not found:
        return None
    return f"warning: {figure} is unreliable: {' and '.join(found)} during the run; rerun on an idle machine"


def row_spreads(row: dict) -> list[float]:
    """The spreads of a CSV row's timed repeats: its ``*_spread_pct`` columns that hold a value."""
    return [v for k, v in row.items() if k.endswith("_spread_pct") and v not in (None, "")]


def judge_row(row: dict, load: Load | None, figure: str) -> tuple[dict, str | None]:
    """(``csv_fields`` of ``row``: its worst spread and ``load`` against the limits, the warning line naming
    ``figure`` or None): the one way the comparison and the benchmarks judge a row."""
    spread = worst(row_spreads(row))
    return csv_fields(load, spread), verdict(figure, spread, load)


def csv_fields(load: Load | None, spread: float | None = None) -> dict[str, str | float]:
    """The columns that go beside a row's figures: ``other_cores`` (the cores other processes used on average,
    empty where unknown) and ``reliable`` (yes, no or unknown), judged with ``spread``, the worst spread of the row's
    repeats (the caller writes each spread in its own ``*_spread_pct`` column)."""
    other = None if load is None else load.other_cores
    return {"other_cores": "" if other is None else round(other, 2), "reliable": reliable(spread, load)}
