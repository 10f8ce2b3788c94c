"""The cells of a study's grid ([variant x] init x depth x label fraction x seed) and the slice a shard runs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from transfer.config import Config
from transfer.config.io import deep_merge, from_dict, nest_dotted, to_dict
from transfer.errors import MedTransferError


@dataclass(frozen=True)
class Cell:
    """One grid cell: a run directory ``[<variant>-]<label>-<depth>-frac<f>-seed<s>``."""

    init: str
    depth: str
    label_fraction: float
    seed: int
    variant: str = ""  #: a name of ``study.variants``, or "" in a study without that factor

    @property
    def label(self) -> str:
        return init_label(self.init)

    @property
    def arm(self) -> str:
        """What the study's tables compare: the init, and the variant when the study has them."""
        return f"{self.label} · {self.variant}" if self.variant else self.label

    @property
    def name(self) -> str:
        prefix = f"{self.variant}-" if self.variant else ""
        return f"{prefix}{self.label}-{self.depth}-frac{self.label_fraction:g}-seed{self.seed}"


@dataclass(frozen=True)
class StageOne:
    """A study init made by stage 1: ``pretrain:<method>`` (stage 1 starts from the config's ``init``) or
    ``pretrain:<method>@<source>`` (from ``source``: ``scratch``, ``imagenet`` or a checkpoint), so one study can
    compare a method started from random weights with the same method started from ImageNet."""

    method: str
    source: str | None = None

    @property
    def key(self) -> str:
        """The name of its folder under ``<study>/pretrain`` and of its arm in the tables."""
        return self.method if self.source is None else f"{self.method}-from-{init_label(self.source)}"


def stage_one(init: str) -> StageOne | None:
    """The stage-1 run behind a study init, or None for an init that needs none."""
    if not init.startswith("pretrain:"):
        return None
    method, _, source = init.split(":", 1)[1].partition("@")
    if not method or (_ and not source):
        raise MedTransferError(f"study.inits: {init!r}: expected pretrain:<method> or pretrain:<method>@<source> "
                               "(source: scratch, imagenet or a checkpoint path)")
    return StageOne(method, source or None)


def init_label(init: str) -> str:
    if init in ("imagenet", "scratch"):
        return init
    if (one := stage_one(init)) is not None:
        return one.key
    return Path(init).parent.name or Path(init).stem


def grid_cells(cfg: Config) -> list[Cell]:
    """Every cell of the study, variant-major, then init, depth, label fraction and seed. Each variant's config
    is built here, so a variant that names an unknown key or a bad value stops the study before any cell runs."""
    st = cfg.study
    for v in st.variants:
        variant_config(cfg, v)
    return [Cell(i, d, f, s, v) for v in (list(st.variants) or [""]) for i in st.inits for d in st.depths
            for f in st.label_fractions for s in st.seeds]


def variant_config(cfg: Config, variant: str) -> Config:
    """``cfg`` with the dotted overrides of ``study.variants[variant]`` ("" = ``cfg`` itself)."""
    if not variant:
        return cfg
    source = f"study.variants.{variant}"
    overrides = nest_dotted(cfg.study.variants[variant].items(), source)
    return from_dict(Config, deep_merge(to_dict(cfg), overrides), source=source)


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4): the second of four shards (1-based, as people count machines)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise MedTransferError(f"--shard {text!r}: expected i/n, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise MedTransferError(f"--shard {text!r}: i must be in 1..n")
    return i, n


def shard_cells(cells: list[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """Cells ``i-1, i-1+n, ...`` of the grid for shard i/n: every shard gets a mix of inits and depths, so shards
    take about as long as each other; the union over i = 1..n is the grid, each cell once."""
    if shard is None:
        return cells
    i, n = shard
    return cells[i - 1::n]


def is_finished(run_dir: Path) -> bool:
    """A finished fine-tuning run leaves ``summary.json`` and ``model.pt`` (a cut-short one leaves resume states)."""
    return (run_dir / "summary.json").is_file() and (run_dir / "model.pt").is_file()


def cell_config(cfg: Config, cell: Cell, root: Path) -> Config:
    """The fine-tuning config of one cell: its init, seed, depth and label fraction, its run directory."""
    init = cell.init
    if (one := stage_one(init)) is not None:
        init = str(root / "pretrain" / one.key / "backbone.pt")
    base = variant_config(cfg, cell.variant)
    return dataclasses.replace(
        base, init=init, seed=cell.seed,
        train=dataclasses.replace(base.train, depth=cell.depth),
        data=dataclasses.replace(base.data, label_fraction=cell.label_fraction),
        tracking=dataclasses.replace(cfg.tracking, out_dir=str(root / "runs"), name=cell.name,
                                     wandb_group=cfg.tracking.wandb_group or cfg.study.name,
                                     tags=[*cfg.tracking.tags, *cell_tags(cfg, cell)]),
    )


def cell_tags(cfg: Config, cell: Cell) -> list[str]:
    """W&B tags for every factor of the grid, so the dashboard filters and groups by any of them."""
    return [f"study:{cfg.study.name}", f"init:{cell.label}", f"depth:{cell.depth}",
            f"labels:{cell.label_fraction:g}", f"seed:{cell.seed}", *([f"variant:{cell.variant}"] if cell.variant else [])]
