"""What a run cost over all its sessions: an interrupted run resumed in another process has only that process's
clock, so the epochs restored from its resume state bring their own (``epoch_seconds``, ``epoch_cpu_seconds`` in
each history row, written by :meth:`transfer.engine.Engine.fit`)."""
from __future__ import annotations

from typing import Any


def run_cost(history: list[dict[str, Any]], resumed_from: int | None, wall: float, cpu: float) -> dict[str, Any]:
    """``seconds`` and ``cpu_seconds`` of the whole run: this process's ``wall`` and ``cpu`` plus the epochs
    before ``resumed_from`` (the first epoch this process trained; None: it trained them all).

    Restored epochs from a resume state written before the rows were timed are extrapolated from this process's
    mean epoch (``cost`` says ``extrapolated``, ``measured``, or ``this process`` when nothing can be added)."""
    out = {"seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "seconds_this_process": round(wall, 1),
           "cpu_seconds_this_process": round(cpu, 1), "cost": "measured"}
    if not resumed_from:
        return out
    before = [r for r in history if r.get("epoch", 0) < resumed_from]
    if all("epoch_seconds" in r and "epoch_cpu_seconds" in r for r in before):
        out["seconds"] = round(wall + sum(r["epoch_seconds"] for r in before), 1)
        out["cpu_seconds"] = round(cpu + sum(r["epoch_cpu_seconds"] for r in before), 1)
        return out
    trained_here = len(history) - len(before)
    if trained_here <= 0:
        out["cost"] = "this process"  # nothing trained here to extrapolate from: the restored epochs are not in it
        return out
    scale = len(history) / trained_here
    out.update(seconds=round(wall * scale, 1), cpu_seconds=round(cpu * scale, 1), cost="extrapolated")
    return out
