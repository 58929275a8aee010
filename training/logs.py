"""Run logs written by rank 0: one CSV per stream (train_log.csv, val_log.csv) and TensorBoard events.

On resume, rows past the resumed step (logged after the last checkpoint of a killed run) are dropped from the CSVs
and purged from TensorBoard, so each step appears once.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"


def csv_path(out_dir: str | Path, stream: str) -> Path:
    return Path(out_dir) / f"{stream}_log.csv"


def _truncate_after(path: Path, step: int) -> list[str] | None:
    """Drop rows with step > `step`; return the header to keep appending with."""
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
        header = list(rows[0].keys()) if rows else None
    if header is None:
        return None
    kept = [row for row in rows if int(row["step"]) <= step]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(kept)
    return header


class RunLogger:
    """log(stream, step, scalars): a CSV row and TensorBoard scalars `stream/name`; a no-op on ranks other than 0."""

    def __init__(self, out_dir: str | Path, enabled: bool, resume_step: int = 0):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.resume_step = resume_step
        self._headers: dict[str, list[str]] = {}
        self._writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(
                log_dir=str(self.out_dir / TENSORBOARD_DIR), purge_step=resume_step + 1 if resume_step else None
            )

    def log(self, stream: str, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **scalars}
        path = csv_path(self.out_dir, stream)
        if stream not in self._headers:
            existing = _truncate_after(path, self.resume_step) if self.resume_step else None
            self._headers[stream] = existing or list(row.keys())
            if existing is None:
                with open(path, "w", newline="") as handle:
                    csv.DictWriter(handle, fieldnames=self._headers[stream]).writeheader()
        with open(path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self._headers[stream], extrasaction="ignore").writerow(row)
        for name, value in scalars.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(f"{stream}/{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
