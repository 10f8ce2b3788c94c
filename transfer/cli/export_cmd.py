"""``medtransfer export``: a trained backbone as the plain state dict timm or torchvision load."""
from __future__ import annotations

import argparse
import json

from transfer.runs.export import export_backbone


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a checkpoint's backbone as a plain timm or torchvision state dict")
    p.add_argument("checkpoint", help="backbone.pt (pretrain) or model.pt (finetune)")
    p.add_argument("--format", required=True, choices=["timm", "torchvision"], dest="fmt")
    p.add_argument("out", help="output file; OUT.json beside it says how to load it")
    p.set_defaults(fn=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    info = export_backbone(args.checkpoint, args.fmt, args.out)
    print(json.dumps({k: info[k] for k in ("model", "in_chans", "not_in_file", "load")}, indent=2))
    return 0
