"""The background runner and its client, without Slicer: the job protocol, progress lines, refusals in one line,
SIGTERM as cancellation, killing the whole process tree without blocking, the probe of packages and devices, and
the dependency list the Slicer modules install."""

from __future__ import annotations

import ast
import io
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from MedDiffusionExtension import runner
from MedDiffusionExtension.volume import Volume, read_volume, write_volume

from slicer_compat.fixtures import MODULE_FOLDERS, brain_case, ct_case, oblique_ijk_to_ras

sys.path.append(str(MODULE_FOLDERS[0]))  # MedDiffusionLib.process, .probe, .dependencies import neither slicer nor qt
from MedDiffusionLib import dependencies, probe, process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny_models import write_micro_model

    root = tmp_path_factory.mktemp("models")
    return {"cdm": write_micro_model(root, "cdm", sampling_steps=2), "sdseg": write_micro_model(root, "sdseg", seed=2)}


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    matrix = oblique_ijk_to_ras()
    brain, ct = brain_case(rng), ct_case(rng)
    return {"t1": write_volume(Volume(brain["t1n"], matrix), folder / "t1.nrrd"),
            "t2": write_volume(Volume(brain["t2w"], matrix), folder / "t2.nrrd"),
            "ct": write_volume(Volume(ct["image"], matrix), folder / "ct.nrrd")}


def write_job(folder: Path, **job) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.json"
    path.write_text(json.dumps(job, default=str))
    return path


def run_in_process(job_path) -> tuple[int, list[str]]:
    stream = io.StringIO()
    code = runner.main([str(job_path)], stream=stream, install_signal_handlers=False)
    return code, stream.getvalue().splitlines()


def test_segment_job_streams_progress_and_writes_outputs_on_the_input_grid(tmp_path, models, volumes):
    job = write_job(tmp_path, task="segment", model=str(models["sdseg"]), inputs={"image": str(volumes["ct"])},
                    outputs={"labels": "out/labels.nrrd", "probability": "out/probability.nrrd"},
                    steps=1, samples=2, threshold=0.5, seed=0, device="cpu", batch_size=3)
    code, lines = run_in_process(job)
    assert code == runner.EXIT_OK and lines[-1] == "DONE"
    slices = [line for line in lines if line.startswith("PROGRESS") and " slice " in line]
    # 8 slices in batches of 3: 0/8, 3/8, 6/8, 8/8, with fractions that match.
    assert [line.split()[3] for line in slices] == ["0/8", "3/8", "6/8", "8/8"]
    assert [float(line.split()[1]) for line in slices] == [0.0, 0.375, 0.75, 1.0]
    ct = read_volume(volumes["ct"])
    labels, probability = read_volume(tmp_path / "out/labels.nrrd"), read_volume(tmp_path / "out/probability.nrrd")
    for output in (labels, probability):
        assert output.shape == ct.shape
        np.testing.assert_allclose(output.ijk_to_ras, ct.ijk_to_ras, atol=1e-5)
    assert labels.array.dtype == np.uint8 and set(np.unique(labels.array)) <= {0, 1}
    assert 0.0 <= probability.array.min() and probability.array.max() <= 1.0
    np.testing.assert_array_equal(labels.array == 1, probability.array > 0.5)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["labels.nrrd", "probability.nrrd"]


@pytest.mark.parametrize("change, fragment", [
    ({"outputs": {"labels": "l.nrrd", "probability": "p.nrrd"}}, "outputs must be exactly labels"),
    ({"model": "no-such-model"}, "unknown model"),
    ({"inputs": {"image": "missing.nrrd"}}, "does not exist"),
    ({"task": "denoise"}, "task is one of"),
    ({"samples": 0}, "samples must be a whole number of at least 1, got 0"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"model": None}, "model must be a string"),
    ({"organs": ["kidney"]}, "does not segment 'kidney'; its organs are"),
    ({"organs": "liver"}, "organs must be a list"),
])
def test_bad_jobs_are_refused_in_one_line_with_exit_code_2(tmp_path, models, volumes, change, fragment):
    job = dict(task="segment", model=str(models["sdseg"]), inputs={"image": str(volumes["ct"])},
               outputs={"labels": "l.nrrd"}, samples=1, device="cpu")
    code, lines = run_in_process(write_job(tmp_path, **{**job, **change}))
    assert code == runner.EXIT_INPUT
    errors = [line for line in lines if not line.startswith("PROGRESS ")]
    assert len(errors) == 1 and errors[0].startswith("ERROR ") and fragment in errors[0]
    assert not list(tmp_path.glob("*.nrrd"))


def test_devices_menu_starts_with_auto_and_cpu():
    stream = io.StringIO()
    assert runner.main(["--devices"], stream=stream) == runner.EXIT_OK
    devices = json.loads(stream.getvalue())
    assert [d[0] for d in devices[:2]] == ["auto", "cpu"]


def _client(job_path, first=(), **kwargs) -> process.RunnerProcess:
    paths = [*map(str, first), str(REPO), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    return process.RunnerProcess([str(job_path)], env=env, **kwargs)


# Started before the runner (as sitecustomize), this holds the runner at its first between-batch check until the
# cancellation arrives, so the test's SIGTERM always lands mid-run however fast the micro model or slow the machine.
HOLD_UNTIL_CANCELLED = textwrap.dedent("""
    import time
    from MedDiffusionExtension import progress

    _check = progress.CancelToken.raise_if_cancelled

    def _held(self):
        deadline = time.monotonic() + 60
        while not self.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)  # a signal handler runs in between
        _check(self)

    progress.CancelToken.raise_if_cancelled = _held
""")


def test_client_cancel_stops_the_runner_through_sigterm_and_nothing_is_written(tmp_path, models, volumes):
    job = write_job(tmp_path, task="translate", model=str(models["cdm"]),
                    inputs={"t1": str(volumes["t1"]), "t2": str(volumes["t2"])},
                    outputs={"t1c": "out/t1c.nrrd"}, targets=["t1c"], samples=1, device="cpu", batch_size=1)
    seen = []
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "sitecustomize.py").write_text(HOLD_UNTIL_CANCELLED)
    client = _client(job, first=[hold])

    def on_progress(fraction, message):
        seen.append(message)
        if message.startswith("slice"):
            client.cancel()

    client.onProgress = on_progress
    outcome = client.start().wait(timeout=120)
    assert outcome.status == process.CANCELLED
    assert outcome.returnCode == runner.EXIT_CANCELLED  # the runner stopped itself: SIGTERM became cancellation
    assert seen[-1] == "slice 0/8"  # no progress is passed on after Cancel
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_client_reports_success_refusal_and_crash(tmp_path, models, volumes):
    ok = write_job(tmp_path / "ok", task="segment", model=str(models["sdseg"]), inputs={"image": str(volumes["ct"])},
                   outputs={"labels": str(tmp_path / "labels.nrrd")}, device="cpu")
    outcome = _client(ok).start().wait(timeout=120)
    assert (outcome.status, outcome.returnCode) == (process.DONE, 0) and (tmp_path / "labels.nrrd").is_file()

    refused = write_job(tmp_path / "refused", task="segment", model="no-such-model", inputs={"image": str(volumes["ct"])},
                        outputs={"labels": "x.nrrd"}, device="cpu")
    outcome = _client(refused).start().wait(timeout=120)
    assert outcome.status == process.INPUT_ERROR and outcome.message.startswith("unknown model 'no-such-model'")

    crash = _client(ok)
    crash.command = [sys.executable, "-c", "import sys; print('Traceback: boom', file=sys.stderr); sys.exit(3)"]
    outcome = crash.start().wait(timeout=60)
    assert outcome.status == process.FAILED and outcome.returnCode == 3 and "boom" in outcome.message


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a killed orphan may stay a zombie until PID 1 reaps it


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_cancel_kills_the_whole_process_tree_even_when_sigterm_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "TERMINATE_GRACE_SECONDS", 0.5)
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a runner stuck in a long GPU call
        child = subprocess.Popen([sys.executable, "-c",
                                  "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        open({str(pids)!r}, "w").write(f"{{child.pid}}")
        print("PROGRESS 0.000 slice 0/4", flush=True)
        time.sleep(600)
    """)
    client = process.RunnerProcess([])
    client.command = [sys.executable, "-c", script]
    client.onProgress = lambda fraction, message: client.cancel()
    started = time.monotonic()
    outcome = client.start().wait(timeout=60)
    assert outcome.status == process.CANCELLED
    assert time.monotonic() - started < 30
    child = int(pids.read_text(encoding="utf-8"))
    for _ in range(50):  # SIGKILL is delivered asynchronously
        if not _alive(child):
            break
        time.sleep(0.1)
    assert not _alive(client.process.pid) and not _alive(child)


# Like PythonSlicer, Slicer's CTK launcher: the real Python runs as a child sharing stdout/stderr, the launcher keeps
# the default SIGTERM action (it dies at once) and the child, busy with its batch, goes on holding the pipes.
LAUNCHER = textwrap.dedent("""
    import os, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                              "print('PROGRESS 0.000 slice 0/4', flush=True); time.sleep(600)"])
    with open(sys.argv[1] + ".tmp", "w") as handle:
        handle.write(str(child.pid))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    sys.exit(child.wait())
""")


@pytest.mark.skipif(os.name == "nt" or not Path("/proc").is_dir(), reason="POSIX process groups, states from /proc")
def test_cancel_ends_at_once_when_a_launcher_dies_on_sigterm_and_its_child_holds_the_pipes(tmp_path):
    pids = tmp_path / "child.pid"
    client = process.RunnerProcess([])
    client.command = [sys.executable, "-c", LAUNCHER, str(pids)]
    seen = []
    client.onProgress = lambda fraction, message: seen.append(message)
    client.start()
    deadline = time.monotonic() + 30
    while not (seen and pids.exists()):  # the child ignores SIGTERM from here on
        assert not client.poll() and time.monotonic() < deadline, "the fake launcher did not start"
        time.sleep(0.01)
    child = int(pids.read_text(encoding="utf-8"))

    cancelled = time.monotonic()
    client.cancel()
    longest = 0.0
    while True:  # what the GUI's QTimer does, without its 100 ms pauses
        before = time.monotonic()
        finished = client.poll()
        longest = max(longest, time.monotonic() - before)
        if finished:
            break
        assert time.monotonic() - cancelled < 5
        time.sleep(0.005)
    assert time.monotonic() - cancelled < 1.0
    assert longest < 0.05, f"one poll blocked the GUI thread for {longest:.2f} s"
    assert client.outcome.status == process.CANCELLED
    for _ in range(20):  # SIGKILL is delivered asynchronously
        if not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(client.process.pid) and not _alive(child)


# -- dependencies installed inside Slicer ----------------------------------------------------------------------------

def _third_party_imports(paths) -> set[str]:
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names}
    return {n for n in found if n not in sys.stdlib_module_names and n != "MedDiffusionExtension" and n != "__future__"}


def test_dependency_list_covers_every_package_the_runner_imports():
    backend = REPO / "MedDiffusionExtension"
    used = [backend / "runner.py", backend / "device.py", backend / "errors.py", backend / "progress.py"]
    for folder in ("volume", "pipelines", "weights", "diffusion", "models"):
        used += sorted((backend / folder).glob("*.py"))
    imported = _third_party_imports(used)
    allowed = {r.module for r in dependencies.REQUIRED} | set(dependencies.NEVER_REINSTALL)
    assert imported <= allowed, f"add to MedDiffusionLib/dependencies.py: {sorted(imported - allowed)}"
    assert {"torch", "nibabel", "safetensors", "scipy", "slicerio"} <= imported


def test_missing_and_outdated_packages_are_planned_without_touching_slicers_own():
    installed = {"torch": "2.0.1+cu118", "safetensors": "0.4.2", "nibabel": None, "scipy": "1.11.0rc1",
                 "slicerio": "1.4.0", "numpy": "1.26.4", "SimpleITK": "2.3.1", "requests": "2.31.0"}
    probed = probe.ProbeResult(versions={m: v for m, v in installed.items() if v},
                               failed={"nibabel": "ModuleNotFoundError: No module named 'nibabel'"})
    missing = dependencies.missingRequirements(probed)
    assert [r.module for r in missing] == ["torch", "nibabel"]  # torch 2.0 < 2.1; nibabel absent
    assert dependencies.installPlan(missing, pytorchUtilsAvailable=True) == [
        "torch>=2.1 (via the PyTorch extension (PyTorchUtils))", "nibabel>=5.0 (via pip)"]
    assert dependencies.installPlan(missing, pytorchUtilsAvailable=False)[0] == "torch>=2.1 (via pip)"
    assert dependencies.constraintLines(version=installed.get) == [
        "SimpleITK==2.3.1", "numpy==1.26.4", "requests==2.31.0"]
    assert not any(r.distribution in dependencies.NEVER_REINSTALL for r in dependencies.REQUIRED)


def test_restart_is_needed_only_when_a_replaced_package_is_already_loaded():
    torch = next(r for r in dependencies.REQUIRED if r.module == "torch")
    nibabel = next(r for r in dependencies.REQUIRED if r.module == "nibabel")
    assert dependencies.needsRestart([torch]) == ("torch" in sys.modules)
    assert dependencies.needsRestart([nibabel]) == ("nibabel" in sys.modules)
    assert dependencies.missingRequirements() == []  # this environment has everything


# -- the probe: what the runner's Python imports, asked without importing it in Slicer's process --------------------

def _probe_env(*first) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, first), str(REPO), os.environ.get("PYTHONPATH", "")]))


def test_probe_reports_a_torch_that_fails_to_import_as_not_usable(tmp_path):
    broken = tmp_path / "broken" / "torch"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise OSError("libtorch_cpu.so: cannot open shared object file")\n')
    result = probe.run([r.module for r in dependencies.REQUIRED], python=sys.executable,
                       env=_probe_env(broken.parent), timeout=120)
    assert not result.error
    assert "libtorch_cpu.so" in result.failed["torch"] and "torch" not in result.versions
    assert result.devices == () and [d for d, _ in result.deviceChoices()] == ["auto", "cpu"]
    assert [r.module for r in dependencies.missingRequirements(result)] == ["torch"]  # installed, yet not usable


def test_probe_lists_versions_and_the_device_menu_of_the_runners_python():
    import torch

    result = dependencies.probeResult()  # the session's, as the panels get it (one torch import per session)
    assert not result.error and not result.failed
    assert result.versions["torch"] == torch.__version__
    assert [d for d, _ in result.devices[:2]] == ["auto", "cpu"]
    assert dependencies.missingRequirements(result) == []


def test_probe_mode_of_the_runner_prints_one_json_line():
    stream = io.StringIO()
    assert runner.main(["--probe", "json", "no_such_module_for_the_probe"], stream=stream) == runner.EXIT_OK
    [line] = stream.getvalue().splitlines()
    answer = json.loads(line)
    assert answer["versions"] == {"json": answer["versions"]["json"]}
    assert answer["failed"]["no_such_module_for_the_probe"].startswith("ModuleNotFoundError")
    assert [d[0] for d in answer["devices"][:2]] == ["auto", "cpu"]  # "torch" was not asked for: not imported


def test_a_probe_that_fails_or_hangs_is_reported_not_raised(tmp_path):
    crashed = probe.parse("", "Traceback (most recent call last):\nModuleNotFoundError: No module named 'x'", 1)
    assert "exit code 1" in crashed.error and "No module named 'x'" in crashed.error
    with pytest.raises(RuntimeError, match="No module named 'x'"):
        dependencies.missingRequirements(crashed)
    assert probe.parse("{not json", "", 0).error

    hang = tmp_path / "hang"
    hang.mkdir()
    (hang / "sitecustomize.py").write_text("import time\ntime.sleep(60)\n")
    started = time.monotonic()
    result = probe.run(["json"], python=sys.executable, env=_probe_env(hang), timeout=1)
    assert "did not answer within 1 s" in result.error and time.monotonic() - started < 10

