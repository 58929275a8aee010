"""`python -m training import-totalsegmentator`: real CTs with TotalSegmentator references into the BTCV layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", nargs=2, action="append", required=True, metavar=("IMAGE", "SEGMENTATION"),
                        help="a CT (file or DICOM folder) and its reference: a label map in TotalSegmentator's "
                             "'total' numbering or a folder of per-structure masks (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="dataset root to write (img/, label/)")
    parser.add_argument("--first-number", type=int, default=1,
                        help="case number of the first case (default 1); the BTCV reader's test split takes the "
                             "cases numbered as BTCV's 12 test CTs, so evaluate imported cases with --split all")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from MedDiffusionExtension.volume.io import read_volume

    from .totalsegmentator import LabelledCT, import_cases

    cases = [LabelledCT(Path(image), Path(segmentation)) for image, segmentation in args.case]
    written = import_cases(cases, args.out, args.first_number)
    for label_path in written[1::2]:  # (image, label) per case
        labels = np.asarray(read_volume(label_path).array)
        present = ", ".join(f"{value}" for value in np.unique(labels) if value)
        print(f"{label_path.name}: {labels.shape[::-1]} voxels, BTCV labels {present}")
    print(f"wrote {len(written) // 2} case(s) under {args.out}")
    return 0


COMMAND = Command("real CTs with TotalSegmentator references as a BTCV-layout dataset", add_arguments, run)
