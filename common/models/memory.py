"""Will the run fit in memory? A lower estimate of what a run allocates, against what the machine has free, checked
before any work starts, so that a -b or an input size far too large ends in one line instead of an out-of-memory
kill (or hours of swapping) later.

The estimate counts only what the run certainly holds, so it refuses only runs that are clearly too large:

* training: the parameters, their gradients, the optimizer's state (1 copy for SGD with momentum, 2 for Adam and
  AdamW, 1 more for an EMA copy), plus -b times the tensors that autograd saves for the backward pass of one image
  (measured on the meta device: nothing is computed or allocated);
* evaluation: the parameters plus -b times the largest input and output of any one layer for one image.

Free memory is MemAvailable of /proc/meminfo (the free pages the kernel can hand out without swapping) for the CPU,
or ``torch.cuda.mem_get_info`` for a GPU. Allocator overheads, workspaces, loader workers and the Python process
come on top, so a run that passes can still be too large; one that is refused would certainly not have fitted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from common.errors import UserError

GIB = 1024**3
# What one image can hold, per byte of its input: twice the most measured over every -a architecture at 32 and
# 224 px (Swin V2-B at 32 px saves 4,000 bytes for backward per input byte; ResNet-18 at 224 px, 38). Below it, a run
# cannot be too large and the forward that measures is skipped.
MAX_BYTES_PER_INPUT_BYTE = 8000
OPTIMIZER_STATES = {"sgd": 1, "adamw": 2, "rmsproptf": 2}  # copies of the parameters: momentum; two moments


@dataclass(frozen=True)
class RunSize:
    """The flags that size a run's memory, as the user gave them (named in the refusal)."""

    batch_size: int
    input_size: int
    training: bool
    size_flag: str = "--train-crop-size"


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _storage(tensor: torch.Tensor) -> int:
    """The identity of the memory that ``tensor`` views (a meta tensor has no address to compare)."""
    return tensor.untyped_storage()._cdata


def saved_bytes_per_image(model: nn.Module, input_size: int) -> int:
    """The bytes autograd saves for the backward pass, per image, in a training-mode forward of ``model`` (on the
    meta device: shapes only); two images, halved, because BatchNorm refuses one image in training mode."""
    seen: dict[int, int] = {}  # storage -> bytes: a tensor saved twice, or a view of one, is held once
    parameters = {_storage(p) for p in model.parameters()}  # counted once, as parameters (a weight's view too)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if _storage(tensor) not in parameters:
            seen[_storage(tensor)] = tensor.untyped_storage().nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.empty(2, 3, input_size, input_size, device="meta", requires_grad=False))
    return sum(seen.values()) // 2


def largest_layer_bytes_per_image(model: nn.Module, input_size: int, device: torch.device) -> int:
    """The largest input plus output of any leaf module of ``model`` for one image (one forward of one image)."""
    largest = [0]

    def hook(_module, inputs, output) -> None:
        tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        largest[0] = max(largest[0], sum(t.numel() * t.element_size() for t in tensors))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return largest[0]


def available_bytes(device: torch.device) -> int | None:
    """Free memory for ``device``: the GPU's free memory, or the CPU's MemAvailable; None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def per_image_bytes(model: nn.Module, size: RunSize, device: torch.device) -> int:
    """The lower estimate per image: the input, plus what autograd saves (training) or the largest layer
    (evaluation); only the input where ``model`` cannot run at this size (the run itself then says why)."""
    image = 3 * size.input_size**2 * 4
    try:
        if size.training:
            return image + saved_bytes_per_image(model, size.input_size)
        return image + largest_layer_bytes_per_image(model, size.input_size, device)
    except (RuntimeError, NotImplementedError, ValueError, IndexError, AssertionError):
        # e.g. a ViT at another size (AssertionError), a model that reads values (meta tensors have none)
        return image


def check_fits(model: nn.Module, size: RunSize, images: int, device: torch.device, processes: int = 1,
               optimizer_states: int = 0, forward_device: torch.device | None = None) -> None:
    """Refuse in one UserError a run that certainly needs more memory than ``device`` has free: ``processes``
    copies of the model's parameters (with gradients and ``optimizer_states`` copies when training) plus ``images``
    images in memory at once (all processes together). ``model`` runs one forward on ``forward_device`` (default:
    the meta device, where nothing is computed), and only when the run could be too large at all."""
    free = available_bytes(device)
    if free is None:
        return
    fixed = processes * parameter_bytes(model) * ((2 + optimizer_states) if size.training else 1)
    image = 3 * max(size.input_size, 32) ** 2 * 4
    if fixed + images * image * MAX_BYTES_PER_INPUT_BYTE <= free:
        return  # fits whatever the architecture: no forward needed
    needed = fixed + images * per_image_bytes(model, size, forward_device or torch.device("meta"))
    if needed <= free:
        return
    where = f"GPU {device}" if device.type == "cuda" else "this machine"
    shared = f" in {processes} processes" if processes > 1 else ""
    raise UserError(f"-b {size.batch_size} at {size.size_flag} {size.input_size} needs at least {needed / GIB:.1f} GiB "
                    f"for {'training' if size.training else 'evaluation'}{shared}, but {where} has {free / GIB:.1f} "
                    f"GiB free; lower -b (or {size.size_flag}).")
