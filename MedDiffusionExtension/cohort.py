"""Cohort mode: many cases from a CSV, resumable (finished cases are skipped) and sharded across torchrun ranks."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import InputError


@dataclass(frozen=True)
class Shard:
    rank: int
    world_size: int

    @classmethod
    def from_environment(cls) -> "Shard":
        # torchrun sets RANK and WORLD_SIZE; a plain run is rank 0 of 1.
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if not 0 <= rank < world:
            raise InputError(f"inconsistent RANK={rank} / WORLD_SIZE={world}; launch with torchrun or unset them")
        return cls(rank, world)

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", self.rank))


def read_cohort(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a cohort CSV; paths in it are relative to the CSV's folder unless absolute."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cohort file {path} does not exist")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("case_id",) + required if c not in columns]
        if missing:
            raise InputError(f"cohort file {path} lacks column(s) {', '.join(missing)}; expected a header with case_id,{','.join(required)}")
        rows = []
        for number, row in enumerate(reader, start=2):
            if not (row.get("case_id") or "").strip():
                raise InputError(f"cohort file {path} line {number} has an empty case_id")
            for column in required:
                value = (row.get(column) or "").strip()
                if not value:
                    raise InputError(f"cohort file {path} line {number} has an empty {column}")
                row[column] = str((path.parent / value) if not Path(value).is_absolute() else Path(value))
            rows.append(row)
    ids = [r["case_id"] for r in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"cohort file {path} repeats case_id {', '.join(duplicates)}; case ids must be unique")
    return rows


def run_cohort(
    rows: list[dict[str, str]], outputs_of: Callable[[dict[str, str]], list[Path]],
    run_case: Callable[[dict[str, str]], None], shard: Shard, log: Callable[[str], None],
) -> int:
    """Run this rank's share of the cases; returns how many failed. A case whose outputs all exist is skipped."""
    failed = 0
    mine = rows[shard.rank::shard.world_size]
    for number, row in enumerate(mine, start=1):
        case = row["case_id"]
        prefix = f"[{number}/{len(mine)}] {case}"
        if all(p.exists() for p in outputs_of(row)):
            log(f"{prefix}: done already, skipped")
            continue
        try:
            run_case(row)
            log(f"{prefix}: ok")
        except InputError as error:
            failed += 1
            log(f"error: case {case}: {error}")
    return failed
