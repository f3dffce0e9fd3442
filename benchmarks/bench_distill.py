"""Benchmark (accuracy, not speed): a GhostNet student distilled from a stronger teacher against the same student
trained alone, with the same seed, epochs and augmentation, over several seeds, on two data sets: the demo data
(common/data/demo.py) and generated tinted photo-like JPEGs (benchlib.make_dataset).

The teacher (ResNet-18 by default) is trained first on each data set with the same flags; each student run is then
train_main.py in this process, once with ``--kd-checkpoint`` and once without.

    python benchmarks/bench_distill.py                                    # 3 seeds, 64 px, a few epochs each
    python benchmarks/bench_distill.py --seeds 0 1 2 --epochs 8 --teacher-epochs 12 --kd-temperature 4
    OMP_NUM_THREADS=1 python benchmarks/bench_distill.py --sets demo    # one set; one thread on a shared machine

Prints one table (val top-1 of the last epoch, per seed and the mean) and writes
runs/benchmarks/bench_distill_<device>.csv (``--out`` to change).
"""
import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_main
from benchmarks.benchlib import (
    add_out_flag,
    announce_machine,
    file_tag,
    machine_line,
    make_dataset,
    out_path,
    write_csv,
)
from common.data import demo
from common.errors import exit_on_user_error
from common.train import launch

SIZE = ["--train-crop-size", "64", "--val-resize-size", "64", "--val-crop-size", "64", "--rrc-scale", "0.6", "1",
        "-j", "0", "-p", "1000", "--no-accel"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Distilled against plain GhostNet students on two small data sets.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds (default: 0 1 2)")
    parser.add_argument("--epochs", type=int, default=6, help="student epochs (default: 6)")
    parser.add_argument("--teacher-epochs", type=int, default=10, help="teacher epochs (default: 10)")
    parser.add_argument("--teacher", default="resnet18", help="teacher architecture (default: resnet18)")
    parser.add_argument("--width-mult", type=float, default=0.5, help="student GhostNet width (default: 0.5)")
    parser.add_argument("--kd-temperature", type=float, default=4.0, help="distillation temperature (default: 4)")
    parser.add_argument("--kd-loss-weight", type=float, default=1.0, help="soft-target weight (default: 1)")
    parser.add_argument("--generated-per-class", type=int, default=60,
                        help="train images per class of the generated set (a quarter as many val) (default: 60)")
    parser.add_argument("--sets", nargs="+", choices=("demo", "generated"), default=["demo", "generated"],
                        help="data sets to compare on (default: demo generated)")
    add_out_flag(parser, "bench_distill_<device>.csv")
    return parser


def train(data: str, out: str, *flags: str) -> float:
    """One train_main.py run in this process, its output hidden; the val top-1 of its last epoch."""
    args = train_main.get_args_parser().parse_args([data, "--output-dir", out, "-b", "32", "--lr", "0.02",
                                                    "--lr-schedule", "cosine", "--warmup-epochs", "1",
                                                    "--wd", "5e-4", *SIZE, *flags])
    with contextlib.redirect_stdout(io.StringIO()):
        launch.prepare(args)
        summary = launch.run_single(args, lambda model, ctx: model, "bench.csv")
    return summary["val"].top1


def compare(name: str, data: str, work: str, cfg: argparse.Namespace) -> list[dict]:
    """Teacher, then per seed a plain and a distilled student; one row per run."""
    teacher_dir = os.path.join(work, name, "teacher")
    top1 = train(data, teacher_dir, "-a", cfg.teacher, "--epochs", str(cfg.teacher_epochs), "--seed", "0")
    rows = [{"data": name, "run": f"teacher {cfg.teacher}", "seed": 0, "val_top1": round(top1, 2)}]
    print(f"{name}: teacher {cfg.teacher} {top1:.2f}", flush=True)
    student = ["-a", "ghostnet", "--width-mult", str(cfg.width_mult), "--epochs", str(cfg.epochs)]
    kd = ["--kd-checkpoint", os.path.join(teacher_dir, "checkpoint.pth.tar"), "--kd-temperature",
          str(cfg.kd_temperature), "--kd-loss-weight", str(cfg.kd_loss_weight)]
    for seed in cfg.seeds:
        for label, extra in (("plain", []), ("distilled", kd)):
            out = os.path.join(work, name, f"{label}{seed}")
            top1 = train(data, out, *student, "--seed", str(seed), *extra)
            rows.append({"data": name, "run": label, "seed": seed, "val_top1": round(top1, 2)})
            print(f"{name}: {label} seed {seed} {top1:.2f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| data | teacher | plain student (per seed) | distilled student (per seed) | mean gain |",
             "| --- | --- | --- | --- | --- |"]
    for name in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == name]
        plain = [r["val_top1"] for r in mine if r["run"] == "plain"]
        kd = [r["val_top1"] for r in mine if r["run"] == "distilled"]
        teacher = next(r["val_top1"] for r in mine if r["run"].startswith("teacher"))
        lines.append(f"| {name} | {teacher:.2f} | {statistics.mean(plain):.2f} ({', '.join(map(str, plain))}) | "
                     f"{statistics.mean(kd):.2f} ({', '.join(map(str, kd))}) | "
                     f"{statistics.mean(kd) - statistics.mean(plain):+.2f} |")
    return "\n".join(lines)


def main(cfg: argparse.Namespace) -> None:
    machine = announce_machine()
    rows = []
    with exit_on_user_error(), tempfile.TemporaryDirectory() as work:
        for name in cfg.sets:
            data = (demo.ensure_dataset(os.path.join(work, "demo")) if name == "demo" else
                    make_dataset(os.path.join(work, "generated"), cfg.generated_per_class,
                                 max(1, cfg.generated_per_class // 4), classes=6, seed=3))
            rows += compare(name, data, work, cfg)
    print(machine_line(machine))
    print(table(rows))
    write_csv(rows, out_path(cfg.out, f"bench_distill_{file_tag(machine)}.csv"), machine)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
