"""Score a trained model on a labelled split: metrics with CIs, and the per-sample predictions."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from transfer.api import EvalResult, Task, TaskModel
from transfer.config import Config
from transfer.config.io import ConfigError
from transfer.data.datasets import ImageDataset
from transfer.engine import resolve_device
from transfer.precision import Precision
from transfer.runs.image_columns import with_image_columns
from transfer.runs.model_io import load_model
from transfer.runs.output_file import output_file, write_table
from transfer.runs.splits import prepare_data
from transfer.tracking import atomic_write_json


def evaluate_run(run: str | Path, data: str | None = None, *, split: str | None = None, device: str = "auto",
                 data_format: str | None = None, root: str | None = None, image_dir: str | None = None,
                 out: Path | None = None, cache_dir: str | None = None, overrides: Sequence[str] = ()) -> EvalResult:
    """Evaluate the model of ``run`` on ``data`` (read like the run's training data unless told otherwise), or on
    one of the run's own splits (``split``: ``val`` or ``test``, rebuilt from its config and seed exactly as it was
    trained: the carved validation part, the held-out fold).

    ``overrides``: ``task.*`` settings of how the task predicts (e.g. the shape step or test-time crops), so a
    prediction-time choice is measured on the run's validation split without training again.
    ``out``: write the predictions CSV there and the metrics beside it (``.metrics.json``).
    """
    if (data is None) == (split is None):
        raise ConfigError("evaluate: give either --data (a labelled split) or --split val|test (the run's own)")
    if out is not None:
        output_file(out)
    dev = resolve_device(device)
    cfg, task, model = load_model(run, dev, cache_dir, overrides)
    if split is not None:
        if any(v is not None for v in (data_format, root, image_dir)):
            raise ConfigError("evaluate --split reads the run's own data: --format, --root and --image-dir are for "
                              "--data")
        return _score(task, model, cfg, dev, _own_split(task, cfg, split, run), out)
    data_options = {"format": data_format, "root": root, "image_dir": image_dir}
    if any(v is not None for v in data_options.values()):
        for k, v in data_options.items():
            if v is not None:
                setattr(cfg.data, k, v)
        info = task.info
        task = type(task)(cfg)  # re-validates the format for this task
        task.info = info
    dataset = task.load_split(data, "eval")
    task.check_split(dataset, "eval", data)  # e.g. a class with no image: a one-line error, not a metric's traceback
    return _score(task, model, cfg, dev, dataset, out)


def _own_split(task: Task, cfg: Config, split: str, run: str | Path) -> ImageDataset:
    """The run's own ``val`` or ``test`` split, as :func:`prepare_data` made it for training (same config, seed)."""
    splits = prepare_data(task, cfg)
    dataset = {"val": splits.val, "test": splits.test}.get(split)
    if dataset is None:
        raise ConfigError(f"evaluate --split {split!r}: the run {run} has " +
                          ("no test split" if split == "test" else "only the splits val and test"))
    return dataset


def _score(task: Task, model: TaskModel, cfg: Config, dev: torch.device, dataset: ImageDataset,
           out: Path | None) -> EvalResult:
    task.precision = Precision.resolve(dev, cfg.runtime.amp, cfg.runtime.channels_last)  # scored as trained
    task.precision.model(model)
    res = task.evaluate(model, dataset, dev, with_ci=True)
    if out is not None:
        write_table(with_image_columns(res.predictions), out)
        atomic_write_json(out.with_suffix(".metrics.json"), res.metrics)
    return res
