"""Benchmarks (`meddiffusion bench`): both methods at the bundled (tiny) and the papers' scale with random weights,
their pixel-space peers, precisions and layouts, the machine's measured peak, and the bundled models end to end.

command.py runs jobs in separate processes (__main__.py) and writes the report (report.py); scale_jobs.py measures
one method at one scale; bundled_jobs.py the bundled models through the CLI; machine.py the machine; parts.py what
each network part costs; random_models.py the random-weight models and baselines; timing.py the clocks.
"""
