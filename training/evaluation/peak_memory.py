"""Peak memory of one segmentation setting on one CT, measured in a fresh Python process of its own.

A process's peak resident set size (getrusage ru_maxrss) only ever grows, and the allocator keeps memory a previous
model freed, so in-process numbers would depend on what ran before. Each setting therefore runs once in its own
`python -m training.evaluation.peak_memory` process, which reports:
- peak_rss_mib: the process's peak RSS, Python, PyTorch, the model's weights and the CT included;
- increase_mib: that peak minus the peak before segmenting (after imports, loading the model and reading the CT),
  i.e. what segmenting itself added;
- cuda_peak_mib (CUDA only): torch.cuda.max_memory_allocated while segmenting.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]  # where `python -m training...` finds the package


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def measure_peak_memory(model: str | Path, image: str | Path, *, steps: int | None, samples: int, device: str,
                        batch_size: int) -> dict:
    """Run the model folder `model` on the CT file `image` once in a fresh process; the memory fields above, or
    {"error": the process's last line of stderr}."""
    settings = {"model": str(Path(model).resolve()), "image": str(Path(image).resolve()), "steps": steps,
                "samples": samples, "device": device, "batch_size": batch_size}
    process = subprocess.run([sys.executable, "-m", "training.evaluation.peak_memory", json.dumps(settings)],
                             capture_output=True, text=True, cwd=REPOSITORY)
    if process.returncode != 0:
        lines = process.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {process.returncode}"}
    return json.loads(process.stdout.strip().splitlines()[-1])


def _measure(settings: dict) -> dict:
    import torch

    from MedDiffusionExtension.device import resolve_device
    from MedDiffusionExtension.volume import read_volume
    from MedDiffusionExtension.weights import load_model

    from .common import run_model

    loaded = load_model(settings["model"], task="segmentation")
    image = read_volume(settings["image"])
    on_cuda = resolve_device(settings["device"]).type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    before = _peak_rss_mib()
    run_model(loaded, {"image": image}, device=settings["device"], batch_size=settings["batch_size"],
              steps=settings["steps"], samples=settings["samples"])
    peak = _peak_rss_mib()
    result = {"peak_rss_mib": peak, "increase_mib": peak - before}
    if on_cuda:
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
