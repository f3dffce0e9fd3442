"""Numeric format of a run: automatic mixed precision (autocast dtype, gradient scaler) and memory format.

Defaults follow the device: on CUDA, bf16 autocast where the GPU supports it, else fp16 with a GradScaler; on a CPU
with native bf16 instructions (AVX512-BF16 or AMX), bf16 autocast for models without depthwise convolutions;
elsewhere fp32. channels_last is on by default:
it changes only the memory layout, which oneDNN and cuDNN convolutions prefer. Losses are computed in fp32.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from common.errors import UserError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """Autocast dtype (None: fp32) and memory format of one run on ``device_type``."""

    device_type: str = "cpu"
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active for fp16 only (bf16 has fp32's exponent range and needs none)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.amp_dtype == torch.float16)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> str:
        amp = {None: "fp32", torch.bfloat16: "AMP bf16", torch.float16: "AMP fp16 + GradScaler"}[self.amp_dtype]
        return f"{amp}, {'channels_last' if self.channels_last else 'NCHW'}"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA: Ampere or newer; CPU: AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def has_depthwise(model: nn.Module) -> bool:
    """Whether ``model`` has depthwise convolutions (GhostNet, MobileNets, EfficientNets)."""
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def amp_by_default(device: torch.device, model: nn.Module) -> bool:
    """AMP unless it would slow the run down: on for CUDA; on the CPU only with native bf16 and no depthwise
    convolutions, whose bf16 kernels are slower than fp32 there (measured: GhostNet 224 px, 1.2x slower)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and native_bf16(device) and not has_depthwise(model)


def choose_precision(device: torch.device, model: nn.Module, amp: bool | None, amp_dtype: str = "auto",
                     channels_last: bool = True) -> Precision:
    """The run's Precision from the flags; ``amp`` None means ``amp_by_default``."""
    if amp is None:
        amp = amp_by_default(device, model)
    if not amp:
        return Precision(device.type, None, channels_last)
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"--amp is supported on CUDA and the CPU, not on {device.type}; drop --amp.")
    if amp_dtype == "fp16" and device.type == "cpu":
        raise UserError("--amp-dtype fp16 needs a CUDA GPU; use --amp-dtype bf16 on the CPU.")
    if amp_dtype == "auto":
        amp_dtype = "bf16" if native_bf16(device) or device.type == "cpu" else "fp16"
    return Precision(device.type, _DTYPES[amp_dtype], channels_last)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a timer read next measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
