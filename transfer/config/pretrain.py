"""The stage-1 (self-supervised pre-training) config: nested dataclasses loaded from YAML.

Every value has a default; ``__post_init__`` rejects impossible values with the
key that is wrong (``transfer.config.io.ConfigError("key: message")``). The methods' own
sections live with the methods (``ssl_pretrain/config.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from transfer.config.io import ConfigError, plugin_sections, section_of


def method_options_only(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat stage-1 training config (dotted keys, ``pretrain.method`` among them) without the options its method
    does not read: the other methods' sections, and the fields of its own section outside its
    ``PretrainMethod.options_read``. A stage-1 run is keyed by what it computes with, so a new MoCo queue size is not
    a change to a finished SimCLR run (both read ``pretrain.contrastive``). A config without ``pretrain.method``, or
    whose method is not registered (a plug-in not installed here), is returned whole."""
    from transfer.api import PRETRAIN_METHODS  # as _method_sections: read after plug-ins are installed

    method = flat.get("pretrain.method")
    if method not in PRETRAIN_METHODS.names():
        return flat
    cls = PRETRAIN_METHODS.get(method)
    sections = set(_method_sections())

    def read(key: str) -> bool:
        parts = key.split(".")
        if len(parts) < 3 or parts[0] != "pretrain" or parts[1] not in sections:
            return True  # not a method's option
        return parts[1] == cls.config_section and (cls.options_read is None or parts[2] in cls.options_read)

    return {k: v for k, v in flat.items() if read(k)}


def _method_sections() -> dict[str, type]:
    """{section name: dataclass} of the registered methods; methods may share one (SimCLR, MoCo, BYOL)."""
    from transfer.api import PRETRAIN_METHODS  # read when a config is loaded, after plug-ins are installed

    out: dict[str, type] = {}
    for name, cls in PRETRAIN_METHODS.items():
        if cls.config_section is None:
            continue
        if out.setdefault(cls.config_section, cls.config_class) is not cls.config_class:
            raise ConfigError(f"pretrain.{cls.config_section}: declared by two methods with different classes "
                              f"({out[cls.config_section].__name__} and {cls.config_class.__name__}, method {name})")
    return out


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class PretrainConfig:
    """A stage-1 run: method, optimisation, method sections and the unlabelled pool."""

    method: str = "simclr"  #: a registered stage-1 method (the built-in ones: cae, augpred, simclr, moco, byol)
    epochs: int = 100  #: passes over the unlabelled pool
    batch_size: int = 64  #: >= 2 (contrastive negatives, BatchNorm in the heads)
    optimizer: Literal["adamw", "sgd"] = "adamw"  #: optimiser of encoder + method heads
    lr: float = 1e-3  #: peak learning rate (after warm-up)
    weight_decay: float = 1e-4  #: not applied to 1-D tensors (biases, norms)
    sgd_momentum: float = 0.9  #: only used with optimizer: sgd
    warmup_epochs: int = 5  #: linear warm-up, then cosine decay
    grad_clip: float | None = None  #: clip the gradient norm of encoder + method heads
    max_steps: int | None = None  #: stop each epoch after this many steps (smoke runs)
    #: the methods' option sections (``pretrain.contrastive``, ``pretrain.cae``...), declared by each method
    options: dict[str, Any] = plugin_sections(_method_sections)
    pool: str = ""  #: unlabelled images: a folder or a CSV (relative to data root)
    pool_format: Literal["folder", "csv", "labelled"] = "folder"  #: labelled = a labelled dataset, labels ignored
    on_bad: Literal["error", "skip"] = "error"  #: on an unreadable image: stop, or skip it and report it
    monitor_every: int = 0  #: epochs between representation checks (0 = off)
    monitor_data: str | None = None  #: labelled data for the representation check
    #: the probe score that selects the checkpoint and stops a plateau (kNN or linear-probe accuracy)
    monitor_metric: Literal["linear_probe_acc", "knn_acc"] = "linear_probe_acc"
    #: stop after this many checks in a row without an improvement above ``monitor_min_delta`` (0 = never stop early)
    monitor_patience: int = 0
    monitor_min_delta: float = 0.002  #: a probe gain smaller than this is noise, not progress (accuracy points / 100)
    #: with checks on: save the encoder of the best check (``best``, recorded in the checkpoint's provenance) or the
    #: last epoch's (``last``)
    keep: Literal["best", "last"] = "best"
    #: keep the encoder's BatchNorm running statistics as they start (eval-mode BatchNorm; its affine weights still
    #: train), as detection fine-tuning freezes BN. From ImageNet, re-estimating them on the pool alone costs the
    #: known answer's probe 8 points (reports/ssl_known_answer_bn_only.md); from scratch the start is mean 0 / var 1
    freeze_bn_stats: bool = False

    def __post_init__(self) -> None:
        _check(self.method.strip() != "", "pretrain.method", "must name a registered method (medtransfer pretrain --help lists them)")
        _check(self.epochs >= 1, "pretrain.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 2, "pretrain.batch_size", f"must be >= 2, got {self.batch_size}")
        _check(self.lr > 0, "pretrain.lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "pretrain.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0 <= self.sgd_momentum < 1, "pretrain.sgd_momentum", f"must be in [0, 1), got {self.sgd_momentum}")
        # named with its section: a user who never wrote warmup_epochs (the default 5) must find the key
        default = " (the default)" if self.warmup_epochs == PretrainConfig.warmup_epochs else ""
        _check(0 <= self.warmup_epochs < self.epochs, "pretrain.warmup_epochs",
               f"must be in [0, pretrain.epochs={self.epochs}), got {self.warmup_epochs}{default}")
        _check(self.monitor_every >= 0, "pretrain.monitor_every", f"must be >= 0, got {self.monitor_every}")
        _check(self.monitor_patience >= 0, "pretrain.monitor_patience", f"must be >= 0, got {self.monitor_patience}")
        _check(self.monitor_min_delta >= 0, "pretrain.monitor_min_delta", f"must be >= 0, got {self.monitor_min_delta}")
        _check(self.monitor_patience == 0 or (self.monitor_every > 0 and self.monitor_data is not None),
               "pretrain.monitor_patience", "needs the probe: set pretrain.monitor_every and pretrain.monitor_data")

    def section(self, name: str) -> Any:
        """A method's option section (``contrastive``, ``cae``...), its defaults when the config does not set it."""
        return section_of(self.options, name, _method_sections, "pretrain")
