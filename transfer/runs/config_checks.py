"""Config values a run can check before it reads data or writes anything: backbone, depth, init source.

Without this, an unknown depth or backbone was reported only after every image had been decoded, and left a run
directory behind.
"""
from __future__ import annotations

from pathlib import Path

from transfer.backbones import get_entry
from transfer.config import Config
from transfer.errors import CheckpointError
from transfer.finetune import trainable_stages


def check_finetune_config(cfg: Config) -> None:
    """Raise the one-line error the run would raise later (unknown backbone or depth, absent init file)."""
    entry = get_entry(cfg.backbone.name)  # UnknownNameError listing the registered names
    if cfg.train.depth != "auto":
        # building the (random) backbone is cheap next to decoding data, and its stage names are the truth
        trainable_stages(cfg.train.depth, entry.build().stage_names)
    if cfg.init not in ("imagenet", "scratch") and not Path(cfg.init).is_file():
        raise CheckpointError(f"init {cfg.init!r} is neither imagenet, scratch, nor an existing checkpoint file")
