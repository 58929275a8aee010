"""Random gliomas for the brain phantom: necrotic core, enhancing rim, peritumoural oedema, and mass effect.

The tumour is an irregular core (a rotated ellipsoid whose surface is pushed in and out by a smooth random field)
with an eccentric necrotic centre at least ~2 mm inside it, so the enhancing rim varies in thickness; oedema is a
larger, rougher region that spreads preferentially along white matter, sparing cortex, as vasogenic oedema does.
The tissue around the tumour is pushed outwards (mass effect). Everything is in patient millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fields import SmoothField, random_rotation
from .shapes import Ellipsoid, soft_inside

MIN_RIM_MM = 1.5
# Oedema fades into normal tissue over millimetres; the tumour's own borders are sharp.
EDEMA_EDGE_MM = 2.0
NECROSIS_EDGE_MM = 0.8
# Oedema spreads along white matter beyond its nominal ellipsoid; it fades out between these relative levels.
EDEMA_FADE = (1.45, 1.6)


@dataclass(frozen=True)
class Glioma:
    core: Ellipsoid
    necrosis: Ellipsoid | None
    edema: Ellipsoid
    core_roughness: SmoothField
    necrosis_roughness: SmoothField
    edema_roughness: SmoothField
    roughness: tuple[float, float, float]  # amplitudes, in units of the normalised level
    white_matter_bias: float
    enhancement: SmoothField  # spatial variation of contrast uptake in the rim
    texture: SmoothField  # spatial variation of T2 inside the lesion
    mass_effect: float  # largest fractional compression of the surrounding tissue
    mass_effect_reach_mm: float

    @property
    def centre(self) -> np.ndarray:
        return self.core.centre

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.edema.scaled(EDEMA_FADE[1]).bounds(margin=1.0)

    def mass_effect_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        reach = 2.5 * self.mass_effect_reach_mm
        return self.centre - reach, self.centre + reach

    def info(self) -> dict:
        return {"centre_ras_mm": [round(float(v), 2) for v in self.centre],
                "core_radii_mm": [round(float(v), 2) for v in self.core.radii],
                "necrotic": self.necrosis is not None,
                "edema_radii_mm": [round(float(v), 2) for v in self.edema.radii]}


def draw_glioma(rng: np.random.Generator, centre: np.ndarray, depth_mm: float) -> Glioma:
    """A random glioma centred at centre (patient RAS mm), depth_mm below the brain surface."""
    core_radius = min(rng.uniform(9.0, 22.0), max(depth_mm - 5.0, 7.0))
    core = Ellipsoid(np.asarray(centre, float), core_radius * rng.uniform(0.75, 1.25, 3), random_rotation(rng, 90))
    necrotic = rng.uniform() < 0.85
    offset = rng.normal(size=3) * 0.12 * core_radius
    necrosis = Ellipsoid(core.centre + offset, core.radii * rng.uniform(0.55, 0.85, 3), core.rotation)
    edema_scale = rng.uniform(1.3, 2.1)
    edema = Ellipsoid(core.centre + rng.normal(size=3) * 0.15 * core_radius, core.radii * edema_scale
                      * rng.uniform(0.85, 1.15, 3), random_rotation(rng, 90))
    fields = [SmoothField(rng, wavelength, n_waves=16) for wavelength in
              (1.6 * core_radius, 1.2 * core_radius, 0.9 * core_radius, 25.0, 18.0)]
    return Glioma(
        core=core, necrosis=necrosis if necrotic else None, edema=edema,
        core_roughness=fields[0], necrosis_roughness=fields[1], edema_roughness=fields[2],
        roughness=(rng.uniform(0.08, 0.18), rng.uniform(0.1, 0.25), rng.uniform(0.1, 0.22)),
        white_matter_bias=rng.uniform(0.4, 0.6),
        enhancement=fields[3], texture=fields[4],
        mass_effect=rng.uniform(0.2, 0.4), mass_effect_reach_mm=1.3 * core_radius + 6.0,
    )


def glioma_memberships(glioma: Glioma, x, y, z, white: np.ndarray, edge_mm: float) -> dict[str, np.ndarray]:
    """Soft memberships (0..1) on a region: 'core' (tumour core), 'necrosis' (inside core), 'edema' (where the
    oedema would be if no core were there). white: white-matter fraction on the same region."""
    core_level = glioma.core.level(x, y, z) + glioma.roughness[0] * glioma.core_roughness(x, y, z)
    core_radius = float(glioma.core.radii.mean())
    core = soft_inside(core_level, core_radius, edge_mm)
    if glioma.necrosis is not None:
        necrosis_level = (glioma.necrosis.level(x, y, z)
                          + glioma.roughness[1] * glioma.necrosis_roughness(x, y, z))
        necrosis = soft_inside(necrosis_level, float(glioma.necrosis.radii.mean()), max(edge_mm, NECROSIS_EDGE_MM))
        # Keep a rim of enhancing tumour: necrosis never reaches the core surface.
        rim_limit = soft_inside(core_level + np.float32(MIN_RIM_MM / core_radius), core_radius, edge_mm)
        necrosis = np.minimum(necrosis, rim_limit)
    else:
        necrosis = np.zeros_like(core)
    nominal = glioma.edema.level(x, y, z)
    # Oedema reaches further through white matter than through cortex.
    reach = np.float32(1.0) + np.float32(glioma.white_matter_bias) * (white - np.float32(0.5))
    edema_level = nominal / reach + glioma.roughness[2] * glioma.edema_roughness(x, y, z)
    edema = soft_inside(edema_level, float(glioma.edema.radii.mean()), max(edge_mm, EDEMA_EDGE_MM))
    low, high = EDEMA_FADE
    edema *= np.clip((np.float32(high) - nominal) / np.float32(high - low), 0.0, 1.0)
    return {"core": core, "necrosis": necrosis, "edema": edema}


def mass_effect_offset(glioma: Glioma, x, y, z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each point's tissue came from, minus the point: tissue near the tumour is pushed radially outwards.

    The radial map r -> r (1 - k exp(-r^2/s^2)) is monotonic for k < 1, so no tissue folds over itself.
    """
    dx, dy, dz = (x - np.float32(glioma.centre[0]), y - np.float32(glioma.centre[1]),
                  z - np.float32(glioma.centre[2]))
    r2 = (dx * dx + dy * dy) + dz * dz
    shrink = np.exp(r2 * np.float32(-1.0 / glioma.mass_effect_reach_mm ** 2))
    shrink *= np.float32(-glioma.mass_effect)
    return dx * shrink, dy * shrink, dz * shrink
