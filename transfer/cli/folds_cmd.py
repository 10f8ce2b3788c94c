"""``medtransfer folds make``: a fixed K-fold assignment of the images of one or more listings, written once and
committed (see :mod:`transfer.data.folds`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from transfer.data.folds import LISTING_IMAGE_COLUMNS, listing_images, make_folds
from transfer.runs.output_file import output_file, write_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("folds", help="cross-validation folds: a fixed image -> fold file for data.folds")
    fs = p.add_subparsers(dest="folds_command", required=True)
    m = fs.add_parser("make", help="assign the images of listing CSVs to K folds (KFold, shuffled, seeded, on the "
                                   "sorted file names) and write image,fold")
    m.add_argument("csvs", nargs="+", metavar="CSV", help="listing CSVs whose images are dealt into folds together")
    m.add_argument("--k", type=int, default=4, help="number of folds (default 4)")
    m.add_argument("--seed", type=int, default=0, help="KFold's random_state (default 0)")
    m.add_argument("--column", help=f"the image column (default: the first of {', '.join(LISTING_IMAGE_COLUMNS)})")
    m.add_argument("--out", required=True, help="the folds file to write (CSV: image,fold)")
    m.set_defaults(fn=cmd_folds_make)


def cmd_folds_make(args: argparse.Namespace) -> int:
    out = output_file(Path(args.out))
    images = [name for csv in args.csvs for name in listing_images(Path(csv), args.column)]
    folds = make_folds(images, args.k, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(folds, out)
    sizes = folds["fold"].value_counts().sort_index()
    print(f"wrote {out}: {len(folds)} images in {args.k} folds of {', '.join(map(str, sizes))} "
          f"(KFold shuffle, seed {args.seed})")
    return 0
