"""``medtransfer backbones`` and ``medtransfer plugins``: what is registered, and where it comes from."""
from __future__ import annotations

import argparse
import json

from transfer.api import PRETRAIN_METHODS, TASKS
from transfer.backbones import backbone_names, get_entry
from transfer.cli.common import human


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("backbones", help="list registered backbones, their stages and weights")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_backbones)
    p = sub.add_parser("plugins", help="list the registered tasks and stage-1 methods (entry points)")
    p.set_defaults(fn=cmd_plugins)


def cmd_backbones(args: argparse.Namespace) -> int:
    rows = []
    for name in backbone_names():
        e = get_entry(name)
        bb = e.build()
        counts = [(s, sum(p.numel() for _, p in ps)) for s, ps in bb.stage_parameters().items()]
        if e.imagenet is None:
            weights, dl = "scratch", "-"
        else:
            weights, dl = "imagenet, scratch", "yes" if e.imagenet().needs_download() else "no"
        rows.append((name, weights, dl, sum(c for _, c in counts), counts, e.description))
    if args.json:
        print(json.dumps([{"name": r[0], "weights": r[1], "imagenet_needs_download": r[2], "params": r[3],
                           "stages": [{"name": s, "params": c} for s, c in r[4]], "description": r[5]} for r in rows],
                         indent=2))
        return 0
    print(f"{'backbone':<20} {'weights':<18} {'download':<9} {'params':>11}  stages (input -> output, params)")
    for name, weights, dl, total, counts, _ in rows:
        stages = ", ".join(f"{s} {human(c)}" for s, c in counts)
        print(f"{name:<20} {weights:<18} {dl:<9} {human(total):>11}  {stages}")
    print("\nAny timm model: backbone.name=timm:<model> (stages from timm's group_matcher; imagenet needs its file"
          " in the torch hub cache). 'download: no' = the ImageNet file is already on disk.")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    print("tasks (task.name; entry-point group medtransfer.tasks):")
    for name, cls in TASKS.items():
        section = f"options task.{name}" if cls.options_class else "no options"
        print(f"  {name:<16} {cls.__module__}.{cls.__qualname__}  formats {', '.join(cls.formats)}; {section}")
    print("stage-1 methods (pretrain.method; entry-point group medtransfer.pretrain_methods):")
    for name, cls in PRETRAIN_METHODS.items():
        section = f"options pretrain.{cls.config_section}" if cls.config_section else "no options"
        print(f"  {name:<16} {cls.__module__}.{cls.__qualname__}  {section}")
    return 0
