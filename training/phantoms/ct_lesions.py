"""Focal lesions inside the solid organs, for CTs of patients rather than of healthy volunteers.

Most abdominal CTs are read for a disease, and the organs a clinician asks us to segment carry it: simple cysts in
the liver and kidneys (water density, sharp walls, no enhancement), hypovascular metastases in the liver and spleen
(darker than the parenchyma once it enhances, often with a necrotic centre and an enhancing rim) and hypervascular
lesions (hepatocellular carcinoma, neuroendocrine metastases) that follow arterial blood: bright in arterial phases,
near the parenchyma later, slightly dark without contrast. As in BTCV, where tumours inside the liver are part of
the liver label, a lesion keeps its organ's label: it changes the image, never the labels.

Lesions are drawn from a separate random stream, so a case with lesions is the same patient, scanner and labels as
the case without them. Each lies inside its organ (painted only where the organ's label already is), so a lesion
at the organ's edge is cut by the organ's outline rather than bulging beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .ct_anatomy import AbdomenSubject, Solid, _u
from .fields import random_rotation
from .shapes import Ellipsoid

_LESION_STREAM = 41  # default_rng([seed, _LESION_STREAM]): the lesions' own draws
KINDS = ("cyst", "hypovascular", "hypervascular")
# organ: (chance the organ has any lesion, most lesions, radius range mm, chances of the three kinds)
_ORGANS = {
    "liver": (0.75, 6, (4.0, 28.0), (0.3, 0.5, 0.2)),
    "right_kidney": (0.4, 2, (5.0, 22.0), (1.0, 0.0, 0.0)),
    "left_kidney": (0.4, 2, (5.0, 22.0), (1.0, 0.0, 0.0)),
    "spleen": (0.2, 2, (4.0, 15.0), (0.4, 0.6, 0.0)),
}
_PARENCHYMA_HU = {"liver": "liver", "spleen": "spleen", "right_kidney": "kidney_cortex", "left_kidney": "kidney_cortex"}


@dataclass(frozen=True)
class Lesion:
    organ: str  # the organ it lies in, whose label it keeps
    kind: str  # one of KINDS
    shape: Ellipsoid
    enhancement: float  # hypovascular: share of the way from fluid to parenchyma; hypervascular: parenchyma to aorta
    necrotic: bool  # hypovascular: a fluid-like centre
    rim: float  # hypovascular: rim enhancement, share of the way from parenchyma to aorta (0 none)

    def summary(self) -> dict:
        return {"organ": self.organ, "kind": self.kind, "radius_mm": round(float(np.mean(self.shape.radii)), 1)}


def _points_inside(rng, solid: Solid, depth: float, count: int = 4000) -> np.ndarray:
    """Random points where the organ's level is below depth (deep inside for small depth)."""
    low, high = solid.bounds()
    points = rng.uniform(low, high, size=(count, 3)).astype(np.float32)
    level = solid.level(points[:, 0], points[:, 1], points[:, 2])
    return points[level < depth]


def draw_lesions(subject: AbdomenSubject) -> tuple[Lesion, ...]:
    """The lesions of this patient (at least one), placed in its own organs."""
    rng = np.random.default_rng([subject.seed, _LESION_STREAM])
    lesions: list[Lesion] = []
    for _ in range(20):  # a patient drawn without any lesion draws again
        for organ, (chance, most, (r_low, r_high), kind_chances) in _ORGANS.items():
            if rng.random() >= chance:
                continue
            candidates = _points_inside(rng, subject.organs[organ], 0.85)
            if len(candidates) == 0:
                continue
            for _ in range(int(rng.integers(1, most + 1))):
                kind = str(rng.choice(KINDS, p=kind_chances))
                # Log-uniform radii: many small lesions, a few large ones.
                radius = float(np.exp(rng.uniform(np.log(r_low), np.log(r_high))))
                centre = candidates[rng.integers(len(candidates))].astype(float)
                shape = Ellipsoid(centre, radius * rng.uniform(0.8, 1.2, 3), random_rotation(rng, 90.0))
                lesions.append(Lesion(organ, kind, shape, enhancement=_u(rng, 0.25, 0.7) if kind == "hypovascular"
                                      else _u(rng, 0.15, 0.45), necrotic=bool(rng.random() < 0.4),
                                      rim=_u(rng, 0.05, 0.2) if rng.random() < 0.5 else 0.0))
        if lesions:
            break
    return tuple(lesions)


def with_lesions(subject: AbdomenSubject) -> AbdomenSubject:
    """The same patient with focal lesions in the liver, kidneys or spleen (labels unchanged)."""
    return replace(subject, lesions=draw_lesions(subject))


def _fill(lesion: Lesion, hu: dict, texture):
    parenchyma = float(hu[_PARENCHYMA_HU[lesion.organ]])
    fluid, blood = float(hu["fluid"]), float(hu["aorta"])
    if lesion.kind == "cyst":
        return np.float32(fluid + 3.0)
    if lesion.kind == "hypervascular":
        value = parenchyma + lesion.enhancement * (blood - parenchyma)
        return lambda level, x, y, z: np.float32(value) + np.float32(8.0) * texture(x, y, z)
    body = fluid + lesion.enhancement * (parenchyma - fluid)
    centre = fluid + 0.1 * (parenchyma - fluid) if lesion.necrotic else body
    rim = parenchyma + lesion.rim * max(blood - parenchyma, 0.0)

    def hypovascular(level, x, y, z):
        values = np.where(level < 0.45, np.float32(centre), np.float32(body))
        if lesion.rim:
            values = np.where(level > 0.8, np.float32(rim), values)
        return values + np.float32(8.0) * texture(x, y, z)

    return hypovascular


def paint_lesions(canvas, labels: dict[str, int]) -> None:
    """Paints the subject's lesions on a ct._Canvas over their organs' labels, leaving every label as it was."""
    subject = canvas.subject
    texture = subject.fields["texture"]
    for lesion in subject.lesions:
        # Cysts are smooth; solid lesions get a lobulated outline.
        solid = Solid((lesion.shape,), 0.0 if lesion.kind == "cyst" else 0.12, texture)
        canvas.paint(solid, _fill(lesion, subject.hu, texture), None, where="cavity", only_label=labels[lesion.organ])
