"""Property: for any NIfTI header and voxels, `meddiffusion segment` either succeeds with the input's exact geometry,
or refuses with exit 2, one `error:` line and nothing written; it never crashes, never touches its input."""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from MedDiffusionExtension.cli import main
from MedDiffusionExtension.volume import read_volume

from tiny_models import write_micro_model

DTYPES = {2: np.uint8, 4: np.int16, 16: np.float32, 64: np.float64, 128: None, 32: None}  # 128 RGB24, 32 complex64
ITEMSIZE = {2: 1, 4: 2, 16: 4, 64: 8, 128: 3, 32: 8}

valid_spacing = st.floats(0.2, 5.0)
valid_unit = st.floats(-0.57, 0.57)  # b, c, d of a unit quaternion: b^2 + c^2 + d^2 <= 1
row = st.lists(st.floats(-4.0, 4.0), min_size=4, max_size=4)
shear = st.floats(-0.5, 0.5)
# The classic corruptions, one at a time, next to as many valid headers (both outcomes must be exercised).
CORRUPTIONS = [None, None, None, None, None, "pixdim", "quaternion", "declared", "datatype", "srow", "constant"]


@st.composite
def headers(draw):
    shape = (draw(st.integers(16, 32)), draw(st.integers(16, 32)), draw(st.integers(3, 6)))
    h = dict(
        shape=shape, declared=shape, datatype=draw(st.sampled_from([4, 16, 2, 64])),
        pixdim=draw(st.tuples(valid_spacing, valid_spacing, valid_spacing)),
        qform_code=draw(st.sampled_from([1, 0])), quaternion=draw(st.tuples(valid_unit, valid_unit, valid_unit)),
        sform_code=draw(st.sampled_from([0, 1, 2])),
        srows=[[draw(st.sampled_from([-1.0, 1.0])) * draw(valid_spacing) if i == j else draw(shear) for j in range(3)]
               + [draw(st.floats(-100.0, 100.0))] for i in range(3)],
        constant=False, seed=draw(st.integers(0, 2 ** 16)),
    )
    corruption = draw(st.sampled_from(CORRUPTIONS))
    bad = st.sampled_from([0.0, -1.0, math.nan, math.inf])
    if corruption == "pixdim":
        axis = draw(st.integers(0, 2))
        h["pixdim"] = tuple(draw(bad) if i == axis else v for i, v in enumerate(h["pixdim"]))
    elif corruption == "quaternion":
        h.update(qform_code=1, quaternion=(draw(st.sampled_from([math.nan, 1.5, -3.0])), 0.0, 0.0))
    elif corruption == "declared":
        h["declared"] = draw(st.tuples(st.integers(-3, 60), st.integers(-1, 40), st.integers(-1, 30000)))
    elif corruption == "datatype":
        h["datatype"] = draw(st.sampled_from([128, 32]))  # RGB24, complex64
    elif corruption == "srow":
        h.update(sform_code=1, srows=(draw(row), [0.0, 0.0, 0.0, 0.0], draw(row)))
    elif corruption == "constant":
        h["constant"] = True
    return h


def _write(path: Path, h: dict) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape(h["shape"])
    header.set_data_dtype(np.float32)
    data = bytearray(header.binaryblock)
    struct.pack_into("<4h", data, 40, 3, *h["declared"])
    struct.pack_into("<2h", data, 70, h["datatype"], ITEMSIZE[h["datatype"]] * 8)
    struct.pack_into("<4f", data, 76, -1.0, *h["pixdim"])
    struct.pack_into("<f", data, 108, 352.0)
    struct.pack_into("<2h", data, 252, h["qform_code"], h["sform_code"])
    struct.pack_into("<3f", data, 256, *h["quaternion"])
    struct.pack_into("<3f", data, 268, 10.0, -20.0, 30.0)
    struct.pack_into("<12f", data, 280, *[v for r in h["srows"] for v in r])
    rng = np.random.default_rng(h["seed"])
    count = int(np.prod(h["shape"]))
    dtype = DTYPES[h["datatype"]]
    if dtype is None:
        voxels = rng.integers(0, 255, count * ITEMSIZE[h["datatype"]], dtype=np.uint8).tobytes()
    else:
        values = np.zeros(count) if h["constant"] else rng.normal(100, 50, count)
        voxels = values.astype(dtype).tobytes()  # Fortran order of a random field: any order is as good
    path.write_bytes(bytes(data) + b"\0" * 4 + voxels)


@pytest.fixture(scope="module")
def models_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_micro_model(root, "sdseg")
    previous = os.environ.get("MEDDIFFUSION_MODELS_DIR")
    os.environ["MEDDIFFUSION_MODELS_DIR"] = str(root)
    yield
    if previous is None:
        del os.environ["MEDDIFFUSION_MODELS_DIR"]
    else:
        os.environ["MEDDIFFUSION_MODELS_DIR"] = previous


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=headers())
def test_any_nifti_is_processed_exactly_or_refused_in_one_line(models_env, h):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        image, out = folder / "ct.nii", folder / "out"
        _write(image, h)
        original = image.read_bytes()
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            code = main(["segment", "--image", str(image), "--out", str(out / "seg.nii.gz"), "--quiet"])
        err = stderr.getvalue()
        assert image.read_bytes() == original
        event("written" if code == 0 else "refused: " + " ".join(err.replace(str(image), "").split()[1:4]))
        if code == 0:
            written, source = read_volume(out / "seg.nii.gz"), read_volume(image)
            assert written.shape == source.shape
            np.testing.assert_allclose(written.ijk_to_ras, source.ijk_to_ras, rtol=1e-5, atol=1e-4)
            assert np.all(np.isfinite(source.ijk_to_ras))
        else:
            lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
            assert code == 2, err
            assert len(lines) == 1 and lines[0].startswith("error: "), err
            assert not out.exists(), err
