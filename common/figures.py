"""PNG figures for people, drawn without matplotlib: a confusion-matrix heatmap (PIL) and a contact sheet of images
with captions (torchvision's make_grid, encoded as save_image does).
"""
from __future__ import annotations

from typing import BinaryIO

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision import transforms
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

MAX_LABELLED_CLASSES = 40  # beyond this, row labels would not be readable: the heatmap is drawn without text
HEATMAP_SIDE = 800  # target side of the matrix area in pixels, before the per-cell size is clamped


def _blue(v: float) -> tuple[int, int, int]:
    """White for 0, dark blue for 1."""
    return int(255 - 230 * v), int(255 - 190 * v), int(255 - 100 * v)


def confusion_png(cm: torch.Tensor, names: list[str], path: str) -> None:
    """Save a (true x predicted) count matrix as a heatmap, each row scaled by its class's image count.

    Rows are labelled ``i name``, columns ``i``, and each cell shows its count while there is room for it.
    """
    n = cm.shape[0]
    cell = max(1, min(48, HEATMAP_SIDE // max(1, n)))
    font = ImageFont.load_default()
    labelled = n <= MAX_LABELLED_CLASSES
    row_labels = [f"{i} {name}" for i, name in enumerate(names)] if labelled else []
    left = 8 + max((int(font.getlength(t)) for t in row_labels), default=0)
    top = 40 if labelled else 24
    title = "rows: true class, columns: predicted class (shade: share of the row)"
    width = max(left + n * cell + 8, int(font.getlength(title)) + 8)
    image = Image.new("RGB", (width, top + n * cell + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill="black", font=font)
    rows = cm.double() / cm.sum(1, keepdim=True).clamp(min=1)
    for i in range(n):
        if labelled:
            draw.text((4, top + i * cell + cell // 2), row_labels[i], fill="black", font=font, anchor="lm")
            draw.text((left + i * cell + cell // 2, top - 4), str(i), fill="black", font=font, anchor="mb")
        for j in range(n):
            v = float(rows[i, j])
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=_blue(v), outline=(225, 225, 225) if cell >= 8 else None)
            if labelled and cell >= 20 and cm[i, j] > 0:
                draw.text((box[0] + cell // 2, box[1] + cell // 2), str(int(cm[i, j])), font=font, anchor="mm",
                          fill="white" if v > 0.5 else "black")
    image.save(path)


def _thumbnail(path: str, caption: str, size: int, font: ImageFont.ImageFont) -> torch.Tensor:
    """(3, size, size) float image: the centre of the file with ``caption`` on a dark band at the bottom."""
    with open(path, "rb") as f:
        image = Image.open(f)
        image.draft("RGB", (size, size))  # JPEG: decode at the smallest DCT scale still >= size, several times faster
        image = image.convert("RGB")
    image = transforms.CenterCrop(size)(transforms.Resize(size)(image))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, size - 14, size, size), fill=(0, 0, 0))
    draw.text((2, size - 13), caption, fill=(255, 255, 255), font=font)
    return transforms.functional.to_tensor(image)


def contact_sheet(items: list[tuple[str, str]], path: str | BinaryIO, size: int = 128, per_row: int = 8) -> int:
    """Save ``(image path, caption)`` tiles as one grid PNG (to a path or a binary file); return how many tiles it
    holds (0: nothing saved)."""
    font = ImageFont.load_default()
    tiles = [_thumbnail(p, caption, size, font) for p, caption in items]
    if tiles:
        grid = make_grid(tiles, nrow=min(per_row, len(tiles)), padding=2, pad_value=1.0)
        # save_image's encoding, but with fast zlib settings: the sheet is for a quick look, not for archiving
        to_pil_image(grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)).save(path, format="PNG", compress_level=1)
    return len(tiles)
