"""Stage 2 commands: ``finetune``, ``evaluate``, ``predict``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from transfer.api import TASKS, make_task
from transfer.cli.common import add_config_args, load
from transfer.distributed import is_main_process
from transfer.runs.evaluate import evaluate_run
from transfer.runs.finetune import run_finetune
from transfer.runs.predict import predict_images, skipped_csv


_CACHE_HELP = "decode cache folder (default: $MEDTRANSFER_CACHE, else ~/.cache/medtransfer; never the run's)"


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("finetune", help="stage 2: fine-tune one model and write a run directory",
                       description=f"Tasks (task.name): {', '.join(TASKS.names())}.")
    add_config_args(f)
    f.add_argument("--name", help="run directory name (default: derived from the config)")
    f.add_argument("--restart", action="store_true",
                   help="discard what an earlier run left in the run directory (resume state, metrics, summary) "
                        "and start over; without it an interrupted run resumes and a finished one is kept")
    f.set_defaults(fn=cmd_finetune)

    e = sub.add_parser("evaluate", help="score a trained model on a labelled set")
    e.add_argument("run", help="run directory or its model.pt")
    e.add_argument("--data", help="labelled split: CSV, class folder, or file.npz#key (relative to --root)")
    e.add_argument("--split", choices=["val", "test"],
                   help="instead of --data: the run's own split, rebuilt from its config and seed (the carved "
                        "validation part, the held-out fold), e.g. to measure a prediction-time option with --set")
    e.add_argument("--format", help="dataset format, if not the run's")
    e.add_argument("--root", help="dataset root (default: the run's data.root)")
    e.add_argument("--image-dir", help="image folder for CSV formats, relative to the root")
    e.add_argument("--out", help="write predictions CSV here (metrics beside it as .metrics.json)")
    e.add_argument("--device", default="auto")
    e.add_argument("--cache-dir", help=_CACHE_HELP)
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="task.KEY=VALUE",
                   help="change how the task predicts (task.* options only), e.g. task.landmarks.shape_prior=true")
    e.set_defaults(fn=cmd_evaluate)

    pr = sub.add_parser("predict", help="predict on new, unlabelled images")
    pr.add_argument("run", help="run directory or its model.pt")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="predictions CSV")
    pr.add_argument("--on-bad", choices=["error", "skip"], default="error",
                    help="skip: predict the readable images and list the others in <out>.skipped.csv (path, reason)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--cache-dir", help=_CACHE_HELP)
    pr.add_argument("--set", dest="overrides", action="append", default=[], metavar="task.KEY=VALUE",
                    help="change how the task predicts (task.* options only), e.g. task.landmarks.fix_mirrored=false")
    pr.set_defaults(fn=cmd_predict)


def cmd_finetune(args: argparse.Namespace) -> int:
    cfg = load(args)
    task = make_task(cfg)  # its headline metrics (some tasks derive them from their options)
    summary = run_finetune(cfg, name=args.name, restart=args.restart)
    if not is_main_process():  # under torchrun: rank 0 reports
        return 0
    if summary.get("already_complete"):
        print(f"{Path(cfg.tracking.out_dir) / summary['run']}: already complete (summary.json, model.pt); "
              f"nothing trained. --restart trains it again")
    _print_summary(summary, Path(cfg.tracking.out_dir) / summary["run"], task.report_metrics)
    return 0


def _print_summary(summary: dict, run_dir: Path, report_metrics: tuple[str, ...]) -> None:
    def scalars(m: dict) -> str:
        keys = [k for k in report_metrics if isinstance(m.get(k), (int, float))]
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
    res = evaluate_run(args.run, args.data, split=args.split, device=args.device, data_format=args.format,
                       root=args.root, image_dir=args.image_dir, out=Path(args.out) if args.out else None,
                       cache_dir=args.cache_dir, overrides=args.overrides)
    print(json.dumps(res.metrics, indent=2, default=float))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    out = Path(args.out)
    df, skipped = predict_images(args.run, args.images, out, device=args.device, on_bad=args.on_bad,
                                 cache_dir=args.cache_dir, overrides=args.overrides)
    print(f"wrote {len(df)} predictions to {out}"
          + (f"; {len(skipped)} skipped, listed in {skipped_csv(out)}" if skipped else ""))
    return 0
