"""The ImageFolder format: DIR/train/<class>/<image> and DIR/val/<class>/<image>, read with each file's path."""
from __future__ import annotations

import os

from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from common.data import transforms, valprep
from common.data.images import list_unreadable, load_rgb
from common.data.samples import CompactSamples
from common.data.unreadable import BadImageLog, load_or_skip
from common.errors import UserError


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


LAYOUT_HELP = ("expected DIR/train/<class>/<image> and DIR/val/<class>/<image> (the ImageNet layout, one folder per "
               "class); pass --dummy to try the scripts on synthetic images")


class ImageFolderWithPaths(datasets.ImageFolder):
    """torchvision ImageFolder that returns ``(image, target, path)`` and ignores hidden files and folders.

    Images are decoded by ``transforms.load_uint8`` (``fast``: JPEG through libjpeg-turbo, to a uint8 tensor) or
    ``images.load_rgb`` (PIL): EXIF orientation, CMYK, 16-bit and transparency are handled either way, and an
    unreadable file raises ``images.BadImage`` naming it and why. The sample list is stored compactly (numpy
    arrays, ``samples.CompactSamples``) so that DataLoader workers do not copy it page by page.

    With a ``bad_log`` under policy ``skip``, an unreadable file is reported and replaced by the next readable one
    (``substitute``: training keeps batches full) or by None (evaluation, where ``skip_none_collate`` drops it so
    that no image is counted twice).
    """

    def __init__(self, root: str, transform=None, bad_log: BadImageLog | None = None, substitute: bool = True,
                 fast: bool = False) -> None:
        super().__init__(root, transform=transform, loader=transforms.load_uint8 if fast else load_rgb)
        self.samples = self.imgs = CompactSamples(self.samples)
        self.targets = self.samples.targets
        self.bad_log, self.substitute = bad_log, substitute

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not _is_hidden(e.name))
        if not classes:
            flat = valprep.flat_folder_error(directory)  # images but no class folders: an unsorted ImageNet val/?
            raise UserError(flat or f"{directory!r} has no class folders; {LAYOUT_HELP}.")
        return classes, {name: i for i, name in enumerate(classes)}

    def __getitem__(self, index: int):
        return load_or_skip(self, index, lambda i, path: self.loader(path))


IMAGE_EXTENSIONS = IMG_EXTENSIONS  # what a folder read without labels counts as an image: torchvision ImageFolder's


def _is_image_name(name: str) -> bool:
    return not _is_hidden(name) and has_file_allowed_extension(name, IMAGE_EXTENSIONS)


def loose_images(folder: str) -> list[str]:
    """Every image file under ``folder`` and its subfolders (hidden ones skipped): a folder's files by name, then each
    subfolder's, by name. What is read of a folder without labels; an image is a file with one of the extensions
    that torchvision's ImageFolder reads."""
    found = []
    for dirpath, dirnames, names in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        found += [os.path.join(dirpath, n) for n in sorted(names) if _is_image_name(n)]
    return found


def is_flat(folder: str) -> bool:
    """Whether ``folder`` holds image files and no (visible) subfolder: images without class folders."""
    if not os.path.isdir(folder):
        return False
    entries = [e for e in os.scandir(folder) if not _is_hidden(e.name)]
    return not any(e.is_dir() for e in entries) and any(e.is_file() and _is_image_name(e.name) for e in entries)


def split_dirs(root: str) -> tuple[str, str]:
    """``(root/train, root/val)``, or a UserError that explains the expected layout."""
    if not os.path.isdir(root):
        raise UserError(f"dataset folder {root!r} does not exist or is not a folder; {LAYOUT_HELP}.")
    missing = [name for name in ("train", "val") if not os.path.isdir(os.path.join(root, name))]
    if missing:
        raise UserError(f"dataset folder {root!r} has no {' or '.join(m + '/' for m in missing)} subfolder; "
                        f"{LAYOUT_HELP}.")
    return os.path.join(root, "train"), os.path.join(root, "val")


def image_folder(directory: str, transform, bad_log: BadImageLog | None = None, substitute: bool = True,
                 fast: bool = False) -> ImageFolderWithPaths:
    """An ImageFolderWithPaths over ``directory``, with empty or unusable folders reported as a UserError."""
    try:
        return ImageFolderWithPaths(directory, transform=transform, bad_log=bad_log, substitute=substitute, fast=fast)
    except FileNotFoundError as exc:  # raised by torchvision when a class folder holds no image
        raise UserError(f"{directory!r}: {exc}; remove empty class folders or add images to them.") from None


def check_same_classes(train_classes: list[str], val_classes: list[str]) -> None:
    """Classes are matched by name, never by position: refuse train/ and val/ with different class folders."""
    if train_classes == val_classes:
        return
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    raise UserError(f"train/ and val/ hold different class folders (only in train/: {only_train[:10]}, "
                    f"only in val/: {only_val[:10]}); give both splits the same class folders.")


def found_at(root: str) -> bool:
    """Whether ``root`` holds ``train/`` and ``val/`` folders."""
    return all(os.path.isdir(os.path.join(root, name)) for name in ("train", "val"))


def check(root: str) -> None:
    """Refuse a root without ``train/`` and ``val/`` before any process starts."""
    split_dirs(root)


def eval_dir(root: str) -> str:
    """The folder whose subfolders are the classes: ``root/val`` when there is one, else ``root`` itself."""
    if not os.path.isdir(root):
        raise UserError(f"{root!r} is not a folder; pass a dataset root holding val/<class>/* or a folder of "
                        "class folders.")
    val = os.path.join(root, "val")
    return val if os.path.isdir(val) else root


def datasets(root: str, fast: bool, train_tf, val_tf, bad_log: BadImageLog | None = None):
    """The train and validation folders under ``root`` (same class folders) and their class names."""
    train_dir, val_dir = split_dirs(root)
    train = image_folder(train_dir, train_tf, bad_log, substitute=True, fast=fast)
    val = image_folder(val_dir, val_tf, bad_log, substitute=False, fast=fast)
    check_same_classes(train.classes, val.classes)
    return train, val, train.classes


def split(root: str, name: str, transform, fast: bool) -> Dataset:
    """One split read for evaluation: ``root/train``, or for ``val`` the class folders of ``eval_dir(root)``."""
    folder = os.path.join(root, name) if name != "val" else eval_dir(root)
    return image_folder(folder, transform, fast=fast)


def scan(root: str, splits: tuple[str, ...], hint: str, workers: int, limit: int | None = None) -> int:
    """``--check-data``: decode the images of ``splits`` (the first ``limit`` of each) with ``workers`` processes,
    list the unreadable ones; 1 if there are any."""
    sets = [split(root, name, None, False) for name in splits]
    paths = [path for ds in sets for path, _ in ds.samples[:limit]]
    where = f"under {sets[0].root if len(sets) == 1 else root}"
    return list_unreadable(paths, where, workers, hint)
