"""torchrun, ending a stop in one line: the same launcher, flags and behaviour, without torch's traceback at the end.

    python -m common.parallel.torchrun --standalone --nproc_per_node 2 train_distributed.py --dummy --no-accel

Why it exists: when torchrun itself gets SIGTERM (``kill PID``, a scheduler's preemption) or SIGINT (Ctrl+C), its
agent raises ``SignalException`` out of its monitoring loop, stops the workers, and lets the exception end the
process: the workers' own line (``=> stopped by SIGTERM during epoch 3; rerun with --resume auto ...``) is followed
by a 30-line traceback of torch's launcher and exit status 1. Nothing a worker does can change that: it happens in
torchrun's process after the workers have gone. This module runs torch's own launcher (``torch.distributed.run``)
and turns that end into exit status 128 + signal with the workers' line as the last word; torchrun's two log lines
that narrate the same stop ("Received 15 death signal", "Sending process ... closing signal") are left out. A worker
that fails (exit status other than 0) ends it with that worker's status; a failure that is not one of the scripts'
own one-line ends (2, 130, 143) is named in one line instead of torch's table and traceback.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from torch.distributed import run as torch_run
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from common.errors import exit_on_user_error

# torchrun's log lines that only narrate a signal stop, and the loggers that write them
STOP_NARRATION = ("death signal, shutting down workers", "closing signal")
STOP_LOGGERS = ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api")
# a worker's exit status that already came with its own one line: a user error, Ctrl+C, SIGTERM
OWN_LINE_STATUSES = (2, 128 + signal.SIGINT, 128 + signal.SIGTERM)


def get_args_parser() -> argparse.ArgumentParser:
    """torchrun's own parser: every torchrun flag, then the script and its flags."""
    return torch_run.get_args_parser()


def _drop_stop_narration(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in STOP_NARRATION)


def failure_status(exc: ChildFailedError) -> int:
    """The exit status for a failed worker group: the first failed worker's (a signal death as 128 + N); one line
    on stderr unless that worker ended in one of the scripts' own one-line ends."""
    rank, failure = exc.get_first_failure()
    code = failure.exitcode
    status = 128 - code if code < 0 else code if 0 < code < 256 else 1
    if status not in OWN_LINE_STATUSES:
        how = f"was killed by {failure.signal_name()}" if code < 0 else f"exited with status {code}"
        print(f"error: torchrun's worker of global rank {rank} {how}; its own output is above.", file=sys.stderr,
              flush=True)
    return status


def main(args: argparse.Namespace) -> int:
    """Run torch's launcher with ``args``; return 0, or exit with the status of a stop or a failed worker."""
    for name in STOP_LOGGERS:
        logging.getLogger(name).addFilter(_drop_stop_narration)
    with exit_on_user_error():
        try:
            torch_run.run(args)
        except SignalException as exc:  # the workers were stopped with the same signal and said where they were
            sys.exit(128 + int(exc.sigval))
        except ChildFailedError as exc:
            sys.exit(failure_status(exc))
    return 0


if __name__ == "__main__":
    main(get_args_parser().parse_args())
