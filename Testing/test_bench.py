"""`meddiffusion bench` (also `python -m training bench`, `make bench`): clocks that wait for CUDA and time the
networks inside a real pipeline run, FLOP counts, the plans of --quick and full runs, the report's arithmetic and
plot, and the command end to end on its cheapest job."""

from __future__ import annotations

import json
import types

import matplotlib.image
import pytest
import torch

from MedDiffusionExtension.bench import command, report, timing
from MedDiffusionExtension.bench.parts import slice_flops
from MedDiffusionExtension.cli import main as meddiffusion_main
from MedDiffusionExtension.models import CDM_CONFIGS, SDSEG_CONFIGS
from training.cli import main as training_main


def test_timing_waits_for_queued_cuda_work_before_each_clock_reading(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: events.append("synchronize"))
    clock = iter([10.0, 12.5])
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: events.append("clock") or next(clock)))

    seconds, result = timing.time_call(lambda x: events.append("run") or x * 2, 21)

    assert (seconds, result) == (2.5, 42)
    assert events == ["synchronize", "clock", "run", "synchronize", "clock"]


def test_timing_on_cpu_never_touches_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: pytest.fail("synchronized without CUDA work"))
    seconds, result = timing.time_call(sum, [1, 2, 3])
    assert result == 6 and seconds >= 0


def test_part_clock_times_methods_and_modules_in_place_and_restores_them(monkeypatch):
    ticks = iter(range(100))
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    network = torch.nn.Sequential(torch.nn.Linear(2, 2))
    holder = types.SimpleNamespace(encode=lambda x: x + 1, net=network)
    clock = timing.PartClock()
    clock.wrap(holder, "encode", "encoder")
    clock.wrap(holder, "net", "network")
    assert holder.encode(1) == 2 and holder.encode(2) == 3
    assert holder.net(torch.zeros(1, 2)).shape == (1, 2)
    assert dict(clock.calls) == {"encoder": 2, "network": 1}
    assert dict(clock.seconds) == {"encoder": 2.0, "network": 1.0}  # one tick per call with the fake clock
    clock.restore()
    assert "forward" not in vars(network) and holder.encode(5) == 6 and clock.calls["encoder"] == 2


def test_flops_are_counted_on_the_meta_device_per_network_part():
    cdm = slice_flops("cdm", CDM_CONFIGS["tiny"])
    sdseg = slice_flops("sdseg", SDSEG_CONFIGS["paper"])
    assert cdm == {"MDN step": 2_162_688, "C-UNet": 3_112_247_808}
    assert list(sdseg) == ["vision encoder", "denoiser step", "mask decoder"]
    assert sdseg["mask decoder"] > sdseg["vision encoder"] > 9 * sdseg["denoiser step"]  # why DDIM costs little there
    assert slice_flops("unknown", {}) is None


def test_quick_runs_the_paper_scale_once_in_fp32_and_full_runs_repeat_every_precision():
    worker, quick = command.plan("sdseg-paper", quick=True, device="cpu")
    assert worker == "scale" and quick["precisions"] == ["fp32"] and quick["slices"] == 1
    assert (quick["warm_up"], quick["slow_baselines"], quick["layout_study"]) == (False, False, False)
    _, full = command.plan("sdseg-paper", quick=False, device="cpu")
    assert full["precisions"] == ["fp32", "bf16"] and full["repeats"] == 2 and full["batch_sizes"] == [1, 2]
    assert command.plan("cdm-tiny", quick=False, device="cuda")[1]["precisions"] == ["fp32", "bf16", "fp16"]
    _, quick_tiny = command.plan("cdm-tiny", quick=True, device="cpu")  # the tiny scale keeps bf16 beside fp32
    assert quick_tiny["precisions"] == ["fp32", "bf16"] and quick_tiny["baseline_precisions"] == ["fp32"]
    assert not quick_tiny["layout_study"] and quick_tiny["repeats"] == 1
    assert command.plan("cdm_volume", quick=False, device="cpu") == ("cdm_volume", {"device": "cpu"})
    assert set(command.QUICK_JOBS) < set(command.JOBS)


def _pipeline(volume, per_slice, network, build=1.0, parts=None, **extra):
    return dict({"volume_seconds": volume, "volume_seconds_extrapolated": True, "model_build_seconds": build,
                 "seconds_per_slice": {"median": per_slice}, "network_seconds_per_slice": {"median": network},
                 "parts_seconds_per_slice": {k: {"median": v} for k, v in (parts or {}).items()},
                 "pipeline_efficiency": per_slice / network, "network_gflops": 50.0}, **extra)


def _results():
    sdseg_parts = {"vision encoder": 1.0, "denoiser step": 0.5, "mask decoder": 2.0}
    return {
        "machine": {"peaks": {"conv3x3 fp32": {"gflops": 100.0}}},
        "cdm-paper": {"method": "cdm", "scale": "paper", "volume_slices": 155, "peak_rss_mb": 1400.0,
                      "pipelines": {"fp32, 30 steps": _pipeline(621.0, 4.0, 3.9)},
                      "baselines": {"pixel-space diffusion, 30 steps (fp32)": {
                          "precision": "fp32", "volume_seconds": 18135.0, "steps_per_slice": 30, "gflops": 80.0,
                          "pass_seconds_per_slice": {"median": 3.9}}}},
        "sdseg-paper": {"method": "sdseg", "scale": "paper", "volume_slices": 100, "peak_rss_mb": 3500.0,
                        "pipelines": {"fp32, 1 step": _pipeline(351.0, 3.5, 3.5, parts=sdseg_parts),
                                      "fp32, 10 steps": _pipeline(801.0, 8.0, 8.0),
                                      "bf16, 1 step": _pipeline(2001.0, 20.0, 20.0, difference_to_fp32={"label_dice": 0.99})}},
    }


def test_report_puts_peers_side_by_side_and_checks_the_targets(tmp_path):
    results = _results()
    rows = report.rows(results)
    labels = [(row.scale, row.method, row.precision) for row in rows]
    assert labels == [("paper", "CDM (MDN 30 DDIM steps + C-UNet)", "fp32"),
                      ("paper", "pixel-space diffusion, 30 steps", "fp32"),
                      ("paper", "SDSeg single step", "fp32"), ("paper", "SDSeg 10-step DDIM", "fp32"),
                      ("paper", "SDSeg single step", "bf16"), ("paper", "SDSeg single step, 5-sample ensemble", "fp32")]
    baseline = rows[1]
    assert baseline.volume_seconds / baseline.reference == pytest.approx(18135.0 / (3.9 * 155))  # network vs network
    ensemble = rows[-1]
    # encoder once + 5 x (denoiser + decoder): 1 + 5 * 2.5 = 13.5 s of network per slice, and 1 s build
    assert ensemble.network_seconds_per_slice == pytest.approx(13.5)
    assert ensemble.volume_seconds == pytest.approx(1.0 + 13.5 * 100)
    assert "without the shared image latent 1.30x slower" in ensemble.note  # 5 x 3.5 / 13.5
    text = report.markdown(rows, results["machine"]["peaks"])
    assert "| paper | SDSeg 10-step DDIM | fp32 | ≈ 801.0 s | 2.3× |" in text
    assert "50.0 (50 %)" in text and "label Dice to fp32 0.9900" in text
    checks = {label: (round(value, 2), met) for label, value, _, met in report.target_checks(results)}
    assert checks["paper CDM volume (s)"] == (621.0, False)
    assert checks["paper SDSeg volume (s)"] == (351.0, False)
    assert checks["SDSeg 10-step DDIM / single step"] == (round(8.0 / 3.5, 2), False)
    assert checks["CDM vs pixel-space 30 steps (network time)"] == (30.0, False)
    assert checks["pipeline efficiency (sdseg-paper, fp32, 1 step)"] == (1.0, True)
    png = report.plot(rows, tmp_path / "plot.png")
    assert matplotlib.image.imread(png).shape[0] > 200


@pytest.mark.slow
def test_bench_command_measures_in_its_own_process_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "bench"
    assert meddiffusion_main(["bench", "--job", "machine", "--quick", "--out-dir", str(out)]) == 0
    results = json.loads((out / "benchmarks.json").read_text(encoding="utf-8"))
    assert results["quick"] is True and "error" not in results["machine"], results["machine"]
    peaks = results["machine"]["peaks"]
    assert set(peaks) == {"matmul fp32", "conv3x3 fp32", "matmul bf16", "conv3x3 bf16"}
    assert all(peak["gflops"] > 0 for peak in peaks.values()) and results["machine"]["peak_rss_mb"] > 0
    assert "conv3x3 fp32" in (out / "benchmarks.md").read_text(encoding="utf-8")
    assert "matmul fp32" in capsys.readouterr().out


def test_bench_refuses_an_unknown_job_under_either_name(capsys):
    assert meddiffusion_main(["bench", "--job", "everything"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        training_main(["bench", "--job", "everything"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_a_scale_job_runs_the_real_pipeline_with_its_networks_timed_inside():
    from MedDiffusionExtension.bench.scale_jobs import Plan, measure

    result = measure(Plan(method="sdseg", scale="tiny", precisions=("fp32",), slices=1, warm_up=False,
                          layout_study=True, slow_baselines=False))
    assert result["batch_size"] == 4 and result["parameters"] == 13_099_004 and result["volume_slices"] == 100
    for key in ("fp32, 1 step", "fp32, 10 steps"):
        run = result["pipelines"][key]
        assert set(run["parts_seconds_per_slice"]) == {"vision encoder", "denoiser step", "mask decoder"}
        assert run["volume_seconds_extrapolated"] and run["slices"] == 1 and run["native"]
    steps10 = result["pipelines"]["fp32, 10 steps"]
    flops = result["flops_per_pass"]
    assert steps10["network_gflop_per_slice"] * 1e9 == pytest.approx(
        flops["vision encoder"] + 10 * flops["denoiser step"] + flops["mask decoder"])
    assert all(study["max_abs_difference"] <= 1e-4 for study in result["layouts"].values())  # channels_last is lossless
    assert result["baselines"] == {}


def test_the_organ_jobs_take_the_first_installed_multi_organ_sdseg_model(tmp_path, monkeypatch):
    from MedDiffusionExtension.bench import bundled_jobs
    from tiny_models import write_micro_model

    monkeypatch.setenv("MEDDIFFUSION_MODELS_DIR", str(tmp_path))
    # Listed by name after the default (the bundled union model): the one-segment micro model comes first.
    write_micro_model(tmp_path, "sdseg", name="aaa-union-micro")
    write_micro_model(tmp_path, "sdseg", name="aab-organs-micro", organs=[1, 6])
    assert bundled_jobs.organ_model() == "aab-organs-micro"
    assert set(bundled_jobs.JOBS) == set(command.BUNDLED_JOBS)
