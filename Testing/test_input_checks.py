"""What a model expects of its inputs: the card's input_requirements, and the skull-strip check that warns when a
model trained on skull-stripped brains gets a head with its skull.

The detector must never fire on stripped brains (phantoms of every contrast, with tumours, and the stripped MNI152
brain) and must fire on heads with skull and scalp (Testing/synthetic_heads.py: the MNI152 brain with layers
around it; nilearn's template is itself skull-stripped) at several voxel sizes and croppings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from MedDiffusionExtension.volume import Volume, read_volume
from MedDiffusionExtension.volume.checks import (
    MAX_DIP_LEVEL, MIN_DIP, InputRequirementWarning, check_skull_stripped, warn_if_not_skull_stripped,
)
from MedDiffusionExtension.weights.card import CardError, InputRequirements, parse_card, read_card

from synthetic_heads import cropped, mni_head, reduced

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "Resources" / "SampleData"
# (k, j, i) fractions kept: the whole field of view, the upper head, cuts through the scalp on the sides, front and
# back, a tight box and a 4 cm slab.
CROPS = {
    "full": ((0, 1), (0, 1), (0, 1)),
    "upper half": ((0.5, 1), (0, 1), (0, 1)),
    "sides cut": ((0, 1), (0, 1), (0.15, 0.85)),
    "front and back cut": ((0, 1), (0.1, 0.9), (0, 1)),
    "tight": ((0.2, 0.9), (0.12, 0.88), (0.1, 0.9)),
    "slab": ((0.45, 0.65), (0, 1), (0, 1)),
}
# Block sizes (k, j, i) over the 2 mm heads, with the croppings tried at each: 2 mm (all), 4 mm, 6 mm slices at
# 2 mm in-plane.
VARIANTS = [("2 mm", (1, 1, 1), crop) for crop in CROPS] + [
    ("4 mm", (2, 2, 2), "full"), ("6 mm slices", (3, 1, 1), "full"), ("6 mm slices", (3, 1, 1), "sides cut")]


@pytest.fixture(scope="module")
def heads():
    return {(contrast, stripped): mni_head(contrast, stripped, voxel_mm=2, seed=1, noise=0.03)
            for contrast in ("t1", "t2") for stripped in (False, True)}


@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_heads_with_skull_are_found_at_every_voxel_size_and_cropping(heads, contrast):
    for voxels, steps, crop in VARIANTS:
        found = check_skull_stripped(cropped(reduced(heads[contrast, False], steps), CROPS[crop]))
        assert found.stripped is False, (contrast, voxels, crop, found)
        assert found.dip >= MIN_DIP and found.dip_level <= MAX_DIP_LEVEL


@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_stripped_mni_brain_is_never_flagged(heads, contrast):
    for voxels, steps, crop in VARIANTS:
        found = check_skull_stripped(cropped(reduced(heads[contrast, True], steps), CROPS[crop]))
        assert found.stripped is True, (contrast, voxels, crop, found)


def test_stripped_phantoms_are_never_flagged():
    """The bundled sample case (every contrast) and the phantom whose T2-bright oedema gives the deepest dip seen on
    a stripped brain (0.17 here, 0.25 at 1.5 mm, at 0.91 of the tissue level: far too bright to be skull)."""
    from training.phantoms.brain import simulate_brain

    volumes = {f"sample {n}": read_volume(SAMPLES / f"PhantomBrainMR-{n}.nii.gz") for n in ("t1n", "t1c", "t2w", "t2f")}
    phantom = simulate_brain(2, shape=(96, 96, 62))
    volumes.update({f"phantom 2 {n}": Volume(a, phantom.ijk_to_ras) for n, a in phantom.images.items()})
    for name, volume in volumes.items():
        found = check_skull_stripped(volume)
        assert found.stripped is True, (name, found)


def test_volumes_too_small_to_hold_a_head_are_not_judged():
    rng = np.random.default_rng(0)
    box = np.zeros((8, 40, 36), np.float32)
    box[1:-1, 4:-4, 4:-4] = 200 + 100 * rng.random((6, 32, 28))
    assert not check_skull_stripped(Volume(box, np.diag([1.0, 1.2, 3.0, 1.0]))).clearly_not_stripped
    assert check_skull_stripped(Volume(np.ones((4, 8, 8), np.float32), np.eye(4))).stripped is None


def test_one_warning_names_every_unstripped_input(heads):
    head, brain = reduced(heads["t1", False], (2, 2, 2)), reduced(heads["t2", True], (2, 2, 2))
    with pytest.warns(InputRequirementWarning) as caught:
        assert warn_if_not_skull_stripped({"T1": head, "T2": brain}, "cdm-x", "stripped brains") == ["T1"]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("T1 does not look skull-stripped") and "'cdm-x' expects stripped brains" in message


# -- the card field ----------------------------------------------------------------------------------------------------


def _bundled_card() -> dict:
    return json.loads((ROOT / "Resources" / "Models" / "cdm-tiny-phantom" / "card.json").read_text(encoding="utf-8"))


def test_bundled_translation_card_states_its_input_requirements():
    requirements = read_card(ROOT / "Resources" / "Models" / "cdm-tiny-phantom").input_requirements
    assert (requirements.skull_stripped, requirements.co_registered) == (True, True)
    assert "skull-stripped" in requirements.note


def test_cards_without_the_field_get_their_task_default(tmp_path):
    data = _bundled_card()
    del data["input_requirements"]
    assert parse_card(data, tmp_path).input_requirements == InputRequirements.default_for("translation")
    assert InputRequirements.default_for("translation").skull_stripped
    segmentation = json.loads((ROOT / "Resources" / "Models" / "sdseg-tiny-phantom" / "card.json").read_text(encoding="utf-8"))
    requirements = parse_card(segmentation, tmp_path).input_requirements
    assert (requirements.skull_stripped, requirements.co_registered) == (False, False)


def test_partial_and_malformed_requirements(tmp_path):
    data = _bundled_card()
    data["input_requirements"] = {"skull_stripped": False}
    requirements = parse_card(data, tmp_path).input_requirements
    assert (requirements.skull_stripped, requirements.co_registered) == (False, True)  # the rest: the task default
    for bad, field in (({"skull_stripped": "yes"}, "input_requirements.skull_stripped"),
                       ({"co_registered": 1}, "input_requirements.co_registered"),
                       ({"note": 3}, "input_requirements.note"), ([True], "input_requirements")):
        data["input_requirements"] = bad
        with pytest.raises(CardError, match=field.replace(".", r"\.")):
            parse_card(data, tmp_path)
