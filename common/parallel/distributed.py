"""Process and device setup: one function returns a frozen context; wrappers for DDP and DataParallel.

Nothing here mutates ``args`` or patches ``print``: callers read ``ctx.is_main`` to decide who writes.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from common.errors import UserError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its global rank, rank on the node, the world size and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (a torch.device is immutable, so sharing one is safe)
    distributed: bool = False
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(no_accel: bool = False, index: int | None = None) -> torch.device:
    """CUDA (device ``index``), else Apple MPS, else CPU; ``no_accel`` forces the CPU."""
    if not no_accel and torch.cuda.is_available():
        return torch.device("cuda", index or 0)
    if not no_accel and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def accelerator_count(no_accel: bool = False) -> int:
    """Number of CUDA devices this process may use (0 with ``no_accel`` or without CUDA)."""
    return 0 if no_accel or not torch.cuda.is_available() else torch.cuda.device_count()


def limit_cpu_threads(procs_per_node: int) -> None:
    """Share the CPU cores between the processes of a node so that they do not oversubscribe them.

    An explicit OMP_NUM_THREADS (set by the user, or by torchrun for several processes per node) is left alone.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // max(1, procs_per_node)))


def single_process(gpu: int | None = None, no_accel: bool = False) -> DistContext:
    """Context for a plain one-process run (also nn.DataParallel, which stays in one process)."""
    device = select_device(no_accel, gpu)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistContext(device=device)


def init_process(rank: int, world_size: int, local_rank: int, dist_url: str, backend: str | None = None,
                 no_accel: bool = False, local_world_size: int = 1, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group and pin this process to its device (``cuda:local_rank`` or the CPU).

    ``backend`` defaults to nccl on CUDA and gloo otherwise. Returns the context every other function takes.
    """
    device = select_device(no_accel, local_rank)
    if device.type == "cuda" and local_rank >= torch.cuda.device_count():
        raise UserError(f"process {local_rank} on this node has no GPU of its own ({torch.cuda.device_count()} "
                        "visible); start at most one process per GPU, or pass --no-accel for CPU processes.")
    if device.type == "mps":  # no multi-process MPS backend: DDP on a Mac runs on the CPU with gloo
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        limit_cpu_threads(local_world_size)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    try:
        join_group(rank, world_size, dist_url, backend, datetime.timedelta(seconds=timeout_s))
    except dist.DistError as exc:  # DistStoreError, DistNetworkError: the rendezvous did not complete in time
        raise UserError(rendezvous_failure(rank, world_size, dist_url, timeout_s, exc)) from None
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device, distributed=True,
                       local_world_size=local_world_size)


def join_group(rank: int, world_size: int, dist_url: str, backend: str, timeout: datetime.timedelta) -> None:
    """``dist.init_process_group``; under torchrun each restart attempt gets its own key space: without it, a
    restarted gloo group was seen to dial the listening port of the worker that had died in the previous attempt."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if dist_url == "env://" and restart is not None:
        store, _, _ = next(dist.rendezvous(dist_url, rank, world_size, timeout=timeout))
        dist.init_process_group(backend=backend, store=dist.PrefixStore(f"attempt{restart}", store),
                                world_size=world_size, rank=rank, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=rank,
                                timeout=timeout)


def rendezvous_failure(rank: int, world_size: int, dist_url: str, timeout_s: float, exc: BaseException) -> str:
    """One sentence for a rendezvous that timed out: who waited, at which address, for whom, and what to check."""
    address = (f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}" if dist_url == "env://"
               else dist_url)
    waited = ("rank 0 hosts the rendezvous there and waited for the other ranks" if rank == 0
              else "it could not reach rank 0 there, or rank 0 stopped waiting")
    first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
    return (f"rank {rank} of {world_size} gave up on the rendezvous at {address} after --dist-timeout "
            f"{timeout_s:g} s: {waited} ({first}); check that every node was started, with the same address, port "
            f"and world size ({world_size} processes), and that the port is open between the nodes.")


def torchrun_env() -> tuple[int, int, int, int] | None:
    """(rank, world_size, local_rank, local_world_size) under torchrun or torch.distributed.launch, else None."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return (int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                int(env.get("LOCAL_WORLD_SIZE", 1)))
    return None


def slurm_env() -> tuple[int, int, int, int] | None:
    """(rank, world_size, local_rank, local_world_size) of a task started by ``srun``, else None.

    Used only where torchrun is not (``srun python train_distributed.py ...``); the rendezvous then needs
    MASTER_ADDR and MASTER_PORT (env://) or --dist-url.
    """
    env = os.environ
    if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return None
    per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1")
    local_world = int(per_node.split("(")[0].split(",")[0])  # "4(x2)" -> 4
    return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), local_world


def process_context(gpu: int | None, no_accel: bool, backend: str | None, timeout_s: float) -> DistContext:
    """One process (``--gpu`` or the first accelerator or the CPU), or one rank of a torchrun job."""
    env = torchrun_env()
    if env is None:
        return single_process(gpu, no_accel)
    rank, world_size, local_rank, local_world_size = env
    return init_process(rank, world_size, local_rank, "env://", backend, no_accel, local_world_size, timeout_s)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a single-node rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cleanup(ctx: DistContext) -> None:
    """Leave the process group, if this process joined one."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few numbers over all ranks (float64, so image counts stay exact); identity without a group."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) so that all ranks evaluate one model."""
    if not ctx.distributed:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def wrap_ddp(model: nn.Module, ctx: DistContext, sync_bn: bool = False) -> nn.Module:
    """DistributedDataParallel on this process's device; SyncBatchNorm first if asked."""
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def wrap_dataparallel(model: nn.Module, ctx: DistContext, device_ids: list[int] | None = None) -> nn.Module:
    """nn.DataParallel over ``device_ids`` (default: all GPUs); on the CPU the model is returned unwrapped."""
    if ctx.device.type != "cuda":
        print("=> no CUDA device: nn.DataParallel is skipped and the model trains in one CPU process")
        return model
    device_ids = device_ids or list(range(torch.cuda.device_count()))
    return nn.DataParallel(model, device_ids=device_ids, output_device=device_ids[0])
