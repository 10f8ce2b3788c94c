"""``medtransfer bench data|finetune|pretrain|pool|ssl``: benchmarks that print figures (speed; stage 1's known answer)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from transfer.cli.common import add_config_args, load
from transfer.errors import MedTransferError


def register(sub: argparse._SubParsersAction) -> None:
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
    bf.add_argument("--rounds", type=int, default=3, help="timed rounds of --steps each; the best round counts")
    bf.set_defaults(fn=cmd_bench_finetune)

    bp = bsub.add_parser("pretrain", help="our stage-1 step vs lightly's reference loop and a bare loop")
    bp.add_argument("--method", default="simclr")
    bp.add_argument("--backbone", default="efficientnet_lite0")
    bp.add_argument("--batch-size", type=int, default=32)
    bp.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    bp.add_argument("--steps", type=int, default=10)
    bp.set_defaults(fn=cmd_bench_pretrain)

    bpl = bsub.add_parser("pool", help="stage 1's pool: streamed vs in memory (data path, model step, peak memory)")
    bpl.add_argument("--images", type=int, nargs="+", default=[1000, 10000], help="pool sizes to write and time")
    bpl.add_argument("--size", type=int, default=224, help="working size (px, square)")
    bpl.add_argument("--folder", default=None, help="time this folder of images instead of synthetic pools")
    bpl.add_argument("--work-dir", default=".cache/bench-pool", help="synthetic pools and their decode caches")
    bpl.add_argument("--batch-size", type=int, default=64, help="batch of the data-path epochs")
    bpl.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers of the data path")
    bpl.add_argument("--backbone", default="tiny_resnet", help="model of the stage-1 step (e.g. efficientnet_lite0)")
    bpl.add_argument("--method", default="simclr")
    bpl.add_argument("--step-batch", type=int, default=16)
    bpl.add_argument("--steps", type=int, default=10, help="timed stage-1 steps (0: no model)")
    bpl.add_argument("--max-in-memory-gib", type=float, default=4.0, help="skip the in-memory path above this")
    bpl.add_argument("--json", default=None, help="also write the rows here")
    bpl.set_defaults(fn=cmd_bench_pool)

    bs = bsub.add_parser("ssl", help="stage 1's known-answer benchmark: each method's probe vs its starting point")
    add_config_args(bs)
    bs.add_argument("--methods", nargs="+", default=None, help="stage-1 methods (default: cae augpred simclr moco byol)")
    bs.add_argument("--inits", nargs="+", default=None, help="starting points (default: scratch imagenet)")
    bs.add_argument("--out", default="runs/bench-ssl", help="folder of the runs, bench.json and report.md")
    bs.add_argument("--report", default=None, help="also copy the markdown table here (e.g. reports/ssl_known_answer.md)")
    bs.add_argument("--report-only", action="store_true",
                    help="train nothing: rebuild bench.json and the report from the finished runs (others may still train)")
    bs.set_defaults(fn=cmd_bench_ssl)


# The benchmark modules are imported by their commands: they pull in lightly and the stage-1 methods, which
# cost every other command (a finetune, each torchrun rank) seconds of start-up for nothing.


def cmd_bench_data(args: argparse.Namespace) -> int:
    import pandas as pd

    from transfer.bench.data import bench_data

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
    from transfer.bench.finetune import bench_finetune

    print(json.dumps(bench_finetune(load(args), steps=args.steps, warmup=args.warmup, rounds=args.rounds), indent=2))
    return 0


def cmd_bench_pretrain(args: argparse.Namespace) -> int:
    from transfer.bench.pretrain import bench_pretrain

    res = bench_pretrain(args.method, args.backbone, args.batch_size, tuple(args.size), steps=args.steps)
    print(json.dumps(res, indent=2))
    return 0


def cmd_bench_pool(args: argparse.Namespace) -> int:
    from transfer.bench.pool import bench_pool, table

    rows = bench_pool(args.images, args.size, work_dir=Path(args.work_dir),
                      folder=Path(args.folder) if args.folder else None, batch_size=args.batch_size,
                      workers=tuple(args.workers), backbone=args.backbone, method=args.method,
                      step_batch=args.step_batch, steps=args.steps, max_in_memory_gib=args.max_in_memory_gib)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(table(rows))
    return 0


def cmd_bench_ssl(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from transfer.bench.ssl import INITS, METHODS, bench_ssl

    # the report names the command that trains everything, not a --report-only rebuild of it
    argv = [a for a in sys.argv[1:] if a != "--report-only"]
    command = "medtransfer " + shlex.join(argv) if argv[:1] == ["bench"] else ""
    res = bench_ssl(load(args), Path(args.out), methods=tuple(args.methods or METHODS), inits=tuple(args.inits or INITS),
                    report=Path(args.report) if args.report else None, command=command, train=not args.report_only)
    for row in res["results"]:
        gain = row["linear_gain"]
        print(f"{row['method']:>8} from {row['init']:<8}: linear probe {row['linear_probe_acc']:.3f} "
              f"({'+' if gain >= 0 else ''}{gain:.3f} vs its start), kNN {row['knn_acc']:.3f}, "
              f"embedding std {row['embedding_std']:.2f}, effective rank {row['effective_rank']:.1f}, "
              f"{row['cpu_minutes']:.1f} CPU-min, kept epoch {row['kept_epoch']}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0
