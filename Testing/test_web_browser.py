"""MedDiffusion in a real browser: `python -m MedDiffusionWeb` (= `meddiffusion web`) served in a subprocess and
driven by headless Chromium from Debian's packages through Playwright (its own browser download is not used).
Rendering is off-screen through EGL (Mesa), as trame-slicer documents.

One server and one page for the whole module, in the order a user goes: the page needs its access token; the
sample brain loads with one click; **Synthesize T1c** with a micro random-weight model shows `slice i/N` progress,
adds the synthetic node (listed, marked synthetic, downloadable as NIfTI on the T1's grid) and the axial view then
shows it (pixel statistics of a screenshot, not a golden image); a run cancelled mid-way adds nothing, and a click
on the other panel's run button meanwhile is refused; **Segment** on the sample CT shows coloured segments in the
slice views and in 3D and downloads as NIfTI and .seg.nrrd; bad uploads are refused in one line while a zipped DICOM
series and a NIfTI load; the server ends on SIGTERM leaving no temporary file.

Skipped, with the reason, where the web extra, Chromium or EGL is missing. With MEDDIFFUSION_WEB_FIGURES=1 the
screenshots of both panels are also written to docs/figures/web_translation.png and web_segmentation.png.
"""

from __future__ import annotations

import ctypes.util
import gzip
import importlib.util
import io
import json
import locale
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "Resources" / "SampleData"
FIGURES = REPO / "docs" / "figures"
TOKEN = "browser-test-token"
# MEDDIFFUSION_WEB_FIGURES=1: the README's screenshots, made with the bundled models (slower) instead of micro ones.
FIGURES_MODE = os.environ.get("MEDDIFFUSION_WEB_FIGURES") == "1"
MODELS = ({"cdm": "cdm-tiny-phantom", "sdseg": "sdseg-tiny-phantom"} if FIGURES_MODE
          else {"cdm": "cdm-micro-test", "sdseg": "sdseg-micro-test"})
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def chromium_executable() -> str | None:
    """Debian's chromium (the real binary behind /usr/bin/chromium's wrapper script), or MEDDIFFUSION_CHROMIUM."""
    for candidate in (os.environ.get("MEDDIFFUSION_CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def skip_reason() -> str | None:
    missing = [package for module, package in (("trame", "trame"), ("trame_vuetify", "trame-vuetify"),
                                               ("trame_slicer", "trame-slicer"), ("slicer_layer_dm", "slicer-layer-dm"),
                                               ("slicer", "slicer-core"), ("playwright", "playwright"))
               if importlib.util.find_spec(module) is None]
    if missing:
        return f"web extra not installed ({', '.join(missing)}): run `make venv` to test the web app"
    if chromium_executable() is None:
        return "no Chromium executable (apt-get install chromium, or set MEDDIFFUSION_CHROMIUM)"
    if not os.environ.get("DISPLAY") and ctypes.util.find_library("EGL") is None:
        return "no EGL library for off-screen rendering (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)"
    return _probe_server_side()


PROBE = """
import sys
from MedDiffusionWeb import server
try:
    server.check_dependencies()
except server.WebUnavailable as error:
    print(error); sys.exit(3)
server.configure_offscreen_rendering()
from vtkmodules.vtkRenderingCore import vtkRenderWindow, vtkRenderer
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401
window = vtkRenderWindow(); window.SetOffScreenRendering(1); window.AddRenderer(vtkRenderer()); window.SetSize(32, 32)
window.Render()
print(type(window).__name__)
"""


def _probe_server_side() -> str | None:
    """In a child process (a broken binary wheel or GL driver may crash it): the web extra imports, and VTK renders
    off-screen as the server will."""
    env = dict(os.environ, VTK_DEFAULT_OPENGL_WINDOW=os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow"))
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=120)
    except subprocess.TimeoutExpired:
        return "the web extra / off-screen rendering probe did not finish within 120 s"
    if probe.returncode == 3:
        return f"web extra unusable here: {probe.stdout.strip()}"
    if probe.returncode != 0:
        lines = re.sub(r"\x1b\[[0-9;]*m", "", probe.stderr).strip().splitlines()
        last = " ".join((lines or [f"exit code {probe.returncode}"])[-1].split())
        return f"off-screen rendering with {env['VTK_DEFAULT_OPENGL_WINDOW']} failed here: {last}"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Web:
    def __init__(self, page, url, process, tmp, log):
        self.page, self.url, self.process, self.tmp, self.log = page, url, process, tmp, log
        self.timings: dict[str, float] = {}
        self.shots: dict[str, Path] = {}

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    # -- page helpers ----------------------------------------------------------------------------------------------

    def choose(self, select_id: str, option: str) -> None:
        """Pick `option` in a Vuetify select (opens its menu, clicks the item)."""
        self.page.click(f"#{select_id}", force=True)
        self.page.locator(".v-overlay--active .v-list-item", has_text=option).first.click()
        self.page.wait_for_function(
            "([id, text]) => document.querySelector('#' + id).closest('.v-select').innerText.includes(text)",
            arg=[select_id, option], timeout=10000)

    def record_progress(self, element_id: str) -> None:
        """Keep every text the progress line shows (the page updates it several times a second)."""
        self.page.evaluate("""(id) => { window.__progress = []; clearInterval(window.__progressTimer);
            window.__progressTimer = setInterval(() => { const e = document.getElementById(id);
              const t = e ? e.innerText.trim() : ''; if (t && window.__progress.at(-1) !== t) window.__progress.push(t);
            }, 40); }""", element_id)

    def progress_texts(self) -> list[str]:
        return self.page.evaluate("() => window.__progress")

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def wait_text(self, selector: str, pattern: str, timeout_s: float) -> str:
        self.page.wait_for_function(
            "([sel, pat]) => { const e = document.querySelector(sel); return e && new RegExp(pat).test(e.innerText); }",
            arg=[selector, pattern], timeout=timeout_s * 1000)
        return self.text(selector)

    def results(self) -> list[str]:
        return [t.strip() for t in self.page.locator(".result-item .result-name").all_inner_texts()]

    def view(self, index: int, settle_s: float = 1.5) -> np.ndarray:
        """RGB pixels of a view as the page shows it: 0 axial, 1 3D, 2 sagittal, 3 coronal (Slicer's Four-Up)."""
        from PIL import Image

        time.sleep(settle_s)  # the server renders and streams a few frames after a change
        png = self.page.locator("#views img.image-display-area").nth(index).screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float32)

    def download(self, result_name: str, button: str, target: Path) -> Path:
        item = self.page.locator(".result-item", has=self.page.locator(".result-name", has_text=result_name)).first
        with self.page.expect_download(timeout=60000) as download:
            item.locator(button).click()
        download.value.save_as(target)
        return target

    def shot(self, name: str) -> Path:
        path = self.tmp.parent / f"{name}.png"
        self.page.screenshot(path=str(path))
        self.shots[name] = path
        return path


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    from tiny_models import write_micro_model

    root = tmp_path_factory.mktemp("web")
    models = root / "models"
    write_micro_model(models, "cdm", sampling_steps=2)
    write_micro_model(models, "sdseg", seed=2)  # seed 2: a mask neither empty nor full on the sample CT
    tmp = root / "tmp"
    tmp.mkdir()
    port = _free_port()
    env = dict(os.environ, MEDDIFFUSION_MODELS_DIR=str(models), TMPDIR=str(tmp), PYTHONUNBUFFERED="1",
               VTK_DEFAULT_OPENGL_WINDOW=os.environ.get("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow"))
    log = root / "server.log"
    started = time.monotonic()
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "MedDiffusionWeb", "--port", str(port), "--token", TOKEN,
                                    "--max-upload-mb", "8", "--device", "cpu"],
                                   cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        url = None
        while url is None and time.monotonic() - started < 120:
            match = re.search(r"MedDiffusion web app: (\S+)", log.read_text(errors="replace"))
            if match:
                url = match.group(1)
            elif process.poll() is not None:
                pytest.fail(f"the web app exited with {process.returncode}:\n{log.read_text(encoding='utf-8')[-3000:]}")
            else:
                time.sleep(0.2)
        assert url, f"the web app did not start within 120 s:\n{log.read_text(encoding='utf-8')[-3000:]}"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_executable(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 950}, accept_downloads=True)
            page.set_default_timeout(30000)
            state = Web(page, url, process, tmp, log)
            state.timings["startup_s"] = time.monotonic() - started
            page.goto(url.split("?")[0])  # without the token the page loads, but the app behind it does not answer
            time.sleep(3)
            state.without_token = page.locator("#load-sample-mri").count()
            started = time.monotonic()
            page.goto(url)
            page.wait_for_selector("#load-sample-mri")
            state.timings["page_s"] = time.monotonic() - started
            yield state
            browser.close()
        if FIGURES_MODE:
            for name in ("web_translation", "web_segmentation"):
                if name in state.shots:
                    shutil.copyfile(state.shots[name], FIGURES / f"{name}.png")
        print("\nweb app timings:", json.dumps({k: round(v, 1) for k, v in state.timings.items()}))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def test_the_page_needs_its_access_token(web):
    assert web.without_token == 0, "the app answered a page that did not present the token"
    assert web.url.endswith(f"?secret={TOKEN}")
    assert web.page.locator("#load-sample-mri").count() == 1


def test_synthesize_t1c_on_the_sample_brain(web, tmp_path):
    nib = pytest.importorskip("nibabel")
    page = web.page
    page.click("#load-sample-mri")
    assert "PhantomBrainMR-t1n" in web.wait_text("#data-message", "PhantomBrainMR-t2w", 60)
    before = web.view(0)
    web.choose("tr-model-select", MODELS["cdm"])
    page.fill("#tr-steps", "0" if FIGURES_MODE else "1")
    assert web.text("#synthesize").strip().lower() == "synthesize t1c"
    web.record_progress("tr-progress-text")
    started = time.monotonic()
    page.click("#synthesize")
    status = web.wait_text("#tr-status", r"Created:|Failed|Not started", 180)
    web.timings["synthesize_click_to_result_s"] = time.monotonic() - started
    assert status.startswith("Created: PhantomBrainMR-t1n synthetic T1c (CDM)"), f"{status}\n{web.log_tail()}"
    progress = web.progress_texts()
    assert any(re.fullmatch(r"slice \d+/80", t) for t in progress), progress

    name = "PhantomBrainMR-t1n synthetic T1c (CDM)"
    assert name in web.results()
    item = page.locator(".result-item", has=page.locator(".result-name", has_text=name)).first
    assert item.locator(".result-synthetic").inner_text().strip().lower() == "synthetic"
    assert MODELS["cdm"] in item.inner_text()

    # The axial view now shows the synthetic image: a textured image that is not the T1 any more.
    after = web.view(0)
    centre = (slice(after.shape[0] // 5, -after.shape[0] // 5), slice(after.shape[1] // 5, -after.shape[1] // 5))
    assert after[centre].std() > 5, "the axial view is blank"
    assert np.abs(after[centre] - before[centre]).mean() > 2, "the axial view still shows the T1"
    web.shot("web_translation")

    path = web.download(name, ".download-nifti", tmp_path / "t1c.nii.gz")
    synthetic, t1 = nib.load(str(path)), nib.load(str(SAMPLES / "PhantomBrainMR-t1n.nii.gz"))
    values = np.asarray(synthetic.dataobj, dtype=np.float32)
    assert synthetic.shape == t1.shape
    np.testing.assert_allclose(synthetic.affine, t1.affine, atol=1e-3)
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1000 and values.std() > 0


def test_a_cancelled_run_adds_nothing_and_a_second_run_is_refused(web):
    page = web.page
    results_before = web.results()
    page.fill("#tr-steps", "3")
    page.fill("#tr-samples", "3")
    web.record_progress("tr-progress-text")
    page.click("#synthesize")
    web.wait_text("#tr-progress-text", r"slice \d+/80", 120)
    page.click("#tab-segmentation")
    page.click("#segment")  # one run at a time per scene
    refused = web.wait_text("#sg-status", "Refused", 10)
    assert "already running" in refused and "\n" not in refused
    page.click("#tab-translation")
    page.click("#tr-cancel")
    started = time.monotonic()
    assert web.wait_text("#tr-status", r"Cancelled|Created|Failed", 60) == "Cancelled; nothing was added."
    web.timings["cancel_to_idle_s"] = time.monotonic() - started
    assert web.results() == results_before
    page.wait_for_selector("#synthesize")
    jobs = [p for p in web.tmp.rglob("*") if p.name.startswith("MedDiffusion-")]
    assert jobs == [], f"job folders left behind: {jobs}"
    page.fill("#tr-steps", "1")
    page.fill("#tr-samples", "1")


def test_segment_the_sample_ct(web, tmp_path):
    nib = pytest.importorskip("nibabel")
    page = web.page
    page.click("#load-sample-ct")
    web.wait_text("#data-message", "PhantomAbdomenCT", 60)
    page.wait_for_selector("#segment")  # the Segmentation panel opens for a CT
    web.choose("sg-model-select", MODELS["sdseg"])
    before3d = web.view(1, settle_s=0.5)
    web.record_progress("sg-progress-text")
    started = time.monotonic()
    page.click("#segment")
    status = web.wait_text("#sg-status", r"Created:|Failed|Not started", 180)
    web.timings["segment_click_to_result_s"] = time.monotonic() - started
    assert status.startswith("Created: PhantomAbdomenCT segmentation (SDSeg)"), f"{status}\n{web.log_tail()}"
    assert any(re.fullmatch(r"slice \d+/64", t) for t in web.progress_texts()), web.progress_texts()
    assert "PhantomAbdomenCT segmentation (SDSeg)" in web.results()
    assert MODELS["sdseg"] in page.locator(".result-item", has_text="PhantomAbdomenCT segmentation").first.inner_text()

    # Segments are coloured (the card's colours) over the grey CT in the axial view, and surfaces appear in 3D.
    axial, threed = web.view(0, settle_s=2.5), web.view(1, settle_s=0)
    coloured = lambda rgb: ((rgb.max(axis=2) - rgb.min(axis=2)) > 60).mean()  # noqa: E731 - grey pixels: 0
    assert coloured(axial) > 0.01, "no coloured segment in the axial view"
    assert coloured(threed) - coloured(before3d) > 0.005, "no segment surface in the 3D view"
    web.shot("web_segmentation")

    name = "PhantomAbdomenCT segmentation (SDSeg)"
    labels = nib.load(str(web.download(name, ".download-nifti", tmp_path / "labels.nii.gz")))
    ct = nib.load(str(SAMPLES / "PhantomAbdomenCT.nii.gz"))
    values = np.asarray(labels.dataobj)
    assert labels.shape == ct.shape and values.max() >= 1 and (values == 0).any()
    np.testing.assert_allclose(labels.affine, ct.affine, atol=1e-3)
    seg = web.download(name, ".download-segnrrd", tmp_path / "labels.seg.nrrd").read_bytes()
    header = seg[: seg.index(b"\n\n")].decode()
    assert header.startswith("NRRD") and "Segment0_Name:=" in header


def _dicom_zip(tmp_path: Path) -> bytes:
    """A small CT-like DICOM series (SimpleITK), zipped with a folder inside, as scanners' exports come."""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    saved = locale.setlocale(locale.LC_ALL)  # GDCM's DICOM writer sets the C locale (ASCII) for the whole process
    try:
        for k in range(8):
            image = sitk.GetImageFromArray((rng.normal(0, 50, (1, 32, 32)) + 40).astype(np.int16))
            tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
                    "0020|000e": "1.2.826.0.1.3680043.2.1125.8", "0020|0032": f"0\\0\\{2.5 * k:.6f}",
                    "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "1.5\\1.5", "0018|0050": "2.5",
                    "0020|0013": str(k + 1), "0008|0018": f"1.2.826.0.1.3680043.2.1125.9.{k + 1}"}
            for key, value in tags.items():
                image.SetMetaData(key, value)
            writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
            writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"export/series1/{path.name}")
    return buffer.getvalue()


def test_uploads_bad_ones_refused_in_one_line(web, tmp_path):
    page = web.page
    volumes_before = page.evaluate("() => document.querySelectorAll('.result-item').length")
    upload = page.locator("#upload")
    for name, data, reason in (("broken.nii.gz", gzip.compress(b"not an image at all" * 10), "broken.nii.gz"),
                               ("notes.txt", b"hello", "not a volume"),
                               ("../../escape.nrrd", b"NRRD0004\nnonsense\n", "escape.nrrd")):
        upload.set_input_files(files=[{"name": name, "mimeType": "application/octet-stream", "buffer": data}])
        message = web.wait_text("#upload-error", f"Upload refused: .*{re.escape(reason)}", 30)
        assert "\n" not in message.strip(), message
        assert str(web.tmp) not in message  # the server's folders are never shown
    upload.set_input_files(files=[{"name": "too-big.nii.gz", "mimeType": "application/gzip",
                                   "buffer": b"\0" * (9 << 20)}])  # over --max-upload-mb 8: refused before sending
    assert "larger than the limit" in web.wait_text("#upload-error", "limit", 10)

    upload.set_input_files(files=[{"name": "series.zip", "mimeType": "application/zip", "buffer": _dicom_zip(tmp_path)}])
    assert web.wait_text("#data-message", "Loaded series", 60).startswith("Loaded series")
    upload.set_input_files(str(SAMPLES / "PhantomBrainMR-t2f.nii.gz"))
    web.wait_text("#data-message", "Loaded PhantomBrainMR-t2f", 60)
    assert page.evaluate("() => document.querySelectorAll('.result-item').length") == volumes_before
    kept = [p for area in web.tmp.glob("meddiffusion-web-*") for p in area.rglob("*") if p.is_file()]
    assert kept == [], "uploaded files were kept on disk"


def test_the_server_ends_cleanly_on_sigterm(web):
    web.process.send_signal(signal.SIGTERM)
    assert web.process.wait(60) == 0, web.log_tail()
    assert list(web.tmp.iterdir()) == [], "the app's temporary folder was not removed"
