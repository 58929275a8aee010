"""Case figures: inputs / prediction / reference / error (/ uncertainty), one axial slice, radiological display;
multi-organ segmentations as organ overlays in the card's colours, axial and coronal."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


def _show(axis, image, title, cmap="gray", vmin=None, vmax=None, colorbar=False):
    shown = axis.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    if colorbar:
        plt.colorbar(shown, ax=axis, fraction=0.046, pad=0.02)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _unit(array):
    low, high = np.percentile(array[array > array.min()], [0.5, 99.5]) if (array > array.min()).any() else (0, 1)
    return np.clip((array - low) / max(high - low, 1e-6), 0, 1)


def translation_figure(path: Path, volumes: dict, reference: dict, synthetic: dict, brain: np.ndarray, case_id: str) -> Path:
    """Rows T1c and T2f: T1 | T2 | synthetic | reference | |error| | uncertainty (std over samples); synthetic
    volumes and their spread on the metric scale [0, 1]."""
    k = int(np.argmax(brain.reshape(brain.shape[0], -1).sum(1)))  # the slice with most brain
    figure, axes = plt.subplots(2, 6, figsize=(15, 5.4))
    for row, target in enumerate(("t1c", "t2f")):
        fake = synthetic[target][k]
        real = reference[target][k]
        _show(axes[row, 0], _unit(volumes["t1n"][k]), "T1 (input)")
        _show(axes[row, 1], _unit(volumes["t2w"][k]), "T2 (input)")
        _show(axes[row, 2], fake, f"synthetic {target.upper()}", vmin=0, vmax=1)
        _show(axes[row, 3], real, f"reference {target.upper()}", vmin=0, vmax=1)
        _show(axes[row, 4], np.abs(fake - real), "|error|", cmap="magma", vmin=0, vmax=0.3, colorbar=True)
        std_key = f"{target}_std"
        if std_key in synthetic:
            _show(axes[row, 5], synthetic[std_key][k], "uncertainty (std)", cmap="viridis", vmin=0, colorbar=True)
        else:
            axes[row, 5].axis("off")
    figure.suptitle(f"{case_id}, axial slice {k} (radiological view: patient right on the left)", fontsize=10)
    return _save(figure, path)


def segmentation_figure(path: Path, ct: np.ndarray, prediction: np.ndarray, reference: np.ndarray, case_id: str,
                        dice: float, window=(-175, 250)) -> Path:
    """CT | prediction overlay | reference overlay on the slice with the most reference foreground."""
    k = int(np.argmax(reference.reshape(reference.shape[0], -1).sum(1)))
    image = np.clip((ct[k] - window[0]) / (window[1] - window[0]), 0, 1)
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    _show(axes[0], image, f"CT (window {window[0]}..{window[1]} HU)")
    for axis, mask, title, colour in ((axes[1], prediction[k], f"prediction (volume Dice {dice:.3f})", (1.0, 0.3, 0.2)),
                                      (axes[2], reference[k], "reference", (0.2, 0.8, 0.3))):
        _show(axis, image, title)
        overlay = np.zeros(mask.shape + (4,))
        overlay[mask > 0] = (*colour, 0.45)
        axis.imshow(overlay, interpolation="nearest")
    figure.suptitle(f"{case_id}, axial slice {k} (radiological view)", fontsize=10)
    return _save(figure, path)


def _organ_overlay(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Label map -> RGBA image: each organ in its colour (alpha 0.55), background transparent."""
    return colours[np.clip(labels, 0, len(colours) - 1).astype(np.intp)]


def organ_figure(path: Path, ct: np.ndarray, prediction: np.ndarray, reference: np.ndarray, segments, spacing,
                 case_id: str, mean_dice: float, window=(-175, 250)) -> Path:
    """Multi-organ case: CT | reference | prediction, organs in the card's segment colours, on the axial slice with
    the most reference organs (then the most organ voxels) and the coronal slice with the most organ voxels.

    Arrays are canonical axial (k, j, i): i towards the patient's left, j posterior, k superior, so an axial slice
    is shown as stored (radiological view) and a coronal one flipped to put superior at the top; `spacing` is
    (i, j, k) in mm and sets the coronal aspect ratio."""
    colours = np.zeros((256, 4))
    for segment in segments:
        colours[segment.label] = (*segment.color, 0.55)
    organs_per_slice = [np.unique(plane[plane > 0]).size for plane in reference]
    area_per_slice = (reference > 0).reshape(reference.shape[0], -1).sum(1)
    k = int(np.lexsort((area_per_slice, organs_per_slice))[-1])
    j = int(np.argmax((reference > 0).sum(axis=(0, 2))))
    views = [("axial", k, lambda a: a[k], 1.0),
             ("coronal", j, lambda a: np.flipud(a[:, j, :]), float(spacing[2] / spacing[0]))]
    figure, axes = plt.subplots(2, 3, figsize=(12, 8.6))
    for row, (view, index, cut, aspect) in enumerate(views):
        image = np.clip((cut(ct) - window[0]) / (window[1] - window[0]), 0, 1)
        titles = (f"CT, {view} slice {index} (window {window[0]}..{window[1]} HU)", "reference",
                  f"prediction (this CT's mean Dice {mean_dice:.3f})")
        for column, (title, labels) in enumerate(zip(titles, (None, reference, prediction))):
            axis = axes[row, column]
            _show(axis, image, title)
            axis.set_aspect(aspect)
            if labels is not None:
                axis.imshow(_organ_overlay(cut(labels), colours), interpolation="nearest", aspect=aspect)
    shown = set(np.unique(reference[k])) | set(np.unique(reference[:, j, :]))
    handles = [Patch(color=segment.color, label=segment.name)
               for segment in segments if segment.label in shown]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    figure.suptitle(f"{case_id}: organs in the model's segment colours (radiological view: patient right on the left)",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def edts_figure(path: Path, t1: np.ndarray, parts: dict, reference: np.ndarray, brain: np.ndarray,
                case_id: str) -> Path:
    """EDTS-Trans, one row: T1 | T2_bar | M | T2_tilde | T2_out | reference | |T2_out - reference|, on the slice with
    the most brain; images on the metric scale [0, 1], M on its own [0, 1]."""
    k = int(np.argmax(brain.reshape(brain.shape[0], -1).sum(1)))
    figure, axes = plt.subplots(1, 7, figsize=(20, 3.6))
    _show(axes[0], t1[k], "T1 (input)", vmin=0, vmax=1)
    _show(axes[1], parts["t2_bar"][k], "T2_bar (RegN)", vmin=0, vmax=1)
    _show(axes[2], parts["mask"][k], "M (texture/structure mask)", cmap="viridis", vmin=0, vmax=1, colorbar=True)
    _show(axes[3], parts["t2_tilde"][k], "T2_tilde (refiner)", vmin=0, vmax=1)
    _show(axes[4], parts["t2_out"][k], "T2_out = M·T2_tilde + (1−M)·T2_bar", vmin=0, vmax=1)
    _show(axes[5], reference[k], "reference T2", vmin=0, vmax=1)
    _show(axes[6], np.abs(parts["t2_out"][k] - reference[k]), "|T2_out − reference|", cmap="magma", vmin=0, vmax=0.3,
          colorbar=True)
    figure.suptitle(f"{case_id}, axial slice {k} (radiological view: patient right on the left)", fontsize=10)
    return _save(figure, path)
