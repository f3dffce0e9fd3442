"""Training curves as a PNG for people: loss, accuracy and learning rate over epochs, read from a run's CSV log.

    python -m common.report RUN_DIR
    python -m common.report --csv RUN_DIR/main.csv --out curves.png

Every training CSV log in RUN_DIR (main.csv, dataparallel.csv, multiprocessing_distributed.csv, distributed.csv,
network.csv: any file whose header holds the logger.CSV_FIELDS columns plotted here) gets a ``<name>.png`` beside it
with three panels: loss (train, val), top-1 accuracy (train, val; top-5 lighter and dashed) and learning rate. The
figure is drawn with PIL, so matplotlib is not needed; ``--matplotlib`` uses it instead when it is installed.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from common.errors import UserError, exit_on_user_error

REQUIRED = ("epoch", "train_loss", "val_loss", "train_top1", "val_top1", "lr")
SIZE = (1000, 900)  # width, height of the PIL figure in pixels
TITLE_H = 42  # band above the three panels
PANEL_H = (SIZE[1] - TITLE_H) // 3
MARGIN = (78, 170, 28, 34)  # left (y tick labels), right (legend), top (panel name), bottom (x tick labels)
TRAIN, VAL = (31, 119, 180), (255, 127, 14)  # matplotlib's tab10 blue and orange: readable for most colour vision
LR_COLOR = (44, 160, 44)
GRID, AXIS, TEXT = (228, 228, 228), (90, 90, 90), (20, 20, 20)
MAX_MARKERS = 30  # beyond this many epochs, per-point dots would hide the lines


@dataclass(frozen=True)
class RunLog:
    """One CSV log: its file name, the epochs in order, and each column as floats (None where the cell is empty)."""
    name: str
    epochs: list[int]
    columns: dict[str, list[float | None]]


@dataclass(frozen=True)
class Series:
    """One curve of a panel."""
    label: str
    column: str
    color: tuple[int, int, int]
    dashed: bool = False


@dataclass(frozen=True)
class Panel:
    """A panel's outer box and the plot area inside it, both (x0, y0, x1, y1) in pixels."""
    box: tuple[int, int, int, int]
    plot: tuple[int, int, int, int]


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


def layout(size: tuple[int, int] = SIZE) -> list[Panel]:
    """The three panels stacked under the title band, top to bottom: loss, accuracy, learning rate."""
    height = (size[1] - TITLE_H) // 3
    panels = []
    for i in range(3):
        x0, y0, x1, y1 = 0, TITLE_H + i * height, size[0], TITLE_H + (i + 1) * height
        panels.append(Panel((x0, y0, x1, y1), (x0 + MARGIN[0], y0 + MARGIN[2], x1 - MARGIN[1], y1 - MARGIN[3])))
    return panels


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
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            epoch = _number(row.get("epoch"))
            by_epoch[int(epoch) if epoch is not None else i] = row
    if not by_epoch:
        raise UserError(f"{path} has a header but no epochs yet: run the report after the first epoch ends")
    epochs = sorted(by_epoch)
    names = {s.column for _, series in PANELS for s in series}
    columns = {n: [_number(by_epoch[e].get(n)) for e in epochs] for n in names}
    return RunLog(os.path.basename(path), epochs, columns)


def best_val_top1(log: RunLog) -> tuple[float, int] | None:
    """(best val top-1, its epoch), the first epoch on ties; None when no epoch has a val top-1."""
    pairs = [(v, e) for e, v in zip(log.epochs, log.columns["val_top1"]) if v is not None]
    return max(pairs, key=lambda p: (p[0], -p[1])) if pairs else None


def title_of(log: RunLog) -> str:
    """The figure's title: the CSV name and the best val top-1 with its epoch."""
    best = best_val_top1(log)
    found = f"best val top-1 {best[0]:.2f}% at epoch {best[1]}" if best else "no val top-1 recorded"
    return f"{log.name}: {found} ({len(log.epochs)} epoch{'s' if len(log.epochs) != 1 else ''})"


# ---------------------------------------------------------------------------------------------------- axes and ticks

def nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], float]:
    """Round tick values in [lo, hi] (multiples of 1, 2 or 5 times a power of ten) and their step: the widest step
    that still gives at least ``count`` ticks, so a panel never ends up with one or two lonely labels."""
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    top = math.floor(math.log10(span))
    steps = [m * 10.0 ** p for p in range(top - 3, top + 2) for m in (1, 2, 5)]

    def ticks_for(step: float) -> list[float]:
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        return [k * step for k in range(first, last + 1)]  # k * step: exact 0, no accumulated float noise

    step = next((s for s in reversed(steps) if len(ticks_for(s)) >= count), steps[0])
    return ticks_for(step), step


def tick_label(value: float, step: float) -> str:
    """Just enough digits to tell neighbouring ticks apart; significant digits for tiny steps (e.g. an lr)."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if decimals <= 4:
        return f"{value:.{decimals}f}"
    if value == 0:
        return "0"
    digits = max(1, math.floor(math.log10(abs(value))) - math.floor(math.log10(step) + 1e-9) + 1)
    return f"{value:.{digits}g}"


def _value_range(values: list[float]) -> tuple[float, float]:
    """The data's range padded by 5% so curves do not run along the frame; a flat or single value gets room too.
    Losses, accuracies and learning rates are never negative, so the axis does not dip below 0 for them."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 if hi > lo else (abs(hi) * 0.1 or 1.0)
    return (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad


def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font at ``size`` px (Pillow >= 10.1); the tiny bitmap default otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


@dataclass(frozen=True)
class Axes:
    """Maps (epoch, value) to pixels inside a panel's plot area."""
    plot: tuple[int, int, int, int]
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def point(self, x: float, y: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.plot
        (xa, xb), (ya, yb) = self.x_range, self.y_range
        return x0 + (x - xa) / (xb - xa) * (x1 - x0), y1 - (y - ya) / (yb - ya) * (y1 - y0)


def _draw_axes(draw: ImageDraw.ImageDraw, axes: Axes, epochs: list[int], font: ImageFont.ImageFont) -> None:
    """Grid lines and labelled ticks: integer epochs along x, round values along y, then the frame on top."""
    x0, y0, x1, y1 = axes.plot
    yticks, ystep = nice_ticks(*axes.y_range)
    for v in yticks:
        _, py = axes.point(axes.x_range[0], v)
        draw.line((x0, py, x1, py), fill=GRID)
        draw.text((x0 - 6, py), tick_label(v, ystep), fill=TEXT, font=font, anchor="rm")
    xticks, _ = nice_ticks(epochs[0], epochs[-1], count=min(8, len(epochs)))
    for e in sorted({int(round(t)) for t in xticks} | {epochs[0], epochs[-1]}):
        px, _ = axes.point(e, axes.y_range[0])
        draw.line((px, y0, px, y1), fill=GRID)
        draw.line((px, y1, px, y1 + 4), fill=AXIS)
        draw.text((px, y1 + 6), str(e), fill=TEXT, font=font, anchor="mt")
    draw.rectangle((x0, y0, x1, y1), outline=AXIS)


# ---------------------------------------------------------------------------------------------------- curves

def _dashed(draw: ImageDraw.ImageDraw, a: tuple[float, float], b: tuple[float, float], color: tuple[int, int, int],
            width: int, dash: float = 7.0, start: float = 0.0) -> float:
    """A dashed segment (ImageDraw has no dash style): every other ``dash``-pixel piece. ``start`` is the length
    already drawn along the curve, so the pattern runs on across short segments; returns the length after this one."""
    length, done = math.dist(a, b), 0.0
    while done < length:
        end = min(length, (math.floor((start + done) / dash) + 1) * dash - start)
        if math.floor((start + done) / dash) % 2 == 0:
            t0, t1 = done / length, end / length
            draw.line((a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0,
                       a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1), fill=color, width=width)
        done = end
    return start + length


def _draw_series(draw: ImageDraw.ImageDraw, axes: Axes, epochs: list[int], values: list[float | None],
                 series: Series) -> None:
    """Join consecutive epochs that both have a value; an empty cell breaks the line. Points get a dot when there
    are few epochs, and always when isolated, so a single-epoch run still shows up."""
    points = [axes.point(e, v) if v is not None else None for e, v in zip(epochs, values)]
    drawn = 0.0
    for a, b in zip(points, points[1:]):
        if a is not None and b is not None:
            if series.dashed:
                drawn = _dashed(draw, a, b, series.color, width=2, start=drawn)
            else:
                draw.line((*a, *b), fill=series.color, width=3)
    for i, p in enumerate(points):
        isolated = (i == 0 or points[i - 1] is None) and (i == len(points) - 1 or points[i + 1] is None)
        if p is not None and (isolated or len(points) <= MAX_MARKERS):
            r = 4 if isolated else 3
            draw.ellipse((p[0] - r, p[1] - r, p[0] + r, p[1] + r), fill=series.color)


def _draw_legend(draw: ImageDraw.ImageDraw, panel: Panel, shown: list[Series], font: ImageFont.ImageFont) -> None:
    """One swatch per curve in the panel's right margin, outside the plot so it never hides data."""
    x, y = panel.plot[2] + 14, panel.plot[1] + 4
    for series in shown:
        mid = y + 8
        if series.dashed:
            _dashed(draw, (x, mid), (x + 28, mid), series.color, width=3, dash=6)
        else:
            draw.line((x, mid, x + 28, mid), fill=series.color, width=3)
        draw.text((x + 36, mid), series.label, fill=TEXT, font=font, anchor="lm")
        y += 22


def draw_panel(draw: ImageDraw.ImageDraw, panel: Panel, name: str, series: tuple[Series, ...], log: RunLog,
               fonts: tuple[ImageFont.ImageFont, ImageFont.ImageFont]) -> None:
    """One panel: its name, axes scaled to the curves that have data, the curves, and their legend."""
    small, label = fonts
    draw.text((panel.plot[0], panel.box[1] + 6), name, fill=TEXT, font=label)
    shown = [s for s in series if any(v is not None for v in log.columns[s.column])]
    if not shown:
        draw.rectangle(panel.plot, outline=AXIS)
        draw.text(((panel.plot[0] + panel.plot[2]) / 2, (panel.plot[1] + panel.plot[3]) / 2),
                  "no values in the log", fill=AXIS, font=label, anchor="mm")
        return
    values = [v for s in shown for v in log.columns[s.column] if v is not None]
    first, last = log.epochs[0], log.epochs[-1]
    pad = 0.5 if first == last else (last - first) * 0.02  # keep end points off the frame; one epoch is centred
    x_range = (first - pad, last + pad)
    axes = Axes(panel.plot, x_range, _value_range(values))
    _draw_axes(draw, axes, log.epochs, small)
    for s in shown:
        _draw_series(draw, axes, log.epochs, log.columns[s.column], s)
    _draw_legend(draw, panel, shown, small)


def render(log: RunLog, size: tuple[int, int] = SIZE) -> Image.Image:
    """The whole figure: the title, then loss, accuracy and learning-rate panels sharing the epoch axis."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    fonts = (_font(13), _font(15))
    draw.text((size[0] / 2, TITLE_H / 2), title_of(log), fill=TEXT, font=_font(18), anchor="mm")
    for panel, (name, series) in zip(layout(size), PANELS):
        draw_panel(draw, panel, name, series, log, fonts)
    last = layout(size)[-1]
    draw.text(((last.plot[0] + last.plot[2]) / 2, last.box[3] - 2), "epoch", fill=TEXT, font=fonts[0], anchor="md")
    return image


# ---------------------------------------------------------------------------------------------------- matplotlib

def _matplotlib_png(log: RunLog, path: str) -> bool:
    """The same three panels with matplotlib when it is installed (return True); False leaves it to PIL."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display on a training server
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axs = plt.subplots(3, 1, figsize=(SIZE[0] / 100, SIZE[1] / 100), dpi=100, sharex=True)
    for ax, (name, series) in zip(axs, PANELS):
        for s in series:
            ys = [math.nan if v is None else v for v in log.columns[s.column]]
            if not all(math.isnan(v) for v in ys):
                ax.plot(log.epochs, ys, "--" if s.dashed else "-", marker="o" if len(ys) <= MAX_MARKERS else None,
                        color=tuple(c / 255 for c in s.color), label=s.label)
        ax.set_ylabel(name)
        ax.grid(True, color="0.9")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    axs[-1].set_xlabel("epoch")
    fig.suptitle(title_of(log))
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------------- command line

def write_report(csv_path: str, out_path: str | None = None, use_matplotlib: bool = False) -> str:
    """Draw the curves of one training CSV log to ``out_path`` (default: the CSV's path with .png) and return it."""
    log = read_log(csv_path)
    out = out_path or os.path.splitext(csv_path)[0] + ".png"
    if use_matplotlib and _matplotlib_png(log, out):
        return out
    if use_matplotlib:
        print("note: matplotlib is not installed; drawing with PIL", file=sys.stderr)
    render(log).save(out)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Plot loss, accuracy and learning rate from a run's CSV log(s).")
    parser.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                        help="a training run's --output-dir: every training CSV log in it gets a PNG beside it")
    parser.add_argument("--csv", metavar="PATH", help="plot this CSV log instead of searching RUN_DIR")
    parser.add_argument("--out", metavar="PATH", help="where to write the PNG (one CSV only; default <csv name>.png)")
    parser.add_argument("--matplotlib", action="store_true", help="draw with matplotlib when it is installed")
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
        written = [write_report(p, args.out, args.matplotlib) for p in paths]
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main(get_args_parser().parse_args())
