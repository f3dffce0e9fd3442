"""Output files and folders: every file a script writes for the user appears whole or not at all.

* ``make_output_dir``: create the output folder and check that it is writable, before any work starts.
* ``atomic_write``: write a temporary file beside the target, fsync it, rename it over the target; on any failure
  the temporary file is removed and the target is left as it was. Checkpoints use it directly (a failed save is a
  warning there, not the end of a run).
* ``write_atomically`` / ``write_if_changed``: the same for reports (CSV, PNG, manifest), where a refused write
  (full disk, read-only folder, file size limit, a name the filesystem cannot hold) ends in one sentence that names
  the file and says that an earlier copy is kept.
* ``write_folder_atomically``: the same for a folder of files (export.py --format timm): built beside the target,
  put in place by a rename once whole.
* ``csv_bytes``: CSV rows as bytes, with file names that are not UTF-8 written back as their original bytes.
* ``check_apart`` / ``inside``: an output never is, or sits inside, an input; a path built from data (a class name,
  a manifest entry) stays inside its output folder.
* ``remove_stale_parts``: the temporary files an interrupted writer left in a folder, removed on the next run.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from typing import BinaryIO

from common.errors import UserError

Writer = Callable[[BinaryIO], None]


TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".part"


def _is_within(path: str, folder: str) -> bool:
    """Whether the resolved ``path`` is ``folder`` or lies below it (both resolved: links followed)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_apart(output: str, out_flag: str, inputs: dict[str, str | None], output_is_dir: bool = False) -> None:
    """Refuse an output path that is one of ``inputs`` ({flag: path}; a link or hard link to it included) or sits
    inside one of them, and for a folder output an input inside it: writing there would replace or change what the
    run reads. One UserError naming both flags; call it before any work starts."""
    for flag, path in inputs.items():
        if not path:
            continue
        same = os.path.exists(output) and os.path.exists(path) and os.path.samefile(output, path)
        if same or _is_within(output, path) or (output_is_dir and _is_within(path, output)):
            where = "is" if same or os.path.realpath(output) == os.path.realpath(path) else \
                "is inside" if _is_within(output, path) else "holds"
            raise UserError(f"{out_flag} {output!r} {where} {flag} {path!r}, which this run reads; writing there would "
                            f"replace it: choose an {out_flag} outside it.")


def inside(folder: str, *parts: str, what: str = "a name") -> str:
    """``folder/parts...``, refused in one UserError when ``parts`` (taken from data: a class name, a manifest
    entry) is absolute, holds ``..`` or otherwise leads out of ``folder``."""
    for part in parts:
        if not part or os.path.isabs(part) or os.pardir in part.replace("\\", "/").split("/") or "\0" in part:
            raise UserError(f"{what} {part!r} would be written outside {folder!r}; rename it (no '..', no absolute "
                            "path, not empty) and run it again.")
    path = os.path.join(folder, *parts)
    if not _is_within(os.path.dirname(path) if os.path.islink(path) else path, folder):
        raise UserError(f"{what} {os.path.join(*parts)!r} leads outside {folder!r} through a link; remove the link "
                        "and run it again.")
    return path


def remove_stale_parts(folder: str) -> int:
    """Remove the temporary files (``.tmp-*.part``) that ``atomic_write`` left in ``folder`` and its subfolders when
    a run was killed (SIGKILL, power loss) before it could clean up; returns how many were removed."""
    removed = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(os.path.join(root, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def make_output_dir(path: str, flag: str = "--output-dir") -> None:
    """Create the output folder (when missing) and make sure it is writable, before any work starts."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {flag} {path!r} ({exc.strerror}); choose a writable folder.") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path!r} is not writable; choose a writable folder.")


def atomic_write(path: str, write: Writer) -> None:
    """Call ``write(file)`` on a temporary file in the target folder, fsync it, then rename it over ``path``.

    Readers see the old file or the new one, never half of one. Errors propagate after the temporary file is
    removed. The file gets the permissions a plain ``open()`` would give (mkstemp alone makes 0600 files).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def write_atomically(path: str, write: Writer) -> str:
    """``atomic_write``, with a refusal of the system (or of ``write``) turned into one UserError naming ``path``;
    returns ``path``."""
    try:
        atomic_write(path, write)
    except OSError as exc:
        kept = "the earlier file is kept" if os.path.exists(path) else "nothing was written"
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); {kept}: free some disk space, choose a "
                        "writable folder or a shorter name, and run it again.") from None
    return path


def write_if_changed(path: str, content: bytes) -> bool:
    """``write_atomically`` ``content`` unless ``path`` already holds exactly it, so that a rerun changes nothing
    (not even the modification time); returns whether the file was written."""
    try:
        with open(path, "rb") as f:
            if f.read() == content:
                return False
    except OSError:
        pass
    write_atomically(path, lambda f: f.write(content))
    return True


def csv_bytes(header: list[str] | None, rows: Iterable[Iterable]) -> bytes:
    """CSV rows (after an optional header) as UTF-8 bytes; names that are not UTF-8 (decoded by Python with
    surrogate escapes) come back as their original bytes."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode("utf-8", "surrogateescape")


def sha256_of(path: str) -> str:
    """The hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_folder_atomically(path: str, fill: Callable[[str], None]) -> str:
    """Call ``fill(folder)`` on a new temporary folder beside ``path``, then put it at ``path``: readers see the
    earlier folder or the new one, never a half-written one. An earlier folder at ``path`` is replaced (the caller
    decides whether it may be); on any failure, of ``fill`` or of the system, the temporary folder is removed and
    ``path`` is left as it was. A refusal of the system is one UserError naming ``path``; returns ``path``."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = old = None
    try:
        tmp = tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=parent)
        os.chmod(tmp, 0o777 & ~_umask())
        fill(tmp)
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=parent)
            os.replace(path, old)  # onto the empty temporary folder, which a rename may replace
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if old and not os.path.exists(path):
            os.replace(old, path)
            old = None
        kept = "the earlier folder is kept" if os.path.exists(path) else "nothing was written"
        raise UserError(f"cannot write {path} ({exc.strerror or exc}); {kept}: free some disk space or choose a "
                        "writable folder, and run it again.") from None
    finally:
        for leftover in (tmp, old):
            if leftover and os.path.isdir(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
    return path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
