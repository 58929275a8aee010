"""Solid shapes in patient space (RAS millimetres) for the phantoms: rotated ellipsoids and tubes along curves.

Each shape has level(x, y, z), a normalised radius that is 1 on its surface (below 1 inside), evaluated on
broadcastable coordinate arrays, and bounds(margin) giving the RAS box that contains it, so painting only ever
touches the voxels around a shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline


@dataclass(frozen=True)
class Ellipsoid:
    centre: np.ndarray  # (3,) RAS mm
    radii: np.ndarray  # (3,) mm along the ellipsoid's own axes
    rotation: np.ndarray  # (3, 3): column a is the direction of axis a in RAS

    def level(self, x, y, z) -> np.ndarray:
        offsets = (x - np.float32(self.centre[0]), y - np.float32(self.centre[1]), z - np.float32(self.centre[2]))
        total = None
        for axis in range(3):
            direction = self.rotation[:, axis] / self.radii[axis]
            along = sum(np.float32(direction[w]) * offsets[w] for w in range(3))
            along = along * along
            total = along if total is None else total + along
        return np.sqrt(total)

    def bounds(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt(((self.rotation * self.radii[None, :]) ** 2).sum(axis=1)) + margin
        return self.centre - half, self.centre + half

    def scaled(self, factor: float) -> "Ellipsoid":
        return Ellipsoid(self.centre, self.radii * factor, self.rotation)


@dataclass(frozen=True)
class Tube:
    """A tube of varying radius around a polyline (points (n, 3) RAS mm, radii (n,) mm)."""

    points: np.ndarray
    radii: np.ndarray

    def level(self, x, y, z) -> np.ndarray:
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))
        best = np.full(shape, np.inf, np.float32)
        separable = all(sum(n > 1 for n in np.shape(a)) <= 1 for a in (x, y, z))
        for start, end, r0, r1 in zip(self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:]):
            if separable:
                # Only the box around this segment can come within a few radii of it.
                reach = 3.0 * max(r0, r1)
                low, high = np.minimum(start, end) - reach, np.maximum(start, end) + reach
                box = _box_of(shape, (x, y, z), low, high)
                if box is None:
                    continue
                part = self._segment_level(start, end, r0, r1, *(_take(a, box) for a in (x, y, z)))
                np.minimum(best[box], part, out=best[box])
            else:
                np.minimum(best, self._segment_level(start, end, r0, r1, x, y, z), out=best)
        return best

    @staticmethod
    def _segment_level(start, end, r0, r1, x, y, z) -> np.ndarray:
        step = end - start
        length2 = float(step @ step)
        dx, dy, dz = x - np.float32(start[0]), y - np.float32(start[1]), z - np.float32(start[2])
        t = (dx * np.float32(step[0] / length2) + dy * np.float32(step[1] / length2)) + dz * np.float32(
            step[2] / length2)
        np.clip(t, 0.0, 1.0, out=t)
        ex = dx - t * np.float32(step[0])
        ey = dy - t * np.float32(step[1])
        ez = dz - t * np.float32(step[2])
        distance = np.sqrt(ex * ex + ey * ey + ez * ez)
        distance /= np.float32(r0) + t * np.float32(r1 - r0)
        return distance

    def bounds(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        reach = self.radii.max() + margin
        return self.points.min(axis=0) - reach, self.points.max(axis=0) + reach


def _box_of(shape, coordinates, low, high):
    """Slices of a broadcast grid (each coordinate varying along at most one axis) inside [low, high]."""
    box = [slice(None)] * len(shape)
    for values, lo, hi in zip(coordinates, low, high):
        values = np.asarray(values)
        if values.size <= 1:
            if values.size == 1 and not lo <= float(values.ravel()[0]) <= hi:
                return None
            continue
        axis = int(np.argmax(values.shape))
        inside = np.nonzero((values.ravel() >= lo) & (values.ravel() <= hi))[0]
        if inside.size == 0:
            return None
        box[axis] = slice(int(inside[0]), int(inside[-1]) + 1)
    return tuple(box)


def _take(values, box):
    values = np.asarray(values)
    return values[tuple(b if n > 1 else slice(None) for b, n in zip(box, values.shape))]


def smooth_tube(control_points, radii, segments: int = 16) -> Tube:
    """A tube through control points along a cubic spline, radius interpolated between the control radii."""
    control_points = np.asarray(control_points, dtype=float)
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(control_points, axis=0), axis=1))])
    samples = np.linspace(0.0, chord[-1], segments + 1)
    if len(control_points) >= 3:
        points = CubicSpline(chord, control_points, bc_type="natural")(samples)
    else:
        points = np.array([np.interp(samples, chord, control_points[:, w]) for w in range(3)]).T
    return Tube(points, np.interp(samples, chord, np.asarray(radii, dtype=float)))


def soft_inside(level: np.ndarray, radius_mm: float, edge_mm: float) -> np.ndarray:
    """Partial-volume membership from a normalised level: 1 deep inside, 0 outside, a logistic edge_mm wide."""
    signed_mm = (level - np.float32(1.0)) * np.float32(radius_mm / edge_mm)
    np.clip(signed_mm, -30.0, 30.0, out=signed_mm)
    return 1.0 / (1.0 + np.exp(signed_mm))
