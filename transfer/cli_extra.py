"""Subcommands defined beside their modules: bench (data, finetune), pretrain, study."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable


def register(sub: argparse._SubParsersAction, add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    bench = sub.add_parser("bench", help="speed benchmarks (print figures)")
    bsub = bench.add_subparsers(dest="bench_command", required=True)

    bd = bsub.add_parser("data", help="decode cache: cold vs warm epoch of image loading")
    bd.add_argument("--csv", default=None, help="landmark/classification CSV listing the images (first column)")
    bd.add_argument("--image-dir", default=None, help="folder of images (all files, or those listed in --csv)")
    bd.add_argument("--size", type=int, nargs=2, default=[256, 208], metavar=("H", "W"))
    bd.add_argument("--cache-dir", default=".cache/bench-data")
    bd.set_defaults(fn=cmd_bench_data)

    bf = bsub.add_parser("finetune", help="engine vs a bare PyTorch loop, and the data-wait share")
    add_config_args(bf)
    bf.add_argument("--steps", type=int, default=20)
    bf.add_argument("--warmup", type=int, default=3)
    bf.set_defaults(fn=cmd_bench_finetune)

    bp = bsub.add_parser("pretrain", help="our stage-1 step vs lightly's reference loop and a bare loop")
    bp.add_argument("--method", default="simclr")
    bp.add_argument("--backbone", default="efficientnet_lite0")
    bp.add_argument("--batch-size", type=int, default=32)
    bp.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    bp.add_argument("--steps", type=int, default=10)
    bp.set_defaults(fn=cmd_bench_pretrain)

    p = sub.add_parser("pretrain", help="stage 1: adapt a backbone on unlabelled images; writes backbone.pt")
    add_config_args(p)
    p.add_argument("--name", help="run directory name")
    p.set_defaults(fn=cmd_pretrain)

    register_study(sub, add_config_args)


def cmd_bench_data(args: argparse.Namespace) -> int:
    import pandas as pd

    from transfer.data.bench_data import bench_data
    from transfer.errors import MedTransferError

    if args.image_dir is None:
        raise MedTransferError("bench data needs --image-dir (and optionally --csv listing the files)")
    image_dir = Path(args.image_dir)
    if args.csv:
        names = pd.read_csv(args.csv).iloc[:, 0].astype(str).tolist()
        paths = [image_dir / n for n in names]
    else:
        paths = sorted(p for p in image_dir.iterdir() if p.is_file())
    res = bench_data(paths, tuple(args.size), Path(args.cache_dir))
    print(json.dumps(res, indent=2))
    print(f"{res['n']} images -> {args.size[0]}x{args.size[1]}: cold {res['cold_ms_per_image']:.1f} ms/image, "
          f"warm {res['warm_ms_per_image']:.2f} ms/image ({res['speedup']:.0f}x)")
    return 0


def cmd_bench_finetune(args: argparse.Namespace) -> int:
    from transfer.bench_finetune import bench_finetune
    from transfer.config import Config
    from transfer.configio import load_config

    cfg = load_config(Config, args.config, args.overrides)
    res = bench_finetune(cfg, steps=args.steps, warmup=args.warmup)
    print(json.dumps(res, indent=2))
    return 0


def register_study(sub: argparse._SubParsersAction, add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    s = sub.add_parser("study", help="run the grid init x depth x label fraction x seed; write tables and a report")
    add_config_args(s)
    s.set_defaults(fn=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    from transfer.config import Config
    from transfer.configio import load_config
    from transfer.study import run_study

    cfg = load_config(Config, args.config, args.overrides)
    out = run_study(cfg)
    print(json.dumps(out, indent=2))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from transfer.config import Config
    from transfer.configio import load_config
    from transfer.run_pretrain import run_pretrain

    cfg = load_config(Config, args.config, args.overrides)
    s = run_pretrain(cfg, name=args.name)
    final = {k: round(v, 4) for k, v in s["final"].items() if isinstance(v, float)}
    print(f"run directory: {Path(s['checkpoint']).parent}")
    print(f"checkpoint: {s['checkpoint']}  (fine-tune from it with --set init={s['checkpoint']})")
    print(f"pool: {s['pool_size']} images, {len(s['skipped'])} skipped; last epoch: {final}")
    return 0


def cmd_bench_pretrain(args: argparse.Namespace) -> int:
    from ssl_pretrain.bench_reference import bench_pretrain

    res = bench_pretrain(args.method, args.backbone, args.batch_size, tuple(args.size), steps=args.steps)
    print(json.dumps(res, indent=2))
    return 0
