"""Cohort mode: every failing case (whatever it raises) is reported and the rest go on; under torchrun a rank
with failed cases waits for the others, so their valid cases are still written, and the launch reports the total.

Run as a script (by torchrun) this file is the worker of the two-process test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from MedDiffusionExtension.cohort import Shard, run_cohort  # noqa: E402
from MedDiffusionExtension.errors import Cancelled, InputError  # noqa: E402

# Rank r of 2 takes rows r, r + 2: each rank has a bad case first, and rank 1's good case is slow, so that it is
# still running when rank 0 is done.
ROWS = [
    {"case_id": "bad-crash"},  # rank 0: an unexpected error (not an InputError)
    {"case_id": "bad-input"},  # rank 1: an InputError
    {"case_id": "good-fast"},  # rank 0
    {"case_id": "good-slow"},  # rank 1
]


def _outputs(out: Path, row: dict) -> list[Path]:
    return [out / f"{row['case_id']}.txt"]


def _run_case(out: Path, row: dict) -> None:
    case = row["case_id"]
    if case == "bad-crash":
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    if case == "bad-input":
        raise InputError("volume is 2D")
    if case == "good-slow" and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        time.sleep(2.0)
    _outputs(out, row)[0].write_text(case)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def test_every_failure_is_reported_and_the_other_cases_go_on(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    lines = []
    failed = run_cohort(ROWS, lambda row: _outputs(tmp_path, row), lambda row: _run_case(tmp_path, row),
                        Shard(0, 1), lines.append)
    assert failed == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good-fast.txt", "good-slow.txt"]
    assert "error: case bad-crash: RuntimeError: CUDA error: an illegal memory access was encountered" in lines
    assert "error: case bad-input: volume is 2D" in lines
    # Finished cases are skipped on a second run; the failed ones are tried again.
    again = []
    assert run_cohort(ROWS, lambda row: _outputs(tmp_path, row), lambda row: _run_case(tmp_path, row),
                      Shard(0, 1), again.append) == 2
    assert sum("done already" in line for line in again) == 2


def test_cancellation_stops_the_cohort(tmp_path):
    def cancelled(row):
        raise Cancelled()

    with pytest.raises(Cancelled):
        run_cohort(ROWS, lambda row: _outputs(tmp_path, row), cancelled, Shard(0, 1), lambda m: None)


@pytest.mark.slow
def test_a_rank_with_failed_cases_lets_the_others_finish_under_torchrun(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(Path(__file__)), str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good-fast.txt", "good-slow.txt"], done.stderr[-3000:]
    assert done.returncode != 0  # the launch still says that cases failed
    assert "[rank 0] error: case bad-crash: RuntimeError" in done.stderr
    assert "[rank 1] error: case bad-input: volume is 2D" in done.stderr
    assert "cohort: 2 of 4 case(s) failed" in done.stderr


def _worker(out: Path) -> int:
    failed = run_cohort(ROWS, lambda row: _outputs(out, row), lambda row: _run_case(out, row),
                        Shard.from_environment(), _log)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(_worker(Path(sys.argv[1])))
