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


def init_label(init: str) -> str:
    if init in ("imagenet", "scratch"):
        return init
    if init.startswith("pretrain:"):
        return init.split(":", 1)[1]
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
    if init.startswith("pretrain:"):
        init = str(root / "pretrain" / init.split(":", 1)[1] / "backbone.pt")
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
