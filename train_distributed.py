"""Train with DistributedDataParallel under torchrun (env:// rendezvous), on one node or several.

    torchrun --nproc_per_node 4 train_distributed.py --data /imagenet -a ghostnet
    torchrun --nproc_per_node 2 train_distributed.py --dummy -a ghostnet --epochs 1 --no-accel   # CPU, gloo

Two nodes (run the second with --node_rank 1):

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr 10.0.0.1 --master_port 29500 \
        train_distributed.py --data /imagenet -a ghostnet

The legacy ``python -m torch.distributed.launch`` also works (its --local-rank argument is accepted). Under SLURM
without torchrun, each srun task is one process (ranks from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID; set
MASTER_ADDR and MASTER_PORT, or pass --dist-url):

    srun --nodes 2 --ntasks-per-node 8 python train_distributed.py --data /imagenet -a ghostnet
Started with plain ``python``, it trains in one process. -b is the global batch over all processes.
"""
from common.errors import exit_on_user_error, quiet_ctrl_c

quiet_ctrl_c(__name__)  # as a program: a Ctrl+C while torch loads prints one line, not a traceback

import argparse

from common.cli import options
from common.parallel import distributed
from common.train import launch

LOG_NAME = "distributed.csv"


def get_args_parser() -> argparse.ArgumentParser:
    parser = options.training_parser("Train on ImageNet-style folders with torchrun + DistributedDataParallel.",
                                     spawn=False)
    parser.add_argument("--local-rank", "--local_rank", type=options.NON_NEGATIVE_INT, default=None,
                        help="set by torch.distributed.launch; LOCAL_RANK from the environment takes precedence")
    return parser


def main(args: argparse.Namespace) -> None:
    with exit_on_user_error():
        launch.prepare(args)
        if distributed.torchrun_env() is None and distributed.slurm_env() is None:
            print("=> not started by torchrun or srun (no RANK/WORLD_SIZE or SLURM_PROCID): training in one process")
            launch.run_single(args, lambda model, ctx: model, LOG_NAME)
        else:
            launch.run_torchrun(args, LOG_NAME)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
