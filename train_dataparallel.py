"""Train with nn.DataParallel: one process drives every visible GPU (or the ones given with --gpus).

    python train_dataparallel.py --data /imagenet -a ghostnet
    python train_dataparallel.py --data /imagenet -a resnet50 --gpus 0,1,2,3 -b 256

Without a GPU it trains in one CPU process, with a notice. DistributedDataParallel (train_multiprocessing.py,
train_distributed.py) is faster on several GPUs; DataParallel is the simplest to start.
"""
from common.errors import UserError, exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse
import functools

from common.cli import options
from common.parallel import distributed
from common.train import launch

LOG_NAME = "dataparallel.csv"


def get_args_parser() -> argparse.ArgumentParser:
    parser = options.training_parser("Train on ImageNet-style folders with nn.DataParallel over the visible GPUs.",
                                     ddp=False)
    parser.add_argument("--gpus", default=None, metavar="IDS", help="comma-separated GPU ids (default: all)")
    return parser


def parse_gpus(text: str | None, available: int) -> list[int] | None:
    """``"0,1,3"`` -> ``[0, 1, 3]``, checked against the number of GPUs present."""
    if not text:
        return None
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gpus {text!r} is not a comma-separated list of GPU ids such as 0,1,2,3.") from None
    if available and any(i < 0 or i >= available for i in ids):
        raise UserError(f"--gpus {text} names a GPU that does not exist; this machine has {available}.")
    return ids or None


def main(args: argparse.Namespace) -> None:
    with exit_on_user_error():
        launch.prepare(args)
        gpus = parse_gpus(args.gpus, distributed.accelerator_count(args.no_accel))
        args.gpu = gpus[0] if gpus else args.gpu
        wrap = functools.partial(distributed.wrap_dataparallel, device_ids=gpus)
        launch.run_single(args, wrap, LOG_NAME)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
