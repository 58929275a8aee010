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
from MedDiffusionExtension.volume.engine import EngineInput, prepare_axial
from MedDiffusionExtension.volume.normalize import scaling_from_card
from MedDiffusionExtension.volume.slices import SliceFitter

from .layouts import Case

CACHE_VERSION = 1


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
    normalization dict as in model cards, or None for label maps, which are resampled with nearest neighbour and
    resized by area then thresholded). keep: optional predicate on a prepared slice deciding if it is used.
    """

    def __init__(self, cases: Sequence[Case], channels: Sequence[str], normalizations: Sequence[dict | None],
                 image_size: int | None, cache_dir: Path, fills: Sequence[float] | None = None,
                 keep: Callable[[np.ndarray], bool] | None = None):
        self.channels = list(channels)
        self.fills = list(fills) if fills is not None else [-1.0 if n else 0.0 for n in normalizations]
        settings = {"channels": self.channels, "normalizations": list(normalizations), "image_size": image_size,
                    "fills": self.fills}
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
                    _save_atomically(self._prepare(case, normalizations, image_size), path)
                    share.prepared.append(case.case_id)
            return
        # From the end of the list: a rank still working through its share goes from the front, so a rank that
        # finished early takes over the remaining cases instead of duplicating the one being prepared.
        for case, path in reversed(entries):
            if not path.is_file():
                _save_atomically(self._prepare(case, normalizations, image_size), path)
        for case, path in entries:
            array = np.load(path, mmap_mode="r")
            number = len(self.arrays)
            self.arrays.append(array)
            self.index.extend((number, k) for k in range(array.shape[0]) if keep is None or keep(array[k]))

    def _prepare(self, case: Case, normalizations, image_size) -> np.ndarray:
        inputs = []
        for key, normalization in zip(self.channels, normalizations):
            volume = read_volume(case.paths[key])
            scaling = scaling_from_card(normalization, volume.array) if normalization else None
            if scaling is None:  # label map: nearest neighbour if it must be resampled, values unchanged
                volume = volume.with_array(volume.array.astype(np.float32))
            inputs.append(EngineInput(volume, f"{case.case_id}:{key}", scaling, 0.0))
        _, axial = prepare_axial(_label_safe(inputs))
        stacked = torch.from_numpy(np.stack(axial, axis=1))
        fitter = SliceFitter(stacked.shape[2], stacked.shape[3], image_size)
        fitted = fitter.to_model_per_channel(stacked, self.fills)
        for channel, normalization in enumerate(normalizations):
            if normalization is None:  # label values must not be averaged by area resizing
                fitted[:, channel:channel + 1] = fitter.to_model(stacked[:, channel:channel + 1], 0.0, mode="nearest-exact")
        return fitted.numpy().astype(np.float32)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> torch.Tensor:
        number, k = self.index[item]
        return torch.from_numpy(np.array(self.arrays[number][k]))


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
    dominate the loss of a skull-stripped dataset).
    """

    def __init__(self, cases: Sequence[Case], image_size: int | None, cache_dir: Path, min_foreground: float = 0.05,
                 sources=("t1n", "t2w"), targets=("t1c", "t2f")):
        channels = list(sources) + list(targets)
        self.n_sources = len(sources)
        self.slices = CachedSlices(cases, channels, [MRI] * len(channels), image_size, cache_dir,
                                   keep=_has_foreground(min_foreground))

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        stacked = self.slices[item]
        return {"sources": stacked[: self.n_sources], "targets": stacked[self.n_sources:]}


class SegmentationSlices(Dataset):
    """(image, mask) pairs: CT windowed to [-1, 1] (1, S, S) and the binary union of the chosen labels (1, S, S).

    labels=None takes every non-zero label (SDSeg's BTCV setting: all 13 organs merged into one target).
    """

    def __init__(self, cases: Sequence[Case], image_size: int | None, cache_dir: Path, window=(-175.0, 250.0),
                 labels: Sequence[int] | None = None, min_body: float = 0.05):
        normalization = {"kind": "ct_window", "window": list(window)}
        self.labels = None if labels is None else torch.tensor(list(labels))
        self.slices = CachedSlices(cases, ["image", "label"], [normalization, None], image_size, cache_dir,
                                   fills=[-1.0, 0.0], keep=_has_foreground(min_body))

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        stacked = self.slices[item]
        label = stacked[1:2]
        mask = label > 0 if self.labels is None else torch.isin(label.long(), self.labels)
        return {"image": stacked[:1], "mask": mask.float()}
