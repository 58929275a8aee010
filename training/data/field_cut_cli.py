"""`python -m training cut-field`: a BTCV-layout dataset with part of every case's field of view removed."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", type=Path, required=True, help="BTCV-layout dataset to cut")
    parser.add_argument("--out", type=Path, required=True, help="dataset root to write (img/, label/)")
    parser.add_argument("--remove", required=True, choices=["left", "right", "anterior", "posterior"],
                        help="the patient's side of the field to remove")
    parser.add_argument("--fraction", type=float, default=0.4, help="share of the field's width removed (default 0.4)")


def run(args: argparse.Namespace) -> int:
    from .field_cut import cut_dataset

    written = cut_dataset(args.data_root, args.out, args.remove, args.fraction)
    print(f"wrote {len(written)} file(s) under {args.out}: {args.fraction:.0%} of each field removed on the "
          f"patient's {args.remove}")
    return 0


COMMAND = Command("a dataset's cases with part of the field of view cut away on one side", add_arguments, run)
