"""Train with DistributedDataParallel, one process per GPU started by torch.multiprocessing.spawn.

    python train_multiprocessing.py --data /imagenet -a ghostnet
    python train_multiprocessing.py --data /imagenet -a ghostnet --nprocs 2 --no-accel    # 2 CPU processes, gloo

Several nodes: the same command on each, with its --rank, the node count and node 0's address:

    python train_multiprocessing.py --data /imagenet -a ghostnet --world-size 2 --rank 0 \
        --dist-url tcp://10.0.0.1:23456

-b is the global batch, split evenly over all processes. Rendezvous defaults to tcp://127.0.0.1:<free port>.
"""
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse

from common.cli import options
from common.train import launch

LOG_NAME = "multiprocessing_distributed.csv"


def get_args_parser() -> argparse.ArgumentParser:
    return options.training_parser("Train on ImageNet-style folders with mp.spawn + DistributedDataParallel.",
                                   gpu=False)


def main(args: argparse.Namespace) -> None:
    with exit_on_user_error():
        launch.prepare(args)
        launch.run_spawn(args, LOG_NAME)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
