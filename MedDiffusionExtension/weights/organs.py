"""The abdominal organs of the BTCV labelling: label value, name, key, colour and SNOMED CT terminology.

A multi-organ segmentation card lists its segments from this table (`organ_segments`), so that the label values of
its output, the segment names and colours in Slicer, and the `--organs` names on the command line all come from one
place. Label values follow the BTCV challenge's numbering, which the public datasets of these organs use.

Terminology: each organ is a SNOMED CT anatomical structure (category "Anatomical Structure", SCT 123037004),
paired organs carry the laterality as a modifier (right SCT 24028007, left SCT 7771000), as in the DICOM and 3D
Slicer anatomy terminologies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
RIGHT = ("SCT", "24028007", "Right")
LEFT = ("SCT", "7771000", "Left")


@dataclass(frozen=True)
class Organ:
    label: int
    name: str  # shown to users: segment names, tables
    key: str  # for the command line (--organs liver,spleen) and file names
    color: tuple[float, float, float]  # RGB in 0..1
    code: tuple[str, str, str]  # SNOMED CT (scheme, value, meaning) of the structure
    modifier: Optional[tuple[str, str, str]] = None  # laterality


def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (round(r / 255, 4), round(g / 255, 4), round(b / 255, 4))


BTCV_ORGANS: tuple[Organ, ...] = (
    Organ(1, "spleen", "spleen", _rgb(157, 108, 162), ("SCT", "78961009", "Spleen")),
    Organ(2, "right kidney", "right_kidney", _rgb(185, 102, 83), ("SCT", "64033007", "Kidney"), RIGHT),
    Organ(3, "left kidney", "left_kidney", _rgb(185, 102, 83), ("SCT", "64033007", "Kidney"), LEFT),
    Organ(4, "gallbladder", "gallbladder", _rgb(139, 150, 98), ("SCT", "28231008", "Gallbladder")),
    Organ(5, "esophagus", "esophagus", _rgb(211, 171, 143), ("SCT", "32849002", "Esophagus")),
    Organ(6, "liver", "liver", _rgb(221, 130, 101), ("SCT", "10200004", "Liver")),
    Organ(7, "stomach", "stomach", _rgb(216, 132, 105), ("SCT", "69695003", "Stomach")),
    Organ(8, "aorta", "aorta", _rgb(224, 97, 76), ("SCT", "15825003", "Aorta")),
    Organ(9, "inferior vena cava", "inferior_vena_cava", _rgb(0, 151, 206), ("SCT", "64131007", "Inferior vena cava")),
    Organ(10, "portal vein and splenic vein", "portal_vein_and_splenic_vein", _rgb(0, 112, 165),
          ("SCT", "32764006", "Portal vein")),
    Organ(11, "pancreas", "pancreas", _rgb(249, 180, 111), ("SCT", "15776009", "Pancreas")),
    Organ(12, "right adrenal gland", "right_adrenal_gland", _rgb(244, 214, 49), ("SCT", "23451007", "Adrenal gland"),
          RIGHT),
    Organ(13, "left adrenal gland", "left_adrenal_gland", _rgb(244, 214, 49), ("SCT", "23451007", "Adrenal gland"),
          LEFT),
)

# The 8 organs of the common BTCV evaluation split (TransUNet's), reported separately in the tables.
TRANSUNET_EIGHT = ("aorta", "gallbladder", "spleen", "left_kidney", "right_kidney", "liver", "pancreas", "stomach")


def organ_by_label(label: int) -> Organ:
    for organ in BTCV_ORGANS:
        if organ.label == label:
            return organ
    raise KeyError(f"no BTCV organ has label {label}")


def organ_segments(labels: Sequence[int]) -> list[dict]:
    """Card `segments` entries (name, label, color, terminology) for the given BTCV label values, in that order."""
    segments = []
    for label in labels:
        organ = organ_by_label(label)
        terminology = {"category": list(ANATOMICAL_STRUCTURE), "type": list(organ.code)}
        if organ.modifier is not None:
            terminology["type_modifier"] = list(organ.modifier)
        segments.append({"name": organ.name, "key": organ.key, "label": organ.label, "color": list(organ.color),
                         "terminology": terminology})
    return segments
