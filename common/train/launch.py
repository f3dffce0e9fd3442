"""How training processes start: one process, N processes spawned with torch.multiprocessing, or under torchrun.

Each function ends in ``engine.fit``; the scripts choose one. The spawn worker lives here because ``mp.spawn``
needs a top-level function and two scripts use it.
"""
from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from common import files
from common.cli import defaults, options
from common.cli.process import exit_on_stop
from common.data import formats, sampling, scan
from common.errors import UserError, exit_on_user_error
from common.models import factory, memory
from common.parallel import distributed, faults
from common.train import engine, resume


def prepare(args: argparse.Namespace) -> None:
    """What every training script (and network.py) does with its flags first, once, in the launching process:
    fill the defaults that depend on other flags, check them all, resolve the data source into
    ``args.data_source`` (the one value every later step reads); with ``--check-data``, scan it and exit."""
    defaults.fill_training_defaults(args)
    check_args(args)
    if getattr(args, "check_data", None) is False and not getattr(args, "profile_input", None):  # not network.py
        check_memory(args)
    args.data_source = defaults.data_source(args)
    if getattr(args, "check_data", False):  # network.py has no --check-data
        sys.exit(check_data(args.data_source, args.workers))


def check_args(args: argparse.Namespace) -> None:
    """Every check of the flags that can fail on the user's input, run before any worker; changes nothing."""
    options.check_training_args(args, factory.available_archs())
    gpu, gpus = getattr(args, "gpu", None), distributed.accelerator_count(args.no_accel)  # mp.spawn has no --gpu
    if gpu is not None and gpu >= gpus:
        note = " (--no-accel was given)" if args.no_accel else ""
        raise UserError(f"--gpu {gpu} does not exist: {gpus} GPU(s) can be used here{note}; "
                        "choose one below that, or drop --gpu.")
    if args.resume and args.resume != "auto" and not os.path.isfile(args.resume):
        raise UserError(f"--resume {args.resume!r} does not exist; check the path, or use --resume auto.")
    files.make_output_dir(args.output_dir)
    if not (args.evaluate or getattr(args, "profile_input", None) or getattr(args, "check_data", False)):
        # a run that trains writes a run record; evaluating, profiling and scanning write none. Under torchrun
        # --resume defaults to auto (run_torchrun), so an elastic restart continues its own record.
        resuming = bool(args.resume) or distributed.torchrun_env() is not None
        resume.check_fresh_output_dir(args.output_dir, resuming, args.overwrite)


def check_memory(args: argparse.Namespace) -> None:
    """Refuse a -b or crop size that needs more memory than this machine (or one GPU) has free, in one line before
    any process starts (``memory``: a lower estimate on a model built on the meta device, with 2 classes). -b is
    global: each GPU holds its share; on the CPU the processes of this node share one memory."""
    gpus = distributed.accelerator_count(args.no_accel)
    env = distributed.torchrun_env()
    local = env[3] if env else (getattr(args, "nprocs", None) or gpus or 1)
    nodes = max(1, env[1] // max(1, env[3])) if env else max(1, getattr(args, "world_size", 1) or 1)
    try:
        with torch.device("meta"):
            model = factory.create_model(args.arch, 2, width_mult=args.width_mult)
    except NotImplementedError:  # RegNet computes its widths with tensors while it is built: no estimate
        return
    training = not args.evaluate
    crop = args.train_crop_size if training else args.val_crop_size
    size = memory.RunSize(args.batch_size, crop, training, "--train-crop-size" if training else "--val-crop-size")
    if gpus:
        device, processes, images = torch.device("cuda", getattr(args, "gpu", None) or 0), 1, -(-args.batch_size //
                                                                                                 (local * nodes))
    else:
        device, processes, images = torch.device("cpu"), local, -(-args.batch_size // nodes)
    states = memory.OPTIMIZER_STATES.get(args.opt, 2) + bool(args.model_ema)
    memory.check_fits(model, size, images, device, processes, states)


def check_data(source: formats.DataSource, workers: int | None) -> int:
    """``--check-data``: decode every image of the train and val splits and list the unreadable ones; 1 if any."""
    if source.format == formats.SYNTHETIC:
        raise UserError("--check-data scans a dataset folder; give DIR instead of --dummy.")
    workers = sampling.default_workers() if workers is None else workers
    return scan.scan_source(source, ("train", "val"), scan.TRAINING_HINT, workers)


def ddp_wrap(sync_bn: bool) -> engine.Wrap:
    return functools.partial(distributed.wrap_ddp, sync_bn=sync_bn)


def run_single(args: argparse.Namespace, wrap: engine.Wrap, log_name: str) -> dict:
    """One process on one device (``--gpu``, or the first accelerator, or the CPU)."""
    ctx = distributed.single_process(args.gpu, args.no_accel)
    with exit_on_stop(ctx, args.output_dir):
        return engine.fit(args, ctx, wrap, log_name)


def run_torchrun(args: argparse.Namespace, log_name: str) -> dict:
    """One DDP process of a torchrun job (or of an ``srun`` job step): rank and device from the environment.

    Under torchrun the rendezvous is env:// and ``--resume`` defaults to ``auto``, so that an elastic restart
    continues from the last checkpoint. Under srun without torchrun, SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID give
    the ranks and ``--dist-url`` (default env://, with MASTER_ADDR and MASTER_PORT) the rendezvous.
    """
    from_torchrun = distributed.torchrun_env()
    rank, world_size, local_rank, local_world_size = from_torchrun or distributed.slurm_env()
    dist_url = "env://" if from_torchrun else (args.dist_url or "env://")
    if dist_url == "env://" and not {"MASTER_ADDR", "MASTER_PORT"} <= set(os.environ):
        raise UserError("srun without torchrun needs MASTER_ADDR and MASTER_PORT in the environment (node 0's "
                        "address and a free port), or --dist-url tcp://<node 0>:<port>.")
    if from_torchrun:
        args.resume = args.resume or "auto"
    ctx = distributed.init_process(rank, world_size, local_rank, dist_url, args.dist_backend, args.no_accel,
                                   local_world_size, args.dist_timeout)
    with exit_on_stop(ctx, args.output_dir):
        try:
            return engine.fit(args, ctx, ddp_wrap(args.sync_bn), log_name)
        finally:
            distributed.cleanup(ctx)


@dataclass(frozen=True)
class SpawnPlan:
    """``nprocs`` processes on each of ``nodes`` nodes; this node is ``node_rank``."""

    nprocs: int
    nodes: int
    node_rank: int
    dist_url: str

    @property
    def world_size(self) -> int:
        return self.nprocs * self.nodes


def _spawned_worker(local_rank: int, args: argparse.Namespace, plan: SpawnPlan, log_name: str) -> None:
    with exit_on_user_error():
        rank = plan.node_rank * plan.nprocs + local_rank
        ctx = distributed.init_process(rank, plan.world_size, local_rank, plan.dist_url, args.dist_backend,
                                       args.no_accel, plan.nprocs, args.dist_timeout)
        with exit_on_stop(ctx, args.output_dir):
            try:
                engine.fit(args, ctx, ddp_wrap(args.sync_bn), log_name)
            finally:
                distributed.cleanup(ctx)


def spawn_plan(args: argparse.Namespace) -> SpawnPlan:
    """Processes per node (``--nprocs``, default one per GPU, or 1), nodes (``--world-size``) and rendezvous."""
    gpus = distributed.accelerator_count(args.no_accel)
    nprocs = args.nprocs or gpus or 1
    if gpus and nprocs > gpus:
        raise UserError(f"--nprocs {nprocs} is more than the {gpus} GPU(s) here; use at most {gpus}, "
                        "or pass --no-accel for CPU processes.")
    nodes, node_rank = max(1, args.world_size), max(0, args.rank)
    if nodes > 1 and not args.dist_url:
        raise UserError("multi-node training needs --dist-url tcp://<node 0 address>:<port>, the same on every node.")
    if node_rank >= nodes:
        raise UserError(f"--rank {node_rank} is not below --world-size {nodes}; number the nodes 0..{nodes - 1}.")
    return SpawnPlan(nprocs, nodes, node_rank, args.dist_url or f"tcp://127.0.0.1:{distributed.free_port()}")


def check_batchnorm_batch(args: argparse.Namespace, world_size: int) -> None:
    """``engine.check_batchnorm_batch`` in the parent, before any process is spawned, so that the refusal is one line
    and not one per worker. The model is built on the meta device (no memory, no weights); the train set is taken
    to hold at least one global batch, and each worker checks again with its real size."""
    with torch.device("meta"):
        model = factory.create_model(args.arch, 2, width_mult=args.width_mult)
    engine.check_batchnorm_batch(model, args.batch_size, args.batch_size, world_size, args.accum_steps)


def run_spawn(args: argparse.Namespace, log_name: str) -> None:
    """Spawn one DDP worker per GPU (or ``--nprocs`` CPU workers with gloo) on this node and wait for them.

    SIGTERM or SIGINT sent to this parent process is passed on to the workers as SIGTERM, so they stop at the
    same step, checkpoint and exit; the parent then exits with their status.
    """
    plan = spawn_plan(args)
    check_batchnorm_batch(args, plan.world_size)
    print(f"=> spawning {plan.nprocs} process(es) on node {plan.node_rank} of {plan.nodes} "
          f"(world size {plan.world_size}, rendezvous {plan.dist_url})", flush=True)
    context = mp.spawn(_spawned_worker, args=(args, plan, log_name), nprocs=plan.nprocs, join=False)

    def forward(_signum, _frame) -> None:
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in faults.STOP_SIGNALS}
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as exc:
        if exc.exit_code in (2, 128 + signal.SIGTERM, 128 + signal.SIGINT):  # the worker said why in one line
            sys.exit(exc.exit_code)
        raise UserError(f"worker process {exc.error_index} stopped with exit code {exc.exit_code}; "
                        "its message is above.") from None
    except mp.ProcessRaisedException as exc:
        print(exc, flush=True)
        raise UserError("a worker process failed with the traceback above.") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
