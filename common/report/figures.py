"""PNG figures for people. Charts are drawn with matplotlib (an optional extra: requirements-extra.txt) on its Agg
canvas, which needs no display; image grids are plain images, tiled by torchvision's make_grid.

* ``new_figure`` / ``save_png``: the building blocks of every chart (``common.report``'s training curves, the
  confusion matrix here); ``save_png`` replaces the file atomically, so a failed write keeps the previous PNG.
* ``confusion_png``: a (true x predicted) heatmap for test.py; skipped with a one-line notice without matplotlib.
* ``contact_sheet``: captioned thumbnails for classify_test_data.py (Pillow and torchvision only).

torch, torchvision and matplotlib are imported in the functions that use them, so that ``python -m common.report``
starts in a fraction of a second and a missing matplotlib only costs the charts.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image, ImageDraw, ImageFont

from common import files
from common.data.images import BadImage, load_rgb
from common.errors import UserError

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

DPI = 100  # figure sizes are given in pixels; at 100 dpi an inch is 100 of them
INSTALL_HINT = "pip install -r requirements-extra.txt"
MAX_LABELLED_CLASSES = 40  # beyond this, row labels would not be readable: the heatmap is drawn without text
HEATMAP_SIDE = 800  # target side of the matrix area in pixels, before the per-cell size is clamped
CAPTION_H = 14  # height of a contact-sheet tile's caption band in pixels
LABEL_CHARS = 24  # class names longer than this are cut, with an ellipsis, on chart axes and under tiles


class MatplotlibMissing(UserError):
    """A chart was asked for and matplotlib is not installed; the message names the chart and the install command."""


# ---------------------------------------------------------------------------------------------------- chart helpers

def new_figure(width: int, height: int, purpose: str, constrained: bool = False) -> Figure:
    """An empty matplotlib Figure of ``width`` x ``height`` pixels on the Agg canvas (no display, no pyplot state).

    ``purpose`` names what needs it in the MatplotlibMissing error raised when matplotlib is not installed;
    ``constrained`` lets matplotlib fit the axes around their labels instead of fixed margins.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MatplotlibMissing(f"{purpose} needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)  # pyplot's backend switch is global; a canvas of its own is not
    return figure


def save_png(figure: Figure, path: str) -> str:
    """Encode ``figure`` as a PNG at its own pixel size to ``path`` with ``write_atomically``; return ``path``."""
    files.write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=DPI))
    return path


# ---------------------------------------------------------------------------------------------------- confusion matrix

def printable(name: str) -> str:
    """``name`` as text a font can draw: the bytes of a folder name that is not UTF-8 (which Python keeps as surrogate
    escapes) become U+FFFD, as a file manager shows them."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def short_label(name: str, chars: int = LABEL_CHARS) -> str:
    """``name`` made printable and cut to ``chars`` characters, the last an ellipsis when it was longer."""
    name = printable(name)
    return name if len(name) <= chars else name[:chars - 1] + "\u2026"


def _heatmap_cell(n: int) -> int:
    """Pixels per cell: large enough to print a count in for a few classes, at least one for a thousand."""
    return max(1, min(48, HEATMAP_SIDE // max(1, n)))


def confusion_figure(cm: torch.Tensor, names: list[str]) -> Figure:
    """The heatmap of a (true x predicted) count matrix, each row scaled by its class's image count.

    Up to MAX_LABELLED_CLASSES classes, rows and columns are labelled ``i name`` (columns slanted, long names cut)
    and each cell shows its count while there is room for it; beyond that both axes carry class indices at a
    readable spacing. Raises MatplotlibMissing without matplotlib.
    """
    n = cm.shape[0]
    cell, labelled = _heatmap_cell(n), n <= MAX_LABELLED_CLASSES
    labels = [f"{i} {short_label(name)}" for i, name in enumerate(names)]
    label_w = 7 * max(map(len, labels), default=0) if labelled else 40
    side = max(240, n * cell)
    figure = new_figure(side + label_w + 190, side + label_w + 130, "the confusion-matrix PNG", constrained=True)
    ax = figure.add_subplot()
    shares = (cm.double() / cm.sum(1, keepdim=True).clamp(min=1)).numpy()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest" if cell > 1 else "antialiased")
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class's images")
    ax.set(xlabel="predicted class", ylabel="true class", title=f"confusion matrix: {int(cm.sum())} images")
    if labelled:
        ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(n), labels)
        ax.tick_params(length=0)
    else:
        from matplotlib.ticker import MaxNLocator

        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=10, integer=True))
    if labelled and cell >= 20:
        for i, j in cm.nonzero().tolist():
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=min(10, cell // 3),
                    color="white" if shares[i, j] > 0.5 else "black")
    return figure


def confusion_png(cm: torch.Tensor, names: list[str], path: str) -> bool:
    """Save ``confusion_figure(cm, names)`` to ``path`` and return True; without matplotlib, print one line saying
    so and return False (the confusion-matrix CSV holds the same counts)."""
    try:
        figure = confusion_figure(cm, names)
    except MatplotlibMissing:
        print(f"=> {os.path.basename(path)} not drawn: matplotlib is not installed ({INSTALL_HINT}); "
              f"the confusion-matrix CSV has the same counts", flush=True)
        return False
    save_png(figure, path)
    return True


# ---------------------------------------------------------------------------------------------------- image grids

def captioned_grid(images: torch.Tensor, captions: list[str], title: str, per_row: int = 8) -> Figure:
    """(N, 3, H, W) float images in [0, 1] as a grid of ``per_row`` per row, each with its caption (a class name,
    cut to LABEL_CHARS) under it; raises MatplotlibMissing without matplotlib."""
    n, side = len(images), images.shape[-1]
    cols, rows = min(per_row, n), -(-n // per_row)
    tile = max(96, min(side, 224))
    figure = new_figure(cols * (tile + 12), rows * (tile + 30) + 40, "the samples sheet", constrained=True)
    figure.suptitle(title)
    for i, ax in enumerate(figure.subplots(rows, cols, squeeze=False).flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(images[i].permute(1, 2, 0).numpy())
            ax.set_title(short_label(captions[i], 18), y=-0.02, pad=0, va="top", fontsize=9)
    return figure


# ---------------------------------------------------------------------------------------------------- contact sheet

def _thumbnail(path: str, caption: str, size: int, font: ImageFont.ImageFont) -> torch.Tensor:
    """(3, size, size) float image: the centre of the file, decoded as training and evaluation see it (EXIF
    orientation applied, 16-bit scaled, transparency on white), with ``caption`` on a dark band at the bottom."""
    from torchvision import transforms

    image = transforms.CenterCrop(size)(transforms.Resize(size)(load_rgb(path)))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, size - CAPTION_H, size, size), fill=(0, 0, 0))
    draw.text((2, size - CAPTION_H + 1), printable(caption), fill=(255, 255, 255), font=font)
    return transforms.functional.to_tensor(image)


def contact_sheet(items: list[tuple[str, str]], path: str | BinaryIO, size: int = 128, per_row: int = 8) -> int:
    """Save ``(image path, caption)`` tiles as one grid PNG (to a path, replaced atomically, or to a binary file);
    return how many tiles it holds (0: nothing saved). A file that can no longer be decoded gets no tile."""
    import torch
    from torchvision.transforms.functional import to_pil_image
    from torchvision.utils import make_grid

    font = ImageFont.load_default()
    tiles = []
    for image_path, caption in items:
        try:
            tiles.append(_thumbnail(image_path, caption, size, font))
        except BadImage:
            continue
    if tiles:
        grid = make_grid(tiles, nrow=min(per_row, len(tiles)), padding=2, pad_value=1.0)
        # save_image's encoding, but with fast zlib settings: the sheet is for a quick look, not for archiving
        sheet: Image.Image = to_pil_image(grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8))
        if isinstance(path, str):
            files.write_atomically(path, lambda f: sheet.save(f, format="PNG", compress_level=1))
        else:
            sheet.save(path, format="PNG", compress_level=1)
    return len(tiles)
