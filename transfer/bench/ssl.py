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
from matplotlib.figure import Figure

from transfer.config import Config
from transfer.engine import resolve_device
from transfer.config.io import ConfigError
from transfer.markdown import md_table
from transfer.runs.pretrain import run_pretrain
from transfer.runs.probe import probe_data, representation_probe
from transfer.runs.seeding import seed_everything
from transfer.runs.timing import run_cost
from transfer.tracking import atomic_write_json, atomic_write_text, read_metrics
from transfer.weights import backbone_from_config

#: the stage-1 methods the benchmark trains by default (the built-in ones)
METHODS = ("cae", "augpred", "simclr", "moco", "byol")
INITS = ("scratch", "imagenet")
#: the probe scores and collapse indicators carried into the tables
PROBE_KEYS = ("linear_probe_acc", "knn_acc", "embedding_std", "effective_rank")


#: what stage 1 must show on the known answer: a gain of the linear probe over random init (from scratch) ...
MIN_GAIN_FROM_SCRATCH = 0.03
#: ... no loss larger than this against ImageNet's probe (from ImageNet) ...
MAX_LOSS_FROM_IMAGENET = 0.01
#: ... within this many CPU-minutes per run
CPU_MINUTES = 60.0


def bench_ssl(cfg: Config, out: Path, *, methods: tuple[str, ...] = METHODS, inits: tuple[str, ...] = INITS,
              report: Path | None = None, command: str = "", train: bool = True,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Probe each init, train each (method, init) not finished yet, and write ``bench.json`` and ``report.md``
    (also to ``report`` when given, with the probe curves' plot beside it). ``train=False``: only rebuild them from
    the run directories and the starting points already probed (while other processes still train)."""
    p = cfg.pretrain
    if not (p.monitor_every and p.monitor_data):
        raise ConfigError("bench ssl needs the probe: set pretrain.monitor_every and pretrain.monitor_data "
                          "(a labelled split the pool does not include)")
    out.mkdir(parents=True, exist_ok=True)
    baselines = _baselines(cfg, inits, out, progress) if train else _read_baselines(out)
    for init in inits if train else ():
        for method in methods:
            c = dataclasses.replace(cfg, init=init, pretrain=dataclasses.replace(p, method=method),
                                    tracking=dataclasses.replace(cfg.tracking, out_dir=str(out / "runs")))
            progress(f"{method} from {init}: training (or reading back) {out / 'runs' / f'{method}-{init}'}")
            run_pretrain(c, name=f"{method}-{init}")
    result = collect(out, methods, inits, baselines)
    atomic_write_json(out / "bench.json", result)
    for md in [out / "report.md", *([report] if report is not None else [])]:
        md.parent.mkdir(parents=True, exist_ok=True)
        plot = plot_curves(result, md.with_name(f"{md.stem}_curves.png")) if result["curves"] else None
        atomic_write_text(md, render(result, cfg, command=command, plot=plot))
    return result


def _read_baselines(out: Path) -> dict[str, Any]:
    path = out / "baselines.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _baselines(cfg: Config, inits: tuple[str, ...], out: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """The probe of each starting point, measured once (``OUT/baselines.json``): the numbers stage 1 must beat."""
    path = out / "baselines.json"
    done = _read_baselines(out)
    images, labels = probe_data(cfg)
    device = resolve_device(cfg.runtime.device)
    for init in inits:
        if init in done:
            done[init].setdefault("n_images", len(labels))  # probed before the count was kept: the same images
            continue
        seed_everything(cfg.seed)  # the same random network the scratch runs start from
        backbone, _ = backbone_from_config(cfg.backbone, init)
        t0 = time.process_time()
        done[init] = {**representation_probe(backbone.to(device), images, labels, device),
                      "cpu_seconds": round(time.process_time() - t0, 1), "n_images": len(labels)}
        progress(f"{init} weights, before stage 1: " + _scores(done[init]))
        atomic_write_json(path, done)  # each start as soon as it is probed: an interrupted bench keeps it
    atomic_write_json(path, done)  # the image counts filled in above for starts probed before they were kept
    return done


def collect(out: Path, methods: tuple[str, ...], inits: tuple[str, ...], baselines: dict[str, Any]) -> dict[str, Any]:
    """Per (method, init): every probe with its epoch and CPU time, the kept checkpoint's probe and its gain over the
    starting point; from the run directories and ``baselines.json``."""
    rows, curves, pending = [], [], []
    for init in inits:
        for method in methods:
            run = out / "runs" / f"{method}-{init}"
            summary_file = run / "summary.json"
            if not summary_file.is_file():
                pending.append(f"{method} from {init}")
                continue
            summary = json.loads(summary_file.read_text())
            rows_of_run = read_metrics(run)
            if "cost" not in summary:  # written before runs added up their sessions' clocks: work it out here
                summary.update(run_cost(rows_of_run, summary.get("resumed_from_epoch"), summary.get("seconds") or 0,
                                        summary.get("cpu_seconds") or 0))
            probes = [r for r in rows_of_run if f"val_{PROBE_KEYS[0]}" in r]
            for r in probes:
                curves.append({"method": method, "init": init, "epoch": r["epoch"],
                               "train_loss": r.get("train_loss"), "pretext": r.get("train_pretext_acc"),
                               **{k: r.get(f"val_{k}") for k in PROBE_KEYS}})
            sel = summary.get("selection") or {}
            kept = next((r for r in probes if r["epoch"] == sel.get("epoch")), probes[-1] if probes else {})
            last = probes[-1] if probes else {}
            base = baselines.get(init, {})
            epochs = summary.get("epochs") or 0
            cpu_minutes = (summary.get("cpu_seconds") or math.nan) / 60
            row = {"method": method, "init": init, "epochs": epochs, "kept_epoch": sel.get("epoch"),
                   "stopped_on_plateau": sel.get("stopped_on_plateau"), "cpu_minutes": cpu_minutes,
                   # epochs cost alike, so the CPU time up to the end of the kept epoch is its share of the run's
                   "cpu_minutes_to_kept": cpu_minutes * (kept.get("epoch", epochs - 1) + 1) / max(epochs, 1),
                   "wall_minutes": (summary.get("seconds") or math.nan) / 60,
                   # measured, or extrapolated from this process's epochs for a run resumed from an untimed state
                   "cost": summary.get("cost"),
                   **{k: kept.get(f"val_{k}") for k in PROBE_KEYS},
                   "last_linear_probe_acc": last.get(f"val_{PROBE_KEYS[0]}"),
                   "start_linear": base.get("linear_probe_acc"), "start_knn": base.get("knn_acc"),
                   "start_embedding_std": base.get("embedding_std")}
            row["linear_gain"] = _minus(row["linear_probe_acc"], row["start_linear"])
            row["last_linear_gain"] = _minus(row["last_linear_probe_acc"], row["start_linear"])
            row["knn_gain"] = _minus(row["knn_acc"], row["start_knn"])
            row["meets_target"] = meets_target(row)
            rows.append(row)
    return {"baselines": baselines, "results": rows, "curves": curves, "pending": pending}


def best_methods(result: dict[str, Any], k: int = 2) -> dict[str, list[str]]:
    """Per starting point, the ``k`` methods whose kept checkpoint has the best validation linear probe (ties: the
    better kNN probe), for the unlabelled-data verdict; a start with a method still pending gets no choice yet."""
    pending_inits = {p.rsplit(" from ", 1)[1] for p in result.get("pending", [])}
    chosen: dict[str, list[str]] = {}
    for init in dict.fromkeys(r["init"] for r in result["results"]):
        if init in pending_inits:
            continue
        rows = [r for r in result["results"] if r["init"] == init and r.get("linear_probe_acc") is not None]
        rows.sort(key=lambda r: (r["linear_probe_acc"], r.get("knn_acc") or 0.0), reverse=True)
        chosen[init] = [r["method"] for r in rows[:k]]
    return chosen


def meets_target(row: dict[str, Any]) -> bool | None:
    """The known answer's test for one run: from scratch, the kept probe at least ``MIN_GAIN_FROM_SCRATCH`` above
    random init; from ImageNet, at most ``MAX_LOSS_FROM_IMAGENET`` below ImageNet; either within ``CPU_MINUTES`` of
    CPU time up to the kept epoch. None for another starting point (a checkpoint: no stated target)."""
    gain = row.get("linear_gain")
    if gain is None or row["init"] not in INITS:
        return None
    within = row["cpu_minutes_to_kept"] <= CPU_MINUTES
    if row["init"] == "scratch":
        return bool(gain >= MIN_GAIN_FROM_SCRATCH - 1e-9 and within)
    return bool(gain >= -MAX_LOSS_FROM_IMAGENET - 1e-9 and within)


def plot_curves(result: dict[str, Any], path: Path) -> Path:
    """One panel per starting point: each method's linear-probe accuracy against epochs, the starting point's own
    probe as a dashed line, the kept epoch marked."""
    curves = pd.DataFrame(result["curves"])
    inits = list(dict.fromkeys(curves["init"]))
    fig = Figure(figsize=(5.2 * len(inits), 3.6))
    kept = {(r["method"], r["init"]): r["kept_epoch"] for r in result["results"]}
    for k, init in enumerate(inits):
        ax = fig.add_subplot(1, len(inits), k + 1)
        for j, (method, frame) in enumerate(curves[curves["init"] == init].groupby("method", sort=False)):
            ax.plot(frame["epoch"], frame["linear_probe_acc"], marker=".", color=f"C{j}", label=method)
            hit = frame[frame["epoch"] == kept.get((method, init))]
            ax.plot(hit["epoch"], hit["linear_probe_acc"], "o", mfc="none", ms=9, color=f"C{j}")
        start = result["baselines"].get(init, {}).get("linear_probe_acc")
        if start is not None:
            ax.axhline(start, color="k", ls="--", lw=1, label=f"{init} weights, no stage 1")
        ax.set_title(f"from {init}", fontsize=10)
        ax.set_xlabel("epoch of stage 1", fontsize=9)
        ax.set_ylabel("validation linear probe accuracy", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def probe_noise(result: dict[str, Any]) -> str:
    """The sampling error of one probe, to read the target's few points against: the binomial standard error of an
    accuracy on the probe's images (cross-validation scores each image once), at the starting points' accuracy."""
    base = [b for b in result["baselines"].values() if b.get("n_images") and b.get("linear_probe_acc") is not None]
    if not base:
        return ""
    n, acc = base[0]["n_images"], sum(float(b["linear_probe_acc"]) for b in base) / len(base)
    se = math.sqrt(acc * (1 - acc) / n)
    if se == 0:  # a perfect (or null) probe: nothing to gain, no spread to read a gain against
        return ""
    return (f" Sampling error of one probe: {n} images at accuracy {acc:.3f} give a binomial standard error of "
            f"{se:.3f}, so a {MIN_GAIN_FROM_SCRATCH * 100:g}-point gain is {MIN_GAIN_FROM_SCRATCH / se:.1f} SE; and "
            "the kept checkpoint is the best of a run's probes, which favours it by the noise (compare "
            "`last_linear_gain`).")


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def _scores(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {d[k]:.3f}" for k in PROBE_KEYS if isinstance(d.get(k), (int, float)))


def render(result: dict[str, Any], cfg: Config, *, command: str = "", plot: Path | None = None) -> str:
    """The benchmark as markdown: the starting points, one row per (method, init) with the known answer's test, the
    probe curves (plot and table)."""
    p = cfg.pretrain
    base = pd.DataFrame([{"init": k, **{m: v.get(m) for m in PROBE_KEYS}} for k, v in result["baselines"].items()])
    lines = ["# Stage 1 known-answer benchmark", ""]
    if command:
        lines += ["Regenerate (resumable: finished runs are read back, an interrupted one continues):", "",
                  f"    {command}", ""]
    lines += [f"Pool: `{p.pool}` ({p.pool_format}; labels never read), probe: `{p.monitor_data}` (5-fold "
              f"cross-validated kNN and logistic-regression accuracy of the frozen pooled features), every "
              f"{p.monitor_every} epoch(s); backbone `{cfg.backbone.name}` at {cfg.data.image_size[0]}x"
              f"{cfg.data.image_size[1]} (stem stride {cfg.backbone.stem_stride or 'as built'}), batch "
              f"{p.batch_size}, {p.optimizer} lr {p.lr:g}, at most {p.epochs} epochs, plateau patience "
              f"{p.monitor_patience or 'off'} (min gain {p.monitor_min_delta:g}); the kept checkpoint is the "
              f"{'best probe' if p.keep == 'best' else 'last epoch'}; seed {cfg.seed}, one run per (method, start). "
              "`embedding_std`: mean per-dimension std of the L2-normalised features x sqrt(d) (1 isotropic, 0 "
              "collapsed; healthy post-ReLU features sit well below 1, so compare with the starting point's); "
              "`effective_rank`: exp(entropy of the normalised singular values).", "",
              "## Starting points (no stage 1)", "", md_table(base, 3), ""]
    if result.get("pending"):
        lines += [f"**Not finished yet** (run the command again to continue them): {', '.join(result['pending'])}.", ""]
    if result["results"]:
        res = pd.DataFrame(result["results"])
        verdict = res[["method", "init", "start_linear", "linear_probe_acc", "linear_gain", "last_linear_gain",
                       "kept_epoch", "epochs", "cpu_minutes_to_kept", "cpu_minutes", "cost", "embedding_std",
                       "start_embedding_std", "meets_target"]]
        lines += ["## The known answer",  "",
                  f"Target: from scratch, the kept checkpoint's linear probe at least {MIN_GAIN_FROM_SCRATCH * 100:g} "
                  f"points above random init's; from ImageNet, at most {MAX_LOSS_FROM_IMAGENET * 100:g} point(s) below "
                  "ImageNet's; within "
                  f"{CPU_MINUTES:g} CPU-minutes up to the kept epoch (`cpu_minutes_to_kept`: the run's CPU time "
                  "times the share of its epochs up to the kept one; `cost` `extrapolated`: a run resumed in "
                  "another process from a state that kept no clock, its earlier epochs costed at this process's "
                  "mean epoch). `last_linear_gain`: the last epoch's gain, "
                  "for a reader who would not keep the best probe. One seed: a probe differs by about 0.01 between "
                  f"neighbouring epochs, so read gains below that as noise.{probe_noise(result)}", "",
                  md_table(verdict, 3), "",
                  "## After stage 1 (the kept checkpoint)", "",
                  "`linear_gain` / `knn_gain`: the kept checkpoint's probe minus its starting point's.", "",
                  md_table(res.drop(columns=["meets_target", "start_embedding_std"]), 3), ""]
        if chosen := best_methods(result):
            lines += ["## Methods for the unlabelled-data verdict", "",
                      "Per starting point, the two methods whose kept checkpoint has the best validation linear probe "
                      "(ties: kNN): the inits `pretrain:<method>@<start>` of the verdict study. Chosen on the validation "
                      "split alone; no test image is read by stage 1 or by this choice.", "",
                      *[f"- from {init}: {', '.join(f'`pretrain:{m}@{init}`' for m in methods)}"
                        for init, methods in chosen.items()], ""]
    if result["curves"]:
        lines += ["## Probe curves", ""]
        if plot is not None:
            lines += [f"![{plot.stem}]({plot.name})", ""]
        lines += [md_table(pd.DataFrame(result["curves"]), 3), ""]
    return "\n".join(lines)
