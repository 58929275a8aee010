"""What the modules offer, as the GUI names it: methods with an installed model, model cards, devices.

The rules (which models a task can run, the default one, labels of inputs and targets) are the backend task
layer's (MedDiffusionExtension.tasks, torch-free); this file only shapes them for the panels.
"""

from __future__ import annotations

import html

from . import backend


# (value, label) of the precision menu; the values are the task layer's PRECISIONS.
PRECISION_CHOICES = (("auto", "Auto (bf16/fp16 on GPUs, fp32 on CPUs)"), ("fp32", "fp32 (exact)"), ("bf16", "bf16"),
                     ("fp16", "fp16"))


def tasks():
    """The backend's task layer (imports no torch)."""
    backend.ensureBackendImportable()
    from MedDiffusionExtension import tasks as taskLayer

    return taskLayer


def targetLabel(name: str) -> str:
    return tasks().label(name)


def targetsLabel(names) -> str:
    return tasks().labels(names)


def availableMethods(task: str) -> list:
    """Methods of `task` to offer: with at least one installed model this version can run."""
    return tasks().offered_methods(task)


def modelsForMethod(task: str, method: str) -> list:
    """Cards for `method`; the one flagged "default" first, then by name."""
    return tasks().models_for(task, method)


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
        ("Model", f"{card.name} {card.version} ({tasks().METHODS[card.method].label})"),
        ("Outputs", targetsLabel(card.output_names)),
        ("License", str(data.get("license", "not stated"))),
        ("Training data", str(training.get("data", "not stated")) if isinstance(training, dict) else str(training)),
        ("Metrics", _metricsText(data.get("metrics"))),
        ("Citation", str(data.get("citation", ""))),
    ]
    if len(card.segments) > 1:
        rows.insert(2, ("Organs", ", ".join(f"{s.name} ({s.label})" for s in card.segments)))
    if data.get("intended_use"):
        rows.append(("Intended use", str(data["intended_use"])))
    return "".join(f"<b>{html.escape(k)}:</b> {html.escape(v)}<br>" for k, v in rows)


def deviceChoices() -> list[tuple[str, str]]:
    """(id, label): auto, CPU, each GPU by name (and Apple MPS), as the runner's Python sees them; listing them needs
    torch, which only the runner process imports."""
    from . import dependencies

    return dependencies.probeResult().deviceChoices()


def runSettings(steps: int, samples: int, seed: int, device: str, batchSize: int, precision: str = "auto"):
    """The task layer's run settings from a panel's values (steps 0: the model card's default; batchSize 0: "auto",
    the card's batch for the device, else the measured rule)."""
    batch = tasks().AUTO_BATCH_SIZE if int(batchSize) == 0 else int(batchSize)
    return tasks().RunSettings(steps=int(steps) or None, samples=int(samples), seed=int(seed), device=device,
                               batch_size=batch, precision=precision)
