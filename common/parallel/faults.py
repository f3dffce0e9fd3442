"""Surviving faults: stop requests from signals, mid-epoch checkpoint timing, and an injected fault for tests.

A signal (SIGTERM from a scheduler's preemption, SIGINT from Ctrl+C) only sets a flag; the training loop finishes
the current step, and all ranks agree on stopping at the same step (one tiny all-reduce per step), so no rank is
left waiting in a collective that the others never join.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.parallel.distributed import DistContext

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FAULT_ENV = "TRAIN_INJECT_FAULT"  # "RANK:STEP:exit|hang", read only by tests of fault tolerance


class Interrupted(Exception):
    """The work stopped cleanly on a signal; ``signum`` is the signal, the message is ``stop_message``'s."""

    def __init__(self, signum: int, where: str, then: str = "") -> None:
        super().__init__(stop_message(signum, where, then))
        self.signum, self.where = signum, where

    def then(self, text: str) -> Interrupted:
        """The same stop, saying what to do next (and what was kept) with ``text``."""
        return Interrupted(self.signum, self.where, text)


class StopRequest:
    """Remembers the first SIGTERM/SIGINT; a second SIGINT stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        # A signal sent to the whole process group (a terminal's Ctrl+C, SLURM's SIGTERM) also kills the DataLoader
        # workers; torch's SIGCHLD handler would turn that into an error in the middle of the stop's checkpoint.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def agreed(self, ctx: DistContext) -> int:
        """The signal any rank received (0 if none); every rank gets the same answer at the same step."""
        if not ctx.distributed:
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int64, device=ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


class CheckpointTimer:
    """When to write a mid-epoch checkpoint: every N steps (``"500"``) or every N minutes (``"30m"``)."""

    def __init__(self, interval: str | None) -> None:
        self.steps = self.seconds = 0.0
        if interval:
            text = interval.strip().lower()
            if text.endswith("m"):
                self.seconds = float(text[:-1]) * 60
            else:
                self.steps = int(text)
        self.last_time, self.count = time.monotonic(), 0

    def due(self) -> bool:
        """Call once per finished step; True when a checkpoint should be written now."""
        self.count += 1
        if self.steps and self.count % self.steps == 0:
            return True
        if self.seconds and time.monotonic() - self.last_time >= self.seconds:
            self.last_time = time.monotonic()
            return True
        return False


def stop_message(signum: int, where: str, then: str = "") -> str:
    """The one phrasing of a clean stop, e.g. ``stopped by SIGTERM during epoch 3; rerun with --resume auto ...``.

    ``where`` says how far the work got ("during epoch 3", "after 12 of 40 images"), ``then`` what was kept and what
    to do next; ``process.exit_on_stop`` prints the message after ``=> `` as the run's last line on stderr.
    """
    text = f"stopped by {signal.Signals(signum).name} {where}"
    return f"{text}; {then}" if then else text


@dataclass(frozen=True)
class Fault:
    """A fault that TRAIN_INJECT_FAULT plans for this rank: exit or hang once the global step count reaches ``step``."""

    rank: int
    step: int
    kind: str  # "exit" or "hang"

    def check(self, global_step: int) -> None:
        """Exit (status 17) or hang when ``global_step`` is the planned one; return otherwise."""
        if global_step != self.step:
            return
        print(f"=> injected fault on rank {self.rank} at step {global_step}: {self.kind}", flush=True)
        if self.kind == "hang":
            while True:
                time.sleep(60)
        os._exit(17)


def planned_fault(rank: int) -> Fault | None:
    """The fault TRAIN_INJECT_FAULT ("RANK:STEP:exit|hang") plans for ``rank`` on the first attempt, else None.

    Read once per run, so that a training step pays nothing for it unless a test asked for a fault. Tests use it to
    check elastic restarts and timeouts; torchrun counts attempts in TORCHELASTIC_RESTART_COUNT.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    fault_rank, fault_step, kind = spec.split(":")
    return Fault(rank, int(fault_step), kind) if rank == int(fault_rank) else None
