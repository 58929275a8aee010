"""Smooth random fields and scanner noise shared by the MRI and CT phantoms.

Fields are sums of plane waves defined in millimetres of patient space, not in voxels: the same seed gives the
same anatomy on any grid, so a small test grid is a coarse sampling of the full-size case.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


class SmoothField:
    """A zero-mean, unit-variance smooth random field over patient space (RAS millimetres).

    wavelength_mm sets the size of its features; calling it with broadcastable coordinate arrays (three 1-D axes
    shaped to broadcast, or three point arrays) returns float32 values of the broadcast shape.
    """

    def __init__(self, rng: np.random.Generator, wavelength_mm: float, n_waves: int = 8):
        directions = rng.normal(size=(n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = wavelength_mm * rng.uniform(0.7, 1.4, n_waves)
        self.wavevectors = ((2 * np.pi / wavelengths)[:, None] * directions).astype(np.float32)
        self.phases = rng.uniform(0, 2 * np.pi, n_waves).astype(np.float32)
        # Each cosine with a uniform random phase has variance 1/2.
        self.amplitude = np.float32(np.sqrt(2.0 / n_waves))

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        total = None
        for (kx, ky, kz), phase in zip(self.wavevectors, self.phases):
            # Sum the cheap low-dimensional terms first so only the last add builds the full-size array.
            argument = (kx * x + phase) + ky * y + kz * z
            wave = np.cos(argument, out=argument if argument.dtype == np.float32 else None)
            if total is None:
                total = np.array(wave, dtype=np.float32, copy=True)
            else:
                total += wave
        total *= self.amplitude
        return total


def add_rician_noise(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation sigma in each channel (MRI)."""
    real = rng.standard_normal(signal.shape, dtype=np.float32)
    real *= np.float32(sigma)
    real += signal
    imaginary = rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary *= np.float32(sigma)
    return np.hypot(real, imaginary, out=real)


def random_rotation(rng: np.random.Generator, max_degrees: float | tuple[float, float, float]) -> np.ndarray:
    """A 3x3 rotation with independent angles about R, A and S of at most max_degrees (per axis) each."""
    limits = np.broadcast_to(np.asarray(max_degrees, dtype=float), (3,))
    return Rotation.from_euler("xyz", rng.uniform(-limits, limits), degrees=True).as_matrix()
