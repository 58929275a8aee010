"""`python -m training phantoms {brats,btcv,ixi,samples,figures}`: write phantom datasets, the bundled sample cases
(Resources/SampleData) and the documentation figures."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..cli import Command

PROFILES = ("fixed", "train", "shifted")  # acquisition.PROFILES, kept literal so the parser imports nothing heavy


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _spacing(text: str) -> tuple[float, float, float]:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("write spacing like 0.8x0.8x2.5")
    return tuple(float(p) for p in parts)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="what", required=True)
    for name, help_text in (("brats", "brain MRI cases in the BraTS2023 layout"),
                            ("btcv", "abdominal CT cases in the BTCV layout"),
                            ("ixi", "healthy T1/T2 pairs in the IXI layout")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--out", type=Path, required=True, help="dataset root folder")
        command.add_argument("--n", type=_positive, default=1, help="number of cases")
        command.add_argument("--seed", type=_non_negative, default=0, help="dataset seed")
        if name != "ixi":
            command.add_argument("--workers", type=_positive, default=1,
                                 help="cases written in parallel processes (the same files as one at a time)")
        if name == "ixi":
            command.add_argument("--scale", type=float, default=1.0, help="voxels per axis relative to IXI's")
        else:
            command.add_argument("--shape", help="voxels in NIfTI order, e.g. 64x64x40 (field of view kept)")
        if name == "btcv":
            command.add_argument("--spacing", type=_spacing, help="voxel size in mm, e.g. 0.8x0.8x2.5")
            oral = command.add_mutually_exclusive_group()
            oral.add_argument("--oral-contrast", type=float, metavar="HU",
                              help="positive oral contrast in every case: stomach, duodenum and small bowel fluid at "
                                   "this HU (e.g. 250; a stress test, no profile draws it)")
            oral.add_argument("--oral-contrast-share", type=_share, default=0.0, metavar="P",
                              help="that share of the cases (drawn per case) with oral contrast at 150-350 HU; the "
                                   "others as without it")
            pelvis = command.add_mutually_exclusive_group()
            pelvis.add_argument("--pelvis", action="store_const", const=1.0, dest="pelvis_share", default=0.0,
                                help="abdomen-pelvis scans: the pelvis drawn below the abdomen (unlabelled: iliac "
                                     "vessels, pelvic bones, femoral heads, bladder, rectum) and each field extended "
                                     "down past the symphysis; needs --acquisition train or shifted")
            pelvis.add_argument("--pelvis-share", type=_share, default=0.0, metavar="P",
                                help="that share of the cases (drawn per case) scanned abdomen-pelvis (see --pelvis)")
            lesions = command.add_mutually_exclusive_group()
            lesions.add_argument("--lesions", action="store_const", const=1.0, dest="lesion_share", default=0.0,
                                 help="focal lesions in every case: cysts, hypo- and hypervascular tumours in the "
                                      "liver, kidneys and spleen, labelled as their organ (as in BTCV)")
            lesions.add_argument("--lesion-share", type=_share, default=0.0, metavar="P",
                                 help="that share of the cases (drawn per case) with lesions (see --lesions)")
        if name != "ixi":
            command.add_argument("--acquisition", choices=PROFILES, default="fixed",
                                 help="scanner and protocol per case: fixed (the original single acquisition), "
                                      "train (randomised) or shifted (held-out, outside the train ranges); "
                                      "see training/phantoms/acquisition.py (default: fixed)")
    samples = commands.add_parser("samples", help="write the bundled sample cases with SHA256SUMS")
    samples.add_argument("--out", type=Path, default=Path("Resources/SampleData"))
    figures = commands.add_parser("figures", help="write the documentation figures")
    figures.add_argument("--out", type=Path, default=Path("docs/figures"))


def write(args: argparse.Namespace) -> list[Path]:
    from . import figures, layouts, samples

    if args.what == "brats":
        cases = layouts.write_brats_dataset(args.out, args.n, args.seed, args.shape, acquisition=args.acquisition,
                                            workers=args.workers)
    elif args.what == "btcv":
        cases = layouts.write_btcv_dataset(args.out, args.n, args.seed, args.shape, args.spacing,
                                           acquisition=args.acquisition, oral_contrast_hu=args.oral_contrast,
                                           oral_contrast_share=args.oral_contrast_share, workers=args.workers,
                                           pelvis_share=args.pelvis_share, lesion_share=args.lesion_share)
    elif args.what == "ixi":
        cases = layouts.write_ixi_dataset(args.out, args.n, args.seed, args.scale)
    elif args.what == "samples":
        names = samples.write_samples(args.out)
        return [args.out / name for name in names]
    else:
        return figures.write_figures(args.out)
    paths = [path for case in cases for path in case.values()]
    if args.what in ("brats", "btcv"):
        paths.append(args.out / layouts.ACQUISITIONS_JSON)
    return paths


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    paths = write(args)
    for path in paths:
        print(path)
    print(f"wrote {len(paths)} files in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


COMMAND = Command("write phantom datasets (BraTS, BTCV, IXI layouts), the bundled sample cases or the docs figures",
                  add_arguments, run)


def main(argv: list[str]) -> int:
    """`python -m training phantoms ARGV...` (an InputError is exit code 2)."""
    from ..cli import main as training_main

    return training_main(["phantoms", *argv])
