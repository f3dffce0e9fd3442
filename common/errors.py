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
        message = str(exc)
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the worker's own sentence
            message = message.strip().splitlines()[-1].split("UserError: ", 1)[-1]
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
