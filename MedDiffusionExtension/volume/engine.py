"""The volume engine: runs a 2D slice model over 3D volumes with exact geometry.

reference + secondary inputs -> align secondaries to the reference grid -> reorient to canonical axial -> normalize ->
batches of axial slices resampled to the model's pixel spacing and covered by its S x S windows (volume/slices.py) ->
model -> blended and resampled back to the input slice -> reassemble -> stored voxel order.
Only the inputs, one output array per channel and one batch are ever in memory, never slices x sampling steps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..device import (PRECISIONS, autocast_dtype, is_out_of_memory, release_cached_memory, resolve_device,
                      uses_channels_last)
from ..errors import InputError
from ..progress import CancelToken, ProgressCallback, report
from .normalize import IntensityScaling, scaling_from_card
from .orientation import AxialReorientation
from .resample import align_to_reference
from .slices import ModelGrid, SliceFitter, SliceWindows, resample_slices, resampled_shape, slice_noise
from .volume import Volume, validate_volume


@dataclass
class RunOptions:
    device: str = "auto"
    batch_size: int = 8
    seed: int = 0
    progress: Optional[ProgressCallback] = None
    cancel: Optional[CancelToken] = None
    mixed_precision: bool = True  # False: fp32 whatever `precision` says
    precision: str = "auto"  # device.PRECISIONS: auto (bf16 on sm80+ GPUs, fp16 on older ones) | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the networks (pipelines/common.build_network); the first batch compiles

    def __post_init__(self):
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:  # RunOptions can be built without RunSettings (training, bench)
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class EngineInput:
    volume: Volume
    name: str
    scaling: Optional[IntensityScaling] = None  # None: voxel values pass unchanged
    fill: float = -1.0  # value of padding around a slice, in model units (background)


@dataclass
class SliceBatch:
    """What a slice model sees: normalized slices (B, C, S, S) and enough context to draw per-slice noise."""

    images: torch.Tensor
    slice_indices: list[int]
    seed: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cancel: Optional[CancelToken] = None

    def check_cancelled(self, *_) -> None:
        """Raise Cancelled if the run was cancelled: slice models call it between samples and sampling steps (also
        usable as DDIMSampler.sample's on_step), so that a batch of many samples is not waited out."""
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()

    def randn(self, *shape: int, stream: int = 0, same_for_all_slices: bool = False) -> torch.Tensor:
        """(B, *shape) standard normal noise; slice k always gets the same noise for a seed, whatever the batch.

        same_for_all_slices draws one noise tensor per volume instead (e.g. one CDM representation per volume).
        """
        indices = [-1] * len(self.slice_indices) if same_for_all_slices else self.slice_indices
        return slice_noise(tuple(shape), self.seed, indices, stream, self.device)


SliceModel = Callable[[SliceBatch], torch.Tensor]


@dataclass(frozen=True)
class BatchReduction:
    """A per-batch map of the model's output channels to the `channels` the caller keeps (see run_slicewise)."""

    channels: int
    function: Callable[[np.ndarray], np.ndarray]  # (B, C, H, W) float32 -> (B, channels, H, W)

    def __call__(self, result: np.ndarray) -> np.ndarray:
        reduced = self.function(result)
        if reduced.ndim != 4 or reduced.shape[1] != self.channels:
            raise RuntimeError(f"batch reduction returned shape {reduced.shape}, expected {self.channels} channels")
        return reduced


def prepare_axial(inputs: Sequence[EngineInput]) -> tuple[AxialReorientation, list[np.ndarray]]:
    """Validated, reference-aligned, normalized inputs as canonical axial (k, j, i) arrays (shared with training)."""
    reference = inputs[0].volume
    axial_arrays = []
    reorientation = AxialReorientation.for_volume(reference)
    for item in inputs:
        validate_volume(item.volume, item.name)
        volume = align_to_reference(item.volume, reference, item.name)
        values = volume.array if item.scaling is None else item.scaling.forward(volume.array)
        axial_arrays.append(reorientation.apply(np.asarray(values, dtype=np.float32)))
    return reorientation, axial_arrays


def axial_pixel_spacing(reorientation: AxialReorientation) -> tuple[float, float]:
    """(row, column) spacing in mm of the canonical axial slices: rows run along j, columns along i."""
    matrix = reorientation.axial_ijk_to_ras()[:3, :3]
    return float(np.linalg.norm(matrix[:, 1])), float(np.linalg.norm(matrix[:, 0]))


def fit_scaling(normalization, volume: Volume, grid: ModelGrid) -> Optional[IntensityScaling]:
    """The card's normalization fitted to `volume` as the model will see it.

    Per-volume statistics (MRI percentiles) are taken after in-plane resampling to the model's spacing: the edge
    voxels of a finer matrix mix less background than those of a coarser one, which moves a low percentile by a
    quarter of the range (measured: 185 vs 67 on one phantom at 1.875 and 1.2 mm) and with it the whole synthesis.
    """
    kind = getattr(normalization, "kind", None) or (normalization or {}).get("kind")
    if kind != "mri_percentile" or grid.spacing_mm is None:
        return scaling_from_card(normalization, volume.array)
    reorientation = AxialReorientation.for_volume(volume)
    axial = reorientation.apply(np.asarray(volume.array, dtype=np.float32))
    shape = resampled_shape(axial.shape[1], axial.shape[2], *axial_pixel_spacing(reorientation), grid.spacing_mm)
    chunks = [resample_slices(torch.from_numpy(np.ascontiguousarray(axial[k:k + 16]))[:, None], shape)[:, 0].numpy()
              for k in range(0, axial.shape[0], 16)]
    return scaling_from_card(normalization, np.concatenate(chunks))


def run_slicewise(
    inputs: Sequence[EngineInput], slice_model: SliceModel, out_channels: int, grid: ModelGrid, options: RunOptions,
    background: Sequence[float] | float = 0.0, reduce: Optional[BatchReduction] = None,
) -> np.ndarray:
    """Run `slice_model` over every axial slice; returns (out_channels, k, j, i) float32 in the reference's voxel order.

    Inputs after the first are resampled onto the first's grid when their grids differ (with a warning).
    `background`: the output (per channel, model units) where a slice holds nothing but background, so no model
    window covers it.
    `reduce`: turns each batch's (B, out_channels, H, W) result on the input slices into fewer channels before it is
    kept (e.g. per-class probabilities -> class index), so that only the reduced volume is ever held: 14 class
    probabilities of a 512 x 512 x 300 CT would be 4.4 GB. The returned array then has reduce.channels channels.
    """
    if not inputs:
        raise ValueError("run_slicewise needs at least one input")
    device = resolve_device(options.device)
    dtype = autocast_dtype(device, options.precision if options.mixed_precision else "fp32")
    reorientation, axial_arrays = prepare_axial(inputs)
    n_slices, height, width = axial_arrays[0].shape
    placement = _placement(grid, height, width, axial_pixel_spacing(reorientation))
    fills = [item.fill for item in inputs]
    background = [float(background)] * out_channels if isinstance(background, (int, float)) else list(background)
    kept_channels = out_channels if reduce is None else reduce.channels
    output = np.empty((kept_channels, n_slices, height, width), dtype=np.float32)

    batch_size, start = options.batch_size, 0
    report(options.progress, 0.0, f"slice 0/{n_slices}")
    with torch.inference_mode():
        while start < n_slices:
            if options.cancel is not None:
                options.cancel.raise_if_cancelled()
            stop = min(start + batch_size, n_slices)
            run = _BatchRun(axial_arrays, range(start, stop), placement, fills, slice_model, device, options, dtype,
                            out_channels, background, batch_size)
            try:
                result = run()
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                release_cached_memory(device)
                if batch_size == 1:
                    raise InputError(
                        f"out of memory on {device} even for one slice; free memory or use another --device") from None
                batch_size //= 2  # halve and retry the same slices
                report(options.progress, start / n_slices, f"out of memory: batch size halved to {batch_size}")
                continue
            if dtype == torch.float16 and not np.isfinite(result).all():
                # fp16 tops out at 65504: an activation past it becomes inf; finite inputs must give finite outputs.
                dtype = None
                report(options.progress, start / n_slices, "fp16 overflowed: continuing in fp32")
                continue
            if result.shape[1] != out_channels:
                raise RuntimeError(f"slice model returned {result.shape[1]} channels, expected {out_channels}")
            if reduce is not None:
                result = reduce(result)
            output[:, start:stop] = result.transpose(1, 0, 2, 3)
            start = stop
            report(options.progress, start / n_slices, f"slice {start}/{n_slices}")
    if options.cancel is not None:
        options.cancel.raise_if_cancelled()
    return np.stack([reorientation.invert(channel) for channel in output]).astype(np.float32, copy=False)


def _placement(grid: ModelGrid, height: int, width: int, spacing: tuple[float, float]):
    """SliceWindows for a model with a training spacing; the legacy SliceFitter for one without (tests)."""
    if grid.size is not None and grid.spacing_mm is not None:
        return SliceWindows(height, width, spacing[0], spacing[1], grid)
    return SliceFitter(height, width, grid.size)


@dataclass
class _BatchRun:
    """One batch of slices through the model (a retry after running out of memory builds a new one)."""

    axial_arrays: list
    indices: range
    placement: object
    fills: list
    slice_model: SliceModel
    device: torch.device
    options: RunOptions
    dtype: object
    out_channels: int
    background: list
    batch_size: int

    def __call__(self) -> np.ndarray:
        stacked = torch.from_numpy(np.stack([array[self.indices.start:self.indices.stop] for array in self.axial_arrays],
                                            axis=1))
        if isinstance(self.placement, SliceWindows):
            result = self.placement.run(stacked, self.fills, self._model, self.out_channels, self.background,
                                        self.batch_size)
        else:
            fitted = self.placement.to_model_per_channel(stacked, self.fills)
            result = self.placement.from_model(self._model(fitted, list(range(len(self.indices)))).float().cpu())
        return result.numpy()

    def _model(self, items: torch.Tensor, slice_numbers: list[int]) -> torch.Tensor:
        # The networks are channels_last on such devices (build_network): inputs in the same layout keep every
        # convolution on the fast path; the result goes back to the plain layout the blending and numpy expect.
        layout = torch.channels_last if uses_channels_last(self.device) else torch.preserve_format
        batch = SliceBatch(items.to(self.device, memory_format=layout), [self.indices.start + n for n in slice_numbers],
                           self.options.seed, self.device, self.options.cancel)
        with torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext():
            return self.slice_model(batch).contiguous()
