"""``--check-data``: decode every image a script would read and name the unreadable ones, in any format."""
from __future__ import annotations

from common.data.formats import DataSource
from common.data.images import list_unreadable

TRAINING_HINT = "training skips them with --bad-images skip, the default"
EVALUATION_HINT = "an evaluation skips them and counts them apart"


def scan_source(source: DataSource, splits: tuple[str, ...], hint: str, workers: int, limit: int | None = None) -> int:
    """Decode every image of ``splits`` (the first ``limit`` of each, where the format can say) of ``source``,
    print each unreadable one and a summary; 1 if there are any, else 0."""
    return source.reader.scan(source.root, splits, hint, workers, limit)


def scan_files(paths: list[str], workers: int, hint: str) -> int:
    """The same for image files named one by one (on the command line)."""
    return list_unreadable(paths, "on the command line", workers, hint)
