"""Documentation figures of the phantoms: docs/figures/phantom_mri_case.png and phantom_ct_case.png.

Slices are shown as a radiologist reads them: axial, anterior up, patient's right on the image's left.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .brain import LABELS, SEQUENCES, BrainPhantom, simulate_brain
from .ct import BTCV_LABELS, CTPhantom, simulate_ct

_TITLES = {"t1n": "T1 (t1n)", "t1c": "T1 + gadolinium (t1c)", "t2w": "T2 (t2w)", "t2f": "FLAIR (t2f)"}
_BRATS_COLOURS = {1: "#e04040", 2: "#f0d020", 3: "#30b0f0"}
CT_WINDOW = (-160.0, 240.0)  # abdomen window: level 40, width 400


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _side_letters(axis, image_shape):
    style = {"color": "white", "fontsize": 9, "fontweight": "bold", "va": "center"}
    axis.text(4, image_shape[0] / 2, "R", ha="left", **style)
    axis.text(image_shape[1] - 4, image_shape[0] / 2, "L", ha="right", **style)


def _overlay(plt, labels2d, colours):
    from matplotlib.colors import ListedColormap

    palette = ["#00000000"] * (max(colours) + 1)
    for value, colour in colours.items():
        palette[value] = colour
    return np.ma.masked_equal(labels2d, 0), ListedColormap(palette), max(colours)


def plot_brain_case(phantom: BrainPhantom, path) -> Path:
    plt = _pyplot()
    k = int(np.argmax((phantom.seg > 0).sum(axis=(1, 2))))
    rows, cols = np.nonzero(phantom.brain_mask[k])
    crop = (slice(max(rows.min() - 6, 0), rows.max() + 7), slice(max(cols.min() - 6, 0), cols.max() + 7))
    fig, axes = plt.subplots(1, 5, figsize=(17, 4.3), facecolor="black")
    normal = phantom.brain_mask & (phantom.seg == 0)
    for axis, name in zip(axes, SEQUENCES):
        image = phantom.images[name]
        vmax = np.percentile(image[normal], 99.7) * (1.15 if name == "t1c" else 1.0)
        axis.imshow(image[k][crop], cmap="gray", vmin=0, vmax=vmax, interpolation="none")
        axis.set_title(_TITLES[name], color="white", fontsize=11)
    labels, cmap, top = _overlay(plt, phantom.seg[k][crop], _BRATS_COLOURS)
    base = phantom.images["t2f"]
    axes[4].imshow(base[k][crop], cmap="gray", vmin=0, vmax=np.percentile(base[normal], 99.7), interpolation="none")
    axes[4].imshow(labels, cmap=cmap, vmin=0, vmax=top, alpha=0.55, interpolation="none")
    axes[4].set_title("labels on FLAIR", color="white", fontsize=11)
    handles = [plt.Rectangle((0, 0), 1, 1, color=_BRATS_COLOURS[v]) for v in (1, 2, 3)]
    names = {v: f"{v} {n.replace('edema', 'oedema')}" for n, v in LABELS.items()}
    axes[4].legend(handles, [names[v] for v in (1, 2, 3)], loc="lower right", fontsize=7, framealpha=0.6)
    for axis in axes:
        _side_letters(axis, phantom.images["t1n"][k][crop].shape)
        axis.axis("off")
    spacing = phantom.info["spacing_mm"]
    fig.suptitle(f"Brain MRI phantom (seed {phantom.info['seed']}, {phantom.info['shape'][0]}x"
                 f"{phantom.info['shape'][1]}x{phantom.info['shape'][2]} at {spacing[0]:g} mm), axial slice {k}",
                 color="white", fontsize=12)
    return _save(fig, path, top=0.94, dpi=110)


def _save(fig, path, top: float, dpi: int) -> Path:
    fig.tight_layout(rect=(0, 0, 1, top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor="black")
    _pyplot().close(fig)
    return path


def plot_ct_case(phantom: CTPhantom, path) -> Path:
    plt = _pyplot()
    import matplotlib.cm as cm

    present = [(phantom.label[k] > 0).any() and len(np.unique(phantom.label[k])) for k in range(len(phantom.label))]
    k = int(np.argmax(present))
    colours = {v: cm.tab20(i % 20) for i, v in enumerate(sorted(BTCV_LABELS.values()))}
    colours = {v: "#%02x%02x%02x" % tuple(int(255 * c) for c in rgba[:3]) for v, rgba in colours.items()}
    from scipy import ndimage

    body = ndimage.binary_opening(phantom.image[k] > -500, iterations=4)  # drops the couch's thin shell
    rows, cols = np.nonzero(body)
    crop = (slice(max(rows.min() - 8, 0), rows.max() + 9), slice(max(cols.min() - 8, 0), cols.max() + 9))
    axial = phantom.image[k][crop]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6), facecolor="black",
                             gridspec_kw={"width_ratios": [1.25, 1.25, 1.0]})
    axes[0].imshow(axial, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], interpolation="none")
    axes[0].set_title(f"axial slice {k} (W400 L40)", color="white")
    axes[1].imshow(axial, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], interpolation="none")
    labels, cmap, top = _overlay(plt, phantom.label[k][crop], colours)
    axes[1].imshow(labels, cmap=cmap, vmin=0, vmax=top, alpha=0.5, interpolation="none")
    axes[1].set_title("BTCV labels", color="white")
    names = {v: n for n, v in BTCV_LABELS.items()}
    shown = [v for v in sorted(names) if (phantom.label == v).any()]
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[v]) for v in shown]
    axes[2].legend(handles, [f"{v} {names[v].replace('_', ' ')}" for v in shown], loc="upper left", fontsize=7,
                   framealpha=0.7, ncol=4, bbox_to_anchor=(0.0, -0.01))
    spacing = phantom.info["spacing_mm"]
    j = int(np.argmax((phantom.label == BTCV_LABELS["aorta"]).sum(axis=(0, 2))))
    axes[2].imshow(phantom.image[:, j, :], cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], origin="lower",
                   aspect=spacing[2] / spacing[0], interpolation="none")
    axes[2].set_title(f"coronal reformat through the aorta (row {j})", color="white")
    for axis in axes[:2]:
        _side_letters(axis, axial.shape)
    for axis in axes:
        axis.axis("off")
    fig.suptitle(f"Abdominal CT phantom (seed {phantom.info['seed']}, {phantom.info['shape'][0]}x"
                 f"{phantom.info['shape'][1]}x{phantom.info['shape'][2]} at {spacing[0]:g} x {spacing[1]:g} x "
                 f"{spacing[2]:g} mm, contrast phase {phantom.info['enhancement']:.2f})", color="white")
    return _save(fig, path, top=0.95, dpi=100)


def write_figures(out_dir, mri_seed: int = 0, ct_seed: int = 8) -> list[Path]:
    out_dir = Path(out_dir)
    return [plot_brain_case(simulate_brain(mri_seed), out_dir / "phantom_mri_case.png"),
            plot_ct_case(simulate_ct(ct_seed), out_dir / "phantom_ct_case.png")]
