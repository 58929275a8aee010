"""Cohort mode: many cases from a CSV, resumable (finished cases are skipped) and sharded across torchrun ranks.

A failing case never stops the others: whatever it raises is reported and the next case runs. Under torchrun the
ranks then wait for one another before anyone exits (torchrun ends every rank as soon as one exits with an error,
which would lose the other ranks' valid cases); they agree on the total, rank 0 reports it, and every rank returns
that total, so the launch exits non-zero exactly when some case failed anywhere. Each rank's GPU is chosen by
device.resolve_device (cuda:LOCAL_RANK for `auto` and `cuda`).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

from .errors import Cancelled, InputError

# How long a rank that finished its share waits for the slowest one. A rank that dies makes torchrun end the others,
# so this only bounds a rank that is still working (e.g. resumed with all its cases done, next to one with many).
AGREEMENT_TIMEOUT = timedelta(days=7)


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


# Characters that would make a case_id anything but one plain file or folder name on any system.
_UNSAFE_IN_CASE_ID = set('/\\:*?"<>|')


def _cohort_text(path: Path) -> str:
    """The CSV's text: UTF-8 with or without a BOM (as spreadsheets save it), UTF-16 with a BOM, else Windows-1252
    or Latin-1 (older spreadsheet exports); every byte sequence decodes one of these ways."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise InputError(f"cohort file {path} is not valid UTF-16 text; save it as UTF-8 CSV") from None
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def check_case_id(case_id: str) -> str | None:
    """Why `case_id` cannot name a case's output (None when it can): it must be one plain path component."""
    if case_id in (".", "..") or case_id != case_id.strip():
        return "must be a plain name (no leading/trailing spaces, not . or ..)"
    if any(ch in _UNSAFE_IN_CASE_ID or ord(ch) < 32 or ord(ch) == 127 for ch in case_id):
        return "must not contain / \\ : * ? \" < > | or control characters (it names the case's output)"
    return None


def read_cohort(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a cohort CSV; paths in it are relative to the CSV's folder unless absolute.

    Any problem with the file itself (missing columns, an empty or unsafe case_id, a repeated case_id) refuses the
    whole cohort before any case runs: InputError, exit status 2."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cohort file {path} does not exist")
    try:
        text = _cohort_text(path)
    except OSError as error:
        raise InputError(f"cannot read cohort file {path}: {error.strerror}") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        missing = [c for c in ("case_id",) + required if c not in columns]
        if missing:
            raise InputError(f"cohort file {path} lacks column(s) {', '.join(missing)}; "
                             f"expected a header with case_id,{','.join(required)}")
        rows = []
        for number, row in enumerate(reader, start=2):
            case_id = (row.get("case_id") or "").strip()
            if not case_id:
                raise InputError(f"cohort file {path} line {number} has an empty case_id")
            problem = check_case_id(case_id)
            if problem:
                raise InputError(f"cohort file {path} line {number}: case_id {case_id!r} {problem}")
            row["case_id"] = case_id
            for column in required:
                value = (row.get(column) or "").strip()
                if not value:
                    raise InputError(f"cohort file {path} line {number} has an empty {column}")
                row[column] = str((path.parent / value) if not Path(value).is_absolute() else Path(value))
            rows.append(row)
    except csv.Error as error:
        raise InputError(f"cohort file {path} is not a valid CSV ({error})") from None
    ids = [r["case_id"] for r in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"cohort file {path} repeats case_id {', '.join(duplicates)}; case ids must be unique")
    return rows


def run_cohort(
    rows: list[dict[str, str]], outputs_of: Callable[[dict[str, str]], list[Path]],
    run_case: Callable[[dict[str, str]], None], shard: Shard, log: Callable[[str], None],
) -> int:
    """Run this rank's share of the cases; returns how many failed (under torchrun: on all ranks together).

    A case whose outputs all exist is skipped. Cancellation stops the run; any other exception fails only its case.
    """
    failed = 0
    mine = rows[shard.rank::shard.world_size]
    rank = f"[rank {shard.rank}] " if shard.world_size > 1 else ""
    for number, row in enumerate(mine, start=1):
        case = row["case_id"]
        prefix = f"{rank}[{number}/{len(mine)}] {case}"
        try:
            if all(Path(p).exists() for p in outputs_of(row)):
                log(f"{prefix}: done already, skipped")
                continue
            run_case(row)
            log(f"{prefix}: ok")
        except Cancelled:
            raise
        except Exception as error:  # noqa: BLE001  one case's failure, whatever it is, must not stop the others
            failed += 1
            detail = str(error) if isinstance(error, InputError) else f"{type(error).__name__}: {error}"
            log(f"{rank}error: case {case}: {detail}")
    if shard.world_size > 1:
        failed = _agree_on_failures(shard, failed, len(rows), log)
    return failed


def _agree_on_failures(shard: Shard, failed: int, total: int, log: Callable[[str], None]) -> int:
    """Wait for every rank, then the number of failed cases over all ranks (this rank's own without torchrun)."""
    if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        return failed  # ranks set by hand (e.g. separate jobs): nobody to wait for, nothing ends the others
    import torch
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        # gloo on the host: the agreement needs no GPU, and works whatever device the cases ran on.
        dist.init_process_group("gloo", rank=shard.rank, world_size=shard.world_size, timeout=AGREEMENT_TIMEOUT)
    try:
        count = torch.tensor([failed], dtype=torch.int64)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
    finally:
        if created:
            dist.destroy_process_group()
    failed_everywhere = int(count.item())
    if shard.rank == 0:
        log(f"cohort: {failed_everywhere} of {total} case(s) failed" if failed_everywhere
            else f"cohort: all {total} case(s) done")
    return failed_everywhere
