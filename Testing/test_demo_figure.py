"""The demo's overview figure (out/demo/overview.png), drawn from small volumes."""

from __future__ import annotations

import matplotlib.image
import numpy as np

from MedDiffusionExtension.demo_figure import axial, bounding_box, busiest_slice, write_overview
from MedDiffusionExtension.volume import Volume

LPS = np.diag([-2.0, -2.0, 2.0, 1.0])  # i -> left, j -> posterior, k -> superior (the canonical axial order)
RAS = np.diag([2.0, 2.0, 2.0, 1.0])  # i -> right, j -> anterior: the same slices, mirrored in both directions


def test_axial_slices_show_the_patients_right_on_the_left_and_anterior_up():
    array = np.zeros((4, 6, 8), np.float32)
    array[:, 1, 0] = 1.0  # RAS storage: i = 0 is the patient's left, j = 1 near posterior
    shown = axial(Volume(array, RAS))[0]
    assert shown[4, 7] == 1.0 and shown.sum() == 1.0  # on the image's right (patient's left), near the bottom
    assert np.array_equal(axial(Volume(array, LPS)), array)


def test_slice_and_crop_helpers():
    mask = np.zeros((5, 10, 10), bool)
    mask[3, 2:4, 5:7] = True
    assert busiest_slice(mask) == 3 and busiest_slice(np.zeros((5, 2, 2), bool)) == 2
    assert bounding_box(mask[3], margin=1) == (slice(1, 5), slice(4, 8))
    assert bounding_box(mask[0]) == (slice(None), slice(None))


def test_overview_is_a_png_with_every_panel(tmp_path):
    rng = np.random.default_rng(0)
    head = np.zeros((6, 24, 20), np.float32)
    head[:, 4:20, 3:17] = 100 + rng.normal(0, 5, (6, 16, 14))
    tumour = np.zeros(head.shape, np.uint8)
    tumour[4, 8:12, 5:9] = 1
    mri = {title: Volume(head * (i + 1), LPS) for i, title in enumerate(
        ("T1 (input)", "T2 (input)", "synthetic T1c", "reference T1c", "synthetic FLAIR", "reference FLAIR"))}
    scores = {"t1c": {"psnr": 21.5, "ssim": 0.71}, "t2f": {"psnr": 24.0, "ssim": 0.8}}
    ct = np.full((5, 32, 32), -1000.0, np.float32)
    ct[:, 6:26, 4:28] = 40.0
    truth = np.zeros(ct.shape, np.uint8)
    truth[2, 10:20, 10:20] = 1
    predicted = np.roll(truth, 2, axis=2)

    path = write_overview(tmp_path / "demo" / "overview.png", mri, scores, Volume(ct, LPS), Volume(predicted, LPS),
                          Volume(truth, LPS), dice=0.8, tumour=Volume(tumour, LPS))

    assert path == tmp_path / "demo" / "overview.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 1.5 * image.shape[0]  # a 2 x 4 grid
    assert image[..., :3].std() > 0.05  # drawn, not blank
