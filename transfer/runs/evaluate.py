"""Score a trained model on a labelled split: metrics with CIs, and the per-sample predictions."""
from __future__ import annotations

from pathlib import Path

from transfer.api import EvalResult
from transfer.engine import resolve_device
from transfer.runs.image_columns import with_image_columns
from transfer.runs.model_io import load_model
from transfer.tracking import atomic_write_json


def evaluate_run(run: str | Path, data: str, *, device: str = "auto", data_format: str | None = None,
                 root: str | None = None, image_dir: str | None = None, out: Path | None = None) -> EvalResult:
    """Evaluate the model of ``run`` on ``data`` (read like the run's training data unless told otherwise).

    ``out``: write the predictions CSV there and the metrics beside it (``.metrics.json``).
    """
    dev = resolve_device(device)
    cfg, task, model = load_model(run, dev)
    overrides = {"format": data_format, "root": root, "image_dir": image_dir}
    if any(v is not None for v in overrides.values()):
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg.data, k, v)
        info = task.info
        task = type(task)(cfg)  # re-validates the format for this task
        task.info = info
    res = task.evaluate(model, task.load_split(data, "eval"), dev, with_ci=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with_image_columns(res.predictions).to_csv(out, index=False)
        atomic_write_json(out.with_suffix(".metrics.json"), res.metrics)
    return res
