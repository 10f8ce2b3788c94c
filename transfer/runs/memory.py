"""Peak memory of a run: the host's resident set and the GPU allocator's high-water mark, both in GiB.

A study or a cross-validation runs many fine-tuning runs in one process, so each run's peak is counted from its own
start: :func:`reset_peak_memory` resets the kernel's high-water mark of this process's resident set (Linux:
``/proc/self/clear_refs``, value 5) and torch's CUDA peak. ``getrusage``'s ``ru_maxrss`` cannot be reset: where
the reset is not available (macOS, an older kernel) the host peak is the process's since it started, and says so.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

__all__ = ["gpu_peak_memory_gib", "peak_memory_gib", "peak_memory_scope", "reset_peak_memory"]

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
#: whether the last reset_peak_memory() reset the host's high-water mark
_host_reset = False


def reset_peak_memory(device: torch.device) -> None:
    """Start counting this run's peaks afresh: the host's resident set (where the kernel allows) and the GPU's."""
    global _host_reset
    try:
        _CLEAR_REFS.write_text("5")  # "reset the peak resident set size" (proc(5), Linux >= 4.0)
        _host_reset = _vm_hwm_kib() is not None
    except OSError:
        _host_reset = False
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib() -> float | None:
    """The largest resident set of this process since :func:`reset_peak_memory` (else since it started), or of any
    finished child (DataLoader workers), in GiB; None where the platform has no ``resource`` module (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    own = _vm_hwm_kib() if _host_reset else None
    if own is None:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes on macOS, KiB on Linux
            own //= 1024
    return round(max(own, _children_peak_kib()) / 2**20, 2)


def _children_peak_kib() -> int:
    """The largest resident set of any finished child process, KiB (since the process started: not resettable)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // (1024 if sys.platform == "darwin" else 1)


def peak_memory_scope() -> str:
    """What :func:`peak_memory_gib` counts, for ``summary.json``: "run" after a host reset, else "process"."""
    return "run" if _host_reset else "process"


def _vm_hwm_kib() -> int | None:
    """``VmHWM`` of /proc/self/status (the resident set's high-water mark, KiB), None where there is none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def gpu_peak_memory_gib(device: torch.device) -> float | None:
    """The most GPU memory torch's allocator held for tensors since :func:`reset_peak_memory`
    (``torch.cuda.max_memory_allocated``), in GiB; None off CUDA. Host memory is :func:`peak_memory_gib`."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
