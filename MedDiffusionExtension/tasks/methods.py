"""The methods MedDiffusion knows: which task each serves, what inputs it takes, and how users see it named.

Torch-free, so the Slicer panels, the web app and `models list` can read it without loading a network. A new
method is one entry here plus one pipeline file that registers its slice model (see pipelines/registry.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Method:
    key: str  # the model card's "method"
    label: str
    task: str  # the card's task: "translation" or "segmentation"
    inputs: tuple[str, ...]  # input names, the first is the reference grid of every output
    diffusion: bool  # False: a plain network baseline, one deterministic pass (no sampler, one sample)
    offered: bool = True  # shown in the Slicer and web menus (baselines are for evaluation only)
    runnable: bool = True  # False: recognised, but this version has no pipeline for it yet
    # A refiner that corrects a first estimate where a mask says so (EDTS-Trans): the mask can be written as an
    # output, and the refiner's start and reach are options (refine_strength, refine_every_slice).
    mask_refiner: bool = False


METHODS = {
    "cdm": Method("cdm", "CDM", "translation", ("t1", "t2"), diffusion=True),
    "cunet": Method("cunet", "UNet (CDM ablation M1)", "translation", ("t1", "t2"), diffusion=False, offered=False),
    "edts": Method("edts", "EDTS-Trans", "translation", ("t1",), diffusion=True, mask_refiner=True),
    "sdseg": Method("sdseg", "SDSeg", "segmentation", ("image",), diffusion=True),
    "segunet": Method("segunet", "UNet baseline", "segmentation", ("image",), diffusion=False, offered=False),
}

# Names as the models use them (BraTS) -> as people read them.
LABELS = {"t1c": "T1c", "t2f": "FLAIR", "t2w": "T2", "t1n": "T1", "t1": "T1", "t2": "T2", "image": "CT"}


def label(name: str) -> str:
    return LABELS.get(name, name)


def labels(names) -> str:
    return " + ".join(label(n) for n in names)


def method_for(key: str, task: str) -> Method:
    """The method of a card, checked to serve `task` and to be runnable here."""
    method = METHODS.get(key)
    if method is None:
        raise InputError(f"this version of MedDiffusion does not know the method {key!r}; update MedDiffusion")
    if method.task != task:
        raise InputError(f"{method.label} is a {method.task} method, not a {task} method; pick another model with --model")
    if not method.runnable:
        raise InputError(f"{method.label} models cannot run in this version of MedDiffusion yet")
    return method
