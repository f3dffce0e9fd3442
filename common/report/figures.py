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


def _heatmap_cell(n: int) -> int:
    """Pixels per cell: large enough to print a count in for a few classes, at least one for a thousand."""
    return max(1, min(48, HEATMAP_SIDE // max(1, n)))


def confusion_figure(cm: torch.Tensor, names: list[str]) -> Figure:
    """The heatmap of a (true x predicted) count matrix, each row scaled by its class's image count.

    Rows are labelled ``i name`` and columns ``i``, and each cell shows its count while there is room for it
    (up to MAX_LABELLED_CLASSES classes); raises MatplotlibMissing without matplotlib.
    """
    n = cm.shape[0]
    cell, labelled = _heatmap_cell(n), n <= MAX_LABELLED_CLASSES
    row_labels = [f"{i} {printable(name)[:30]}" for i, name in enumerate(names)]
    label_w = 7 * max(map(len, row_labels), default=0) if labelled else 40
    side = max(240, n * cell)
    figure = new_figure(side + label_w + 190, side + 130, "the confusion-matrix PNG", constrained=True)
    ax = figure.add_subplot()
    shares = (cm.double() / cm.sum(1, keepdim=True).clamp(min=1)).numpy()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest" if cell > 1 else "antialiased")
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class's images")
    ax.set(xlabel="predicted class", ylabel="true class", title=f"confusion matrix: {int(cm.sum())} images")
    if labelled:
        ax.set_xticks(range(n), [str(i) for i in range(n)])
        ax.set_yticks(range(n), row_labels)
        ax.tick_params(length=0)
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
