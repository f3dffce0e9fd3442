"""common.report.machine: the CPU model and speed-relevant flags read from /proc/cpuinfo text, the one-line description
and the CSV fields; every benchmark script imports without running work, builds its parser and answers --help; the
benchmarks' CSV writer puts the machine's fields in every row; the comparison's figure names the machine."""
from __future__ import annotations

import contextlib
import csv
import glob
import importlib.util
import io
import os

import pytest
import torch

from benchmarks import benchlib
from common.report import machine
from common.report.machine import Machine
from evaluation import chart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "bench_*.py")))

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ht syscall nx avx avx2 fma bmi2 avx512f avx512dq \
avx512cd avx512bw avx512vl avx512_bf16 clzero xsaveerptr avx512vbmi avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni \
avx512_bitalg avx512_vpopcntdq
bugs\t\t: sysret_ss_attrs spectre_v1 spectre_v2

processor\t: 1
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu vme de pse tsc avx512f avx512_bf16 avx512_vnni
"""
XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme de pse tsc msr sse sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx_vnni \
avx512_bf16 wbnoinvd avx512vbmi avx512_vbmi2 gfni vaes avx512_vnni avx512_bitalg tsxldtrk amx_bf16 avx512_fp16 \
amx_tile amx_int8 flush_l1d arch_capabilities
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def xeon(gpus: tuple[str, ...] = ()) -> Machine:
    model, flags = machine.parse_cpuinfo(XEON)
    return Machine(model, 2, flags, "AVX512", gpus)


def load_benchmark(path: str):
    """Import a benchmark script by its path, as a test would reuse it; what it prints on import is returned too."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        spec.loader.exec_module(module)
    return module, out.getvalue()


def test_epyc_cpuinfo_gives_its_model_and_avx512_bf16_and_vnni_without_amx():
    model, flags = machine.parse_cpuinfo(EPYC)
    assert model == "AMD EPYC 9654 96-Core Processor"
    assert flags == ("avx512_bf16", "avx512_vnni", "avx512f")
    described = Machine(model, 96, flags, "AVX512").describe()
    assert described == "AMD EPYC 9654 96-Core Processor, 96 cores, AVX512-BF16, AVX512-VNNI; no GPU"
    assert "AMX" not in described


def test_xeon_cpuinfo_gives_its_model_and_amx_bf16_vnni_flags():
    model, flags = machine.parse_cpuinfo(XEON)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert flags == ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f")
    assert xeon().describe() == "Intel(R) Xeon(R) Platinum 8480+, 2 cores, AMX, AVX512-BF16, AVX512-VNNI; no GPU"


def test_avx_vnni_and_avx512f_are_named_when_nothing_more_specific_is_there():
    alder_lake = "model name\t: 12th Gen Intel(R) Core(TM) i7-12700\nflags\t\t: sse avx avx2 avx_vnni\n"
    model, flags = machine.parse_cpuinfo(alder_lake)
    described = Machine(model, 1, flags, "AVX2").describe()
    assert described == "12th Gen Intel(R) Core(TM) i7-12700, 1 core, AVX-VNNI; no GPU"
    skylake = Machine("Intel(R) Xeon(R) Gold 6148", 40, machine.parse_cpuinfo("flags : avx2 avx512f")[1], "AVX512")
    assert skylake.describe() == "Intel(R) Xeon(R) Gold 6148, 40 cores, AVX512F; no GPU"


def test_cpuinfo_without_model_or_flags_leaves_them_unknown_and_torch_capability_stands_in():
    assert machine.parse_cpuinfo(ARM) == (None, None)
    arm = Machine("aarch64", 4, None, "DEFAULT")
    assert arm.describe() == "aarch64, 4 cores, torch CPU capability DEFAULT; no GPU"
    assert arm.csv_fields()["cpu_flags"] == "unknown"


def test_csv_fields_are_flat_and_name_the_gpus_counted():
    fields = xeon(("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")).csv_fields()
    assert fields == {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "cores": 2,
                      "cpu_flags": "amx_tile amx_bf16 amx_int8 avx512_bf16 avx512_vnni avx_vnni avx512f",
                      "torch_cpu": "AVX512", "gpu": "2 x NVIDIA H100 80GB HBM3"}
    assert tuple(fields) == machine.CSV_FIELDS
    assert xeon().csv_fields()["gpu"] == "none"
    assert xeon(("NVIDIA A100-SXM4-40GB",)).describe().endswith("; GPU NVIDIA A100-SXM4-40GB")


def test_this_machine_counts_the_cores_this_process_may_use_and_no_gpu_on_the_cpu():
    here = machine.this_machine([torch.device("cpu")])
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert here.cores == usable and here.cpu and here.gpus == ()
    assert here.torch_cpu == torch.backends.cpu.get_cpu_capability()
    assert here.describe().startswith(f"{here.cpu}, {usable} core") and here.describe().endswith("; no GPU")
    if os.path.exists(machine.CPUINFO):
        with open(machine.CPUINFO) as f:
            assert (here.cpu, here.cpu_flags) == machine.parse_cpuinfo(f.read())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_device_adds_its_gpu_name():
    used = machine.this_machine(["cuda:0"])
    assert used.gpus == (torch.cuda.get_device_name(0),)
    assert used.csv_fields()["gpu"] == torch.cuda.get_device_name(0)
    assert benchlib.file_tag(used) != "cpu"


@pytest.mark.parametrize("path", BENCHMARKS, ids=os.path.basename)
def test_benchmark_imports_without_work_builds_its_parser_and_help_exits_0(path):
    module, printed = load_benchmark(path)
    assert printed == ""
    parser = module.get_args_parser()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--help"])
    assert exit_.value.code == 0
    assert out.getvalue().startswith("usage: ") and parser.description in " ".join(out.getvalue().split())


def test_bench_classify_photo_classes_is_its_own_flag_beside_the_class_list_file():
    module, _ = load_benchmark(os.path.join(ROOT, "benchmarks", "bench_classify.py"))
    args = module.get_args_parser().parse_args(["--photo-classes", "3", "--classes", "names.txt"])
    assert (args.photo_classes, args.classes) == (3, "names.txt")


def test_write_csv_puts_the_machine_fields_in_every_row(tmp_path):
    path = str(tmp_path / "out" / "bench.csv")
    benchlib.write_csv([{"method": "a", "images_per_s": 1.5}, {"method": "b", "extra": 7}], path, xeon())
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["method", "images_per_s", "extra", "cpu", "cores", "cpu_flags", "torch_cpu", "gpu"]
    assert [r["method"] for r in rows] == ["a", "b"] and (rows[0]["images_per_s"], rows[1]["extra"]) == ("1.5", "7")
    for row in rows:
        assert {k: row[k] for k in ("cpu", "cores", "cpu_flags", "torch_cpu", "gpu")} == {
            "cpu": "Intel(R) Xeon(R) Platinum 8480+", "cores": "2",
            "cpu_flags": "amx_tile amx_bf16 amx_int8 avx512_bf16 avx512_vnni avx_vnni avx512f",
            "torch_cpu": "AVX512", "gpu": "none"}


def test_announce_machine_prints_the_line_and_returns_this_machine(capsys):
    announced = benchlib.announce_machine()
    assert announced == machine.this_machine()
    assert capsys.readouterr().out == f"machine: {announced.describe()}\n"
    assert announced.gpus == () and benchlib.file_tag(announced) == "cpu"
    assert benchlib.file_tag(xeon(("NVIDIA H100 80GB HBM3",))) == "nvidia_h100_80gb_hbm3"


def test_comparison_figure_is_captioned_with_the_machine():
    rows = [{"model": "ghostnet", "macs": 141e6, "published_top1": 73.98, "defaults_latency_ms": 9.0,
             "input_size": 224}]
    caption = f"Measured on {xeon().describe()}"
    assert chart.compare_figure(rows, "cpu", caption).get_suptitle() == caption
    assert chart.compare_figure(rows, "cpu").get_suptitle() == ""
