"""Multi-organ segmentation evaluation in the BTCV protocol (a model whose card names more than one segment).

Rows: the model's single step; unless --core, its 10-step DDIM and a K-sample ensemble; the multi-class UNet
baseline (--baseline); every --compare model at its card's setting (another mask encoding, the binary union model:
a binary model has only the union score). Each row segments every test CT through the task layer, as the CLI does;
per-organ scores come from organ_scores.py, the Markdown and JSON from organ_report.py. Speed: seconds per volume
of those same runs. Memory: one run per row on the first CT in a process of its own (peak_memory.py). The
MedSegDiff-like row: one measured denoising pass of a pixel-space diffusion segmenter on the baseline's backbone
(pixel_diffusion.py), extrapolated to 50 steps x 5 samples per slice.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from MedDiffusionExtension.device import resolve_device
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.models.mask_codecs import MaskCodec
from MedDiffusionExtension.volume import AxialReorientation, Volume, read_volume
from MedDiffusionExtension.weights import LoadedModel, load_model

from .common import run_model, timed
from .figures import organ_figure
from .organ_report import OrganEvaluation, write_organ_report
from .organ_scores import MethodScores, score_case
from .peak_memory import measure_peak_memory
from .pixel_diffusion import denoising_pass_seconds

SINGLE_STEP = "SDSeg single step"
DDIM_10 = "SDSeg 10-step DDIM"
BASELINE = "UNet (non-diffusion baseline)"
MEDSEGDIFF_STEPS, MEDSEGDIFF_SAMPLES = 50, 5  # MedSegDiff's sampling: its steps, and the ensemble it averages
MEDSEGDIFF_REPEATS = 3  # measured passes averaged for the MedSegDiff-like row
WARM_UP_SLICES = 4


@dataclass(frozen=True)
class Method:
    """One table row: a model at one sampling setting."""

    name: str
    loaded: LoadedModel
    steps: Optional[int]  # None: the card's
    samples: int
    role: str  # "model", "baseline" or "compare"

    @property
    def organs(self) -> Optional[list[int]]:
        """The label values this method labels; None for a binary (union) model."""
        segments = self.loaded.card.segments
        return [s.label for s in segments] if len(segments) > 1 else None

    @property
    def design(self) -> str:
        return design_of(self.loaded)


def design_of(loaded: LoadedModel) -> str:
    """How a model represents the organs, for the design comparison: pixel UNet or latent mask encoding."""
    card = loaded.card
    classes = len(card.segments)
    if card.method == "segunet":
        return "pixel UNet, binary union" if classes == 1 else f"pixel UNet, {classes + 1} classes"
    if card.method != "sdseg":
        return card.method
    codec = MaskCodec.from_config(card.architecture.get("mask_encoding"))
    if codec.kind == "binary":
        return "latent, binary union mask"
    return f"latent, {codec.kind} ({codec.image_channels} mask channels)"


def _methods(args: argparse.Namespace, model: LoadedModel) -> list[Method]:
    methods = [Method(SINGLE_STEP, model, 1, 1, "model")]
    if not args.core:
        methods += [Method(DDIM_10, model, 10, 1, "model"),
                    Method(f"{SINGLE_STEP}, {args.samples}-sample ensemble", model, 1, args.samples, "model")]
    if args.baseline:
        methods.append(Method(BASELINE, load_model(args.baseline, task="segmentation"), None, 1, "baseline"))
    own = Path(model.card.directory).resolve()
    for name in filter(None, args.compare.split(",")):
        loaded = load_model(name, task="segmentation")
        if Path(loaded.card.directory).resolve() == own:
            raise InputError(f"--compare names {name}, the model being evaluated; compare other models")
        row = f"{loaded.card.name} {loaded.card.version}"
        if any(m.name == row for m in methods):  # e.g. two encodings exported under one card name
            row = f"{row} [{Path(loaded.card.directory).name}]"
        methods.append(Method(row, loaded, None, 1, "compare"))
    return methods


def _warm_up(methods: list[Method], image: Volume, args: argparse.Namespace) -> None:
    """One run of every model on a few slices before anything is timed: the first call of a process (thread pools,
    kernel selection) would otherwise be charged to whichever row comes first."""
    crop = Volume(image.array[:WARM_UP_SLICES], image.ijk_to_ras)
    for loaded in {id(m.loaded): m.loaded for m in methods}.values():
        run_model(loaded, {"image": crop}, device=args.device, batch_size=args.batch_size)


def _label_map(volume: Volume) -> np.ndarray:
    array = np.asarray(volume.array)
    return array if np.issubdtype(array.dtype, np.integer) else np.rint(array).astype(np.int16)


def _medsegdiff_like(args, model: LoadedModel, methods: list[Method]) -> Optional[dict]:
    """Seconds of one denoising pass per slice of a pixel-space diffusion segmenter with the baseline's backbone on
    (x_t || CT), K + 1 class channels (1 for a binary model), at the model's slice size; None without a baseline."""
    baseline = next((m for m in methods if m.role == "baseline"), None)
    if baseline is None or "unet" not in baseline.loaded.card.architecture:
        return None
    classes = len(model.card.segments)
    channels = classes + 1 if classes > 1 else 1
    size = model.card.image_size
    seconds = denoising_pass_seconds(baseline.loaded.card.architecture["unet"], channels + 1, channels, size,
                                     args.batch_size, resolve_device(args.device), repeats=MEDSEGDIFF_REPEATS)
    return {"backbone": f"{baseline.loaded.card.name} (random weights)", "in_channels": channels + 1,
            "out_channels": channels, "slice_size": size, "batch": args.batch_size, "passes_measured": MEDSEGDIFF_REPEATS,
            "seconds_per_pass_per_slice": seconds / args.batch_size, "steps": MEDSEGDIFF_STEPS,
            "samples": MEDSEGDIFF_SAMPLES}


def evaluate_organs(args: argparse.Namespace, cases: list, model: LoadedModel) -> dict:
    organs = [s.label for s in model.card.segments]
    methods = _methods(args, model)
    scores = {m.name: MethodScores() for m in methods}
    seconds = {m.name: [] for m in methods}
    slices = []
    figure = args.figure or args.out / "case.png"
    _warm_up(methods, read_volume(cases[0].paths["image"]), args)
    for number, case in enumerate(cases):
        image = read_volume(case.paths["image"])
        reference = _label_map(read_volume(case.paths["label"]))
        spacing = image.spacing[::-1]  # metrics take (k, j, i) spacing like the arrays
        axial = AxialReorientation.for_volume(image)
        slices.append(axial.apply(image.array).shape[0])
        for method in methods:
            took, result = timed(run_model, method.loaded, {"image": image}, device=args.device,
                                 batch_size=args.batch_size, steps=method.steps, samples=method.samples)
            prediction = result["labels"].array
            scores[method.name].cases.append(score_case(prediction, reference, organs, method.organs, spacing))
            seconds[method.name].append(took)
            if number == 0 and method is methods[0]:
                case_dice = float(np.mean([s["dice"] for s in scores[method.name].cases[-1]["organs"].values()]))
                organ_figure(figure, axial.apply(image.array.astype(np.float32)), axial.apply(prediction),
                             axial.apply(reference), model.card.segments,
                             np.linalg.norm(axial.axial_ijk_to_ras()[:3, :3], axis=0), case.case_id, case_dice)
    memory = {} if args.no_memory else {
        m.name: measure_peak_memory(m.loaded.card.directory, cases[0].paths["image"], steps=m.steps,
                                    samples=m.samples, device=args.device, batch_size=args.batch_size)
        for m in methods}
    evaluation = OrganEvaluation(args=args, model=model, cases=[c.case_id for c in cases], organs=organs,
                                 methods=methods, scores=scores, seconds=seconds, slices=slices, memory=memory,
                                 memory_case=cases[0].case_id, medsegdiff=_medsegdiff_like(args, model, methods),
                                 figure=figure)
    return write_organ_report(evaluation)
