"""The machine a measurement ran on, so that every benchmark row and comparison names it: the CPU model, the logical
cores this process may use, the CPU features that change speed or numerics (AMX, AVX512-BF16, VNNI, AVX512F),
torch's own view of the CPU, and the GPU(s) used. ``this_machine().describe()`` is one line, such as
``Intel(R) Xeon(R) Processor, 2 cores, AMX, AVX512-BF16, AVX512-VNNI; no GPU``; ``csv_fields()`` the columns of a row.

``parse_cpuinfo`` reads /proc/cpuinfo text and nothing else, so that it can be tested with any CPU's text.
"""
from __future__ import annotations

import os
import platform
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch

CPUINFO = "/proc/cpuinfo"
# label, /proc/cpuinfo flags (any of them), labels it makes redundant in the one-line description
FEATURES = (("AMX", ("amx_tile", "amx_bf16", "amx_int8"), ()),
            ("AVX512-BF16", ("avx512_bf16",), ("AVX512F",)),
            ("AVX512-VNNI", ("avx512_vnni",), ("AVX512F", "AVX-VNNI")),
            ("AVX-VNNI", ("avx_vnni",), ()),
            ("AVX512F", ("avx512f",), ()))
WATCHED_FLAGS = tuple(flag for _, flags, _ in FEATURES for flag in flags)
NO_GPU = "none"  # the CSV's gpu field of a run on the CPU
# The keys of Machine.csv_fields, in order, for a writer that lists its columns before it has a row (compare.csv).
CSV_FIELDS = ("cpu", "cores", "cpu_flags", "torch_cpu", "gpu")


@dataclass(frozen=True)
class Machine:
    """Where a measurement ran: ``cpu`` model, ``cores`` usable by the process, ``cpu_flags`` (those of
    ``WATCHED_FLAGS`` the CPU has; None where /proc/cpuinfo could not tell), ``torch_cpu`` (the vector kernels torch
    dispatches to, torch.backends.cpu.get_cpu_capability()) and ``gpus`` (the names of the GPUs used, none on the
    CPU)."""

    cpu: str
    cores: int
    cpu_flags: tuple[str, ...] | None
    torch_cpu: str
    gpus: tuple[str, ...] = ()

    def features(self) -> list[str]:
        """Labels of the speed-relevant features the CPU has, without those a more specific one implies
        (AVX512-VNNI implies AVX512F; AVX-VNNI is its 256-bit form)."""
        present = [label for label, flags, _ in FEATURES if set(flags) & set(self.cpu_flags or ())]
        implied = {gone for label, _, hides in FEATURES if label in present for gone in hides}
        return [label for label in present if label not in implied]

    def gpu_text(self) -> str:
        """The GPUs used, identical ones counted (``2 x NVIDIA H100 80GB HBM3``); ``none`` on the CPU."""
        counted = Counter(self.gpus)
        return ", ".join(name if n == 1 else f"{n} x {name}" for name, n in counted.items()) or NO_GPU

    def describe(self) -> str:
        """One line for a benchmark's header and tables, such as
        ``Intel(R) Xeon(R) Processor, 2 cores, AMX, AVX512-BF16, AVX512-VNNI; no GPU``; where the CPU's flags are
        unknown (no /proc/cpuinfo), torch's CPU capability stands in for them."""
        cores = f"{self.cores} core" + "s" * (self.cores != 1)
        features = self.features() if self.cpu_flags is not None else [f"torch CPU capability {self.torch_cpu}"]
        gpu = "no GPU" if not self.gpus else f"GPU{'s' * (len(self.gpus) > 1)} {self.gpu_text()}"
        return f"{', '.join([self.cpu, cores, *features])}; {gpu}"

    def csv_fields(self) -> dict[str, str | int]:
        """Flat fields for a CSV row: ``cpu``, ``cores``, ``cpu_flags`` (the /proc/cpuinfo names, space-separated;
        ``unknown`` where they could not be read), ``torch_cpu`` and ``gpu``."""
        flags = "unknown" if self.cpu_flags is None else " ".join(self.cpu_flags)
        return {"cpu": self.cpu, "cores": self.cores, "cpu_flags": flags, "torch_cpu": self.torch_cpu,
                "gpu": self.gpu_text()}


def parse_cpuinfo(text: str) -> tuple[str | None, tuple[str, ...] | None]:
    """(model name, the ``WATCHED_FLAGS`` present, in that order) of the first processor in /proc/cpuinfo ``text``;
    None for what the text does not say (ARM's cpuinfo has no 'model name' and names its features otherwise)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    model = " ".join(fields.get("model name", "").split()) or None
    if "flags" not in fields:
        return model, None
    have = set(fields["flags"].split())
    return model, tuple(flag for flag in WATCHED_FLAGS if flag in have)


def usable_cores() -> int:
    """Logical cores this process may run on (its affinity mask where the OS has one, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_names(devices: Iterable[torch.device | str]) -> tuple[str, ...]:
    """Names of the CUDA devices among ``devices`` (``cuda`` without an index: the current one); none without CUDA."""
    cuda = [d for d in map(torch.device, devices) if d.type == "cuda"]
    if not cuda or not torch.cuda.is_available():
        return ()
    return tuple(torch.cuda.get_device_name(d.index if d.index is not None else torch.cuda.current_device())
                 for d in cuda)


def this_machine(devices: Iterable[torch.device | str] = ()) -> Machine:
    """The machine this process runs on; ``devices`` are those the measurement uses (a CUDA device adds its GPU's
    name, the CPU nothing), e.g. ``[args.device]`` or every GPU of a multi-GPU run."""
    try:
        with open(CPUINFO) as f:
            model, flags = parse_cpuinfo(f.read())
    except OSError:  # not Linux
        model, flags = None, None
    cpu = model or platform.processor() or platform.machine() or "unknown CPU"
    return Machine(cpu, usable_cores(), flags, torch.backends.cpu.get_cpu_capability(), gpu_names(devices))
