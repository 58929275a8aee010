"""Case figures: inputs / prediction / reference / error (/ uncertainty), one axial slice, radiological display."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
