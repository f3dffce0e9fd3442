"""Training curves as a PNG for people: loss, accuracy and learning rate over epochs, read from a run's CSV log.

    python -m common.report RUN_DIR
    python -m common.report --csv RUN_DIR/main.csv --out curves.png

Every training CSV log in RUN_DIR (main.csv, dataparallel.csv, multiprocessing_distributed.csv, distributed.csv,
network.csv: any file whose header holds the train.watch.CSV_FIELDS columns plotted here) gets a ``<name>.png``
beside it with three panels: loss (train, val), top-1 accuracy (train, val; top-5 lighter and dashed) and learning rate.
The figure is drawn with matplotlib (``pip install -r requirements-extra.txt``); without it the command exits with
status 2 and a one-line ``error:``, as it does for a folder without a log or a PNG that cannot be written. A PNG is
replaced atomically: a failed write keeps the earlier one.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.errors import UserError, exit_on_user_error
from common.report.figures import new_figure, save_png

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

REQUIRED = ("epoch", "train_loss", "val_loss", "train_top1", "val_top1", "lr")
SIZE = (1000, 900)  # width, height of the PNG in pixels
# Figure fractions around the three panels: left (y tick labels), right (legend), top (title), bottom (x ticks).
MARGINS = {"left": 0.08, "right": 0.82, "top": 0.92, "bottom": 0.06, "hspace": 0.3}
TRAIN, VAL = (31, 119, 180), (255, 127, 14)  # matplotlib's tab10 blue and orange: readable for most colour vision
LR_COLOR = (44, 160, 44)
MAX_MARKERS = 30  # beyond this many epochs, per-point dots would hide the lines
LOG_LOSS_RATIO = 10.0  # a loss panel whose largest value is this many times its smallest is drawn on a log scale
RESUME_COLOR = (150, 150, 150)  # the dotted line where a stopped run was resumed


@dataclass(frozen=True)
class RunLog:
    """One CSV log: its file name, the epochs in order, and each column as floats (None where the cell is empty);
    ``resumes``: (epoch, step) where a stopped run was resumed, in the order logged; ``relogged``: the epochs
    logged more than once (a resume from an earlier checkpoint re-runs them; the last row is the one drawn)."""
    name: str
    epochs: list[int]
    columns: dict[str, list[float | None]]
    resumes: tuple[tuple[int, int], ...] = ()
    relogged: tuple[int, ...] = ()


@dataclass(frozen=True)
class Series:
    """One curve of a panel."""
    label: str
    column: str
    color: tuple[int, int, int]  # RGB 0..255
    dashed: bool = False

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.color)


def _lighter(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Halfway to white: top-5 shares its top-1 curve's hue, so the pairing reads without the legend."""
    return tuple(int(c + (255 - c) * 0.5) for c in color)


PANELS = (
    ("loss", (Series("train loss", "train_loss", TRAIN), Series("val loss", "val_loss", VAL))),
    ("accuracy (%)", (Series("train top-1", "train_top1", TRAIN), Series("val top-1", "val_top1", VAL),
                      Series("train top-5", "train_top5", _lighter(TRAIN), True),
                      Series("val top-5", "val_top5", _lighter(VAL), True))),
    ("learning rate", (Series("lr", "lr", LR_COLOR),)),
)


# ---------------------------------------------------------------------------------------------------- reading logs

def _header(path: str) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def is_training_log(path: str) -> bool:
    """True when the CSV's header holds the columns plotted here (logger.CSV_FIELDS or a superset of REQUIRED)."""
    try:
        return set(REQUIRED) <= set(_header(path))
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def find_logs(run_dir: str) -> list[str]:
    """The training CSV logs directly inside ``run_dir``, sorted by name; a UserError when there is none."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir} is not a folder: pass the --output-dir of a training run, or --csv PATH")
    paths = [os.path.join(run_dir, n) for n in sorted(os.listdir(run_dir)) if n.endswith(".csv")]
    logs = [p for p in paths if is_training_log(p)]
    if not logs:
        raise UserError(f"no training CSV log in {run_dir}: expected main.csv, dataparallel.csv, "
                        f"multiprocessing_distributed.csv, distributed.csv or network.csv with columns "
                        f"{', '.join(REQUIRED)} (or pass --csv PATH)")
    return logs


def _number(cell: str | None) -> float | None:
    """A cell as a float; None for empty, unparsable or non-finite cells, which leave a gap in the curve."""
    try:
        value = float(cell) if cell not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def read_log(path: str) -> RunLog:
    """Read a training CSV log; when an epoch appears twice (a resumed run re-logs it) the last row wins."""
    if not is_training_log(path):
        raise UserError(f"{path} is not a training CSV log: its header needs the columns {', '.join(REQUIRED)}")
    by_epoch: dict[int, dict] = {}
    resumes, relogged = [], set()
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            epoch = _number(row.get("epoch"))
            epoch = int(epoch) if epoch is not None else i
            if epoch in by_epoch:
                relogged.add(epoch)
            by_epoch[epoch] = row
            step = _number(row.get("resumed_at_step"))  # absent in logs older than the column
            if step is not None:
                resumes.append((epoch, int(step)))
    if not by_epoch:
        raise UserError(f"{path} has a header but no epochs yet: run the report after the first epoch ends")
    epochs = sorted(by_epoch)
    names = {s.column for _, series in PANELS for s in series}
    columns = {n: [_number(by_epoch[e].get(n)) for e in epochs] for n in names}
    return RunLog(os.path.basename(path), epochs, columns, tuple(resumes), tuple(sorted(relogged)))


def best_val_top1(log: RunLog) -> tuple[float, int] | None:
    """(best val top-1, its epoch), the first epoch on ties; None when no epoch has a val top-1."""
    pairs = [(v, e) for e, v in zip(log.epochs, log.columns["val_top1"]) if v is not None]
    return max(pairs, key=lambda p: (p[0], -p[1])) if pairs else None


def title_of(log: RunLog) -> str:
    """The figure's title: the CSV name, the best val top-1 with its epoch over the epochs drawn, their count, and
    the history a resumed run leaves in its log: where it was resumed (a step after 0: that epoch's train figures
    cover only the steps from there on) and which epochs it logged again (the last row of each is drawn)."""
    best = best_val_top1(log)
    found = f"best val top-1 {best[0]:.2f}% at epoch {best[1]}" if best else "no val top-1 recorded"
    notes = [f"{len(log.epochs)} epoch{'s' if len(log.epochs) != 1 else ''}"]
    if log.resumes:
        notes.append("resumed at " + _listed([f"epoch {e}" + (f" step {s}" if s else "") for e, s in log.resumes]))
    if log.relogged:
        notes.append(f"re-run: epoch{'s' if len(log.relogged) > 1 else ''} {_listed([str(e) for e in log.relogged])}"
                     ", last kept")
    return f"{log.name}: {found} ({'; '.join(notes)})"


def _listed(items: list[str], most: int = 3) -> str:
    """``a, b, c`` or, beyond ``most`` items, the first ones and how many more: a title stays one line."""
    shown = ", ".join(items[:most])
    return shown if len(items) <= most else f"{shown} and {len(items) - most} more"


# ---------------------------------------------------------------------------------------------------- the figure

def resume_marks(log: RunLog) -> list[float]:
    """Where the chart marks each resume: between two epochs for a resume at an epoch's start, on the epoch itself
    for one mid-epoch (that epoch's train figures cover the steps after it)."""
    return sorted({epoch - 0.5 if step == 0 else float(epoch) for epoch, step in log.resumes})


def value_range(values: list[float]) -> tuple[float, float]:
    """The data's range padded by 5% so curves do not run along the frame; a flat or single value gets room too.
    Losses, accuracies and learning rates are never negative, so the axis does not dip below 0 for them."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 if hi > lo else (abs(hi) * 0.1 or 1.0)
    return (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad


def epoch_range(epochs: list[int]) -> tuple[float, float]:
    """The x axis: the logged epochs, with the end points off the frame; a single epoch is centred."""
    first, last = epochs[0], epochs[-1]
    pad = 0.5 if first == last else (last - first) * 0.02
    return first - pad, last + pad


def _markers(values: list[float | None]) -> list[bool]:
    """Which points get a dot: all of them for a short run, and always an isolated one (no line reaches it), so a
    single epoch, or one between two empty cells, still shows."""
    n = len(values)
    return [v is not None and (n <= MAX_MARKERS or ((i == 0 or values[i - 1] is None)
                                                     and (i == n - 1 or values[i + 1] is None)))
            for i, v in enumerate(values)]


def draw_panel(ax: Axes, name: str, series: tuple[Series, ...], log: RunLog) -> None:
    """One panel: its name, the curves that have data (an empty cell breaks a line), axes scaled to them, a legend
    outside the plot so it never hides data; a panel whose columns are all empty says so."""
    ax.set_title(name, loc="left", fontsize=12)
    shown = [s for s in series if any(v is not None for v in log.columns[s.column])]
    if not shown:
        ax.text(0.5, 0.5, "no values in the log", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_yticks([])
        return
    for s in shown:
        values = log.columns[s.column]
        ax.plot(log.epochs, [math.nan if v is None else v for v in values], color=s.hex, label=s.label,
                linestyle="--" if s.dashed else "-", linewidth=1.5 if s.dashed else 2.0,
                marker="o", markersize=5, markevery=_markers(values))
    values = [v for s in shown for v in log.columns[s.column] if v is not None]
    log_scale = name == "loss" and min(values) > 0 and max(values) > LOG_LOSS_RATIO * min(values)
    if log_scale:  # one early spike would otherwise flatten the rest of the curve against the axis
        from matplotlib import ticker

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 10, not 10^1
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    else:
        ax.set_ylim(value_range(values))
    ax.grid(True, which="both" if log_scale else "major", color="0.9")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small",
              title="log scale" if log_scale else None, title_fontsize="small")


def figure(log: RunLog) -> Figure:
    """The whole figure, SIZE pixels: the title, then loss, accuracy and learning-rate panels sharing the epoch
    axis; raises figures.MatplotlibMissing (a UserError) without matplotlib."""
    fig = new_figure(*SIZE, "python -m common.report")
    from matplotlib.ticker import (
        MaxNLocator,  # after new_figure, which says it in one line when matplotlib is missing
    )

    fig.subplots_adjust(**MARGINS)
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    marks = resume_marks(log)
    for ax, (name, series) in zip(axes, PANELS):
        for x in marks:  # before the curves, which draw_panel puts over it; the top legend names it once
            ax.axvline(x, color="#{:02x}{:02x}{:02x}".format(*RESUME_COLOR), linestyle=":", linewidth=1.5,
                       label="resumed" if ax is axes[0] and x == marks[0] else None)
        draw_panel(ax, name, series, log)
    axes[-1].set_xlim(epoch_range(log.epochs))
    axes[-1].xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    axes[-1].set_xlabel("epoch")
    fig.suptitle(title_of(log), fontsize=14)
    return fig


# ---------------------------------------------------------------------------------------------------- command line

def write_report(csv_path: str, out_path: str | None = None) -> str:
    """Draw the curves of one training CSV log to ``out_path`` (default: the CSV's path with .png) and return it;
    UserError when the log cannot be read, matplotlib is missing or the PNG cannot be written."""
    return save_png(figure(read_log(csv_path)), out_path or os.path.splitext(csv_path)[0] + ".png")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Plot loss, accuracy and learning rate from a run's CSV log(s).")
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="a training run's --output-dir: every training CSV log in it gets a PNG beside it")
    parser.add_argument("--csv", metavar="PATH", help="plot this CSV log instead of searching RUN_DIR")
    parser.add_argument("--out", metavar="PATH", help="where to write the PNG (one CSV only; default <csv name>.png)")
    return parser


def main(args: argparse.Namespace) -> list[str]:
    """Write one PNG per CSV log, print each path, and return them."""
    with exit_on_user_error():
        if args.csv:
            if not os.path.isfile(args.csv):
                raise UserError(f"{args.csv} does not exist: pass the path of a training CSV log such as main.csv")
            paths = [args.csv]
        elif args.run_dir:
            paths = find_logs(args.run_dir)
        else:
            raise UserError("no run given: pass RUN_DIR (a training run's --output-dir) or --csv PATH")
        if args.out and len(paths) > 1:
            raise UserError(f"--out names one PNG but {args.run_dir} holds {len(paths)} CSV logs: "
                            f"add --csv to pick one of {', '.join(os.path.basename(p) for p in paths)}")
        written = [write_report(p, args.out) for p in paths]
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main(get_args_parser().parse_args())
