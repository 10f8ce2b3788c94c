"""One stage-1 run: an unlabelled pool, a method from the registry, the engine, a backbone checkpoint with provenance."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer.config import Config
from transfer.configio import to_dict
from transfer.data.datasets import ImageDataset, load_images
from transfer.engine import Engine, make_loader, resolve_device
from transfer.errors import DatasetError
from transfer.protocols import PRETRAIN_METHODS, TASKS
from transfer.tracking import Run, atomic_write_json
from transfer.weights import build_backbone, save_backbone_checkpoint

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".dicom"}


@dataclasses.dataclass
class Pool:
    images: torch.Tensor  #: (N, C, H, W) in [0, 1]
    ids: list[str]
    fingerprint: str  #: hash of the pool's image contents, order-independent
    skipped: list[dict[str, str]]
    source: str


def _resolve(cfg: Config, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else Path(cfg.data.root) / p


def load_pool(cfg: Config) -> Pool:
    """The unlabelled images: a folder tree, a CSV of paths, or a labelled dataset's training images (labels unused)."""
    p = cfg.pretrain
    size, gray = cfg.data.image_size, cfg.backbone.in_chans == 1
    if p.pool_format == "labelled":
        from transfer.run_finetune import load_plugins

        load_plugins()
        task = TASKS.get(cfg.task.name)(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, on_bad=p.on_bad)))
        ds = task.load_split(p.pool or cfg.data.train, "pool")
        h = hashlib.sha256()
        for i in np.argsort(ds.ids):
            h.update(ds.images[int(i)].numpy().tobytes())
        return Pool(ds.images, list(ds.ids), h.hexdigest()[:16], [vars(s) for s in task.skipped],
                    f"images of {p.pool or cfg.data.train} (labels ignored)")
    if not p.pool:
        raise DatasetError("pretrain.pool is empty: name a folder or CSV of unlabelled images")
    root = _resolve(cfg, p.pool)
    if p.pool_format == "folder":
        if not root.is_dir():
            raise DatasetError(f"{root}: pretrain pool folder does not exist")
        paths = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    else:
        import pandas as pd

        if not root.is_file():
            raise DatasetError(f"{root}: pretrain pool CSV does not exist")
        df = pd.read_csv(root)
        col = next((c for c in ("path", "image_path", "image", "file") if c in df.columns), None)
        if col is None:
            raise DatasetError(f"{root}: no path column (path, image_path, image or file); columns: {list(df.columns)[:6]}")
        base = _resolve(cfg, cfg.data.image_dir) if cfg.data.image_dir else root.parent
        paths = [Path(x) if Path(x).is_absolute() else base / x for x in df[col].astype(str)]
    if not paths:
        raise DatasetError(f"{root}: the pretrain pool holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    loaded = load_images(paths, size, cfg.data.cache_dir, gray=gray, on_bad=p.on_bad, progress=cfg.tracking.progress,
                         desc="decoding pool")
    from transfer.data.cache import content_hash
    from transfer.data.readers import read_file_bytes

    digests = sorted(content_hash(read_file_bytes(paths[i])) for i in loaded.kept)
    fp = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    skipped = [vars(s) for s in loaded.skipped]
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable pool images, e.g. {skipped[0]['path']}: {skipped[0]['reason']}")
    return Pool(loaded.images, [str(paths[i]) for i in loaded.kept], fp, skipped, str(root))


def _lr_lambda(warmup: int, epochs: int):
    """Linear warm-up for ``warmup`` epochs, then cosine decay to 0 (per-epoch schedule)."""

    def f(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        t = (epoch - warmup) / max(1, epochs - warmup)
        return 0.5 * (1 + math.cos(math.pi * t))

    return f


def build_pretrain_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    p = cfg.pretrain
    decay = [q for q in model.parameters() if q.requires_grad and q.ndim > 1]
    no_decay = [q for q in model.parameters() if q.requires_grad and q.ndim <= 1]
    groups = [{"params": decay, "weight_decay": p.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if p.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=p.lr, momentum=p.sgd_momentum)
    return torch.optim.AdamW(groups, lr=p.lr)


def representation_probe(backbone: torch.nn.Module, images: torch.Tensor, labels: np.ndarray,
                         device: torch.device, folds: int = 5) -> dict[str, float]:
    """kNN and linear-probe scores of frozen features, by stratified cross-validation (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transfer.task_api import batched_forward

    feats = batched_forward(backbone, images, device, 64).numpy()
    k = int(min(folds, np.bincount(labels).min()))
    if k < 2:
        return {}
    cv = StratifiedKFold(k, shuffle=True, random_state=0)
    knn = cross_val_score(make_pipeline(StandardScaler(), KNeighborsClassifier(5)), feats, labels, cv=cv).mean()
    lin = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), feats, labels, cv=cv).mean()
    return {"knn_acc": float(knn), "linear_probe_acc": float(lin)}


def run_pretrain(cfg: Config, *, name: str | None = None) -> dict[str, Any]:
    """Train one stage-1 method; write ``backbone.pt`` (loadable with ``init: <path>``) and a summary."""
    from transfer.run_finetune import load_plugins, seed_everything

    load_plugins()
    p = cfg.pretrain
    method_cls = PRETRAIN_METHODS.get(p.method)
    seed_everything(cfg.seed)
    t0 = time.time()
    pool = load_pool(cfg)
    if len(pool.images) < p.batch_size:
        raise DatasetError(f"the pretrain pool has {len(pool.images)} images, fewer than pretrain.batch_size={p.batch_size}")
    device = resolve_device(cfg.train.device)
    init_name = cfg.init if cfg.init in ("imagenet", "scratch") else Path(cfg.init).parent.name
    name = name or cfg.tracking.name or f"pretrain-{p.method}-{cfg.backbone.name.replace(':', '_')}-{init_name}-seed{cfg.seed}"
    run = Run(cfg.tracking.out_dir, name, to_dict(cfg), wandb_mode=cfg.tracking.wandb_mode,
              project=cfg.tracking.wandb_project, entity=cfg.tracking.wandb_entity, job_type="pretrain",
              tags=["pretrain", p.method, cfg.backbone.name], group=cfg.tracking.wandb_group)
    try:
        backbone, report = build_backbone(cfg.backbone.name, cfg.init, cfg.backbone.scratch_init,
                                          cfg.backbone.in_chans, cfg.backbone.channels)
        print(report.summary())
        if cfg.init not in ("imagenet", "scratch"):
            run.use_checkpoint(Path(cfg.init), report.provenance)
        method = method_cls(backbone, p, tuple(cfg.data.image_size)).to(device)
        opt = build_pretrain_optimizer(method, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(p.warmup_epochs, p.epochs))
        engine = Engine(method, opt, scheduler=sched, device=device, amp=cfg.train.amp,
                        channels_last=cfg.train.channels_last, compile=cfg.train.compile,
                        grad_clip=cfg.train.grad_clip, progress=cfg.tracking.progress)
        loader = make_loader(ImageDataset(pool.images, ids=pool.ids), p.batch_size, shuffle=True,
                             num_workers=cfg.data.num_workers, seed=cfg.seed, drop_last=True, device=device)
        probe = _probe_data(cfg) if (p.monitor_every and p.monitor_data) else None

        def evaluate(epoch: int) -> dict[str, float]:
            if probe is None or ((epoch + 1) % p.monitor_every and epoch + 1 != p.epochs):
                return {}
            return representation_probe(method.encoder, probe[0], probe[1], device)

        sample = {"image": pool.images[: min(8, len(pool.images))].to(device)}

        def on_epoch(row: dict[str, Any]) -> None:
            run.log_epoch(row)
            if cfg.tracking.log_media and (row["epoch"] + 1 == p.epochs or row["epoch"] % 10 == 0):
                method.eval()
                with torch.no_grad():
                    run.log_media({f"pretrain/{k}": v for k, v in method.media(sample).items()})
                method.train()

        res = engine.fit(loader, p.epochs, evaluate=evaluate, on_epoch=on_epoch, resume_path=run.dir / "last.pt",
                         max_steps=cfg.train.max_steps)
        ckpt = run.dir / "backbone.pt"
        provenance = {
            "method": p.method, "source_weights": cfg.init, "weights_report": report.source,
            "data_fingerprint": pool.fingerprint, "pool": pool.source, "pool_size": len(pool.images),
            "input_size": list(cfg.data.image_size), "config": to_dict(cfg), "artifact_name": f"backbone-{name}",
        }
        save_backbone_checkpoint(method.encoder, ckpt, provenance)
        with torch.no_grad():
            method.eval()
            media = method.media(sample)
        for k, v in media.items():
            from PIL import Image

            Image.fromarray(v).save(run.dir / f"{k}.png")
        last = res.history[-1]
        summary = {
            "run": name, "method": p.method, "backbone": cfg.backbone.name, "init": cfg.init,
            "pool": pool.source, "pool_size": len(pool.images), "skipped": pool.skipped,
            "data_fingerprint": pool.fingerprint, "epochs": res.epochs_run, "final": last,
            "checkpoint": str(ckpt), "seconds": round(time.time() - t0, 1),
        }
        if (run.dir / "last.pt").exists():
            (run.dir / "last.pt").unlink()
        run.log_summary(summary)
        run.log_artifact(ckpt, f"backbone-{name}", "backbone", {k: v for k, v in provenance.items() if k != "config"})
        return summary
    finally:
        run.finish()


def _probe_data(cfg: Config) -> tuple[torch.Tensor, np.ndarray]:
    """Images and integer labels of ``pretrain.monitor_data`` (a classification split of the config's format)."""
    from transfer.run_finetune import load_plugins

    load_plugins()
    task = TASKS.get("classification")(cfg)
    ds = task.load_split(cfg.pretrain.monitor_data or "", "monitor")
    return ds.images, ds.target_array("label")


def resolve_pretrain_init(cfg: Config, method: str, root: Path) -> Path:
    """For studies: the checkpoint of ``method`` pretrained with this config (run once, then reused)."""
    out = root / "pretrain"
    ckpt = out / method / "backbone.pt"
    if not ckpt.is_file():
        c = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, method=method),
                                tracking=dataclasses.replace(cfg.tracking, out_dir=str(out), name=method,
                                                             wandb_group=cfg.tracking.wandb_group or cfg.study.name))
        print(f"pretraining {method} for the study ...")
        s = run_pretrain(c, name=method)
        atomic_write_json(out / method / "pretrain_summary.json", s)
    return ckpt
