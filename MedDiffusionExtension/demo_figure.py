"""The demo's overview figure (`out/demo/overview.png`): one axial slice of every input, output and reference.

Slices are shown as a radiologist reads them (anterior up, the patient's right on the image's left), whatever the
volume's voxel order: the canonical axial order of the volume engine (i -> left, j -> posterior) is exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .volume import Volume
from .volume.orientation import AxialReorientation

CT_WINDOW = (-160.0, 240.0)  # abdomen: level 40, width 400
PREDICTED, REFERENCE = "#ff7f0e", "#00e5ff"


@dataclass
class Panel:
    title: str
    image: np.ndarray  # 2D, displayed as given (row 0 at the top)
    window: tuple[float, float]
    predicted: np.ndarray | None = None  # 2D mask, drawn filled
    reference: np.ndarray | None = None  # 2D mask, drawn as a contour


def axial(volume: Volume) -> np.ndarray:
    """The volume's array in canonical axial (k, j, i) order: array[k] is a display-ready axial slice."""
    return AxialReorientation.for_volume(volume).apply(volume.array)


def busiest_slice(mask: np.ndarray) -> int:
    """The axial index with the most voxels in `mask` (the middle slice when it is empty)."""
    counts = mask.reshape(len(mask), -1).sum(axis=1)
    return int(np.argmax(counts)) if counts.any() else len(mask) // 2


def bounding_box(mask2d: np.ndarray, margin: int = 4) -> tuple[slice, slice]:
    """Rows and columns around `mask2d`'s voxels (everything when it is empty)."""
    rows, cols = np.nonzero(mask2d)
    if rows.size == 0:
        return slice(None), slice(None)
    return (slice(max(rows.min() - margin, 0), rows.max() + margin + 1),
            slice(max(cols.min() - margin, 0), cols.max() + margin + 1))


def mr_window(array: np.ndarray) -> tuple[float, float]:
    foreground = array[array > 0]
    return 0.0, float(np.percentile(foreground, 99.5)) if foreground.size else 1.0


def write_panels(path: Path, panels: list[Panel], columns: int, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.5 * rows), facecolor="black", squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, panel in zip(axes.flat, panels):
        axis.imshow(panel.image, cmap="gray", vmin=panel.window[0], vmax=panel.window[1], interpolation="none")
        if panel.predicted is not None:
            fill = np.ma.masked_equal(panel.predicted.astype(np.uint8), 0)
            axis.imshow(fill, cmap=ListedColormap([PREDICTED]), alpha=0.45, interpolation="none")
        if panel.reference is not None and panel.reference.any() and not panel.reference.all():
            axis.contour(panel.reference.astype(float), levels=[0.5], colors=[REFERENCE], linewidths=1.2)
        if panel.predicted is not None or panel.reference is not None:
            axis.legend(handles=[Patch(color=PREDICTED, label="predicted"), Patch(color=REFERENCE, label="reference")],
                        loc="lower right", fontsize=7, framealpha=0.6)
        height, width = panel.image.shape
        for x, letter, align in ((2, "R", "left"), (width - 3, "L", "right")):
            axis.text(x, height / 2, letter, color="white", fontsize=8, fontweight="bold", ha=align, va="center")
        axis.set_title(panel.title, color="white", fontsize=9)
    fig.suptitle(title, color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95 if title else 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, facecolor="black")
    plt.close(fig)
    return path


def write_overview(path: Path, mri: dict[str, Volume], mri_scores: dict[str, dict], ct: Volume, predicted: Volume,
                   reference: Volume, dice: float, tumour: Volume | None = None) -> Path:
    """The demo's figure: MRI `{title: volume}` panels (titles with "synthetic" get `mri_scores[t1c|t2f]`) on the
    slice through most of `tumour` (else the middle one), and the CT on its most labelled slice with `predicted`
    filled and `reference` outlined."""
    from scipy import ndimage

    first = axial(next(iter(mri.values())))
    k = busiest_slice(axial(tumour) > 0) if tumour is not None else len(first) // 2
    box = bounding_box(first[k] > 0)
    panels = []
    for title, volume in mri.items():
        array = axial(volume)
        target = "t1c" if "T1c" in title else "t2f"
        scores = mri_scores[target] if title.startswith("synthetic") else None
        suffix = f"\nPSNR {scores['psnr']:.1f} dB, SSIM {scores['ssim']:.2f}" if scores else ""
        panels.append(Panel(title + suffix, array[k][box], mr_window(array)))
    image, labels, truth = axial(ct), axial(predicted) > 0, axial(reference) > 0
    c = busiest_slice(truth)
    box = bounding_box(ndimage.binary_opening(image[c] > -500, iterations=3))  # the body, without the couch
    panels.append(Panel("CT (input)", image[c][box], CT_WINDOW))
    panels.append(Panel(f"organs, Dice {dice:.2f} (whole volume)", image[c][box], CT_WINDOW, labels[c][box], truth[c][box]))
    return write_panels(path, panels, columns=4, title=f"MedDiffusion demo: MRI axial slice {k}, CT axial slice {c} "
                        "(synthetic phantoms; not for clinical use)")
