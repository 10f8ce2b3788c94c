"""The GPU check (``medtransfer doctor --gpu``, ``scripts/gpu_check.sh``): what only a CUDA machine can show.

On CUDA it runs, on synthetic data in each task's format (:mod:`transfer.bench.synthetic`) and the default backbone
with its offline ImageNet weights:

- a few fine-tuning steps of every task (classification, landmarks with the refinement stage, segmentation,
  detection) and a few steps of every stage-1 method, under each precision mode: bf16, fp16 with the gradient
  scaler, channels_last, and ``torch.compile``; each reports its status, time, GPU peak memory, images/s, the scaler's
  skipped steps and the validation score (scored under the same precision);
- the quickstart study at its own size (``configs/quickstart.yaml``, 16 runs), as a subprocess;
- ``bench finetune`` and ``bench pretrain`` at 224 px;

and writes ``report.md`` (and ``report.json``) in the output folder. A failing check is recorded with its one-line
error and the next one runs. Without CUDA every one of them is skipped with the reason, the report says so, and the
command succeeds: it is safe to run anywhere.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from transfer.bench import synthetic
from transfer.config import Config, load_config

#: precision mode -> runtime settings
MODES: dict[str, list[str]] = {
    "bf16": ["runtime.amp=bf16", "runtime.channels_last=false", "runtime.compile=false"],
    "fp16+scaler": ["runtime.amp=fp16", "runtime.channels_last=false", "runtime.compile=false"],
    "channels_last": ["runtime.amp=bf16", "runtime.channels_last=true", "runtime.compile=false"],
    "compile": ["runtime.amp=bf16", "runtime.channels_last=true", "runtime.compile=true"],
}
TASKS = ("classification", "landmarks", "segmentation", "detection")
METHODS = ("cae", "augpred", "simclr", "moco", "byol")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Check:
    section: str
    name: str
    status: str  #: ok | failed | skipped
    seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def environment() -> dict[str, Any]:
    """Versions and devices: what the report's numbers were measured with."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    return env


def gpu_check(out: Path, *, steps: int = 4, size: int = 128, study: bool = True, bench: bool = True,
              tasks: tuple[str, ...] = TASKS, methods: tuple[str, ...] = METHODS,
              modes: tuple[str, ...] = tuple(MODES), device: str = "cuda", backbone: str = "efficientnet_lite0",
              init: str = "imagenet") -> tuple[list[Check], Path]:
    """Run the checks (or skip them without CUDA); returns them and the report's path.

    ``device`` other than ``cuda`` (tests: ``cpu``, with a tiny ``backbone`` and ``init: scratch``) runs the same
    checks there, where AMP and channels_last are off: a check of the plumbing, not of the GPU.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    checks: list[Check] = []
    plan: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
    data = out / "data"
    model = [f"backbone.name={backbone}", f"init={init}", f"runtime.device={device}"]
    for task in tasks:
        for mode in modes:
            plan.append(("finetune", f"{task} / {mode}", _finetune(task, mode, out, data, steps, size, model)))
    for method in methods:
        for mode in modes:
            plan.append(("pretrain", f"{method} / {mode}", _pretrain(method, mode, out, steps, model)))
    if study:
        plan.append(("study", "quickstart (configs/quickstart.yaml, 16 runs)", _study(out)))
    if bench:
        plan.append(("bench", "finetune, classification, 224 px, batch 32", _bench_finetune(out)))
        plan.append(("bench", "pretrain, simclr, 224 px, batch 32", _bench_pretrain()))
    reason = "CUDA is not available" + ("" if torch.version.cuda else " (this torch is a CPU build)")
    skip = device == "cuda" and not env["cuda_available"]
    for section, name, fn in plan:
        if skip:
            checks.append(Check(section, name, "skipped", error=reason))
            continue
        print(f"gpu check: {section}: {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            details = fn()
            checks.append(Check(section, name, "ok", round(time.perf_counter() - t0, 1), details))
        except Exception as e:  # every check runs: one failure is a row of the report, not the end of it
            last = traceback.format_exception_only(type(e), e)[-1].strip().splitlines()[0]
            checks.append(Check(section, name, "failed", round(time.perf_counter() - t0, 1), error=last))
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    if skip:
        print(f"gpu check: {reason}: the CUDA checks were skipped ({len(plan)} of them); see {out / 'report.md'}")
    report = write_report(out, env, checks)
    return checks, report


def _config(settings: list[str]) -> Config:
    return load_config(Config, None, settings)


def _common(out: Path, mode: str, model: list[str]) -> list[str]:
    return [*MODES[mode], *model, f"tracking.out_dir={out / 'runs'}", "tracking.wandb_mode=disabled",
            "tracking.progress=false", "tracking.log_media=false", "seed=0"]


def _finetune(task: str, mode: str, out: Path, data: Path, steps: int, size: int, model: list[str]
              ) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        from transfer.api import TASKS as REGISTRY
        from transfer.runs.finetune import run_finetune

        root = data / task
        settings = synthetic.WRITERS[task](root, size)  # (re)written: cheap, and every check stands alone
        cfg = _config([*settings, "train.epochs=2", f"train.max_steps={steps}", "train.batch_size=8",
                       *_common(out, mode, model)])
        summary = run_finetune(cfg, name=f"{task}-{mode.replace('+', '_')}", restart=True)
        rows = [json.loads(x) for x in (Path(cfg.tracking.out_dir) / summary["run"] / "metrics.jsonl")
                .read_text().splitlines()]
        monitor = REGISTRY.get(task).monitor
        return {"gpu_peak_gib": summary.get("gpu_peak_memory_gib"), "images_per_s": round(rows[-1]["images_per_s"], 1),
                "skipped_steps": sum(r.get("skipped_steps") or 0 for r in rows), f"val_{monitor}": summary["val"][monitor],
                "test_s_per_image": summary.get("test_seconds_per_image")}

    return run


def _pretrain(method: str, mode: str, out: Path, steps: int, model: list[str]) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        from transfer.runs.pretrain import run_pretrain

        cfg = _config([*synthetic.classification(out, 64), f"pretrain.method={method}", "pretrain.pool_format=labelled",
                       "pretrain.epochs=2", "pretrain.warmup_epochs=0", f"pretrain.max_steps={steps}",
                       "pretrain.batch_size=16",
                       *_common(out, mode, model)])
        summary = run_pretrain(cfg, name=f"pretrain-{method}-{mode.replace('+', '_')}", restart=True)
        final = summary["final"]
        return {"gpu_peak_gib": summary.get("gpu_peak_memory_gib"), "images_per_s": round(final["images_per_s"], 1),
                "skipped_steps": final.get("skipped_steps"), "final_loss": round(final["train_loss"], 4)}

    return run


def _study(out: Path) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        config = REPO / "configs" / "quickstart.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"{config}: the quickstart config (run the check from a clone of the project)")
        folder = out / "study"
        cmd = [sys.executable, "-m", "transfer.cli", "study", str(config), "--set", f"study.out_dir={folder}",
               "--set", "tracking.wandb_mode=disabled", "--set", "tracking.progress=false"]  # device auto: the GPU
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        report = folder / "quickstart" / "report.md"
        return {"report": str(report), "report_written": report.is_file()}

    return run


def _bench_finetune(out: Path) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        from transfer.bench.finetune import bench_finetune

        cfg = _config([*synthetic.classification(out, 224), "backbone.name=efficientnet_lite0", "init=imagenet",
                       "train.batch_size=32", "runtime.device=cuda", "runtime.amp=auto", "runtime.channels_last=true",
                       "tracking.progress=false"])
        res = bench_finetune(cfg, steps=10, warmup=3, rounds=2)
        keep = ("amp", "channels_last", "bare_images_per_s", "engine_images_per_s", "ratio_engine_over_bare",
                "data_wait_share")
        return {k: res[k] for k in keep if k in res}

    return run


def _bench_pretrain() -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        from transfer.bench.pretrain import bench_pretrain

        res = bench_pretrain("simclr", "efficientnet_lite0", 32, (224, 224), steps=10)
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()
                if k.endswith("img_s") or k.startswith("ours_vs")}

    return run


def write_report(out: Path, env: dict[str, Any], checks: list[Check]) -> Path:
    """``report.md`` (a table per section) and ``report.json`` in ``out``."""
    lines = ["# medtransfer GPU check", "",
             "Command: `scripts/gpu_check.sh` (`medtransfer doctor --gpu`). " + time.strftime("%Y-%m-%d %H:%M"), "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in env.items()], ""]
    if not env["cuda_available"]:
        lines += [f"**CUDA is not available here: all {len(checks)} CUDA checks were skipped.** Run this on a machine "
                  "with an NVIDIA GPU and a CUDA build of torch.", ""]
    for section in dict.fromkeys(c.section for c in checks):
        rows = [c for c in checks if c.section == section]
        keys = list(dict.fromkeys(k for c in rows for k in c.details))
        lines += [f"## {section}", "", "| check | status | seconds | " + " | ".join(keys) + " | error |",
                  "|---|---|---|" + "---|" * len(keys) + "---|"]
        for c in rows:
            vals = [str(c.details.get(k, "")) for k in keys]
            lines.append(f"| {c.name} | {c.status} | {'' if c.seconds is None else c.seconds} | "
                         + " | ".join(vals) + f" | {c.error.replace('|', '/')} |")
        lines.append("")
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "failed", "skipped")}
    lines += [f"Summary: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps({"environment": env, "checks": [asdict(c) for c in checks]},
                                                indent=2, default=str))
    return path
