"""common.images: every image a dataset may hold decodes to RGB, and every bad file is named with its reason.

All files are generated here, into ``tmp_path``, with PIL and numpy.
"""
from __future__ import annotations

import builtins
import os
import warnings

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets.folder import pil_loader

from common.data.images import BadImage, check_images, load_rgb

RED, BLUE = (255, 0, 0), (0, 0, 255)


def noisy_rgb(size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    """An RGB image of ``size`` (width, height) with random pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_bytes(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def jpeg_bytes(tmp_path) -> bytes:
    path = tmp_path / "source.jpg"
    noisy_rgb((64, 48)).save(path, quality=90)
    return path.read_bytes()


def stored_mode(path) -> str:
    with Image.open(path) as image:
        return image.mode


def assert_close(pixel: tuple[int, ...], expected: tuple[int, ...], tol: int = 2) -> None:
    assert all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True)), (pixel, expected)


def reason_of(path: str) -> str:
    with pytest.raises(BadImage) as info:
        load_rgb(path)
    assert info.value.path == path
    assert str(info.value) == f"{path}: {info.value.reason}"
    return info.value.reason


# Images that must be read, as RGB and with the right pixels.

@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_png_becomes_rgb_with_the_same_values(tmp_path, mode):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (10, 1))  # (10, 64), a ramp along x
    image = Image.fromarray(gray).convert(mode)
    image.save(tmp_path / "gray.png")
    out = load_rgb(str(tmp_path / "gray.png"))
    assert out.mode == "RGB" and out.size == (64, 10)
    expected = np.asarray(image.convert("L"))
    assert (np.asarray(out) == expected[:, :, None]).all()


@pytest.mark.parametrize("cmyk, rgb", [((0, 255, 255, 0), RED), ((255, 255, 0, 0), BLUE), ((0, 0, 0, 255), (0, 0, 0)),
                                       ((0, 0, 0, 0), (255, 255, 255))])
def test_cmyk_jpeg_decodes_to_the_intended_rgb_colour(tmp_path, cmyk, rgb):
    Image.new("CMYK", (16, 8), cmyk).save(tmp_path / "cmyk.jpg", quality=95)
    assert stored_mode(tmp_path / "cmyk.jpg") == "CMYK"
    out = load_rgb(str(tmp_path / "cmyk.jpg"))
    assert out.mode == "RGB" and out.size == (16, 8)
    assert_close(out.getpixel((8, 4)), rgb, tol=3)


def test_palette_png_with_transparency_turns_transparent_pixels_white(tmp_path):
    image = Image.new("P", (10, 6), 0)
    image.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)  # entry 0 black (made transparent), entry 1 a red
    image.paste(1, (5, 0, 10, 6))  # right half opaque red
    image.save(tmp_path / "palette.png", transparency=0)
    out = load_rgb(str(tmp_path / "palette.png"))
    assert out.mode == "RGB" and out.size == (10, 6)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((9, 5)) == (200, 30, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_image_with_alpha_is_composited_on_white(tmp_path, mode):
    pixels = np.zeros((4, 3, 4), dtype=np.uint8)  # (H, W, RGBA)
    pixels[:, 0] = (10, 10, 10, 0)  # transparent
    pixels[:, 1] = (10, 10, 10, 255)  # opaque
    pixels[:, 2] = (10, 10, 10, 128)  # half: between the colour and white
    Image.fromarray(pixels, "RGBA").convert(mode).save(tmp_path / "alpha.png")
    out = load_rgb(str(tmp_path / "alpha.png"))
    assert out.mode == "RGB" and out.size == (3, 4)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (10, 10, 10)
    assert_close(out.getpixel((2, 0)), (133, 133, 133))  # 10 * 128/255 + 255 * 127/255


def test_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert stored_mode(tmp_path / "deep.png").startswith("I")  # Pillow really opens it as 16-bit
    out = load_rgb(str(tmp_path / "deep.png"))
    assert out.mode == "RGB" and out.size == (5, 1)
    assert [out.getpixel((x, 0))[0] for x in range(5)] == [0, 1, 128, 255, 4]  # 1000 / 257 = 3.9


@pytest.mark.parametrize("orientation, top, bottom", [(6, RED, BLUE), (8, BLUE, RED)])
def test_exif_orientation_turns_the_image_upright(tmp_path, orientation, top, bottom):
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: the camera was turned clockwise (the stored left is up); 8: anticlockwise
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = load_rgb(str(tmp_path / "rotated.jpg"))
    assert out.mode == "RGB" and out.size == (20, 40)
    assert_close(out.getpixel((10, 5)), top, tol=6)
    assert_close(out.getpixel((10, 34)), bottom, tol=6)


@pytest.mark.parametrize("name, fmt, options", [
    ("upper.JPEG", "JPEG", {}),
    ("upper.PNG", "PNG", {}),
    ("progressive.jpg", "JPEG", {"progressive": True}),
    ("a_jpeg_named.png", "JPEG", {}),
    ("a_png_named.jpg", "PNG", {}),
    ("no_extension", "PNG", {}),
])
def test_format_comes_from_the_content_not_the_name(tmp_path, name, fmt, options):
    noisy_rgb().save(tmp_path / name, format=fmt, **options)
    out = load_rgb(str(tmp_path / name))
    assert out.mode == "RGB" and out.size == (48, 40)
    assert (np.asarray(out) == np.asarray(pil_loader(str(tmp_path / name)))).all()


@pytest.mark.parametrize("name", ["plain.jpg", "plain.png"])
def test_plain_rgb_image_is_exactly_what_torchvision_pil_loader_gives(tmp_path, name):
    noisy_rgb().save(tmp_path / name)
    out, reference = load_rgb(str(tmp_path / name)), pil_loader(str(tmp_path / name))
    assert out.mode == reference.mode == "RGB" and out.size == reference.size
    assert (np.asarray(out) == np.asarray(reference)).all()


# Files that must be reported, with the reason.

def test_zero_byte_file_is_an_empty_file(tmp_path):
    assert reason_of(write_bytes(tmp_path / "empty.jpg", b"")) == "empty file"


def test_first_half_of_a_jpeg_is_a_truncated_jpeg(tmp_path):
    data = jpeg_bytes(tmp_path)
    assert reason_of(write_bytes(tmp_path / "half.jpg", data[: len(data) // 2])) == "truncated JPEG"


def test_png_signature_followed_by_garbage_is_a_corrupt_png_header(tmp_path):
    path = write_bytes(tmp_path / "broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert reason_of(path) == "truncated or corrupt PNG header"


def test_random_bytes_with_an_image_extension_are_not_an_image(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert reason_of(write_bytes(tmp_path / "random.jpg", data)) == "not an image"


def test_text_file_with_an_image_extension_is_not_an_image(tmp_path):
    assert reason_of(write_bytes(tmp_path / "notes.png", b"Not a picture, just some notes.\n" * 20)) == "not an image"


@pytest.mark.parametrize("limit", [6000, 1000], ids=["warning-range", "error-range"])
def test_image_over_the_decompression_bomb_limit_is_refused(tmp_path, monkeypatch, limit):
    # 100x100 = 10,000 pixels: between 1x and 2x a limit of 6000 Pillow only warns; above 2x of 1000 it raises.
    noisy_rgb((100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    filters = list(warnings.filters)
    assert reason_of(str(tmp_path / "big.png")) == f"larger than the decompression-bomb limit ({limit} pixels)"
    assert warnings.filters == filters  # the "error" filter was local to the call
    if limit == 6000:
        with pytest.warns(Image.DecompressionBombWarning):  # other code still only gets the warning
            Image.open(tmp_path / "big.png").close()


def test_image_at_the_decompression_bomb_limit_loads(tmp_path, monkeypatch):
    noisy_rgb((100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert load_rgb(str(tmp_path / "big.png")).size == (100, 100)


def test_unreadable_file_is_permission_denied(tmp_path, monkeypatch):
    path = str(tmp_path / "secret.png")
    noisy_rgb().save(path)
    os.chmod(path, 0)
    if os.geteuid() == 0:
        # root reads a mode-000 file anyway; make open() fail for this path exactly as the kernel does for other
        # users, so that the same code path (PermissionError out of open) is exercised.
        real_open = builtins.open

        def open_as_non_root(file, *args, **kwargs):
            if os.fspath(file) == path:
                raise PermissionError(13, "Permission denied", path)
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_as_non_root)
    assert reason_of(path) == "permission denied"


def test_broken_symlink_is_reported_as_such(tmp_path):
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    assert reason_of(str(tmp_path / "link.jpg")) == "broken symbolic link"


def test_missing_file_and_directory_are_reported(tmp_path):
    assert reason_of(str(tmp_path / "missing.jpg")) == "no such file"
    os.mkdir(tmp_path / "folder.jpg")
    assert reason_of(str(tmp_path / "folder.jpg")) == "a directory, not a file"


# Scanning many files.

def make_mixed_files(tmp_path) -> tuple[list[str], list[tuple[str, str]]]:
    """Good and bad files interleaved: (all paths, the expected (path, reason) of the bad ones in order)."""
    data = jpeg_bytes(tmp_path)
    bad = {"b_empty.jpg": (b"", "empty file"), "d_half.jpg": (data[: len(data) // 2], "truncated JPEG"),
           "f_text.png": (b"hello\n" * 50, "not an image")}
    names = ["a_good.jpg", "b_empty.jpg", "c_good.png", "d_half.jpg", "e_good.jpg", "f_text.png", "g_link.jpg"]
    names += [f"h_good{i}.png" for i in range(20)]
    paths, expected = [str(tmp_path / name) for name in names], []
    for i, (name, path) in enumerate(zip(names, paths)):
        if name in bad:
            write_bytes(path, bad[name][0])
            expected.append((path, bad[name][1]))
        elif name == "g_link.jpg":
            os.symlink(tmp_path / "gone.jpg", path)
            expected.append((path, "broken symbolic link"))
        else:
            noisy_rgb((16, 16), seed=i).save(path)
    return paths, expected


def test_check_images_returns_exactly_the_bad_files_in_order(tmp_path):
    paths, expected = make_mixed_files(tmp_path)
    found = check_images(paths)
    assert all(isinstance(bad, BadImage) for bad in found)
    assert [(bad.path, bad.reason) for bad in found] == expected


def test_check_images_with_two_worker_processes_gives_the_same_result(tmp_path):
    paths, expected = make_mixed_files(tmp_path)
    found = check_images(paths, workers=2)
    assert [(bad.path, bad.reason) for bad in found] == expected
    assert [str(bad) for bad in found] == [str(bad) for bad in check_images(paths, workers=0)]


def test_check_images_of_good_files_only_is_empty(tmp_path):
    paths = [str(tmp_path / f"img{i}.jpg") for i in range(3)]
    for i, path in enumerate(paths):
        noisy_rgb(seed=i).save(path)
    assert check_images(paths) == [] and check_images(paths, workers=2) == [] and check_images([]) == []
