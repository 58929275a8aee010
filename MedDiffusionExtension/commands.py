"""What each `meddiffusion` subcommand does; argument parsing and error reporting live in cli.py, the rules of
each task (model choice, validation, output names, the read -> run -> write sequence) in tasks/."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import tasks
from .cohort import Shard, read_cohort, run_cohort
from .errors import InputError
from .progress import CancelToken
from .volume import read_volume, validate_volume
from .weights import ModelRegistry


class TerminalProgress:
    """A tqdm bar on stderr, driven by the engine's (fraction, message) callback; silent when disabled."""

    def __init__(self, label: str, enabled: bool = True):
        self.enabled, self.label, self.bar = enabled, label, None

    def __call__(self, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=1000, desc=self.label, unit="‰", leave=False, file=sys.stderr,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
        self.bar.n = round(fraction * 1000)
        self.bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _settings(args: argparse.Namespace) -> tasks.RunSettings:
    return tasks.RunSettings(steps=args.steps, samples=args.samples, seed=args.seed, device=args.device,
                             batch_size=args.batch_size, precision=args.precision, compile=args.compile)


def _request(args: argparse.Namespace) -> tasks.Request:
    common = dict(model=args.model or "", method=args.method or "", settings=_settings(args))
    if args.command == "translate":
        targets = () if args.targets is None else tasks.parse_targets(args.targets)
        if args.targets is not None and not targets:
            raise InputError("--targets is empty; give one or more of the model's outputs, e.g. t1c,t2f")
        return tasks.TranslateRequest(targets=targets, per_volume_representation=args.per_volume_representation,
                                      register=args.register, save_mask=args.save_mask,
                                      refine_strength=args.refine_strength, refine_every_slice=args.refine_every_slice,
                                      **common)
    chosen = getattr(args, "organs", None)
    organs = () if chosen is None else tasks.parse_organs(chosen)
    if chosen is not None and not organs:
        raise InputError("--organs is empty; give one or more of the model's organs, e.g. liver,spleen")
    return tasks.SegmentRequest(threshold=args.threshold, organs=organs, body_only=not args.outside_body,
                                keep_far_islands=args.keep_far_islands, **common)


REGISTRATION_FILE = "registration.json"


@contextmanager
def _collecting_registrations():
    """The RegistrationWarnings raised inside, collected while still shown like every other warning."""
    from .volume.register import RegistrationWarning

    found, show = [], warnings.showwarning

    def collect(message, *args, **kwargs):
        if isinstance(message, RegistrationWarning):
            found.append(message.transform)
        show(message, *args, **kwargs)

    warnings.showwarning = collect
    try:
        yield found
    finally:
        warnings.showwarning = show


def _run_case(request, loaded, inputs: dict, outputs: dict, args, cancel: CancelToken, label: str) -> list[Path]:
    """One case; with --register also writes the transforms found (registration.json) next to its outputs."""
    progress = TerminalProgress(label, enabled=not args.quiet)
    try:
        with _collecting_registrations() as transforms:
            written = tasks.execute(request, loaded, inputs, outputs, request.settings.run_options(progress, cancel, loaded),
                                    overwrite=args.overwrite, series=args.series)
    finally:
        progress.close()
    if transforms:
        record = Path(written[0]).parent / REGISTRATION_FILE
        summary = {"inputs": {n: str(p) for n, p in inputs.items()}, "registrations": [t.as_dict() for t in transforms]}
        record.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        written.append(record)
    return written


def run_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    """translate and segment: one case from the flags, or every case of a cohort CSV.

    Everything that can be refused without the model (the cohort file, input headers, output locations) is refused
    before its weights are read. A cohort exits EXIT_OK when every case is done, EXIT_SOME_FAILED when some failed.
    """
    request = _request(args)
    card = request.card()
    names = request.input_names(card)
    if args.command == "translate" and args.t2 is not None and "t2" not in names:
        raise InputError(f"model {card.name!r} takes {tasks.labels(names)} alone, no T2; drop --t2")
    destination = args.out_dir if args.command == "translate" else args.out
    if args.cohort:
        if destination is None:
            raise InputError("with --cohort, --out names the folder for <case_id>.nii.gz label files")
        rows = read_cohort(args.cohort, names)
        loaded = tasks.load(request, card=card)

        def outputs_of(row):
            return request.output_files(loaded.card, request.cohort_destination(destination, row["case_id"]))

        def run_row(row):
            _run_case(request, loaded, {n: Path(row[n]) for n in names}, outputs_of(row), args, cancel, row["case_id"])

        failed = run_cohort(rows, lambda row: list(outputs_of(row).values()), run_row, Shard.from_environment(), log)
        return tasks.EXIT_SOME_FAILED if failed else tasks.EXIT_OK
    inputs = {n: getattr(args, n, None) for n in names}
    missing = [f"--{n}" for n, path in inputs.items() if path is None] + ([] if destination else ["--out"])
    if missing:
        raise InputError(f"{args.command} with model {card.name!r} needs {' and '.join(missing)} (or --cohort FILE.csv)")
    outputs = request.output_files(card, destination)
    tasks.check_files(inputs, outputs, args.overwrite, args.series)
    loaded = tasks.load(request, card=card)
    for path in _run_case(request, loaded, inputs, outputs, args, cancel, Path(inputs[names[0]]).name):
        print(path)
    return tasks.EXIT_OK


def models_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    registry = ModelRegistry()
    if args.models_command == "list":
        cards = registry.cards()
        if not cards:
            print("no models installed (bundled: Resources/Models; user: ~/.meddiffusion/models or $MEDDIFFUSION_MODELS_DIR)")
        for card in cards.values():
            print(card.summary())
        return tasks.EXIT_OK
    card = registry.find(args.name)
    print(json.dumps(dict(card.data, directory=str(card.directory)), indent=2))
    return tasks.EXIT_OK


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
    return tasks.EXIT_OK


def demo_command(args: argparse.Namespace, cancel: CancelToken) -> int:
    from .demo import run_demo

    run_demo(args.out_dir, args.device, cancel, log)
    return tasks.EXIT_OK
