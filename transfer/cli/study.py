"""``medtransfer study`` (the grid, its tables and report) and ``medtransfer report`` (rebuild them from disk)."""
from __future__ import annotations

import argparse
import json

from transfer.cli.common import add_config_args, load

# The studies package is imported by its commands: it pulls in matplotlib, scipy and submitit, 1.4 s of start-up
# that every other command (each torchrun rank, each subprocess of the tests) paid for nothing.


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("study", help="run the grid init x depth x label fraction x seed; write tables and a report")
    add_config_args(s)
    s.add_argument("--executor", choices=["local", "submitit"],
                   help="where cells run (default: study.executor): local, or submitit (Slurm job arrays; "
                        "study.submitit.cluster=local runs them as local processes)")
    s.add_argument("--shard", metavar="I/N", help="run only cells I, I+N, I+2N, ... of the grid (1-based); shards "
                   "sharing the study folder merge into the same tables")
    s.add_argument("--dry-run", action="store_true",
                   help="print the plan (each cell reused, resumed or run) and a compute estimate; train nothing")
    s.set_defaults(fn=cmd_study)
    r = sub.add_parser("report", help="rebuild a study's tables, plots and report (markdown + HTML) from its run "
                       "directories alone")
    r.add_argument("study_dir", help="the study directory (study.out_dir/study.name, holding manifest.json)")
    r.add_argument("--out", help="report path (default: STUDY_DIR/report.md; the HTML page goes beside it)")
    r.set_defaults(fn=cmd_report)


def cmd_study(args: argparse.Namespace) -> int:
    from transfer.studies.cells import parse_shard
    from transfer.studies.grid import run_study

    if args.executor:
        args.overrides = [*args.overrides, f"study.executor={args.executor}"]
    shard = parse_shard(args.shard) if args.shard else None
    out = run_study(load(args), shard=shard, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    if out.get("missing"):
        print(f"{len(out['missing'])} cell(s) of the grid are not finished yet (other shards?): the tables cover "
              f"{out['n_runs']}; `medtransfer report {out['root']}` rebuilds them when all are done")
    if out.get("report"):
        print(f"report: {out['report']}\n        {out['html']}")
    print(f"study directory: {out['root']} ({out['n_runs']} runs, {out['seconds']:.0f} s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from transfer.studies.tables import rebuild_report

    out = rebuild_report(args.study_dir, args.out)
    print(json.dumps({k: v for k, v in out.items() if k != "missing"} | {"missing": len(out["missing"])}, indent=2))
    return 0
