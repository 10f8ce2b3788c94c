"""``medtransfer`` command line: backbones, config, finetune, evaluate, predict, pretrain, study, bench."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import yaml

from transfer.configio import ConfigError, load_config, to_dict
from transfer.errors import MedTransferError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML config (omit for the defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.depth=conv3-head (repeatable)")


def _load(args: argparse.Namespace):
    from transfer.config import Config

    return load_config(Config, args.config, args.overrides)


def cmd_backbones(args: argparse.Namespace) -> int:
    from transfer.backbones import backbone_names, get_entry

    rows = []
    for name in backbone_names():
        e = get_entry(name)
        bb = e.build()
        counts = [(s, sum(p.numel() for _, p in ps)) for s, ps in bb.stage_parameters().items()]
        if e.imagenet is None:
            weights, dl = "scratch", "-"
        else:
            src = e.imagenet()
            weights = "imagenet, scratch"
            dl = "yes" if src.needs_download() else "no"
        rows.append((name, weights, dl, sum(c for _, c in counts), counts, e.description))
    if args.json:
        print(json.dumps([{"name": r[0], "weights": r[1], "imagenet_needs_download": r[2], "params": r[3],
                           "stages": [{"name": s, "params": c} for s, c in r[4]], "description": r[5]} for r in rows],
                         indent=2))
        return 0
    print(f"{'backbone':<20} {'weights':<18} {'download':<9} {'params':>11}  stages (input -> output, params)")
    for name, weights, dl, total, counts, _ in rows:
        stages = ", ".join(f"{s} {_human(c)}" for s, c in counts)
        print(f"{name:<20} {weights:<18} {dl:<9} {_human(total):>11}  {stages}")
    print("\nAny timm model: backbone.name=timm:<model> (stages from timm's group_matcher; imagenet needs its file"
          " in the torch hub cache). 'download: no' = the ImageNet file is already on disk.")
    return 0


def _human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from transfer.run_finetune import run_finetune

    cfg = _load(args)
    summary = run_finetune(cfg, name=args.name)
    _print_summary(summary, Path(cfg.tracking.out_dir) / summary["run"])
    return 0


def _print_summary(summary: dict, run_dir: Path) -> None:
    def scalars(m: dict) -> str:
        keys = [k for k in ("roc_auc", "accuracy", "f1", "g_mean", "mre_mm", "sd_mm") if k in m]
        s = ", ".join(f"{k}={m[k]:.4f}" for k in keys)
        if "sdr" in m:
            s += ", SDR " + "/".join(f"{v:.1f}" for v in m["sdr"].values()) + " %"
        return s

    print(f"run directory: {run_dir}")
    print(f"selected depth: {summary['selected_depth']}  (best epoch {summary['best_epoch']})")
    print(f"val:  {scalars(summary['val'])}")
    if "test" in summary:
        print(f"test: {scalars(summary['test'])}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from transfer.engine import resolve_device
    from transfer.run_finetune import load_model
    from transfer.tracking import atomic_write_json

    device = resolve_device(args.device)
    cfg, task, model = load_model(args.run, device)
    for k, v in (("format", args.format), ("root", args.root), ("image_dir", args.image_dir)):
        if v is not None:
            setattr(cfg.data, k, v)
    if args.format or args.root or args.image_dir:
        info = task.info
        task = type(task)(cfg)  # re-validates the format for this task
        task.info = info
    res = task.evaluate(model, task.load_split(args.data, "eval"), device, with_ci=True)
    out = Path(args.out) if args.out else None
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        res.predictions.to_csv(out, index=False)
        atomic_write_json(out.with_suffix(".metrics.json"), res.metrics)
    print(json.dumps(res.metrics, indent=2, default=float))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from transfer.data.datasets import ImageDataset, load_images
    from transfer.engine import resolve_device
    from transfer.run_finetune import load_model
    from tasks.classification import IMAGE_SUFFIXES

    device = resolve_device(args.device)
    cfg, task, model = load_model(args.run, device)
    paths: list[Path] = []
    for item in args.images:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise MedTransferError(f"{p}: no such file or folder")
    if not paths:
        raise MedTransferError(f"no image found in {args.images}")
    loaded = load_images(paths, cfg.data.image_size, cfg.data.cache_dir, gray=cfg.backbone.in_chans == 1,
                         on_bad=args.on_bad, progress=False)
    for s in loaded.skipped:
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    import torch

    ds = ImageDataset(loaded.images, {"orig_size": torch.from_numpy(loaded.original_sizes.astype("float32"))},
                      [str(paths[i]) for i in loaded.kept])
    df = task.predict(model, ds, device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(f"wrote {len(df)} predictions to {out}" + (f" ({len(loaded.skipped)} skipped)" if loaded.skipped else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medtransfer", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("backbones", help="list registered backbones, their stages and weights")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_backbones)

    c = sub.add_parser("config", help="config tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser("show", help="print the fully resolved config")
    _add_config_args(cs)
    cs.set_defaults(fn=cmd_config_show)

    f = sub.add_parser("finetune", help="stage 2: fine-tune one model and write a run directory")
    _add_config_args(f)
    f.add_argument("--name", help="run directory name (default: derived from the config)")
    f.set_defaults(fn=cmd_finetune)

    e = sub.add_parser("evaluate", help="score a trained model on a labelled set")
    e.add_argument("run", help="run directory or its model.pt")
    e.add_argument("--data", required=True, help="labelled split: CSV, class folder, or file.npz#key (relative to --root)")
    e.add_argument("--format", help="dataset format, if not the run's")
    e.add_argument("--root", help="dataset root (default: the run's data.root)")
    e.add_argument("--image-dir", help="image folder for CSV formats, relative to the root")
    e.add_argument("--out", help="write predictions CSV here (metrics beside it as .metrics.json)")
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict on new, unlabelled images")
    pr.add_argument("run", help="run directory or its model.pt")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="predictions CSV")
    pr.add_argument("--on-bad", choices=["error", "skip"], default="error")
    pr.add_argument("--device", default="auto")
    pr.set_defaults(fn=cmd_predict)

    _extend_parser(sub)
    return p


def _extend_parser(sub: argparse._SubParsersAction) -> None:
    """Commands defined in their own modules (pretrain, study, bench)."""
    from transfer import cli_extra

    cli_extra.register(sub, _add_config_args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (ConfigError, MedTransferError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"medtransfer: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
