"""Where model work runs (CUDA when present, else CPU) and how big its batches are.

Plain Python + torch, no Django. A train worker runs the loop step (head training, pixel-space
crafting through the backbone, feature extraction of the crafted images) on :func:`pick`: the
first CUDA device when torch sees one, else the CPU; ``ROBUSTAL_DEVICE`` (``cpu``, ``cuda``,
``cuda:1``) overrides it. Every mode also runs on the CPU, only slower, so nothing depends on a
GPU to be correct.

Batch sizes of crafting follow memory (:func:`crafting_batch_size`): the bytes one image's
activations take in a forward pass of the classifier are measured once (forward hooks on one
image), an attack keeps about :data:`ACTIVATION_FACTOR` times that per image (the forward graph
kept for the backward pass, the gradients, DeepFool's per-class gradients, the optimiser
state), and a batch may use :data:`MEMORY_SHARE` of the memory free now (the device's free
memory on CUDA, the system's available memory on the CPU), between :data:`MIN_BATCH` and
:data:`MAX_BATCH` images.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

MEMORY_SHARE = 0.25  # of the memory free now, for one crafting batch
ACTIVATION_FACTOR = 8.0  # attack memory per image / forward activations per image (conservative)
MIN_BATCH, MAX_BATCH = 1, 1024


def pick() -> torch.device:
    """The device model work runs on: ``ROBUSTAL_DEVICE`` when set, else CUDA when present, else CPU."""
    wanted = os.environ.get("ROBUSTAL_DEVICE", "").strip().lower()
    if wanted and wanted != "auto":
        dev = torch.device(wanted)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"ROBUSTAL_DEVICE={wanted} but torch sees no CUDA device")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _system_memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of RAM (Linux: /proc/meminfo; elsewhere sysconf, total only)."""
    try:
        info = {}
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
        return info.get("MemTotal"), info.get("MemAvailable", info.get("MemFree"))
    except (OSError, ValueError, IndexError):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None
        except (ValueError, OSError, AttributeError):
            return None, None


@dataclass(frozen=True)
class DeviceInfo:
    device: str  # "cuda:0" or "cpu"
    name: str  # the GPU's name, or the CPU count
    total_bytes: int | None
    free_bytes: int | None

    def describe(self) -> str:
        def gib(b):
            return "?" if b is None else f"{b / 2**30:.1f} GiB"
        return f"{self.device} ({self.name}): {gib(self.free_bytes)} free of {gib(self.total_bytes)}"


def info(device: torch.device | None = None) -> DeviceInfo:
    """What ``device`` (default :func:`pick`) is and how much memory it has free now.

    On CUDA this initialises the CUDA context of this process: call it in the process that does
    the work (a prefork child, not the parent that forks it)."""
    dev = pick() if device is None else torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return DeviceInfo(f"cuda:{index}", torch.cuda.get_device_name(index), int(total), int(free))
    total, free = _system_memory()
    threads = torch.get_num_threads()
    return DeviceInfo("cpu", f"{os.cpu_count()} CPUs, torch uses {threads} threads", total, free)


def activation_bytes(model: nn.Module, sample: torch.Tensor) -> int:
    """Bytes of every module's output (and the input) for ONE image of ``sample``'s shape, on
    the model's current device, measured with forward hooks."""
    total = [sample[:1].numel() * sample.element_size()]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        for h in handles:
            h.remove()
    return int(total[0])


def crafting_batch_size(model: nn.Module, sample: torch.Tensor, device: torch.device | None = None) -> int:
    """Images per attack batch on ``device`` (see the module docstring for the rule).

    ``model`` and ``sample`` must already be on ``device``."""
    dev = sample.device if device is None else torch.device(device)
    per_image = activation_bytes(model, sample) * ACTIVATION_FACTOR
    free = info(dev).free_bytes
    if free is None:
        return 128  # unknown memory: the attacks' own default
    return int(min(max(free * MEMORY_SHARE // max(per_image, 1), MIN_BATCH), MAX_BATCH))


__all__ = ["pick", "info", "DeviceInfo", "activation_bytes", "crafting_batch_size", "MEMORY_SHARE",
           "ACTIVATION_FACTOR", "MIN_BATCH", "MAX_BATCH"]
