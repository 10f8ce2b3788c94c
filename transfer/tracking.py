"""Run directories (atomic writes, JSONL metrics) and the W&B mirror."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer.config import Config, TrackingConfig, from_dict, to_dict
from transfer.config.pretrain import method_options_only
from transfer.errors import MedTransferError
from transfer.write_errors import OutputWriteError, writing

#: the two ways out of a run directory whose state does not fit the command
RESTART_OR_RENAME = "start over with --restart, or use a new run name (--name)"


class RunStateError(MedTransferError):
    """A run directory holds a finished run of another config."""


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: once, at import, before any writer thread
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _atomic_write(path: Path, write) -> None:
    with writing(path):  # a full disk or read-only folder: one line naming the folder, not torch's zip error
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            # mkstemp makes the file 0600; give it the mode open() would, so a team shares its run directories
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: config keys (dotted prefixes) that do not change what a run computes, only where it is written, how it is shown,
#: or how fast the same computation runs; every other key is part of the training fingerprint (README: "The run
#: directory"). ``runtime.device`` is here so a run can move between devices; resumed on another device, it is no
#: longer bit-identical to an uninterrupted run.
UNTRACKED_KEYS: tuple[str, ...] = ("tracking", "study", "runtime.device", "runtime.compile", "runtime.channels_last",
                                   "data.num_workers", "data.cache_dir", "data.in_memory", "data.in_memory_max_gib")
#: further keys each kind of run does not read: stage 2 ignores the stage-1 section, stage 1 the stage-2 ones
UNTRACKED_BY_JOB: dict[str, tuple[str, ...]] = {"finetune": ("pretrain",), "pretrain": ("train", "task")}


def training_config(config: dict[str, Any], job: str) -> dict[str, Any]:
    """The training-relevant part of a resolved config (``to_dict(cfg)``), flat with dotted keys.

    It is stored with every resume state; a resume state whose stored part differs is not reused.
    """
    ignored = UNTRACKED_KEYS + UNTRACKED_BY_JOB.get(job, ())
    flat = _flatten(config)
    key = {k: v for k, v in sorted(flat.items()) if not any(k == p or k.startswith(p + ".") for p in ignored)}
    return method_options_only(key) if job == "pretrain" else key


def config_fingerprint(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``config``."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run's ``metrics.jsonl`` (what :meth:`Run.log_epoch` wrote); [] when it has none."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: files a run writes; ``--restart`` removes them before starting over (folders such as ``wandb/`` are kept), and
#: the temporary files of atomic writes a kill cut short
RUN_FILES = ("last*.pt", "metrics.jsonl", "summary.json", "model.pt", "backbone.pt", "depth_curve.json",
             "predictions_*.csv", "config.yaml", "failed.json", ".*.tmp")
#: written by :meth:`Run.fail` when a run ends in an error after its directory was made; removed by the next start
FAILED_FILE = "failed.json"


def discard_run_state(run_dir: Path) -> list[Path]:
    """Remove what an earlier run left in ``run_dir`` (``RUN_FILES``); returns the removed files."""
    removed = []
    for pattern in RUN_FILES:
        for f in sorted(Path(run_dir).glob(pattern)):
            if f.is_file():
                with writing(f):
                    f.unlink()
                removed.append(f)
    return removed


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["train.lr: 0.01 -> 0.05", ...]`` for the keys of two flat configs that differ (absent: ``<absent>``).

    A key the old config lacks because its option did not exist yet counts at the option's default: a run made
    before an option was added is the same run as one made with the option at its default (which reproduces the
    old behaviour), so upgrading medtransfer does not orphan finished runs and resume states.
    """
    defaults = _config_defaults()

    def show(d: dict[str, Any], k: str) -> str:
        if k in d:
            return json.dumps(d[k], default=_json_default)
        if d is old and k in defaults:
            return json.dumps(defaults[k], default=_json_default)
        return "<absent>"

    return [f"{k}: {show(old, k)} -> {show(new, k)}" for k in sorted(set(old) | set(new)) if show(old, k) != show(new, k)]


@functools.lru_cache(maxsize=1)
def _config_defaults() -> dict[str, Any]:
    """Every key of a config at its default, flat (the registered plug-ins' option sections included)."""
    return _flatten(to_dict(from_dict(Config, {})))


def completed_summary(run_dir: Path, outputs: tuple[str, ...], config: dict[str, Any] | None = None,
                      job: str = "finetune") -> dict[str, Any] | None:
    """The summary of a finished run (``summary.json`` and every file of ``outputs`` present), else None.

    With ``config`` (:func:`training_config` of the new start), a finished run whose ``config.yaml`` differs in a
    training key is a :class:`RunStateError` naming the changed keys: its results are not this config's.
    """
    import yaml

    run_dir = Path(run_dir)
    if not all((run_dir / f).is_file() for f in ("summary.json", *outputs)):
        return None
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None  # an unreadable summary is not a finished run
    if config is not None and (run_dir / "config.yaml").is_file():
        old = training_config(yaml.safe_load((run_dir / "config.yaml").read_text()) or {}, job)
        changes = config_changes(old, config)
        if changes:
            raise RunStateError(f"{run_dir}: holds a finished run of another config ({'; '.join(changes)}); "
                                f"{RESTART_OR_RENAME}")
    return summary


class Run:
    """A run directory, mirrored to W&B (offline by default, ``disabled`` in tests).

    The directory is complete without W&B: ``config.yaml``, ``metrics.jsonl``
    (one row per epoch), ``summary.json``, predictions, plots, checkpoints.
    """

    def __init__(self, root: str | Path, name: str, config: dict[str, Any], *, wandb_mode: str = "offline",
                 project: str = "medtransfer", entity: str | None = None, job_type: str = "finetune",
                 tags: list[str] | None = None, resume: bool = True, group: str | None = None) -> None:
        import yaml

        from transfer.distributed import is_main_process

        self.dir = Path(root) / name
        self.name = name
        self.warnings: list[str] = []
        #: under torchrun only rank 0 writes the directory and W&B; the other ranks' Run is silent
        self.writes = is_main_process()
        self._wandb = None
        if not self.writes:
            return
        with writing(self.dir / "config.yaml"):
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / FAILED_FILE).unlink(missing_ok=True)  # an earlier start's failure is not this start's status
        atomic_write_text(self.dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        if wandb_mode != "disabled":
            try:
                import wandb

                self._wandb = wandb.init(
                    project=project, entity=entity, name=name, id=_wandb_id(self.dir), resume="allow" if resume else None,
                    dir=str(self.dir), mode=wandb_mode, job_type=job_type, config=config, tags=tags or [], group=group,
                    reinit="finish_previous",
                    # W&B's own console lines (banner, run summary) would drown the one line per run; its run
                    # files are written all the same
                    settings=wandb.Settings(silent=True, quiet=True),
                )
            except Exception as e:  # W&B problems must not lose the run; the run dir is the record
                self.warn(f"W&B unavailable ({type(e).__name__}: {e}); results are in {self.dir}")

    @classmethod
    def from_config(cls, tracking: TrackingConfig, name: str, config: dict[str, Any], *, job_type: str,
                    tags: list[str]) -> "Run":
        """The run directory ``tracking.out_dir/name`` and its W&B mirror, as the ``tracking`` section says."""
        return cls(tracking.out_dir, name, config, wandb_mode=tracking.wandb_mode, project=tracking.wandb_project,
                   entity=tracking.wandb_entity, job_type=job_type, tags=[*tags, *tracking.tags],
                   group=tracking.wandb_group)

    def warn(self, msg: str) -> None:
        import sys

        self.warnings.append(msg)
        if self.writes:  # once, not once per rank
            print(f"warning: {msg}", file=sys.stderr)

    def write_json(self, name: str, obj: Any) -> None:
        """``obj`` as ``<run dir>/name``, atomically (rank 0 only)."""
        if self.writes:
            atomic_write_json(self.dir / name, obj)

    def write_csv(self, name: str, df: Any) -> None:
        """A pandas frame as ``<run dir>/name`` (rank 0 only)."""
        if self.writes:
            _atomic_write(self.dir / name, lambda f: df.to_csv(f, index=False))

    @property
    def wandb_run(self) -> Any:
        return self._wandb

    def log_epoch(self, row: dict[str, Any]) -> None:
        if not self.writes:
            return
        with writing(self.dir / "metrics.jsonl"), open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))})

    def keep_metrics(self, rows: int) -> None:
        """Keep the first ``rows`` rows of ``metrics.jsonl``: rows logged after the state a run resumes from
        (killed after logging an epoch, before saving it) would otherwise appear twice."""
        path = self.dir / "metrics.jsonl"
        if not self.writes or not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        if len(lines) > rows:  # (a line cut short by a kill is always the last one, past the saved rows)
            atomic_write_text(path, "".join(lines[:rows]))

    def log_summary(self, summary: dict[str, Any]) -> None:
        if not self.writes:
            return
        if self.warnings:
            summary = {**summary, "warnings": self.warnings}
        atomic_write_json(self.dir / "summary.json", summary)
        if self._wandb is not None:
            for k, v in _flatten(summary).items():
                if isinstance(v, (int, float, str)):
                    self._wandb.summary[k] = v

    def log_images(self, paths: list[Path], prefix: str = "") -> None:
        if self._wandb is None or not paths:
            return
        import wandb

        self._wandb.log({f"{prefix}{Path(p).stem}": wandb.Image(str(p)) for p in paths})

    def log_media(self, items: dict[str, Any]) -> None:
        """Arrays (H, W[, 3]) as images."""
        if self._wandb is None or not items:
            return
        import wandb

        self._wandb.log({k: wandb.Image(v) for k, v in items.items()})

    def log_table(self, key: str, df: Any) -> None:
        if self._wandb is None:
            return
        import wandb

        self._wandb.log({key: wandb.Table(dataframe=df)})

    def log_artifact(self, path: Path, name: str, type: str, metadata: dict[str, Any] | None = None) -> None:
        if self._wandb is None:
            return
        import wandb

        art = wandb.Artifact(_artifact_name(name), type=type, metadata=_flatten(metadata or {}))
        art.add_file(str(path))
        self._wandb.log_artifact(art)

    def use_checkpoint(self, path: Path, provenance: dict[str, Any]) -> None:
        """Record a stage-1 checkpoint as this run's input (pretrain -> finetune lineage).

        The run's config always gets the checkpoint's artifact name and provenance. Online, the checkpoint is also
        declared an input artifact, so the W&B lineage graph shows the edge; W&B cannot declare inputs offline
        ("Cannot use artifact when in offline mode"), so offline runs keep the reference in their config only.
        """
        if self._wandb is None:
            return
        import wandb

        meta = _flatten({k: v for k, v in provenance.items() if k != "config"})  # W&B allows 100 metadata keys
        name = _artifact_name(provenance.get("artifact_name") or f"backbone-{Path(path).parent.name}")
        self._wandb.config.update({"init_checkpoint": {"artifact": name, "path": str(path), **meta}},
                                  allow_val_change=True)
        if self._wandb.settings.mode != "online":
            return
        try:
            art = wandb.Artifact(name, type="backbone", metadata=meta)
            art.add_file(str(path))
            self._wandb.use_artifact(art)
        except Exception as e:  # a W&B server problem must not lose the run
            self.warn(f"could not record checkpoint lineage in W&B ({type(e).__name__}: {e})")

    def fail(self, error: BaseException, status: str = "failed", **extra: Any) -> None:
        """Record that this start ended in ``error`` (``failed.json``): without it, a directory holding only
        ``config.yaml`` (and perhaps some epochs) would not say whether the run is still going, was killed, or
        failed. ``status``: ``failed``, or ``interrupted`` (Ctrl-C). A later start of the same run removes it."""
        if self.writes:
            import time

            try:
                atomic_write_json(self.dir / FAILED_FILE, {
                    "status": status, "error": f"{type(error).__name__}: {error}",
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra, "warnings": self.warnings})
            except OutputWriteError:
                pass  # the folder that failed the run cannot take its record either; the console line says it

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _wandb_id(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]


def _artifact_name(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:120]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
