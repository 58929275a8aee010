"""Slice datasets for training, prepared exactly as inference prepares them, and cached on disk.

Each volume set goes once through the engine's own preparation (align to the reference grid, canonical axial
orientation, normalization, fit to the model size) and is stored as a .npy file that later epochs memory-map:
no NIfTI is decoded twice, and training never sees slices prepared differently from what inference feeds the model.

Several processes may build one cache at once (torchrun ranks, two jobs sharing a folder): every file is written
under a name no other process uses and renamed into place, so a reader sees a whole file or none, and two writers
of the same case only duplicate work. Inside `preparing_share(rank, world_size)` a dataset prepares only its share
of the missing files and loads nothing, so ranks split the work (`python -m training prepare`, and the trainer
before it builds its datasets).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from MedDiffusionExtension.volume import read_volume
from MedDiffusionExtension.volume.engine import EngineInput, axial_pixel_spacing, fit_scaling, prepare_axial
from MedDiffusionExtension.volume.slices import ModelGrid, SliceFitter, SliceWindows

from .augment import AugmentedItems
from .layouts import Case

CACHE_VERSION = 2  # 2: slices resampled to the model spacing (ModelGrid), labels by one-hot resampling


def _fingerprint(case: Case, keys: Sequence[str], settings: dict) -> str:
    stats = [(k, str(case.paths[k]), case.paths[k].stat().st_size, case.paths[k].stat().st_mtime_ns) for k in keys]
    text = json.dumps({"files": stats, "settings": settings, "version": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class CacheShare:
    """Which share of the cases this process prepares, and what it found (case ids)."""

    rank: int = 0
    world_size: int = 1
    prepared: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)


_SHARE: contextvars.ContextVar[CacheShare | None] = contextvars.ContextVar("slice_cache_share", default=None)


@contextmanager
def preparing_share(rank: int = 0, world_size: int = 1) -> Iterator[CacheShare]:
    """Datasets built inside prepare the missing cache files of cases[rank::world_size] only, and load nothing."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    share = CacheShare(rank, world_size)
    token = _SHARE.set(share)
    try:
        yield share
    finally:
        _SHARE.reset(token)


def _save_atomically(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp.npy")
    try:
        np.save(tmp, array)
        try:
            os.replace(tmp, path)
        except PermissionError:
            # Windows refuses to replace a file another process has open: that process wrote the same content.
            if not path.is_file():
                raise
    finally:
        tmp.unlink(missing_ok=True)


class CachedSlices(Dataset):
    """All axial slices of the cases with the given channels, (C, S, S) float32 each, from a disk cache.

    channels: modality keys of Case.paths, the first being the reference grid. scalings: one per channel (a
    normalization dict as in model cards, or None for label maps). grid: the model's field of view; slices are
    resampled to its spacing as the engine does at inference and cut to one S x S window centred on their content
    (the engine would tile a larger slice). Label maps are resampled per label (one-hot, anti-aliased) and take the
    most likely label, never interpolated as numbers. keep: optional predicate on a prepared slice.
    """

    def __init__(self, cases: Sequence[Case], channels: Sequence[str], normalizations: Sequence[dict | None],
                 grid: ModelGrid, cache_dir: Path, fills: Sequence[float] | None = None,
                 keep: Callable[[np.ndarray], bool] | None = None):
        self.channels = list(channels)
        self.fills = list(fills) if fills is not None else [-1.0 if n else 0.0 for n in normalizations]
        settings = {"channels": self.channels, "normalizations": list(normalizations), "image_size": grid.size,
                    "spacing_mm": grid.spacing_mm, "fills": self.fills}
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.arrays: list[np.ndarray] = []
        self.index: list[tuple[int, int]] = []
        self.case_ids = [c.case_id for c in cases]
        entries = [(case, cache_dir / f"{case.case_id}-{_fingerprint(case, channels, settings)}.npy")
                   for case in cases if all(c in case.paths for c in channels)]
        share = _SHARE.get()
        if share is not None:
            for case, path in entries[share.rank::share.world_size]:
                if path.is_file():
                    share.cached.append(case.case_id)
                else:
                    _save_atomically(self._prepare(case, normalizations, grid), path)
                    share.prepared.append(case.case_id)
            return
        # From the end of the list: a rank still working through its share goes from the front, so a rank that
        # finished early takes over the remaining cases instead of duplicating the one being prepared.
        for case, path in reversed(entries):
            if not path.is_file():
                _save_atomically(self._prepare(case, normalizations, grid), path)
        for case, path in entries:
            array = np.load(path, mmap_mode="r")
            number = len(self.arrays)
            self.arrays.append(array)
            self.index.extend((number, k) for k in range(array.shape[0]) if keep is None or keep(array[k]))

    def _prepare(self, case: Case, normalizations, grid: ModelGrid) -> np.ndarray:
        inputs = []
        for key, normalization in zip(self.channels, normalizations):
            volume = read_volume(case.paths[key])
            scaling = fit_scaling(normalization, volume, grid) if normalization else None
            if scaling is None:  # label map: nearest neighbour if it must be resampled, values unchanged
                volume = volume.with_array(volume.array.astype(np.float32))
            inputs.append(EngineInput(volume, f"{case.case_id}:{key}", scaling, 0.0))
        reorientation, axial = prepare_axial(_label_safe(inputs))
        stacked = torch.from_numpy(np.stack(axial, axis=1))
        labels = [c for c, n in enumerate(normalizations) if n is None]
        if grid.size is None or grid.spacing_mm is None:
            return self._fit_by_matrix(stacked, labels, grid.size)
        row_mm, column_mm = axial_pixel_spacing(reorientation)
        windows = SliceWindows(stacked.shape[2], stacked.shape[3], row_mm, column_mm, grid)
        canvases = []
        for first in range(0, stacked.shape[0], 8):  # a few slices at a time: one-hot label maps are large
            chunk = stacked[first:first + 8]
            canvas = windows.canvas(chunk, self.fills)
            for channel in labels:
                canvas[:, channel] = _resampled_labels(chunk[:, channel], windows)
            canvases.append(canvas)
        canvas = torch.cat(canvases)
        # One window for the whole case, centred on the content of all its slices: neighbouring slices stay aligned
        # (the augmentation averages them to simulate thick slices).
        top, left = windows.centred_window(canvas.amax(0), self.fills)
        prepared = canvas[:, :, top:top + grid.size, left:left + grid.size].numpy().astype(np.float32)
        return prepared

    def _fit_by_matrix(self, stacked: torch.Tensor, labels: list[int], size: int | None) -> np.ndarray:
        """The legacy preparation (cards without a training spacing; tests)."""
        fitter = SliceFitter(stacked.shape[2], stacked.shape[3], size)
        fitted = fitter.to_model_per_channel(stacked, self.fills)
        for channel in labels:  # label values must not be averaged by area resizing
            fitted[:, channel:channel + 1] = fitter.to_model(stacked[:, channel:channel + 1], 0.0, mode="nearest-exact")
        return fitted.numpy().astype(np.float32)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> torch.Tensor:
        number, k = self.index[item]
        return torch.from_numpy(np.array(self.arrays[number][k]))

    def slab(self, item: int, radius: int) -> torch.Tensor:
        """(2 radius + 1, C, S, S): slice `item` in the middle between its `radius` neighbours on each side in the
        same case (kept or not), the case's first / last slice repeated beyond its ends."""
        number, k = self.index[item]
        array = self.arrays[number]
        if radius <= k < array.shape[0] - radius:
            return torch.from_numpy(np.array(array[k - radius:k + radius + 1]))
        return torch.from_numpy(np.array(array[np.clip(np.arange(k - radius, k + radius + 1), 0, array.shape[0] - 1)]))


def _resampled_labels(labels: torch.Tensor, windows: SliceWindows) -> torch.Tensor:
    """(B, H, W) label values -> (B, canvas) at the model spacing: each label resampled as a fraction, the largest wins."""
    values = [v for v in torch.unique(labels).tolist() if v != 0]
    canvas_shape = windows.canvas_shape
    if not values:
        return torch.zeros((labels.shape[0], *canvas_shape))
    one_hot = torch.stack([labels == v for v in [0.0] + values], dim=1).float()
    fractions = windows.canvas(one_hot, [1.0] + [0.0] * len(values))
    return torch.tensor([0.0] + values)[fractions.argmax(1)]


def _label_safe(inputs: list[EngineInput]) -> list[EngineInput]:
    """Label maps on another grid than the reference are resampled with nearest neighbour, not trilinear."""
    from MedDiffusionExtension.volume.resample import resample_to_grid

    reference = inputs[0].volume
    safe = [inputs[0]]
    for item in inputs[1:]:
        if item.scaling is None and not item.volume.same_grid(reference):
            item = EngineInput(resample_to_grid(item.volume, reference, order=0, fill=0.0), item.name, None, item.fill)
        safe.append(item)
    return safe


def _has_foreground(fraction: float) -> Callable[[np.ndarray], bool]:
    return lambda slice_: float((slice_[0] > -0.99).mean()) >= fraction


MRI = {"kind": "mri_percentile", "lower": 0.5, "upper": 99.5}


class TranslationSlices(Dataset):
    """(sources, targets) pairs: sources = [t1n, t2w], targets = [t1c, t2f], each (2, S, S) in [-1, 1].

    Slices whose T1 shows less than `min_foreground` brain are skipped (near-empty slices teach nothing and would
    dominate the loss of a skull-stripped dataset). augment: an acquisition augmenter (augment.MRIAugment) applied to
    every item with the neighbouring slices it needs, or None for the cached slices exactly (validation, evaluation).
    """

    def __init__(self, cases: Sequence[Case], grid: ModelGrid, cache_dir: Path, min_foreground: float = 0.05,
                 sources=("t1n", "t2w"), targets=("t1c", "t2f"), augment=None):
        channels = list(sources) + list(targets)
        self.n_sources = len(sources)
        self.slices = CachedSlices(cases, channels, [MRI] * len(channels), grid, cache_dir,
                                   keep=_has_foreground(min_foreground))
        self.augmented = None if augment is None else AugmentedItems(
            augment, len(self.slices), [c.paths[channels[0]] for c in cases if all(k in c.paths for k in channels)])

    def set_epoch(self, epoch: int) -> None:
        """Augmented items draw from `epoch` (else from how often each was fetched before): call before each epoch."""
        if self.augmented is not None:
            self.augmented.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        stacked = self.slices[item] if self.augmented is None else self.augmented(self.slices, item)
        return {"sources": stacked[: self.n_sources], "targets": stacked[self.n_sources:]}


class SegmentationSlices(Dataset):
    """(image, mask) pairs: CT windowed to [-1, 1] (1, S, S) and the binary union of the chosen labels (1, S, S).

    labels=None takes every non-zero label (SDSeg's BTCV setting: all 13 organs merged into one target).
    classes: label values of the K organ classes of a multi-organ model; items then also carry "classes", the
    (1, S, S) long map of class indices (label classes[c - 1] -> c, anything else 0), and the mask is their union.
    augment: an acquisition augmenter (augment.CTAugment) of the image and the full label map; the mask is then taken
    from the augmented label map. None gives the cached slices exactly (validation, evaluation).
    """

    def __init__(self, cases: Sequence[Case], grid: ModelGrid, cache_dir: Path, window=(-175.0, 250.0),
                 labels: Sequence[int] | None = None, min_body: float = 0.05, augment=None,
                 classes: Sequence[int] | None = None):
        normalization = {"kind": "ct_window", "window": list(window)}
        if classes is not None:
            labels = classes
        self.labels = None if labels is None else torch.tensor(list(labels))
        self.class_of_label = None
        if classes is not None:
            self.class_of_label = torch.zeros(256, dtype=torch.long)
            self.class_of_label[torch.tensor(list(classes))] = torch.arange(1, len(classes) + 1)
        self.slices = CachedSlices(cases, ["image", "label"], [normalization, None], grid, cache_dir,
                                   fills=[-1.0, 0.0], keep=_has_foreground(min_body))
        self.augmented = None if augment is None else AugmentedItems(
            augment, len(self.slices), [c.paths["image"] for c in cases if "image" in c.paths and "label" in c.paths])

    def set_epoch(self, epoch: int) -> None:
        """Augmented items draw from `epoch` (else from how often each was fetched before): call before each epoch."""
        if self.augmented is not None:
            self.augmented.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        stacked = self.slices[item] if self.augmented is None else self.augmented(self.slices, item)
        label = stacked[1:2]
        mask = label > 0 if self.labels is None else torch.isin(label.long(), self.labels)
        item = {"image": stacked[:1], "mask": mask.float()}
        if self.class_of_label is not None:
            item["classes"] = self.class_of_label[label.long().clamp(0, 255)]
        return item
