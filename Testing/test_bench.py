"""`python -m training bench` (`make bench`): the command, its JSON, and a clock that waits for CUDA."""

from __future__ import annotations

import json
import types

import pytest
import torch

from training import bench
from training.cli import main as training_main


def test_timing_waits_for_queued_cuda_work_before_each_clock_reading(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: events.append("synchronize"))
    clock = iter([10.0, 12.5])
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: events.append("clock") or next(clock)))

    seconds, result = bench._time(lambda x: events.append("run") or x * 2, 21)

    assert (seconds, result) == (2.5, 42)
    assert events == ["synchronize", "clock", "run", "synchronize", "clock"]


def test_timing_on_cpu_never_touches_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: pytest.fail("synchronized without CUDA work"))
    seconds, result = bench._time(sum, [1, 2, 3])
    assert result == 6 and seconds >= 0


@pytest.mark.slow
def test_bench_command_measures_in_its_own_process_and_writes_json(tmp_path, capsys):
    out = tmp_path / "benchmarks.json"
    assert training_main(["bench", "--task", "engine_overhead", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert set(results) == {"machine", "engine_overhead"} and results["machine"]["device"] == "cpu"
    measured = results["engine_overhead"]
    assert "error" not in measured, measured
    assert measured["seconds"] > 0 and measured["peak_rss_mb"] > 0
    assert capsys.readouterr().out.strip() == str(out)


def test_bench_refuses_an_unknown_task(capsys):
    with pytest.raises(SystemExit) as exit_info:
        training_main(["bench", "--task", "everything"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
