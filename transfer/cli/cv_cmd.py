"""``medtransfer cv``: cross-validation of one config over the folds of its ``data.folds`` file (see
:mod:`transfer.studies.cv`)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from transfer.cli.common import add_config_args, load


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cv", help="cross-validation: one run per fold of data.folds (resumable), then a report of "
                                  "each fold, mean and SD over folds, and all test folds pooled")
    add_config_args(p)
    p.add_argument("--folds", type=int, nargs="+", metavar="K",
                   help="train only these folds (default: all); the report covers every fold finished so far")
    p.add_argument("--name", help="runs are <tracking.out_dir>/<name>-fold<k> (default: the config file's stem)")
    p.add_argument("--report", help="write the markdown report here (default: <tracking.out_dir>/<name>-cv.md)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild the report from the folds finished so far")
    p.set_defaults(fn=cmd_cv)


def cmd_cv(args: argparse.Namespace) -> int:
    from transfer.studies.cv import run_cv

    cfg = load(args)
    name = args.name or (Path(args.config).stem if args.config else "cv")
    res = run_cv(cfg, name, args.folds, train=not args.report_only,
                 report=Path(args.report) if args.report else None, command=_command(args))
    for m, v in res["over_folds"].items():
        sd = "" if v["sd"] is None else f" ± {v['sd']:.4g}"
        print(f"{m}: {v['mean']:.4g}{sd} over {v['folds']} fold(s) (range {v['min']:.4g} .. {v['max']:.4g})")
    if res["pending"]:
        print(f"not finished yet: fold(s) {', '.join(map(str, res['pending']))}")
    return 0


def _command(args: argparse.Namespace) -> str:
    """The command that trains every fold and writes this report: this one without --folds and --report-only."""
    argv = ["cv", *([args.config] if args.config else []), *[x for o in args.overrides for x in ("--set", o)],
            *(["--name", args.name] if args.name else []), *(["--report", args.report] if args.report else [])]
    return "medtransfer " + shlex.join(argv)
