"""What each `meddiffusion` subcommand does (argument parsing and error reporting live in cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .cohort import Shard, read_cohort, run_cohort
from .errors import InputError
from .progress import CancelToken
from .volume import read_volume, validate_volume, write_volumes
from .volume.engine import RunOptions
from .weights import ModelRegistry, load_model


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _run_options(args, cancel: CancelToken, label: str) -> tuple[RunOptions, "object"]:
    from .cli import _Progress

    progress = _Progress(label, enabled=not getattr(args, "quiet", False))
    return RunOptions(device=args.device, batch_size=args.batch_size, seed=args.seed, progress=progress, cancel=cancel), progress


def _default_model(method: str, name: str | None, task: str):
    registry = ModelRegistry()
    return load_model(name if name else registry.default_for(method).directory, task=task, registry=registry)


# --- translate -----------------------------------------------------------------------------------------------------

def _translation_outputs(out_dir: Path, targets: list[str], samples: int) -> list[Path]:
    names = targets + ([f"{t}_std" for t in targets] if samples > 1 else [])
    return [out_dir / f"{name}.nii.gz" for name in names]


def _translate_case(args, cancel, t1_path: Path, t2_path: Path, out_dir: Path, loaded, targets: list[str]) -> list[Path]:
    from .pipelines import translate

    outputs = _translation_outputs(out_dir, targets, args.samples)
    _check_not_overwriting([t1_path, t2_path], outputs)
    t1, t2 = read_volume(t1_path), read_volume(t2_path)
    options, progress = _run_options(args, cancel, out_dir.name or "translate")
    try:
        volumes = translate(t1, t2, loaded, targets, args.steps, args.samples, options, args.per_volume_representation)
    finally:
        progress.close()
    return write_volumes({out_dir / f"{name}.nii.gz": (volume, np.float32) for name, volume in volumes.items()})


def translate_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        raise InputError("--targets is empty; give one or more of the model's outputs, e.g. t1c,t2f")
    loaded = _default_model(args.method, args.model, "translation")
    if args.cohort:
        rows = read_cohort(args.cohort, ("t1", "t2"))
        failed = run_cohort(
            rows, lambda row: _translation_outputs(args.out_dir / row["case_id"], targets, args.samples),
            lambda row: _translate_case(args, cancel, Path(row["t1"]), Path(row["t2"]), args.out_dir / row["case_id"], loaded, targets),
            Shard.from_environment(), _log)
        return 1 if failed else 0
    if args.t1 is None or args.t2 is None:
        raise InputError("translate needs --t1 and --t2 (or --cohort FILE.csv)")
    for path in _translate_case(args, cancel, args.t1, args.t2, args.out_dir, loaded, targets):
        print(path)
    return 0


# --- segment -------------------------------------------------------------------------------------------------------

def _segmentation_outputs(out: Path, samples: int) -> list[Path]:
    return [out] + ([_probability_path(out)] if samples > 1 else [])


def _probability_path(out: Path) -> Path:
    name = out.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return out.with_name(name[: -len(suffix)] + "_probability" + suffix)
    return out.with_name(name + "_probability")


def _segment_case(args, cancel, image_path: Path, out: Path, loaded) -> list[Path]:
    from .pipelines import segment

    outputs = _segmentation_outputs(out, args.samples)
    _check_not_overwriting([image_path], outputs)
    image = read_volume(image_path)
    options, progress = _run_options(args, cancel, image_path.name)
    try:
        result = segment(image, loaded, args.steps, args.samples, args.threshold, options)
    finally:
        progress.close()
    files = {out: (result.labels, np.uint8)}
    if result.probability is not None:
        files[_probability_path(out)] = (result.probability, np.float32)
    return write_volumes(files)


def segment_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    loaded = _default_model("sdseg", args.model, "segmentation")
    if args.cohort:
        if args.out is None:
            raise InputError("with --cohort, --out names the folder for <case_id>.nii.gz label files")
        rows = read_cohort(args.cohort, ("image",))
        failed = run_cohort(
            rows, lambda row: _segmentation_outputs(args.out / f"{row['case_id']}.nii.gz", args.samples),
            lambda row: _segment_case(args, cancel, Path(row["image"]), args.out / f"{row['case_id']}.nii.gz", loaded),
            Shard.from_environment(), _log)
        return 1 if failed else 0
    if args.image is None or args.out is None:
        raise InputError("segment needs --image and --out (or --cohort FILE.csv --out DIR)")
    for path in _segment_case(args, cancel, args.image, args.out, loaded):
        print(path)
    return 0


def _check_not_overwriting(inputs: list[Path], outputs: list[Path]) -> None:
    resolved = {Path(p).expanduser().resolve() for p in inputs}
    for out in outputs:
        if Path(out).expanduser().resolve() in resolved:
            raise InputError(f"output {out} is one of the inputs; choose another output path (inputs are never overwritten)")


# --- models, info --------------------------------------------------------------------------------------------------

def models_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    registry = ModelRegistry()
    if args.models_command == "list":
        cards = registry.cards()
        if not cards:
            print("no models installed (bundled: Resources/Models; user: ~/.meddiffusion/models or $MEDDIFFUSION_MODELS_DIR)")
        for card in cards.values():
            print(card.summary())
        return 0
    card = registry.find(args.name)
    print(json.dumps(dict(card.data, directory=str(card.directory)), indent=2))
    return 0


def info_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    from nibabel.orientations import aff2axcodes

    volume = read_volume(args.path)
    validate_volume(volume, str(args.path))
    array = volume.array
    print(f"file:        {args.path}")
    print(f"shape (ijk): {volume.shape[::-1]}  dtype {array.dtype}")
    print(f"spacing mm:  {np.round(volume.spacing, 4).tolist()}")
    print(f"orientation: {''.join(aff2axcodes(volume.ijk_to_ras))} (voxel axes i, j, k point to these RAS directions)")
    print(f"range:       {float(array.min()):g} .. {float(array.max()):g}; mean {float(array.mean()):g}")
    return 0


# --- demo, bench ---------------------------------------------------------------------------------------------------

def demo_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    from .demo import run_demo

    run_demo(args.out_dir, args.device, cancel, _log)
    return 0


def bench_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    from .bench import run_benchmarks

    run_benchmarks(args.out, args.device, _log)
    return 0
