"""The module files' self-tests and VTK references, against the real MRML of slicer-core: a self-test installs what
the runner needs before its first step (as a clean Slicer or an extension build machine has none of it), and the
segmentation Logic releases the image Slicer's segmentations logic hands it.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from slicer_compat.fixtures import slicer_env  # noqa: F401 - pytest fixture

NAMES = ("MedDiffusionTranslation", "MedDiffusionSegmentation")


@pytest.fixture(scope="module")
def modules(slicer_env):  # noqa: F811
    import MedDiffusionSegmentation
    import MedDiffusionTranslation

    return dict(zip(NAMES, (MedDiffusionTranslation, MedDiffusionSegmentation)))


def _recordingTest(module, name, calls, monkeypatch):
    """The module's Test, its setUp and test_* steps replaced by recorders (runTest itself is the real one)."""
    test = getattr(module, f"{name}Test")()
    for step in [n for n in dir(test) if n.startswith("test_")] + ["setUp"]:
        monkeypatch.setattr(test, step, lambda step=step: calls.append(step))
    return test


@pytest.mark.parametrize("name", NAMES)
def test_self_test_installs_the_requirements_unattended_before_its_first_step(modules, name, monkeypatch):
    from MedDiffusionLib import dependencies

    calls = []
    monkeypatch.setattr(dependencies, "ensureInstalled",
                        lambda askConfirmation=True: calls.append(("ensureInstalled", askConfirmation)) or True)
    _recordingTest(modules[name], name, calls, monkeypatch).runTest()
    assert calls[0] == ("ensureInstalled", False)
    assert "setUp" in calls and any(c.startswith("test_") for c in calls[1:] if isinstance(c, str))


@pytest.mark.parametrize("name", NAMES)
def test_self_test_stops_with_the_reason_when_the_requirements_cannot_be_installed(modules, name, monkeypatch):
    from MedDiffusionLib import dependencies

    def offline(askConfirmation=True):
        raise RuntimeError("pip: could not reach the package index")

    calls = []
    monkeypatch.setattr(dependencies, "ensureInstalled", offline)
    test = _recordingTest(modules[name], name, calls, monkeypatch)
    with pytest.raises(RuntimeError, match="self-test cannot run: installing .* could not reach the package index"):
        test.runTest()
    assert calls == []


class Segment(dict):
    """A card segment, read as a mapping or by attribute."""

    __getattr__ = dict.__getitem__


def test_segmentation_from_labels_releases_the_oriented_image_it_is_handed(modules, monkeypatch):
    import slicer

    slicer.mrmlScene.Clear()
    labelsArray = np.zeros((4, 8, 8), np.uint8)
    labelsArray[1:3, 2:6, 2:6] = 1
    labels = slicer.util.addVolumeFromArray(labelsArray, name="labels", nodeClassName="vtkMRMLLabelMapVolumeNode")
    reference = slicer.util.addVolumeFromArray(labelsArray.astype(np.float32), name="ct")
    handedOut = []
    real = slicer.vtkSlicerSegmentationsModuleLogic

    class TrackingLogic:
        @staticmethod
        def CreateOrientedImageDataFromVolumeNode(node, *args):
            image = real.CreateOrientedImageDataFromVolumeNode(node, *args)
            handedOut.append(image)
            return image

    logic = modules["MedDiffusionSegmentation"].MedDiffusionSegmentationLogic()
    monkeypatch.setattr(logic, "segments", lambda card: [Segment(name="organ", label=1, color=(0.9, 0.4, 0.3),
                                                                  terminology=None)])
    monkeypatch.setattr(logic, "outputName", lambda volume, card, probability=False: "ct segmentation")
    monkeypatch.setattr(slicer, "vtkSlicerSegmentationsModuleLogic", TrackingLogic)
    segmentation = logic._segmentationFromLabels(labels, reference, card=None)
    monkeypatch.undo()
    gc.collect()

    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    segmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, reference)
    assert np.array_equal(mask > 0, labelsArray == 1)
    [image] = handedOut
    # Only this test's Python reference is left: the one CreateOrientedImageDataFromVolumeNode gave its caller went.
    assert image.GetReferenceCount() == 1, f"{image.GetReferenceCount() - 1} reference(s) leaked"
