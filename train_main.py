"""Train any torchvision classifier or GhostNet in every mode of the PyTorch ImageNet example.

One device (CUDA, MPS or CPU), or nn.DataParallel over all GPUs (the default with several GPUs):

    python train_main.py --data /imagenet -a ghostnet
    python train_main.py --data /imagenet -a resnet50 --gpu 0
    python train_main.py --dummy -a ghostnet --epochs 1 -b 32 --train-crop-size 64 --val-resize-size 64 \
        --val-crop-size 64

One process per GPU (mp.spawn + DDP), on one node or several (here node 0 of 2; run rank 1 on the other node):

    python train_main.py --data /imagenet -a ghostnet --multiprocessing-distributed \
        --world-size 2 --rank 0 --dist-url tcp://10.0.0.1:23456

Under torchrun (each process is pinned to its LOCAL_RANK device; -b is the global batch):

    torchrun --nproc_per_node 4 train_main.py --data /imagenet -a ghostnet --dist-url env://

Under SLURM, one srun task per GPU (ranks from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, rendezvous from
MASTER_ADDR/MASTER_PORT):

    srun --ntasks-per-node 4 python train_main.py --data /imagenet -a ghostnet
"""
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse

from common.cli import options
from common.parallel import distributed
from common.train import launch

LOG_NAME = "main.csv"


def get_args_parser() -> argparse.ArgumentParser:
    parser = options.training_parser(
        "Train on ImageNet-style folders: one device, DataParallel, mp.spawn DDP or torchrun DDP.")
    parser.add_argument("--multiprocessing-distributed", action="store_true",
                        help="spawn one DDP process per GPU (or --nprocs CPU processes) on each node")
    return parser


def main(args: argparse.Namespace) -> None:
    with exit_on_user_error():
        launch.prepare(args)
        if distributed.torchrun_env() is not None:
            launch.run_torchrun(args, LOG_NAME)
        elif args.multiprocessing_distributed:  # also under srun with one task per node, as the ImageNet example
            launch.run_spawn(args, LOG_NAME)
        elif distributed.slurm_env() is not None:
            launch.run_torchrun(args, LOG_NAME)
        else:
            # nn.DataParallel over all GPUs unless one is chosen with --gpu (or there is none)
            use_dp = args.gpu is None and distributed.accelerator_count(args.no_accel) > 1
            launch.run_single(args, distributed.wrap_dataparallel if use_dp else (lambda m, ctx: m), LOG_NAME)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
