"""User-facing failures: one sentence naming the thing and the fix, never a traceback."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator


class UserError(Exception):
    """An error the user caused (bad path, bad flag, wrong checkpoint); its message says what to do."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a UserError into `error: <message>` on stderr and exit status 2 (argparse's convention)."""
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
