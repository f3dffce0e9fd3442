"""User-facing failures: one sentence naming the thing and the fix, never a traceback."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

INTERRUPTED = "=> interrupted by Ctrl+C (SIGINT)"
TERMINATED = "=> stopped by SIGTERM; nothing half-written is left: run the same command again to finish"


class UserError(Exception):
    """An error the user caused (bad path, bad flag, wrong checkpoint); its message says what to do."""


def first_line(exc: BaseException, limit: int = 120) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type's name when it has no text
    (an EOFError from a zero-byte file has none)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


@contextlib.contextmanager
def tolerant_console() -> Iterator[None]:
    """Print what cannot be encoded (a non-UTF-8 file name, on any console) as backslash escapes, not a crash.

    File names that are not valid UTF-8 reach Python as strings with lone surrogates (``caf\\udce9.png``); a
    console with strict error handling (``PYTHONIOENCODING=utf-8:strict``, or a UTF-8 locale other than C.UTF-8)
    raises UnicodeEncodeError on them. Files written by the scripts use ``surrogateescape`` instead, so that they
    keep the original bytes. The streams' error handling is restored on exit.
    """
    streams = [s for s in (sys.stdout, sys.stderr) if callable(getattr(s, "reconfigure", None))]
    previous = [s.errors for s in streams]
    for stream in streams:
        stream.reconfigure(errors="backslashreplace")
    try:
        yield
    finally:
        for stream, errors in zip(streams, previous):
            with contextlib.suppress(ValueError):  # the stream was closed meanwhile
                stream.reconfigure(errors=errors)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a UserError into `error: <message>` on stderr and exit status 2 (argparse's convention).

    Also the one place where every script's output becomes safe for any file name (``tolerant_console``), and where
    a Ctrl+C that no loop turned into a clean stop (during start-up, or a second Ctrl+C) exits 130 in one line.
    """
    if signal.getsignal(signal.SIGINT) is _stop_at_once:  # main has started: Ctrl+C is a KeyboardInterrupt again
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with tolerant_console():
        try:
            yield
        except UserError as exc:
            message = str(exc)
            if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the worker's own sentence
                message = message.strip().splitlines()[-1].split("UserError: ", 1)[-1]
            print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print(INTERRUPTED, file=sys.stderr, flush=True)
            sys.exit(128 + signal.SIGINT)
        except Terminated:
            print(TERMINATED, file=sys.stderr, flush=True)
            sys.exit(128 + signal.SIGTERM)


class Terminated(BaseException):
    """A SIGTERM, raised (inside ``sigterm_raises``) where the program was, so that its clean-up runs."""


def _raise_terminated(_signum, _frame) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside, a SIGTERM raises ``Terminated`` instead of ending the process at once, so that a writer's temporary
    file is removed on the way out (``files.atomic_write``) and ``exit_on_user_error`` (entered first) ends it in
    one line, status 143. For the scripts that write files without a training loop (the converter, valprep,
    export.py, the comparison); the training loop has its own clean stop. The earlier handler is restored."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_at_once(_signum, _frame) -> None:
    print(INTERRUPTED, file=sys.stderr, flush=True)
    os._exit(128 + signal.SIGINT)  # nothing to clean up yet; an exception could be swallowed by a library's import


def quiet_ctrl_c(module_name: str) -> None:
    """When ``module_name`` is ``"__main__"`` (a script run as a program, not imported), a Ctrl+C before ``main``
    starts (during the seconds that torch takes to import) ends the process at once with one line and status 130.

    A signal handler, not an exception: an exception raised inside torch's imports was seen to be swallowed, and the
    script then ran on. ``exit_on_user_error``, which every ``main`` enters first, restores Python's own handler.
    Imported, it does nothing.
    """
    if module_name == "__main__":
        signal.signal(signal.SIGINT, _stop_at_once)
