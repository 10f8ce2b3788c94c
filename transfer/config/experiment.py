"""The experiment config: one nested dataclass tree, loaded from YAML.

Every value has a default so ``medtransfer config show`` works without a file;
``__post_init__`` rejects impossible values with the key that is wrong.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transfer.config.executor import SubmititConfig
from transfer.config.io import ConfigError, plugin_sections, section_of
from transfer.config.pretrain import PretrainConfig
from transfer.data.builtin import PREFIX as BUILTIN_PREFIX
from transfer.data.builtin import builtin_path
from transfer.data.windows import dicom_window


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class BackboneConfig:
    name: str = "efficientnet_lite0"
    #: scheme used when ``init: scratch`` (the seed compared all three)
    scratch_init: Literal["gaussian", "xavier", "kaiming"] = "kaiming"
    #: grayscale policy: copy gray to 3 channels, or sum the first conv's RGB filters
    channels: Literal["replicate", "adapt"] = "replicate"
    #: input channels of the images (1 for X-rays, 3 for fundus/microscopy)
    in_chans: int = 1
    #: stride of the first convolution; None keeps the architecture's (2 for every registered one). 1 is a
    #: small-image stem for 28-64 px inputs, as lightly's and solo-learn's CIFAR benchmarks use: every stage map is
    #: twice as large (a 32-px image is 2x2 at lite0's last stage instead of 1x1), at 4x the compute. The weights are
    #: the same tensors, so ImageNet weights and checkpoints load unchanged; use the same value in both stages.
    stem_stride: int | None = None

    def __post_init__(self) -> None:
        _check(self.in_chans in (1, 3), "backbone.in_chans", f"must be 1 or 3, got {self.in_chans}")
        _check(self.stem_stride is None or self.stem_stride in (1, 2), "backbone.stem_stride",
               f"must be 1, 2 or null, got {self.stem_stride}")


@dataclass
class AugmentConfig:
    """Geometric and intensity augmentation applied on the batch (kornia)."""

    rotation: float = 0.0  #: max degrees
    scale: float = 0.0  #: max relative zoom, e.g. 0.1 -> [0.9, 1.1]
    translate: float = 0.0  #: max shift as a fraction of the size
    hflip: bool = False  #: landmarks additionally need task.landmarks.flip_pairs
    brightness: float = 0.0
    contrast: float = 0.0
    #: the intensity ops below imitate another acquisition (exposure curve, detector sharpness, dose); 0 = off
    gamma: float = 0.0  #: max relative gamma change, e.g. 0.2 -> gamma in [0.8, 1.2] (I -> I ** gamma)
    blur: float = 0.0  #: max Gaussian blur SD in working-size pixels; sigma drawn in [0.1, blur]
    blur_p: float = 0.5  #: share of the images blurred when ``blur`` > 0
    noise: float = 0.0  #: SD of additive Gaussian noise, intensities in [0, 1]
    noise_p: float = 0.5  #: share of the images given noise when ``noise`` > 0

    def __post_init__(self) -> None:
        for k in ("rotation", "scale", "translate", "brightness", "contrast", "gamma", "blur", "noise"):
            _check(getattr(self, k) >= 0, f"data.augment.{k}", f"must be >= 0, got {getattr(self, k)}")
        _check(self.scale < 1, "data.augment.scale", "must be < 1")
        _check(self.gamma < 1, "data.augment.gamma",
               f"must be < 1 (gamma is drawn in [1 - g, 1 + g]), got {self.gamma}")
        # kornia draws the blur SD in [0.1, blur] and raises on a drawn 0 at the forward pass
        _check(self.blur == 0 or self.blur >= 0.1, "data.augment.blur",
               f"must be 0 (off) or >= 0.1 pixel (the smallest SD drawn), got {self.blur}")
        _check(self.noise <= 1, "data.augment.noise", f"must be <= 1 (intensities are in [0, 1]), got {self.noise}")
        for k in ("blur_p", "noise_p"):
            _check(0 <= getattr(self, k) <= 1, f"data.augment.{k}", f"must be in [0, 1], got {getattr(self, k)}")


@dataclass
class DataConfig:
    #: dataset format; the task lists the valid ones (npz, folder, csv, landmark_csv)
    format: str = "npz"
    #: dataset root; ``${VAR:-default}`` is expanded
    root: str = "${MEDTRANSFER_DATA:-../shared/data}"
    #: file or folder relative to root, or ``builtin:<name>`` (a dataset shipped with the package); a list of
    #: listings is read as one split by the tasks that can (landmark CSVs), e.g. a dataset's two labelled CSVs
    train: str | list[str] = ""
    val: str | None = None  #: None -> carve ``val_fraction`` from train (stratified)
    test: str | None = None
    #: cross-validation: a folds file (``image,fold``, from ``medtransfer folds make``), relative to the working
    #: directory unless absolute (like ``tracking.out_dir``); with ``fold`` k the test split is the images of
    #: ``train`` in fold k and the training split those in the other folds (validation carved from them as usual)
    folds: str | None = None
    fold: int | None = None  #: the fold held out as the test split, 0..K-1 (set with ``folds``)
    image_dir: str | None = None  #: folder of images for CSV formats, relative to root
    image_size: tuple[int, int] = (224, 224)  #: (height, width) the network sees
    val_fraction: float = 0.2
    label_fraction: float = 1.0
    #: the seed of the validation carve and of the label fraction's subset; None: the run's ``seed``. Fixed, runs of
    #: several seeds train on the same images and are selected on the same validation part (a seed ensemble scored
    #: on it, the training seed's own variance apart from the split's)
    split_seed: int | None = None
    #: decode cache folder; None: $MEDTRANSFER_CACHE, else ~/.cache/medtransfer. Resolved when a command runs
    #: (predict/evaluate take --cache-dir), never taken from a trained run: the cache belongs to the machine
    cache_dir: str | None = None
    #: smallest accepted side of an image file in px: a smaller one would be upscaled into a made-up image
    min_image_size: int = 16
    #: DICOM window replacing the file's VOI: [center, width] or a preset (lung, mediastinum, soft_tissue, bone,
    #: brain); other formats ignore it
    dicom_window: list[float] | str | None = None
    #: DataLoader worker processes; ``auto``: none for data held in memory (a worker could only copy the tensor the
    #: main process already holds, and pays start-up and IPC for it), ``min(8, CPU count)`` for a streamed pool
    num_workers: int | Literal["auto"] = "auto"
    #: stage 1's pool: ``true`` one float32 tensor in memory, ``false`` streamed from a packed uint16 file beside the
    #: decode cache (memory does not grow with the pool), ``auto`` in memory while it fits ``in_memory_max_gib``
    in_memory: bool | Literal["auto"] = "auto"
    #: largest pool (as float32 at the working size) that ``in_memory: auto`` keeps in memory
    in_memory_max_gib: float = 2.0
    #: on an unreadable or invalid sample: stop with an error, or skip it and report it
    on_bad: Literal["error", "skip"] = "error"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        _check(0 < self.val_fraction < 1, "data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        _check(0 < self.label_fraction <= 1, "data.label_fraction", f"must be in (0, 1], got {self.label_fraction}")
        _check(all(s >= 8 for s in self.image_size), "data.image_size", f"must be >= 8 px, got {self.image_size}")
        _check(self.num_workers == "auto" or self.num_workers >= 0, "data.num_workers", "must be >= 0 or auto")
        _check(self.in_memory_max_gib >= 0, "data.in_memory_max_gib", f"must be >= 0, got {self.in_memory_max_gib}")
        _check(self.min_image_size >= 1, "data.min_image_size", f"must be >= 1, got {self.min_image_size}")
        _check(not isinstance(self.train, list) or (bool(self.train) and all(self.train)), "data.train",
               f"a list must name one or more listings, got {self.train}")
        _check(self.fold is None or self.fold >= 0, "data.fold", f"must be >= 0, got {self.fold}")
        _check(self.fold is None or bool(self.folds), "data.fold", "needs data.folds (the folds file it indexes)")
        _check(not self.folds or self.fold is not None, "data.folds",
               "needs data.fold (the fold held out as the test split, 0..K-1)")
        _check(self.fold is None or not self.test, "data.test",
               f"data.fold takes the test split from data.train (fold {self.fold} of data.folds); leave data.test "
               f"empty, got {self.test!r}")
        try:
            dicom_window(self.dicom_window)
        except ValueError as e:
            raise ConfigError(f"data.dicom_window: {e}") from None

    def workers(self, streamed: bool = False) -> int:
        """``num_workers`` resolved: ``auto`` gives 0 for in-memory data, ``min(8, CPUs)`` for a streamed pool."""
        if self.num_workers != "auto":
            return int(self.num_workers)
        if not streamed:
            return 0
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        return min(8, cpus)

    def window(self) -> tuple[float, float] | None:
        """``dicom_window`` as (center, width), presets looked up."""
        return dicom_window(self.dicom_window)

    def decode_options(self) -> dict[str, Any]:
        """What ``transfer.data.datasets.load_images`` needs from this section, resolved now."""
        return {"size": tuple(self.image_size), "cache_dir": self.cache_path(), "min_size": self.min_image_size,
                "window": self.window()}

    def cache_path(self) -> Path:
        """The decode cache folder for this process: ``cache_dir``, else $MEDTRANSFER_CACHE, else the user cache."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        env = os.environ.get("MEDTRANSFER_CACHE")
        if env:
            return Path(env).expanduser()
        return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "medtransfer"

    def resolve(self, rel: str) -> Path:
        """A path named in the config: ``builtin:<name>``, or relative to ``root`` unless absolute (``#key`` kept)."""
        path, _, key = rel.partition("#")
        if path.startswith(BUILTIN_PREFIX):  # a dataset shipped with the package, wherever it is installed
            p = builtin_path(path[len(BUILTIN_PREFIX):])
        else:
            p = Path(path)
            if not p.is_absolute():
                p = Path(self.root) / p
        return Path(f"{p}#{key}") if key else p

    def image_base(self, listing: Path) -> Path:
        """Where the image paths of a CSV ``listing`` are relative to: ``image_dir`` if set, else its folder."""
        return self.resolve(self.image_dir) if self.image_dir else listing.parent


@dataclass
class TrainConfig:
    """Stage-2 optimisation. Defaults follow Table II of Tajbakhsh et al. 2016."""

    #: ``head``, ``<stage>-head`` (e.g. conv3-head), ``all`` or ``auto``
    depth: str = "all"
    epochs: int = 30
    batch_size: int = 32
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 1e-3  #: base rate of pretrained stages
    head_lr_mult: float = 10.0  #: the new head learns 10x faster (Table II)
    bias_lr_mult: float = 1.0  #: 2.0 is the Caffe convention
    layer_decay: float | None = None  #: each stage below the top gets lr * decay^distance
    momentum: float = 0.9
    weight_decay: float = 5e-4  #: never applied to 1-D tensors (biases, norms)
    gamma: float = 0.95  #: lr multiplied by gamma every epoch
    patience: int = 10  #: early stopping on the validation metric
    auto_tolerance: float = 0.0  #: ``auto`` depth keeps unfreezing while val improves by more than this
    auto_epochs: int | None = None  #: epochs per depth in ``auto`` (default: epochs)
    grad_clip: float | None = None
    max_steps: int | None = None  #: stop each epoch after this many steps (smoke runs)
    #: fixed optimiser steps per epoch, drawn from consecutive shuffled passes over the training set, so that
    #: runs at different label fractions get the same training budget (None: one pass per epoch)
    steps_per_epoch: int | None = None
    eval_test: bool = True  #: score the selected model on the test split once, at the end

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(0 < self.gamma <= 1, "train.gamma", "must be in (0, 1]")
        _check(self.head_lr_mult > 0 and self.bias_lr_mult > 0, "train.*_lr_mult", "must be > 0")
        _check(self.layer_decay is None or 0 < self.layer_decay <= 1, "train.layer_decay", "must be in (0, 1]")
        _check(self.patience >= 1, "train.patience", "must be >= 1")
        _check(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "train.steps_per_epoch", "must be >= 1")


def _task_sections() -> dict[str, type]:
    from transfer.api import TASKS  # read when a config is loaded, so the registry sees every installed task

    return {name: cls.options_class for name, cls in TASKS.items() if cls.options_class is not None}


@dataclass
class TaskConfig:
    name: str = "classification"  #: a registered task (``medtransfer tasks`` lists them)
    #: one option section per registered task, declared by the task (``Task.options_class``): ``task.<name>.<key>``
    options: dict[str, Any] = plugin_sections(_task_sections)

    def section(self, name: str) -> Any:
        """The option section of task ``name`` (its defaults when the config does not set it)."""
        return section_of(self.options, name, _task_sections, "task")


@dataclass
class RuntimeConfig:
    """Where and how both stages compute: device, mixed precision, memory format, compilation."""

    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  #: only used on CUDA
    channels_last: bool = True  #: only used on CUDA
    compile: bool = False  #: torch.compile the training step


@dataclass
class TrackingConfig:
    out_dir: str = "runs"
    name: str | None = None  #: run directory name (default: generated)
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "medtransfer"
    wandb_entity: str | None = None
    wandb_group: str | None = None  #: W&B group (a study sets it to its name)
    tags: list[str] = field(default_factory=list)  #: extra W&B tags (a study tags each cell with its factors)
    progress: bool = True
    log_media: bool = True


@dataclass
class Reference:
    """A published result printed beside ours in study reports (never used for selection)."""

    name: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass
class StudyConfig:
    """The grid ``medtransfer study`` runs: initialisation x depth x label fraction x seed."""

    name: str = "study"
    title: str = ""
    #: imagenet, scratch, a checkpoint path, or pretrain:<method> (stage 1 runs first, see pretrain)
    inits: list[str] = field(default_factory=lambda: ["imagenet", "scratch"])
    depths: list[str] = field(default_factory=lambda: ["head", "all"])
    label_fractions: list[float] = field(default_factory=lambda: [1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    out_dir: str = "runs/studies"
    report: str | None = None  #: write the markdown report here (plots beside it)
    command: str = ""  #: the command that regenerates the report, printed in it
    references: list[Reference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: test comparing two inits over the seeds they share (with one seed: the task's paired test over test images):
    #: wilcoxon (exact signed-rank), signflip (exact sign-flip permutation test of the mean difference), ttest
    seed_test: Literal["wilcoxon", "ttest", "signflip"] = "wilcoxon"
    #: local: cells one after another in this process; submitit: Slurm job arrays (or submitit's local executor)
    executor: Literal["local", "submitit"] = "local"
    submitit: SubmititConfig = field(default_factory=SubmititConfig)
    #: a fifth factor: named pipelines, each a set of dotted overrides of this config (``{global256:
    #: {task.landmarks.refine: false}, refine: {}}``); empty = no variant factor
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(bool(self.inits) and bool(self.depths) and bool(self.label_fractions) and bool(self.seeds),
               "study", "inits, depths, label_fractions and seeds must be non-empty")
        _check(all(0 < f <= 1 for f in self.label_fractions), "study.label_fractions", "each must be in (0, 1]")
        for name, overrides in self.variants.items():
            _check(re.fullmatch(r"[A-Za-z0-9_.]+", str(name)) is not None, f"study.variants.{name}",
                   "a variant's name is part of run directory names: letters, digits, '_' and '.' only")
            _check(isinstance(overrides, dict), f"study.variants.{name}",
                   f"must be a mapping of dotted keys to values, got {overrides!r}")
            for key in overrides:
                _check(not _is_fixed_by_grid(str(key)), f"study.variants.{name}.{key}",
                       "a variant may not set the grid's own factors (init, seed, train.depth, data.label_fraction) "
                       "or study/pretrain/tracking keys (stage 1 is shared by all variants)")


#: keys a study variant may not override: the grid sets them per cell, or every variant shares them
_GRID_KEYS = ("init", "seed", "train.depth", "data.label_fraction", "study", "pretrain", "tracking")


def _is_fixed_by_grid(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in _GRID_KEYS)


@dataclass
class Config:
    """An experiment: stage-1 pretraining (``pretrain``), stage-2 fine-tuning, and the study grid."""

    #: ``imagenet``, ``scratch``, or a checkpoint path (stage 1 output, torchvision/timm state dict)
    init: str = "imagenet"
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
