"""TEST-ONLY pytest fixtures for the Slicer module tests: the compat layer, tiny random models, small sample cases.

The module self-tests take a model name and a sample-data folder; here those are a micro random-weight model
(Testing/tiny_models.py, written through the real card/registry/SHA-256 path) and small synthetic cases written in
the layout of Resources/SampleData (NIfTI files + SHA256SUMS), on an oblique, anisotropic grid so that any
geometry slip shows.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_FOLDERS = [REPO / "Modules" / "MedDiffusionTranslation", REPO / "Modules" / "MedDiffusionSegmentation"]
SHAPE_KJI = (8, 32, 32)


def oblique_ijk_to_ras(spacing=(0.9, 1.1, 3.0), degrees=12.0, origin=(11.5, -23.0, 4.0)) -> np.ndarray:
    """An axial-ish grid rotated about the superior axis, LPS-stored like most scanners."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return (((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 + ((i - centre[2]) / radii[2]) ** 2) <= 1


def brain_case(rng) -> dict[str, np.ndarray]:
    head = _ellipsoid(SHAPE_KJI, (3.5, 15.5, 15.5), (6, 13, 11))
    tumour = _ellipsoid(SHAPE_KJI, (4, 12, 18), (2, 4, 4))
    noise = lambda: rng.normal(0, 8, SHAPE_KJI)  # noqa: E731
    case = {"t1n": head * 400 + tumour * 80, "t2w": head * 300 + tumour * 350, "t1c": head * 400 + tumour * 500,
            "t2f": head * 250 + tumour * 400}
    case = {name: np.clip(array + noise() * head, 0, None).astype(np.float32) for name, array in case.items()}
    case["seg"] = tumour.astype(np.uint8) * 2
    return case


def ct_case(rng) -> dict[str, np.ndarray]:
    body = _ellipsoid(SHAPE_KJI, (3.5, 15.5, 15.5), (8, 13, 14))
    organ = _ellipsoid(SHAPE_KJI, (3.5, 13, 18), (3, 6, 5))
    image = np.where(body, 40.0, -1000.0) + organ * 110 + rng.normal(0, 12, SHAPE_KJI)
    return {"image": image.astype(np.float32), "label": organ.astype(np.uint8)}


def write_sample_data(folder: Path, seed: int = 0) -> Path:
    """Named like Resources/SampleData: `mdtest-brain-<role>.nii.gz`, `mdtest-ct.nii.gz` (the CT image, no role),
    `mdtest-ct-label.nii.gz`, and SHA256SUMS."""
    from MedDiffusionExtension.volume import Volume, write_volume

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    matrix = oblique_ijk_to_ras()
    lines = []
    for prefix, case in (("mdtest-brain", brain_case(rng)), ("mdtest-ct", ct_case(rng))):
        for role, array in case.items():
            name = f"{prefix}.nii.gz" if role == "image" else f"{prefix}-{role}.nii.gz"
            path = write_volume(Volume(array, matrix), folder / name)
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}")
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def slicer_env():
    """The compat layer installed, the module folders importable, as desktop Slicer would have them."""
    import slicer_compat

    app = slicer_compat.install()
    added = [str(f) for f in MODULE_FOLDERS if str(f) not in sys.path]
    sys.path.extend(added)
    yield app
    for folder in added:
        sys.path.remove(folder)
    slicer_compat.uninstall()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """{method: model name} of micro random-weight models, registered through MEDDIFFUSION_MODELS_DIR."""
    from tiny_models import write_micro_model

    root = tmp_path_factory.mktemp("models")
    cdm = write_micro_model(root, "cdm", seed=0, sampling_steps=2)
    # Seed 2 makes the untrained SDSeg decoder output a mask that is neither empty nor full on the CT phantom.
    sdseg = write_micro_model(root, "sdseg", seed=2)
    previous = os.environ.get("MEDDIFFUSION_MODELS_DIR")
    os.environ["MEDDIFFUSION_MODELS_DIR"] = str(root)
    yield {"cdm": cdm.name, "sdseg": sdseg.name}
    if previous is None:
        os.environ.pop("MEDDIFFUSION_MODELS_DIR", None)
    else:
        os.environ["MEDDIFFUSION_MODELS_DIR"] = previous


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> Path:
    return write_sample_data(tmp_path_factory.mktemp("SampleData"))


@pytest.fixture
def message_boxes(slicer_env, monkeypatch):
    """slicer.util's message boxes recorded as a desktop user would see them (slicer_compat/messages.py)."""
    from slicer_compat.messages import MessageBoxes

    return MessageBoxes().install(monkeypatch)
