"""Argument parsing for `python -m training evaluate`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from MedDiffusionExtension.errors import InputError

from ..cli import Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=["translation", "segmentation", "spacing", "translation-ceiling"],
                        help="spacing: the sample case (--data-root Resources/SampleData; for CT also the first "
                             "case of a BTCV-layout root) on several grids; translation-ceiling: what a perfect "
                             "translator scores on a phantom set (its references against themselves without noise and "
                             "bias field; --model sets the scale)")
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
    parser.add_argument("--sample-means", type=_counts, default=(), metavar="K[,K...]",
                        help="translation (CDM): one more row per K, the mean of K samples (`--samples K`)")
    parser.add_argument("--outside-body-row", action="store_true",
                        help="segmentation: add a single-step row that keeps labels outside the body (`--outside-body`)")
    parser.add_argument("--update-card", action="store_true", help="write the measured metrics into the model's card.json")
    parser.add_argument("--card-key", default="",
                        help="with --update-card: keep the card's metrics and store these under this key (e.g. shifted)")
    parser.add_argument("--core", action="store_true",
                        help="the model's default setting and the baseline only: no sampling sweeps, ensembles, "
                             "upper bounds or stability runs (a quicker second test set)")
    parser.add_argument("--no-memory", action="store_true",
                        help="multi-organ segmentation: skip the peak-memory runs (each row segments the first CT once "
                             "more in a process of its own)")
    parser.add_argument("--precision", type=_precisions, default=("auto",), metavar="P[,P...]",
                        help="inference precision(s) among auto, fp32, bf16, fp16 (default auto). Several, e.g. "
                             "fp32,bf16: one evaluation per precision into OUT/<precision>/ and OUT/precision.md, "
                             "each precision's headline metrics against the first's (the quality guard)")
    parser.add_argument("--command-note", default="", help="extra text recorded with the results (e.g. how data was made)")


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(value) for value in text.split(",") if value.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 2:
        raise argparse.ArgumentTypeError(f"expected sample counts of 2 or more, e.g. 3,5; got {text!r}")
    return counts


def _precisions(text: str) -> tuple[str, ...]:
    from MedDiffusionExtension.precision import PRECISIONS

    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in PRECISIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected precisions among {', '.join(PRECISIONS)}, got {text!r}")
    return names


def _evaluate(args: argparse.Namespace, precision: str) -> dict:
    from .common import evaluation_precision

    if args.task == "translation":
        from .translation import evaluate_translation as evaluate
    elif args.task == "spacing":
        from .spacing import evaluate_spacing as evaluate
    elif args.task == "translation-ceiling":
        from .translation_ceiling import evaluate_translation_ceiling as evaluate
    else:
        from .segmentation import evaluate_segmentation as evaluate
    with evaluation_precision(precision):
        results = dict(evaluate(args), precision=precision)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'README.md'}")
    return results


def _run(args: argparse.Namespace) -> int:
    from .common import precision_comparison

    precisions = args.precision
    if len(precisions) == 1:
        _evaluate(args, precisions[0])
        return 0
    if args.update_card:
        raise InputError("--update-card takes one --precision: the card records the metrics of the precision it runs in")
    out, results = args.out, {}
    for precision in precisions:
        results[precision] = _evaluate(argparse.Namespace(**dict(vars(args), out=out / precision, figure=None)), precision)
    text, verdicts = precision_comparison(args.task, results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.md").write_text(f"# Metrics by precision: {args.model}\n\n{text}", encoding="utf-8")
    (out / "precision.json").write_text(json.dumps(verdicts, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'precision.md'}")
    return 0


COMMAND = Command("evaluate a model on a test split: paper-shaped tables (Markdown) and a case figure (PNG)",
                  _add_arguments, _run)
