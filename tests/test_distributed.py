"""Distributed training that is exact and survives faults, on the CPU with gloo: equivalence of 1 and 2 processes,
two "nodes" on one machine, elastic restart after a killed worker, a hung worker, and SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.models import checkpoint, factory
from common.parallel.distributed import free_port
from common.train import engine
from conftest import ROOT, SMALL, run_script

pytestmark = pytest.mark.slow  # every test starts multi-process training runs (10-55 s each)

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
BASE = ["-b", "16", "--seed", "0", "--no-accel", "--epochs", "2", *SMALL]


def weights(out: str) -> dict[str, torch.Tensor]:
    return checkpoint.load_file(os.path.join(out, "checkpoint.pth.tar"))["state_dict"]


def assert_same_weights(a: dict, b: dict, exact: bool) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_one_and_two_processes_train_the_same_model(tiny_data, tmp_path):
    # SqueezeNet without dropout has no BatchNorm: per-rank batch statistics are what keeps BN models apart
    # on the CPU, where SyncBatchNorm does not run (README, "Comparable runs").
    flags = [tiny_data, "-a", "squeezenet1_1", "--dropout", "0", "--no-amp", "--lr", "0.01", *BASE, "--epochs", "1"]
    run_script("train_main.py", *flags, "--output-dir", str(tmp_path / "one"))
    dp = run_script("train_dataparallel.py", *flags, "--output-dir", str(tmp_path / "dp"))
    assert "DataParallel is skipped" in dp.stdout  # on the CPU it degrades to one process ...
    assert_same_weights(weights(str(tmp_path / "one")), weights(str(tmp_path / "dp")), exact=True)  # ... exactly
    run_script("train_multiprocessing.py", *flags, "--nprocs", "2", "--output-dir", str(tmp_path / "spawn"))
    run_script("train_distributed.py", *flags, "--output-dir", str(tmp_path / "torchrun"),
               launcher=TORCHRUN + ["--standalone", "--nproc_per_node", "2"])
    engine.seed_process(0)  # the initial weights, made as build_run makes them
    init = factory.create_model("squeezenet1_1", 4, dropout=0.0).state_dict()
    one = weights(str(tmp_path / "one"))
    moved = torch.cat([(one[k] - init[k]).flatten() for k in one]).norm()
    for name in ("spawn", "torchrun"):
        other = weights(str(tmp_path / name))
        gap = torch.cat([(one[k] - other[k]).flatten() for k in one]).norm()
        # Batches split differently only reorder float sums; other batches would put the gap near ``moved``.
        assert moved > 0.1 and gap < 1e-3 * moved, (name, float(gap), float(moved))
        assert_same_weights(one, other, exact=False)
    assert_same_weights(weights(str(tmp_path / "spawn")), weights(str(tmp_path / "torchrun")), exact=True)


def test_two_nodes_and_srun_tasks_match_one_node_and_only_global_rank_0_writes(tiny_data, tmp_path):
    # Two "nodes" share this machine's cores: one thread per process everywhere, as on the single node, because
    # another thread count changes float summation order, which 20 steps of a BatchNorm net amplify.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flags = [tiny_data, "-a", "ghostnet", "--lr", "0.02", *BASE]
    run_script("train_distributed.py", *flags, "--output-dir", str(tmp_path / "single"),
               launcher=TORCHRUN + ["--standalone", "--nproc_per_node", "2"], env=env)
    port = str(free_port())
    nodes = [subprocess.Popen(TORCHRUN + ["--nnodes", "2", "--node_rank", str(r), "--nproc_per_node", "1",
                                          "--master_addr", "127.0.0.1", "--master_port", port,
                                          os.path.join(ROOT, "train_distributed.py"), *flags,
                                          "--output-dir", str(tmp_path / f"node{r}")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for r in (0, 1)]
    outputs = [n.communicate(timeout=180)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs
    assert_same_weights(weights(str(tmp_path / "single")), weights(str(tmp_path / "node0")), exact=True)
    assert not os.listdir(tmp_path / "node1")  # per-node writers were the reference example's bug

    url = f"tcp://127.0.0.1:{free_port()}"
    mains = [subprocess.Popen([sys.executable, os.path.join(ROOT, "train_main.py"), *flags,
                               "--multiprocessing-distributed", "--nprocs", "1", "--world-size", "2", "--rank", str(r),
                               "--dist-url", url, "--output-dir", str(tmp_path / f"main{r}")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for r in (0, 1)]
    outputs = [m.communicate(timeout=180)[0] for m in mains]
    assert [m.returncode for m in mains] == [0, 0], outputs
    assert_same_weights(weights(str(tmp_path / "single")), weights(str(tmp_path / "main0")), exact=True)
    assert not os.listdir(tmp_path / "main1")

    port = str(free_port())  # as srun starts tasks: no torchrun, ranks from SLURM_* variables
    tasks = [subprocess.Popen([sys.executable, os.path.join(ROOT, "train_distributed.py"), *flags,
                               "--output-dir", str(tmp_path / f"task{r}")], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**env, "SLURM_PROCID": str(r), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(r),
                                   "SLURM_TASKS_PER_NODE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
             for r in (0, 1)]
    outputs = [t.communicate(timeout=180)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outputs
    assert_same_weights(weights(str(tmp_path / "single")), weights(str(tmp_path / "task0")), exact=True)
    assert not os.listdir(tmp_path / "task1")


def test_killed_worker_is_restarted_by_torchrun_and_ends_with_the_fault_free_weights(tiny_data, tmp_path):
    # GhostNet has BatchNorm and dropout: exact equality needs the saved step, seeded samples and seeded steps.
    flags = [tiny_data, "-a", "ghostnet", "--lr", "0.02", "--checkpoint-interval", "3", *BASE]
    launcher = TORCHRUN + ["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"]
    run_script("train_distributed.py", *flags, "--output-dir", str(tmp_path / "clean"), launcher=launcher)
    faulty = run_script("train_distributed.py", *flags, "--output-dir", str(tmp_path / "faulty"),
                        launcher=launcher, env={"TRAIN_INJECT_FAULT": "1:14:exit"})
    assert "injected fault on rank 1 at step 14" in faulty.stdout
    assert "resumed from" in faulty.stdout and "epoch 1, step 2" in faulty.stdout, faulty.stdout
    assert_same_weights(weights(str(tmp_path / "clean")), weights(str(tmp_path / "faulty")), exact=True)
    with open(tmp_path / "faulty" / "distributed.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1"]


def test_a_hung_worker_ends_the_run_within_the_timeout_instead_of_hanging(tiny_data, tmp_path):
    started = time.monotonic()
    proc = run_script("train_multiprocessing.py", tiny_data, "-a", "ghostnet", *BASE, "--nprocs", "2",
                      "--dist-timeout", "5", "--output-dir", str(tmp_path), check=False, timeout=150,
                      env={"TRAIN_INJECT_FAULT": "1:3:hang"})
    assert proc.returncode != 0 and time.monotonic() - started < 120
    assert "lost contact with another process" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def processes_in_group(pgid: int) -> list[int]:
    """PIDs whose process group is ``pgid`` (read from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


@pytest.mark.parametrize("script, extra, sig", [
    ("train_multiprocessing.py", ["--nprocs", "2", "-j", "1"], signal.SIGTERM),
    ("train_main.py", ["-j", "1"], signal.SIGINT),
])
def test_signal_finishes_the_step_checkpoints_and_leaves_no_process(script, extra, sig, tiny_data, tmp_path):
    flags = [tiny_data, "-a", "ghostnet", "-b", "16", "--seed", "0", "--no-accel", "--epochs", "100",
             *SMALL[:6], "-p", "1", *extra, "--output-dir", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *flags], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stdout:  # wait until training is under way (persistent loader workers exist)
            if line.startswith("Epoch: [0][ 3/"):
                break
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, stderr
    assert f"stopped by {signal.Signals(sig).name}" in stderr and "--resume auto" in stderr
    ckpt = checkpoint.load_file(str(tmp_path / "checkpoint.pth.tar"))
    assert ckpt["epoch"] == 0 and ckpt["step"] >= 4
    time.sleep(0.5)
    assert processes_in_group(proc.pid) == []
    resumed = run_script(script, *flags[:-2], "--epochs", "1", "-p", "100", "--output-dir", str(tmp_path),
                         "--resume", "auto")
    assert f"epoch 0, step {ckpt['step']}" in resumed.stdout


def test_a_node_that_never_arrives_ends_in_one_line_naming_the_address(tiny_data, tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    done = run_script("train_main.py", tiny_data, "-a", "ghostnet", "-b", "16", "--no-accel", *SMALL,
                      "--multiprocessing-distributed", "--world-size", "2", "--rank", "0", "--nprocs", "1",
                      "--dist-url", url, "--dist-timeout", "3", "--output-dir", str(tmp_path), check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: rank 0 of 2 gave up on the rendezvous at {url} after --dist-timeout 3 s")
    assert "; check that every node was started, with the same address, port and world size" in lines[0]


def test_sigterm_to_the_launcher_ends_in_the_workers_one_line_without_torchruns_traceback(tiny_data, tmp_path):
    # Plain torchrun ends the same stop in its own SignalException traceback and status 1 (docs/what-happens-when.md)
    flags = [tiny_data, "-a", "ghostnet", "-b", "16", "--seed", "0", "--no-accel", "--epochs", "100", *SMALL[:6],
             "-j", "0", "-p", "1", "--output-dir", str(tmp_path)]
    launcher = [sys.executable, "-m", "common.parallel.torchrun", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.Popen([*launcher, os.path.join(ROOT, "train_distributed.py"), *flags], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    try:
        for line in proc.stdout:
            if line.startswith("Epoch: [0][ 2/"):
                break
        proc.send_signal(signal.SIGTERM)  # to torchrun alone, as `kill PID` does; it passes it on to the workers
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert stderr.splitlines() == [f"=> stopped by SIGTERM during epoch 0; rerun with --resume auto to continue from "
                                   f"the last checkpoint written in {tmp_path}."]
    assert checkpoint.load_file(str(tmp_path / "checkpoint.pth.tar"))["step"] >= 3
    time.sleep(0.5)
    assert processes_in_group(proc.pid) == []
