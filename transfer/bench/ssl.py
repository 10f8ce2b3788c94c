"""The known-answer benchmark of stage 1: does each method learn features that a probe can read?

On a labelled pool whose labels stage 1 never reads (PneumoniaMNIST's training images), every method trains from
each starting point (random and ImageNet weights), with the representation probe (kNN and linear-probe accuracy on
a labelled validation split, by cross-validation, plus two collapse indicators) every ``pretrain.monitor_every``
epochs. The starting points themselves are probed in the same run, so "learns" has a number to beat: a method
started from scratch must end above the random network it started from, and one started from ImageNet must not fall
below ImageNet.

Each (method, init) is an ordinary ``medtransfer pretrain`` run under ``OUT/runs`` (resumable: a finished one is read
back, an interrupted one continues), so the benchmark runs in pieces; ``OUT/bench.json`` and the markdown table are
rebuilt from the run directories every time.

Run: ``medtransfer bench ssl configs/bench/ssl_pneumoniamnist.yaml``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from transfer.config import Config
from transfer.engine import resolve_device
from transfer.config.io import ConfigError
from transfer.markdown import md_table
from transfer.runs.pretrain import run_pretrain
from transfer.runs.probe import probe_data, representation_probe
from transfer.runs.seeding import seed_everything
from transfer.tracking import atomic_write_json, atomic_write_text, read_metrics
from transfer.weights import backbone_from_config

#: the stage-1 methods the benchmark trains by default (the built-in ones)
METHODS = ("cae", "augpred", "simclr", "moco", "byol")
INITS = ("scratch", "imagenet")
#: the probe scores and collapse indicators carried into the tables
PROBE_KEYS = ("linear_probe_acc", "knn_acc", "embedding_std", "effective_rank")


def bench_ssl(cfg: Config, out: Path, *, methods: tuple[str, ...] = METHODS, inits: tuple[str, ...] = INITS,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Probe each init, train each (method, init) not finished yet, and write ``bench.json`` and ``report.md``."""
    p = cfg.pretrain
    if not (p.monitor_every and p.monitor_data):
        raise ConfigError("bench ssl needs the probe: set pretrain.monitor_every and pretrain.monitor_data "
                          "(a labelled split the pool does not include)")
    out.mkdir(parents=True, exist_ok=True)
    baselines = _baselines(cfg, inits, out, progress)
    for init in inits:
        for method in methods:
            c = dataclasses.replace(cfg, init=init, pretrain=dataclasses.replace(p, method=method),
                                    tracking=dataclasses.replace(cfg.tracking, out_dir=str(out / "runs")))
            progress(f"{method} from {init}: training (or reading back) {out / 'runs' / f'{method}-{init}'}")
            run_pretrain(c, name=f"{method}-{init}")
    result = collect(out, methods, inits, baselines)
    atomic_write_json(out / "bench.json", result)
    atomic_write_text(out / "report.md", render(result, cfg))
    return result


def _baselines(cfg: Config, inits: tuple[str, ...], out: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """The probe of each starting point, measured once (``OUT/baselines.json``): the numbers stage 1 must beat."""
    path = out / "baselines.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    images, labels = probe_data(cfg)
    device = resolve_device(cfg.runtime.device)
    for init in inits:
        if init in done:
            continue
        seed_everything(cfg.seed)  # the same random network the scratch runs start from
        backbone, _ = backbone_from_config(cfg.backbone, init)
        t0 = time.process_time()
        done[init] = {**representation_probe(backbone.to(device), images, labels, device),
                      "cpu_seconds": round(time.process_time() - t0, 1)}
        progress(f"{init} weights, before stage 1: " + _scores(done[init]))
        atomic_write_json(path, done)
    return done


def collect(out: Path, methods: tuple[str, ...], inits: tuple[str, ...], baselines: dict[str, Any]) -> dict[str, Any]:
    """Per (method, init): every probe with its epoch and CPU time, the kept checkpoint's probe and its gain over the
    starting point; from the run directories and ``baselines.json``."""
    rows, curves = [], []
    for init in inits:
        for method in methods:
            run = out / "runs" / f"{method}-{init}"
            summary_file = run / "summary.json"
            if not summary_file.is_file():
                continue
            summary = json.loads(summary_file.read_text())
            probes = [r for r in read_metrics(run) if f"val_{PROBE_KEYS[0]}" in r]
            for r in probes:
                curves.append({"method": method, "init": init, "epoch": r["epoch"],
                               "train_loss": r.get("train_loss"), "pretext": r.get("train_pretext_acc"),
                               **{k: r.get(f"val_{k}") for k in PROBE_KEYS}})
            sel = summary.get("selection") or {}
            kept = next((r for r in probes if r["epoch"] == sel.get("epoch")), probes[-1] if probes else {})
            base = baselines.get(init, {})
            row = {"method": method, "init": init, "epochs": summary.get("epochs"), "kept_epoch": sel.get("epoch"),
                   "stopped_on_plateau": sel.get("stopped_on_plateau"),
                   "cpu_minutes": (summary.get("cpu_seconds") or math.nan) / 60,
                   "wall_minutes": (summary.get("seconds") or math.nan) / 60,
                   **{k: kept.get(f"val_{k}") for k in PROBE_KEYS},
                   "start_linear": base.get("linear_probe_acc"), "start_knn": base.get("knn_acc")}
            row["linear_gain"] = _minus(row["linear_probe_acc"], row["start_linear"])
            row["knn_gain"] = _minus(row["knn_acc"], row["start_knn"])
            rows.append(row)
    return {"baselines": baselines, "results": rows, "curves": curves}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _scores(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {d[k]:.3f}" for k in PROBE_KEYS if isinstance(d.get(k), (int, float)))


def render(result: dict[str, Any], cfg: Config) -> str:
    """The benchmark as markdown: the starting points, one row per (method, init), and the probe curves."""
    p = cfg.pretrain
    base = pd.DataFrame([{"init": k, **{m: v.get(m) for m in PROBE_KEYS}} for k, v in result["baselines"].items()])
    lines = ["# Stage 1 known-answer benchmark", "",
             f"Pool: `{p.pool}` ({p.pool_format}; labels never read), probe: `{p.monitor_data}` (5-fold "
             f"cross-validated kNN and logistic-regression accuracy of the frozen pooled features), every "
             f"{p.monitor_every} epoch(s); backbone `{cfg.backbone.name}` at {cfg.data.image_size[0]}x"
             f"{cfg.data.image_size[1]}, batch {p.batch_size}, {p.optimizer} lr {p.lr:g}, at most {p.epochs} epochs, "
             f"plateau patience {p.monitor_patience or 'off'} (min gain {p.monitor_min_delta:g}); the kept checkpoint "
             f"is the {'best probe' if p.keep == 'best' else 'last epoch'}. `embedding_std`: mean per-dimension std of "
             "the L2-normalised features x sqrt(d) (1 isotropic, 0 collapsed); `effective_rank`: exp(entropy of the "
             "normalised singular values).", "",
             "## Starting points (no stage 1)", "", md_table(base, 3), ""]
    if result["results"]:
        res = pd.DataFrame(result["results"])
        lines += ["## After stage 1 (the kept checkpoint)", "",
                  "`linear_gain` / `knn_gain`: the kept checkpoint's probe minus its starting point's.", "",
                  md_table(res, 3), ""]
    if result["curves"]:
        lines += ["## Probe curves", "", md_table(pd.DataFrame(result["curves"]), 3), ""]
    return "\n".join(lines)
