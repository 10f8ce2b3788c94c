"""Score a trained model on a labelled split: metrics with CIs, and the per-sample predictions."""
from __future__ import annotations

from pathlib import Path

from transfer.api import EvalResult
from transfer.engine import resolve_device
from transfer.precision import Precision
from transfer.runs.image_columns import with_image_columns
from transfer.runs.model_io import load_model
from transfer.runs.output_file import output_file, write_table
from transfer.tracking import atomic_write_json


def evaluate_run(run: str | Path, data: str, *, device: str = "auto", data_format: str | None = None,
                 root: str | None = None, image_dir: str | None = None, out: Path | None = None,
                 cache_dir: str | None = None) -> EvalResult:
    """Evaluate the model of ``run`` on ``data`` (read like the run's training data unless told otherwise).

    ``out``: write the predictions CSV there and the metrics beside it (``.metrics.json``).
    """
    if out is not None:
        output_file(out)
    dev = resolve_device(device)
    cfg, task, model = load_model(run, dev, cache_dir)
    overrides = {"format": data_format, "root": root, "image_dir": image_dir}
    if any(v is not None for v in overrides.values()):
        for k, v in overrides.items():
            if v is not None:
                setattr(cfg.data, k, v)
        info = task.info
        task = type(task)(cfg)  # re-validates the format for this task
        task.info = info
    task.precision = Precision.resolve(dev, cfg.runtime.amp, cfg.runtime.channels_last)  # scored as trained
    task.precision.model(model)
    split = task.load_split(data, "eval")
    task.check_split(split, "eval", data)  # e.g. a class with no image: a one-line error, not a metric's traceback
    res = task.evaluate(model, split, dev, with_ci=True)
    if out is not None:
        write_table(with_image_columns(res.predictions), out)
        atomic_write_json(out.with_suffix(".metrics.json"), res.metrics)
    return res
