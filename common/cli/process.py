"""How a script's process ends: a signal stop in one line with status 128 + N; a lost peer process, or a data
loading worker that died, in one line with status 1.

``exit_on_stop`` wraps the work of every script (the training launchers of ``launch``, network.py);
``run_in_context`` gives test.py and the sorter their process context (one process, or a torchrun rank) under it.
Nothing here imports the training engine, so that the prediction scripts start without it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch.distributed as dist

from common.models import checkpoint
from common.parallel import distributed, faults
from common.parallel.distributed import DistContext

T = TypeVar("T")


def _is_peer_failure(exc: BaseException) -> bool:
    """Whether an error raised inside a collective means that another process died or stopped answering."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection reset", "connection closed", "timed out"))


def _is_lost_worker(exc: BaseException) -> bool:
    """Whether a DataLoader worker process died (killed from outside: the kernel's out-of-memory killer, most often).

    torch says so in a RuntimeError, or, when the worker died while handing over a batch, the main process meets a
    ConnectionResetError or EOFError inside the DataLoader's own code.
    """
    text = str(exc)
    if "DataLoader worker" in text and ("killed by signal" in text or "exited unexpectedly" in text):
        return True
    inside = f"torch{os.sep}utils{os.sep}data"  # frames' file names, read without opening any source file
    return isinstance(exc, (ConnectionError, EOFError)) and any(
        inside in frame.f_code.co_filename for frame, _ in traceback.walk_tb(exc.__traceback__))


def lost_worker_message(exc: BaseException, checkpoint_dir: str | None) -> str:
    """The one line for a data loading worker that died: the likely cause, the flags to lower, the last checkpoint."""
    # An EOFError met while a batch was being handed over carries no text; name the exception instead.
    first = (str(exc).strip().splitlines() or [f"DataLoader worker exited unexpectedly: {type(exc).__name__}"])[0][:160]
    line = (f"error: a data loading worker died ({first}); most likely the system ran out of memory: lower "
            "-j/--workers or -b/--batch-size")
    if checkpoint_dir is None:
        return line + ", and run it again."
    last = os.path.join(checkpoint_dir, checkpoint.CHECKPOINT_NAME)
    if os.path.isfile(last):
        return line + f", then continue from the last checkpoint, {last}, with --resume auto."
    return line + f", and run it again (no checkpoint had been written to {checkpoint_dir} yet)."


@contextlib.contextmanager
def exit_on_stop(ctx: DistContext, checkpoint_dir: str | None = None) -> Iterator[None]:
    """A signal stop exits with 128 + signal number; a lost peer process or a data loading worker that died exits
    with 1; each in one line. ``checkpoint_dir`` (training) is where the last checkpoint is named from."""
    try:
        yield
    except faults.Interrupted as exc:
        if ctx.is_main:
            print(f"=> {exc}", file=sys.stderr, flush=True)
        distributed.cleanup(ctx)
        sys.exit(128 + exc.signum)
    except (dist.DistError, RuntimeError, ConnectionError, EOFError) as exc:
        if threading.current_thread() is threading.main_thread():
            # The DataLoader's SIGCHLD handler raises again for each worker that ends from now on; the process is
            # ending, so let it say what happened once.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if _is_lost_worker(exc):
            print(lost_worker_message(exc, checkpoint_dir), file=sys.stderr, flush=True)
            sys.exit(1)
        if not (ctx.distributed and _is_peer_failure(exc)):
            raise
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        print(f"error: rank {ctx.rank} lost contact with another process, which died or stopped answering "
              f"within --dist-timeout ({first}); its own output says why.", file=sys.stderr, flush=True)
        sys.exit(1)


def run_in_context(run: Callable[[DistContext], T], gpu: int | None, no_accel: bool, backend: str | None,
                   timeout_s: float) -> T:
    """``run(ctx)`` in this process's context (``--gpu``/``--no-accel``, or its torchrun rank): a signal stop or a
    lost peer ends in one line, and the process group is left in every case."""
    ctx = distributed.process_context(gpu, no_accel, backend, timeout_s)
    with exit_on_stop(ctx):
        try:
            return run(ctx)
        finally:
            distributed.cleanup(ctx)
