"""The modules' self-tests on the bundled sample data (Resources/SampleData), as desktop Slicer runs them:
first with micro random-weight models (the data path: real sizes, int16 NIfTI, the scanner geometry), then with the
bundled default models themselves when they are installed. Against the real MRML of slicer-core."""

from __future__ import annotations

import pytest

from slicer_compat.fixtures import slicer_env, tiny_models  # noqa: F401 - pytest fixtures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def modules(slicer_env):  # noqa: F811
    import MedDiffusionSegmentation
    import MedDiffusionTranslation
    from MedDiffusionLib import sampledata

    if not (sampledata.sampleDataFolder() / sampledata.CHECKSUMS_FILE).is_file():
        pytest.skip("Resources/SampleData has not been generated")
    return MedDiffusionTranslation, MedDiffusionSegmentation


def test_self_tests_on_bundled_sample_data_with_micro_models(modules, tiny_models):  # noqa: F811
    translation, segmentation = modules
    # The main self-test of each module (cancel and refusal are covered on small volumes elsewhere).
    test = translation.MedDiffusionTranslationTest()
    test.modelName = tiny_models["cdm"]
    test.setUp()
    test.test_SyntheticT1cKeepsT1Geometry()
    test = segmentation.MedDiffusionSegmentationTest()
    test.modelName = tiny_models["sdseg"]
    test.setUp()
    test.test_SegmentationOnCtGeometry()


def _bundled_default(method: str):
    from MedDiffusionExtension.weights import ModelRegistry, bundled_models_dir

    cards = [c for c in ModelRegistry([bundled_models_dir()]).cards().values() if c.method == method]
    return sorted(cards, key=lambda c: (not c.data.get("default", False), c.name))[0].name if cards else None


def test_self_tests_on_bundled_sample_data_with_bundled_models(modules):
    cdm, sdseg = _bundled_default("cdm"), _bundled_default("sdseg")
    if cdm is None or sdseg is None:
        pytest.skip("the bundled CDM and SDSeg models are not in Resources/Models yet")
    translation, segmentation = modules
    test = translation.MedDiffusionTranslationTest()
    test.modelName = cdm
    test.edtsModelName = _bundled_default("edts") or ""  # the bundled EDTS-Trans model's part of the self-test
    test.runTest()
    test = segmentation.MedDiffusionSegmentationTest()
    test.modelName = sdseg
    test.runTest()
