"""`python -m training bench` (`make bench`): the same command as `meddiffusion bench`, kept under its old name for
scripts that call it. The benchmark itself lives in MedDiffusionExtension/bench (the runtime CLI offers it)."""

from __future__ import annotations

from MedDiffusionExtension.bench import command

from .cli import Command

COMMAND = Command("measure speed and memory of both methods at both scales (same as `meddiffusion bench`; "
                  "docs/benchmarks.md)", command.add_arguments, command.run)
