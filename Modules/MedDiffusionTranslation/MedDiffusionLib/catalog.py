"""What the modules offer, as the GUI names it: methods with an installed model, their targets, model cards, devices.

The model list comes from the backend's registry (bundled Resources/Models and the user folder
$MEDDIFFUSION_MODELS_DIR or ~/.meddiffusion/models), which imports torch: call these only once the dependencies
are installed.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from . import backend


@dataclass(frozen=True)
class Method:
    key: str  # the model card's "method"
    label: str
    task: str  # "translation" or "segmentation"
    inputs: tuple  # input names the runner expects, in order
    runnable: bool  # False: recognised, but this version has no pipeline for it


METHODS = {
    "cdm": Method("cdm", "CDM", "translation", ("t1", "t2"), True),
    # EDTS-Trans (T1 only -> T2) will run through the same runner once its pipeline exists; until then its models
    # are listed nowhere, rather than offered and failing.
    "edts": Method("edts", "EDTS-Trans", "translation", ("t1",), False),
    "sdseg": Method("sdseg", "SDSeg", "segmentation", ("image",), True),
}

# Model output names (BraTS) -> labels shown to users.
TARGET_LABELS = {"t1c": "T1c", "t2f": "FLAIR", "t2w": "T2", "t1n": "T1"}


def targetLabel(name: str) -> str:
    return TARGET_LABELS.get(name, name)


def targetsLabel(names) -> str:
    return " + ".join(targetLabel(n) for n in names)


def modelCards(task: str) -> dict:
    """name -> ModelCard of every installed model for `task` whose method this version can run."""
    backend.ensureBackendImportable()
    from MedDiffusionExtension.weights import ModelRegistry

    cards = ModelRegistry().cards()
    return {name: card for name, card in sorted(cards.items())
            if card.task == task and card.method in METHODS and METHODS[card.method].runnable}


def availableMethods(task: str) -> list[Method]:
    """Methods of `task` with at least one installed model, in METHODS order."""
    installed = {card.method for card in modelCards(task).values()}
    return [m for m in METHODS.values() if m.task == task and m.key in installed]


def modelsForMethod(task: str, method: str) -> list:
    """Cards for `method`; the one flagged "default" first, then by name."""
    cards = [c for c in modelCards(task).values() if c.method == method]
    return sorted(cards, key=lambda c: (not c.data.get("default", False), c.name))


def findModel(task: str, name: str = "", method: str = ""):
    """The card named `name`, or the default model of `method` (any method of the task when empty)."""
    cards = modelCards(task)
    if name:
        if name not in cards:
            from MedDiffusionExtension.errors import InputError

            known = ", ".join(cards) or "none installed"
            raise InputError(f"no {task} model named {name!r} is installed (installed: {known})")
        return cards[name]
    candidates = [c for c in cards.values() if not method or c.method == method]
    if not candidates:
        from MedDiffusionExtension.errors import InputError

        raise InputError(f"no {METHODS[method].label if method in METHODS else task} model is installed; "
                         "add one to ~/.meddiffusion/models or reinstall the extension")
    return sorted(candidates, key=lambda c: (not c.data.get("default", False), c.name))[0]


def _flatMetrics(metrics, prefix: str = ""):
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatMetrics(value, f"{name} ")
        elif isinstance(value, float):
            yield f"{name} {value:.3g}"
        elif isinstance(value, (int, str)):
            yield f"{name} {value}"


def _metricsText(metrics, limit: int = 12) -> str:
    """Nested metric dicts in one line, e.g. "t1c psnr 27.4; t1c ssim 0.912; data: 20 phantom cases"."""
    if not isinstance(metrics, dict) or not metrics:
        return "none reported"
    parts = list(_flatMetrics(metrics))
    text = "; ".join(parts[:limit]) + ("; ..." if len(parts) > limit else "")
    return text or "see the model card"


def cardSummaryHtml(card) -> str:
    """Version, license, training data, metrics and citation of a model, for the module panel."""
    data = card.data
    training = data.get("training", {})
    rows = [
        ("Model", f"{card.name} {card.version} ({METHODS[card.method].label if card.method in METHODS else card.method})"),
        ("Outputs", targetsLabel(card.output_names)),
        ("License", str(data.get("license", "not stated"))),
        ("Training data", str(training.get("data", "not stated")) if isinstance(training, dict) else str(training)),
        ("Metrics", _metricsText(data.get("metrics"))),
        ("Citation", str(data.get("citation", ""))),
    ]
    if data.get("intended_use"):
        rows.append(("Intended use", str(data["intended_use"])))
    return "".join(f"<b>{html.escape(k)}:</b> {html.escape(v)}<br>" for k, v in rows)


def deviceChoices() -> list[tuple[str, str]]:
    """(id, label): auto, CPU, each GPU by name (and Apple MPS)."""
    backend.ensureBackendImportable()
    from MedDiffusionExtension.device import available_devices

    return available_devices()
