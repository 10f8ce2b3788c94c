"""A trained stage-2 model on disk: ``model.pt`` (config, task info, depth, state dict) and its reloading."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from transfer.api import Task, TaskModel, make_task
from transfer.config import Config, from_dict, to_dict
from transfer.config.io import ConfigError, deep_merge, parse_overrides
from transfer.errors import CheckpointError, UnsafeCheckpointError
from transfer.safe_load import load_weights_only
from transfer.weights import backbone_from_config

MODEL_FORMAT = "medtransfer-model/1"


def model_checkpoint(model: TaskModel, cfg: Config, task: Task, depth: str) -> dict[str, Any]:
    return {"format": MODEL_FORMAT, "config": to_dict(cfg), "task_info": task.info, "depth": depth,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_model(path: str | Path, device: torch.device | None = None, cache_dir: str | None = None,
               overrides: Sequence[str] = ()) -> tuple[Config, Task, TaskModel]:
    """Rebuild a trained model from a run directory or its ``model.pt``.

    ``cache_dir``: the decode cache of this command (None: $MEDTRANSFER_CACHE or the user cache); the folder the
    run was trained with is another machine's or another working directory's, so it is never reused.
    ``overrides``: ``task.<name>.<option>=value`` settings of how the task predicts (e.g.
    ``task.landmarks.fix_mirrored=false``); anything else is fixed by the training and refused.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no trained model here (expected a run directory with model.pt)")
    try:
        ck = load_weights_only(path)  # weights_only: a model.pt that would unpickle code is refused
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # a truncated copy: OSError (Errno 22), PytorchStreamReader, EOFError... one cause to the user
        raise CheckpointError(f"'{path}': the trained model cannot be read, it is truncated or corrupt "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); copy it again, or "
                              "train the run again (finetune --restart)") from None
    if not isinstance(ck, dict) or ck.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a medtransfer model checkpoint")
    not_task = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("task.")]
    if not_task:
        raise ConfigError(f"--set {not_task[0]}: only task.* options can change after training (how the task "
                          "predicts); the model's backbone, data and training settings are those of its run")
    data = deep_merge(ck["config"], parse_overrides(overrides)) if overrides else ck["config"]
    cfg = from_dict(Config, data, source=str(path) + (" + --set " + " ".join(overrides) if overrides else ""))
    cfg.data.cache_dir = cache_dir
    task = make_task(cfg)
    task.info = dict(ck["task_info"])
    backbone, _ = backbone_from_config(cfg.backbone, "scratch")  # the weights come from the state dict
    model = task.build_model(backbone)
    model.load_state_dict(ck["state_dict"])
    model.to(device or torch.device("cpu")).eval()
    return cfg, task, model
