"""`python -m MedDiffusionExtension.bench JOB PARAMETERS_JSON`: one benchmark job in this process, its result as
the last line of stdout (JSON) with the process's peak memory. command.py starts one such process per job."""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    import torch

    job, parameters = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    threads = parameters.pop("threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    from .timing import peak_rss_mb

    if job == "machine":
        from .machine import describe, peak_flops
        from ..device import resolve_device

        device = resolve_device(parameters["device"])
        result = {"machine": describe(device), "peaks": peak_flops(device, repeats=parameters.get("repeats", 3))}
    elif job == "scale":
        from .scale_jobs import Plan, measure

        plan = Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in parameters.items()})
        result = measure(plan)
    else:
        from .bundled_jobs import JOBS

        result = JOBS[job](parameters["device"])
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
