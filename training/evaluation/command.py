"""Argument parsing for `python -m training evaluate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli import Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=["translation", "segmentation", "spacing"],
                        help="spacing: the sample case (--data-root Resources/SampleData) on several grids")
    parser.add_argument("--data-root", required=True, type=Path, help="dataset root in its real layout")
    parser.add_argument("--layout", default="brats", help="MRI layout: brats | upenn | ixi (translation only)")
    parser.add_argument("--split", default="test", choices=["test", "all"], help="the paper's test split, or every case")
    parser.add_argument("--model", required=True, help="model name or folder to evaluate")
    parser.add_argument("--baseline", help="non-diffusion baseline model of the same task (M1 UNet / SegUNet)")
    parser.add_argument("--compare", default="", help="comma-separated further models of the same task, one table row each")
    parser.add_argument("--out", required=True, type=Path, help="folder for results.json, the Markdown table and the figure")
    parser.add_argument("--figure", type=Path, help="PNG path of the case figure (default: OUT/case.png)")
    parser.add_argument("--max-cases", type=int, default=0, help="evaluate at most this many cases (0: all)")
    parser.add_argument("--samples", type=int, default=5, help="samples for uncertainty / ensemble / stability")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--update-card", action="store_true", help="write the measured metrics into the model's card.json")
    parser.add_argument("--card-key", default="",
                        help="with --update-card: keep the card's metrics and store these under this key (e.g. shifted)")
    parser.add_argument("--core", action="store_true",
                        help="the model's default setting and the baseline only: no sampling sweeps, ensembles, "
                             "upper bounds or stability runs (a quicker second test set)")
    parser.add_argument("--command-note", default="", help="extra text recorded with the results (e.g. how data was made)")


def _run(args: argparse.Namespace) -> int:
    if args.task == "translation":
        from .translation import evaluate_translation as evaluate
    elif args.task == "spacing":
        from .spacing import evaluate_spacing as evaluate
    else:
        from .segmentation import evaluate_segmentation as evaluate
    results = evaluate(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'README.md'}")
    return 0


COMMAND = Command("evaluate a model on a test split: paper-shaped tables (Markdown) and a case figure (PNG)",
                  _add_arguments, _run)
