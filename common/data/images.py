"""Decode any image file a real dataset may hold into an RGB PIL image, or say precisely why it cannot.

``load_rgb`` is the per-sample loader (it runs in DataLoader workers, so good images cost one decode and nothing
more); ``check_images`` scans a list of files with it and returns every bad one as a ``BadImage`` (path, reason),
and ``list_unreadable`` prints that scan for the ``--check-data`` mode of every script.
The format is always detected from the file's content, never from its name.
"""
from __future__ import annotations

import io
import math
import os
import struct
import warnings
from concurrent.futures import ProcessPoolExecutor

from PIL import Image, ImageOps, UnidentifiedImageError

# Modes whose samples run to 65535 (16-bit PNG and TIFF); ``I`` is how older Pillows open a 16-bit PNG.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# A transparent pixel has no colour of its own; white is what image viewers and browsers show behind it, and it
# keeps a dark object on a transparent background (logos, product shots) looking as it does on screen.
_BACKGROUND = (255, 255, 255)
# File signatures, used only after Pillow gave up, to tell "a damaged PNG" from "not an image at all".
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))
# What Pillow raises for a file it cannot read: decoders raise OSError (truncation included), plugins SyntaxError,
# ValueError or struct.error on malformed headers or chunks, and IndexError/TypeError/EOFError on some
# inconsistent files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)


class BadImage(Exception):
    """A file that cannot be decoded into an image: ``path`` and a short human ``reason`` ("truncated JPEG")."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)  # both in args, so that it pickles across a process pool
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def load_rgb(path: str) -> Image.Image:
    """Decode ``path`` fully into an RGB image, upright as its EXIF orientation says, or raise ``BadImage``.

    Grayscale, palette, CMYK and 16-bit images are converted to 8-bit RGB; transparent pixels become white. An image
    over ``PIL.Image.MAX_IMAGE_PIXELS`` is refused even where Pillow would only warn (up to twice the limit).
    """
    try:
        # Our own file object (as torchvision's pil_loader does): it is closed on return, multi-frame formats too.
        with open(path, "rb") as f:
            return _decode(f, path, None)
    except OSError as exc:  # open() itself failed: permission, missing file, a directory
        raise BadImage(path, _reason(path, exc, None)) from exc


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """``load_rgb`` of an image held in memory (a parquet row, a tar member); ``name`` is what a BadImage names."""
    return _decode(io.BytesIO(data), name, data[:16])


def _decode(f, path: str, head: bytes | None) -> Image.Image:
    """Decode the open image file ``f`` (named ``path``) into RGB, or raise BadImage; ``head``: its first bytes,
    when it is not a file that can be read again."""
    fmt = None
    try:
        with warnings.catch_warnings():
            # Local to this call; catch_warnings restores the filters, although not thread-safely before Python
            # 3.14 (DataLoader workers are processes, so each has its own).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(f)
            fmt = image.format
            image.load()  # decode now, so that a truncated file fails here and not inside a transform
            ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is nothing to turn
            return _to_rgb(image)
    except _DECODE_ERRORS as exc:
        raise BadImage(path, _reason(path, exc, fmt, head)) from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """The decoded ``image`` as 8-bit RGB (itself when it already is)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        # convert("RGB") would clip every value above 255 to white; scale 0..65535 to 0..255, rounding.
        if image.mode not in ("I", "I;16"):  # point() takes only these two
            image = image.convert("I")
        return image.point(lambda v: v / 257 + 0.5).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")  # also applies a palette's or a tRNS chunk's transparency
        rgb = Image.new("RGB", rgba.size, _BACKGROUND)
        rgb.paste(rgba, mask=rgba)
        return rgb
    # CMYK: Pillow already undoes Adobe's inverted CMYK on decode; no ICC colour management is applied.
    return image if image.mode == "RGB" else image.convert("RGB")


def _reason(path: str, exc: BaseException, fmt: str | None, head: bytes | None = None) -> str:
    """Short human text for why ``path`` failed with ``exc``; ``fmt`` is the format Pillow saw, if it got that far;
    ``head`` the first bytes of an image held in memory (None: read them from ``path``)."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"larger than the decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} pixels)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "a directory, not a file"
    if isinstance(exc, FileNotFoundError):
        return "broken symbolic link" if os.path.islink(path) else "no such file"
    if isinstance(exc, OSError) and exc.errno is not None:  # the system's, not Pillow's: EIO, ELOOP, ...
        return f"cannot read ({exc.strerror})"
    if head is None:
        head = _head(path) if fmt is None else None
    if isinstance(exc, UnidentifiedImageError):
        if head == b"":
            return "empty file"
        kind = signature_format(head)
        return f"truncated or corrupt {kind} header" if kind else "not an image"
    kind = fmt or signature_format(head) or "image"
    if "truncated" in str(exc).lower():
        return f"truncated {kind}"
    return f"corrupt {kind} ({type(exc).__name__}: {exc})"


def _head(path: str) -> bytes | None:
    """The first bytes of ``path`` (enough for any signature below), or None when it cannot be read again."""
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except OSError:
        return None


def signature_format(head: bytes | None) -> str | None:
    """The format whose signature ``head`` starts with, if any; only asked once Pillow has given up on a file."""
    if head is None:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for signature, kind in _SIGNATURES if head.startswith(signature)), None)


_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}


def extension_of(data: bytes) -> str:
    """The file extension that an encoded image's content calls for (``.jpg``, ``.png``...), ``.bin`` if unknown."""
    return _EXTENSIONS.get(signature_format(data[:16]) or "", ".bin")


def _check_one(path: str) -> BadImage | None:
    """``load_rgb``'s verdict on one file: None when it decodes."""
    try:
        load_rgb(path)
    except BadImage as exc:
        # A fresh one without the traceback, whose frames would keep each failed decode's pixel buffer alive.
        return BadImage(exc.path, exc.reason)
    return None


def check_images(paths: list[str], workers: int = 0) -> list[BadImage]:
    """Decode every file in ``paths`` with ``load_rgb`` and return the bad ones, in input order.

    ``workers > 0`` spreads the files over that many processes, in chunks so that the per-file cost of passing
    work between processes stays small next to a decode.
    """
    if workers <= 0 or len(paths) < 2:
        results = map(_check_one, paths)
        return [bad for bad in results if bad is not None]
    # About 4 chunks per worker balances the load; the cap keeps the last straggling chunk short on huge sets.
    chunksize = max(1, min(256, math.ceil(len(paths) / (4 * workers))))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [bad for bad in pool.map(_check_one, paths, chunksize=chunksize) if bad is not None]


def list_unreadable(paths: list[str], where: str, workers: int = 0, hint: str = "") -> int:
    """``--check-data``: decode every file, print ``unreadable: <path>: <reason>`` for each bad one and a summary
    line naming ``where``; return the exit status, 1 if any file is unreadable, else 0.

    ``hint`` is appended to the summary when something is unreadable (what the script does with such files).
    """
    bad = check_images(paths, workers)
    for exc in bad:
        print(f"unreadable: {exc}")
    print(f"=> checked {len(paths)} images {where}: {len(bad)} unreadable" + (f" ({hint})" if bad and hint else ""),
          flush=True)
    return 1 if bad else 0
