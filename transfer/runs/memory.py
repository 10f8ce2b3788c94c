"""Peak memory of a run: the host's resident set and the GPU allocator's high-water mark, both in GiB."""
from __future__ import annotations

import sys

import torch


def peak_memory_gib() -> float | None:
    """The largest resident set of this process or of any finished child (DataLoader workers), in GiB; None where
    the platform has no ``resource`` module (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return round(peak / (2**30 if sys.platform == "darwin" else 2**20), 2)  # bytes on macOS, KiB on Linux


def reset_gpu_peak_memory(device: torch.device) -> None:
    """Start counting the GPU's peak allocation afresh (nothing to do on other devices)."""
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def gpu_peak_memory_gib(device: torch.device) -> float | None:
    """The most GPU memory torch's allocator held for tensors since :func:`reset_gpu_peak_memory`
    (``torch.cuda.max_memory_allocated``), in GiB; None off CUDA. Host memory is :func:`peak_memory_gib`."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
