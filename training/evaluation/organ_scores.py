"""Per-organ scores of a multi-organ segmentation in the BTCV protocol.

Per CT volume and organ: Dice and HD95 (mm, the CT's voxel spacing) of (prediction == organ, reference == organ) at
the original resolution, with MedDiffusionExtension.metrics' empty-mask convention (organ absent from both: Dice 1,
HD95 0; absent from one: Dice 0, HD95 inf). Per organ: the mean over volumes; HD95 means leave out the infinite
values and count them. Means over organs (the 8 of the TransUNet split, all of the card's) average the organs' means.
The union score compares "any organ" with "any of the evaluated organs", which a binary union model also has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Optional, Sequence

import numpy as np

from MedDiffusionExtension import metrics


def score_case(prediction: np.ndarray, reference: np.ndarray, organs: Sequence[int],
               predicted: Optional[Collection[int]], spacing) -> dict:
    """One volume: {"organs": {label: {'dice', 'iou', 'hd95'} or None}, "union": {...}}. `prediction`, `reference`:
    label maps; `organs`: the label values evaluated; `predicted`: those the method labels (None: a binary model,
    which has no per-organ scores); `spacing`: per array axis (mm)."""
    scored = [label for label in organs if predicted is not None and label in predicted]
    per_organ = metrics.label_metrics(prediction, reference, scored, spacing) if scored else {}
    union = metrics.segmentation_metrics(prediction > 0, np.isin(reference, list(organs)), spacing)
    return {"organs": {label: per_organ.get(label) for label in organs}, "union": union}


def _finite_mean(values: list[float]) -> tuple[Optional[float], int]:
    """(mean of the finite values or None, how many were infinite)."""
    finite = [v for v in values if np.isfinite(v)]
    return (float(np.mean(finite)) if finite else None), len(values) - len(finite)


@dataclass
class MethodScores:
    """The `score_case` results of one method over the test volumes."""

    cases: list[dict] = field(default_factory=list)

    def _values(self, label: int, key: str) -> Optional[list[float]]:
        scores = [case["organs"][label] for case in self.cases]
        return None if not scores or any(s is None for s in scores) else [s[key] for s in scores]

    def organ_dice(self, label: int) -> Optional[float]:
        """Mean Dice of one organ over the volumes; None where the method does not label it."""
        values = self._values(label, "dice")
        return None if values is None else float(np.mean(values))

    def organ_hd95(self, label: int) -> tuple[Optional[float], int]:
        """(mean finite HD95 in mm or None, number of infinite values)."""
        values = self._values(label, "hd95")
        return (None, 0) if values is None else _finite_mean(values)

    def mean_dice(self, labels: Sequence[int]) -> Optional[float]:
        """Mean over `labels` of the organs' mean Dice; None unless the method labels all of them."""
        means = [self.organ_dice(label) for label in labels]
        return None if not means or any(m is None for m in means) else float(np.mean(means))

    def mean_dice_std(self, labels: Sequence[int]) -> Optional[float]:
        """Standard deviation over volumes of each volume's mean Dice over `labels`."""
        if self.mean_dice(labels) is None:
            return None
        return float(np.std([np.mean([case["organs"][label]["dice"] for label in labels]) for case in self.cases]))

    def mean_hd95(self, labels: Sequence[int]) -> tuple[Optional[float], int]:
        """(mean over `labels` of the organs' finite HD95 means, infinite values left out over all of them)."""
        pairs = [self.organ_hd95(label) for label in labels]
        if not pairs or self.mean_dice(labels) is None:
            return None, 0
        means = [mean for mean, _ in pairs if mean is not None]
        return (float(np.mean(means)) if means else None), sum(count for _, count in pairs)

    def union_dice(self) -> tuple[float, float]:
        """(mean, std over volumes) of the union Dice."""
        values = [case["union"]["dice"] for case in self.cases]
        return float(np.mean(values)), float(np.std(values))

    def union_hd95(self) -> tuple[Optional[float], int]:
        return _finite_mean([case["union"]["hd95"] for case in self.cases])
