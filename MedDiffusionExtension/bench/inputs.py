"""Synthetic volumes of clinical sizes for speed measurements (the phantom generators make realistic ones; for speed
only the size and a non-empty content matter). Built slice by slice so that the benchmark's own input does not
inflate the peak memory it measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..volume import Volume, write_volume


def brain_like(shape: tuple[int, int, int], seed: int = 0, whole_head: bool = True) -> np.ndarray:
    """A smooth positive head-like volume with zero background. whole_head=False: a slab from the middle of the
    head, so that every slice holds brain (the engine skips slices of pure background)."""
    j, i = np.meshgrid(np.linspace(-1, 1, shape[1], dtype=np.float32), np.linspace(-1, 1, shape[2], dtype=np.float32),
                       indexing="ij")
    rng = np.random.default_rng(seed)
    out = np.empty(shape, np.float32)
    extent = 1.0 if whole_head else 0.5
    for index, k in enumerate(np.linspace(-extent, extent, shape[0], dtype=np.float32)):
        inside = (k / 0.8) ** 2 + (j / 0.9) ** 2 + (i / 0.75) ** 2 < 1
        out[index] = np.where(inside, 300 + 100 * np.cos(6 * i) * np.sin(5 * j) + rng.normal(0, 10, inside.shape), 0)
    return out


def ct_like(shape: tuple[int, int, int], dtype=np.float32, seed: int = 0) -> np.ndarray:
    """An abdomen-like CT in HU: air, a body ellipse, one organ, noise."""
    j, i = np.meshgrid(np.linspace(-1, 1, shape[1], dtype=np.float32), np.linspace(-1, 1, shape[2], dtype=np.float32),
                       indexing="ij")
    body = (j / 0.7) ** 2 + (i / 0.9) ** 2 < 1
    organ = ((j + 0.1) / 0.3) ** 2 + ((i + 0.3) / 0.35) ** 2 < 1
    base = np.where(body, np.where(organ, 60.0, 20.0), -1000.0)
    rng = np.random.default_rng(seed)
    out = np.empty(shape, dtype)
    for index in range(shape[0]):
        out[index] = base + rng.normal(0, 15, base.shape)
    return out


def volume(array: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    """`array` (k, j, i) with `spacing` (i, j, k) mm in LPS-flipped RAS, as scanners store axial series."""
    return Volume(array, np.diag([-spacing[0], -spacing[1], spacing[2], 1.0]))


def write(array: np.ndarray, spacing: tuple[float, float, float], path: Path) -> Path:
    return write_volume(volume(array, spacing), path)
