"""One method at one scale, measured in one process: the real pipeline on a few slices of a clinical-size volume
(network time taken inside the same run, so pipeline efficiency compares like with like), per precision; the
networks' layouts side by side; and the pixel-space diffusion baselines on the same backbone, from measured passes.

Per-volume numbers are extrapolated from the measured slices to the volume's slice count (model build once + time
per slice x slices) and labelled so in the report.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .. import device as devices
from ..device import autocast_dtype, has_native_bf16, resolve_device, uses_channels_last
from ..pipelines.batch_size import choose_batch_size, parameter_count
from ..pipelines.common import build_network
from ..tasks import RunSettings, SegmentRequest, TranslateRequest
from ..volume.engine import RunOptions
from . import inputs as synthetic
from .parts import count_flops, network_parts, slice_flops
from .random_models import medsegdiff_like_unet, pixel_diffusion_unet, random_model
from .timing import PartClock, spread, time_call

VOLUME_SLICES = {"cdm": 155, "sdseg": 100}  # BraTS 240 x 240 x 155; the 512 x 512 x 100 CT
PIPELINE_STEPS = {"cdm": (30,), "sdseg": (1, 10)}  # CDM: its MDN's 30 DDIM steps; SDSeg: single step and 10-step DDIM
BASELINE_STEPS = {"cdm": {"pixel-space diffusion, 30 steps": 30, "pixel-space DDPM, 1000 steps": 1000},
                  "sdseg": {"MedSegDiff-like, 50 steps x 5 samples": 250}}
ENSEMBLE_SAMPLES = 5


@dataclass
class Plan:
    method: str
    scale: str
    device: str = "cpu"
    precisions: tuple = ("fp32",)
    slices: int = 2  # measured slices per pipeline run
    repeats: int = 1
    warm_up: bool = True  # one slice through each precision's first pipeline run, and one network pass, untimed
    baseline_warm_up: bool = True  # the same before a baseline's measured pass
    layout_study: bool = False  # fp32 networks timed contiguous and channels_last
    batch_sizes: tuple = ()  # fp32 networks timed at each of these batch sizes (the evidence for the batch rule)
    baseline_precisions: tuple = ("fp32",)
    slow_baselines: bool = True  # MedSegDiff-like: a paper-scale pixel UNet pass (tens of seconds on a CPU)
    emulated_sampling: bool = True  # False: a precision the device emulates runs only the default sampling
    extra: dict = field(default_factory=dict)


def measure(plan: Plan) -> dict:
    device = resolve_device(plan.device)
    loaded = random_model(plan.method, plan.scale)
    card = loaded.card
    batch = choose_batch_size(card, device, parameter_count(loaded.tensors))
    flops = slice_flops(plan.method, card.architecture) or {}
    result = {"method": plan.method, "scale": plan.scale, "parameters": parameter_count(loaded.tensors),
              "batch_size": batch, "flops_per_pass": flops, "volume_slices": VOLUME_SLICES[plan.method],
              "measured_slices": plan.slices, "repeats": plan.repeats, "warm_up": plan.warm_up, "pipelines": {}}
    volumes = _inputs(plan.method, plan.slices)
    reference = {}
    for precision in plan.precisions:
        # A precision the device only emulates (bf16 on most CPUs) is measured once on one slice: enough to show
        # the slowdown and the difference to fp32 without making the benchmark take hours.
        native = is_native(precision, device)
        run_plan = plan if native else replace(plan, slices=1, repeats=1, warm_up=False)
        run_volumes = volumes if native else {k: _first_slices(v, 1) for k, v in volumes.items()}
        for index, steps in enumerate(PIPELINE_STEPS[plan.method][:None if native or plan.emulated_sampling else 1]):
            options = RunOptions(device=plan.device, batch_size=batch, precision=precision)
            # Kernels chosen for the first run serve the next: only a precision's first run needs warming up.
            measured, outputs = _pipeline(replace(run_plan, warm_up=run_plan.warm_up and index == 0), loaded,
                                          run_volumes, options, steps)
            key = f"{precision}, {steps} step{'s' if steps > 1 else ''}"
            measured.update(_per_volume(run_plan, measured, flops, steps), native=native, slices=run_plan.slices,
                            repeats=run_plan.repeats, warm_up=run_plan.warm_up)
            if precision == plan.precisions[0]:
                reference[steps] = outputs
            else:
                first = {name: array[:run_plan.slices] for name, array in reference[steps].items()}
                measured["difference_to_" + plan.precisions[0]] = _difference(plan.method, outputs, first)
            result["pipelines"][key] = measured
    if plan.layout_study:
        result["layouts"] = _layout_study(plan, loaded, device, batch)
    if plan.batch_sizes:
        result["batch_sizes"] = _batch_study(plan, loaded, device)
    result["baselines"] = _baselines(plan, card.architecture, device, batch)
    return result


def is_native(precision: str, device: torch.device) -> bool:
    """Whether `device` computes in `precision` natively (fp32 everywhere; bf16 on sm80+ GPUs and AMX/AVX512-BF16
    CPUs; fp16 on GPUs)."""
    if precision == "fp32":
        return True
    if device.type == "cuda":
        return precision == "fp16" or has_native_bf16(device)
    return device.type == "cpu" and precision == "bf16" and devices.CPU.has_native_bf16()


def _inputs(method: str, slices: int) -> dict:
    if method == "cdm":
        return {"t1": synthetic.volume(synthetic.brain_like((slices, 240, 240), whole_head=False), (1, 1, 1)),
                "t2": synthetic.volume(synthetic.brain_like((slices, 240, 240), seed=1, whole_head=False), (1, 1, 1))}
    return {"image": synthetic.volume(synthetic.ct_like((slices, 512, 512)), (0.8, 0.8, 2.5))}


def _request(method: str, steps: int):
    settings = RunSettings(steps=steps)
    return TranslateRequest(targets=("t1c", "t2f"), settings=settings) if method == "cdm" else SegmentRequest(settings=settings)


@contextlib.contextmanager
def _instrumented(method: str, image_size: int, clock: PartClock):
    """While inside, every network a pipeline builds gets its parts timed by `clock` (and its build time too)."""
    pipeline = importlib.import_module(f"..pipelines.{'translate' if method == 'cdm' else 'segment'}", __package__)
    original = pipeline.build_network

    def build_and_instrument(*args, **kwargs):
        seconds, network = time_call(original, *args, **kwargs)
        clock.seconds["model build"] += seconds
        for part in network_parts(method, network, image_size):
            clock.wrap(part.owner, part.attribute, part.name)
        return network

    pipeline.build_network = build_and_instrument
    try:
        yield
    finally:
        pipeline.build_network = original
        clock.restore()


def _pipeline(plan: Plan, loaded, volumes: dict, options: RunOptions, steps: int) -> tuple[dict, dict]:
    request = _request(plan.method, steps)
    clock = PartClock()
    runs, outputs = [], {}
    with warnings.catch_warnings(), _instrumented(plan.method, loaded.card.image_size, clock):
        warnings.simplefilter("ignore")  # e.g. the skull-strip check on synthetic heads; speed is what is measured
        if plan.warm_up:
            # One full batch: on a GPU kernels are chosen and loaded per shape, so a one-slice warm-up leaves the
            # batch's kernels to the timed run (the likely reason the H200 run of docs/bench/h200 timed the paper
            # SDSeg's bf16 single step slower than its 10 DDIM steps; not yet rerun there).
            request.run({k: _first_slices(v, options.batch_size) for k, v in volumes.items()}, loaded, options)
        for _ in range(plan.repeats):
            clock.restore()
            clock.reset()
            wall, outputs = time_call(request.run, volumes, loaded, options)
            runs.append({"wall": wall, "parts": dict(clock.seconds), "calls": dict(clock.calls)})
    build = spread(run["parts"].pop("model build") for run in runs)["median"]
    for run in runs:
        run["calls"].pop("model build", None)
    engine = spread((run["wall"] - run_build) / plan.slices
                    for run, run_build in zip(runs, [build] * len(runs)))
    network = spread(sum(run["parts"].values()) / plan.slices for run in runs)
    parts = {name: spread(run["parts"][name] / plan.slices for run in runs) for name in runs[0]["parts"]}
    measured = {"model_build_seconds": build, "seconds_per_slice": engine, "network_seconds_per_slice": network,
                "parts_seconds_per_slice": parts, "precision": options.precision, "batch_size": options.batch_size,
                "pipeline_efficiency": engine["median"] / network["median"] if network["median"] else None}
    return measured, {name: volume.array for name, volume in outputs.items()}


def _first_slices(volume, count: int):
    """The first `count` slices along the array's first axis (k: axial for the synthetic volumes)."""
    return type(volume)(volume.array[:count], volume.ijk_to_ras)


def _per_volume(plan: Plan, measured: dict, flops: dict, steps: int) -> dict:
    slices = VOLUME_SLICES[plan.method]
    per_slice = measured["seconds_per_slice"]["median"]
    network = measured["network_seconds_per_slice"]["median"]
    passes = {name: steps if name in ("MDN step", "denoiser step") else 1 for name in flops}
    network_flops = sum(flops[name] * passes[name] for name in flops)
    parts = measured["parts_seconds_per_slice"]
    achieved = {name: flops[name] * passes[name] / parts[name]["median"] / 1e9
                for name in flops if name in parts and parts[name]["median"] > 0}
    return {"volume_seconds": measured["model_build_seconds"] + per_slice * slices,
            "volume_seconds_extrapolated": plan.slices < slices,
            "network_gflop_per_slice": network_flops / 1e9,
            "network_gflops": network_flops / network / 1e9 if network else None,
            "parts_gflops": achieved}


def _difference(method: str, outputs: dict, reference: dict) -> dict:
    if method == "cdm":
        a = np.concatenate([outputs[name].ravel() for name in ("t1c", "t2f")]).astype(np.float64)
        b = np.concatenate([reference[name].ravel() for name in ("t1c", "t2f")]).astype(np.float64)
        return {"relative_l2": float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))}
    a, b = outputs["labels"] > 0, reference["labels"] > 0
    total = a.sum() + b.sum()
    return {"label_dice": float(2 * (a & b).sum() / total) if total else 1.0}


def _autocast(device: torch.device, precision: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the emulated-bf16 warning: measuring it is the point
        dtype = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _timed_passes(function, make_inputs, plan: Plan, device: torch.device, precision: str, batch: int,
                  channels_last: bool) -> dict:
    """Seconds per slice of `function` on a batch, under `precision` and in the given layout."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    args = tuple(a.contiguous(memory_format=layout) if isinstance(a, torch.Tensor) and a.dim() == 4 else a
                 for a in make_inputs(batch, device))
    with torch.inference_mode(), _autocast(device, precision):
        if plan.warm_up:
            function(*args)
        return spread(time_call(function, *args)[0] / batch for _ in range(plan.repeats))


def _layout_study(plan: Plan, loaded, device: torch.device, batch: int) -> dict:
    """fp32 network parts in both layouts, interleaved, with the largest difference between their outputs."""
    network = build_network(loaded, device)
    parts = [part for part in network_parts(plan.method, network, loaded.card.image_size) if part.convolutional]
    study = {}
    for part in parts:
        torch.manual_seed(0)
        args = part.inputs(batch, device)
        timings = {}
        outputs = {}
        for layout in ("channels_last", "contiguous"):
            format_ = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            network.to(memory_format=format_)
            timings[layout] = _timed_passes(part.run, lambda *_: args, plan, device, "fp32", batch, layout == "channels_last")
            with torch.inference_mode():
                outputs[layout] = part.run(*[a.contiguous(memory_format=format_) if isinstance(a, torch.Tensor)
                                             and a.dim() == 4 else a for a in args]).float()
        study[part.name] = {"seconds_per_slice": timings,
                            "speedup": timings["contiguous"]["median"] / timings["channels_last"]["median"],
                            "max_abs_difference": float((outputs["channels_last"] - outputs["contiguous"]).abs().max())}
    return study


def _batch_study(plan: Plan, loaded, device: torch.device) -> dict:
    network = build_network(loaded, device)
    study = {}
    for part in network_parts(plan.method, network, loaded.card.image_size):
        study[part.name] = {str(batch): _timed_passes(part.run, part.inputs, plan, device, "fp32", batch,
                                                      uses_channels_last(device)) for batch in plan.batch_sizes}
    return study


def _baselines(plan: Plan, architecture: dict, device: torch.device, batch: int) -> dict:
    """Pixel-space diffusion on the same backbone: one pass measured, times steps x slices for a volume."""
    if plan.method == "sdseg" and not plan.slow_baselines:
        return {}
    make = pixel_diffusion_unet if plan.method == "cdm" else medsegdiff_like_unet
    size = architecture["image_size"]
    channels = 4 if plan.method == "cdm" else 2

    def inputs(b, d):
        return torch.randn(b, channels, size, size, device=d), torch.full((b,), 500, device=d)

    with torch.device("meta"):
        flops = count_flops(make(architecture), *inputs(1, torch.device("meta")))
    torch.manual_seed(0)
    network = make(architecture).to(device)
    if uses_channels_last(device):
        network = network.to(memory_format=torch.channels_last)
    results = {}
    for precision in [p for p in plan.baseline_precisions if is_native(p, device)]:
        per_pass = _timed_passes(network, inputs, replace(plan, warm_up=plan.baseline_warm_up), device, precision,
                                 batch, uses_channels_last(device))
        for label, steps in BASELINE_STEPS[plan.method].items():
            results[f"{label} ({precision})"] = {
                "pass_seconds_per_slice": per_pass, "steps_per_slice": steps, "precision": precision,
                "volume_seconds": per_pass["median"] * steps * VOLUME_SLICES[plan.method],
                "volume_seconds_extrapolated": True, "gflop_per_pass": flops / 1e9,
                "gflops": flops / per_pass["median"] / 1e9}
    return results
