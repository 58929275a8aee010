"""The web app's safety rules without a browser: bind address and token, upload names, sizes and zip members, the
app's temporary folder, and `meddiffusion web` without the web extra (one `error:` line). Pure Python: these run
wherever the rest of the suite runs, web extra installed or not."""

from __future__ import annotations

import io
import sys
import zipfile

import pytest

from MedDiffusionExtension import cli
from MedDiffusionWeb import safety, server
from MedDiffusionWeb.safety import UploadRefused, WorkArea


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("localhost", True), ("127.3.0.1", True), ("::1", True),
                                         ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False),
                                         ("example.org", False), ("", False)])
def test_only_loopback_counts_as_local(host, local):
    assert safety.is_local_host(host) is local


def test_a_non_local_bind_gets_a_random_token_and_a_local_one_none():
    assert server.access_token("127.0.0.1", None) is None
    first, second = server.access_token("0.0.0.0", None), server.access_token("0.0.0.0", None)
    assert first and second and first != second and len(first) >= 24
    assert server.access_token("0.0.0.0", "given") == "given" and server.access_token("localhost", "given") == "given"
    assert server.page_url("0.0.0.0", 8080, "abc") == "http://0.0.0.0:8080/?secret=abc"
    assert server.page_url("::1", 8080, None) == "http://[::1]:8080/"


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd.nii.gz", "passwd.nii.gz"), ("..\\..\\evil.nrrd", "evil.nrrd"), ("/abs/path/t1.nii", "t1.nii"),
    ("...hidden.nii.gz", "hidden.nii.gz"), ("a\nb\x00c.nii.gz", "a_b_c.nii.gz"), ("", "upload"), ("..", "upload"),
    ("scan (1).nii.gz", "scan _1_.nii.gz"), ("ＦＵＬＬ.nrrd", "FULL.nrrd"), ("ünïcode.nii", "_n_code.nii"),
])
def test_uploaded_names_become_one_plain_file_name(name, expected):
    assert safety.safe_file_name(name) == expected


def test_a_long_name_keeps_its_suffix():
    name = safety.safe_file_name("x" * 300 + ".nii.gz")
    assert len(name) == 100 and name.endswith(".nii.gz")


def test_uploads_stay_inside_the_work_area_and_are_removed(tmp_path):
    work = WorkArea(1 << 20, parent=str(tmp_path))
    stored = work.store([{"name": "../../../../outside.nii.gz", "content": b"data"},
                         {"name": "/etc/t2.nrrd", "content": b"more"}])
    assert [s.display_name for s in stored] == ["outside.nii.gz", "t2.nrrd"]
    for item in stored:
        assert work.inside(item.path) and item.path.read_bytes() in (b"data", b"more")
    assert not (tmp_path / "outside.nii.gz").exists()
    work.discard(stored)
    assert not any(p.is_file() for p in work.root.rglob("*"))
    work.close()
    assert not work.root.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("files, message", [
    ([{"name": "notes.txt", "content": b"x"}], "not a volume"),
    ([{"name": "big.nii.gz", "content": b"x" * 2048}], "the limit is"),
    ([{"name": "a.nii.gz", "content": b"x" * 600}, {"name": "b.nii.gz", "content": b"x" * 600}], "the limit is"),
    ([{"name": "claims.nii.gz", "size": 10**9, "content": b"x"}], "the limit is"),
    ([{"name": "a.nii.gz"}], "did not arrive"),
    ([], "no file"),
])
def test_refused_uploads_leave_nothing(tmp_path, files, message):
    work = WorkArea(1024, parent=str(tmp_path))
    with pytest.raises(UploadRefused, match=message) as refused:
        work.store(files)
    assert "\n" not in str(refused.value)
    assert list(work.root.iterdir()) == []
    work.close()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_members_are_extracted_under_generated_names_only(tmp_path):
    work = WorkArea(1 << 20, parent=str(tmp_path))
    data = _zip({"../../escape.dcm": b"1", "/abs/slice2.dcm": b"2", "series/sub/slice3.dcm": b"3",
                 "__MACOSX/series/._slice3.dcm": b"meta", "series/.DS_Store": b"meta"})
    [stored] = work.store([{"name": "series.zip", "content": data}])
    assert stored.is_dicom_folder and work.inside(stored.path)
    names = sorted(p.name for p in stored.path.iterdir())
    assert names == ["00000-escape.dcm", "00001-slice2.dcm", "00002-slice3.dcm"]
    assert not (tmp_path / "escape.dcm").exists() and not list(tmp_path.glob("*.dcm"))
    work.close()


@pytest.mark.parametrize("data, message", [
    (b"PK not really", "not a valid zip"),
    (_zip({"folder/": b""}), "holds no file"),
    (_zip({"bomb.dcm": b"\0" * (5 << 20)}), "expands beyond"),
])
def test_bad_zips_are_refused(tmp_path, data, message):
    work = WorkArea(1 << 20, parent=str(tmp_path))
    with pytest.raises(UploadRefused, match=message):
        work.store([{"name": "s.zip", "content": data}])
    assert list(work.root.iterdir()) == []
    work.close()


def test_oversized_websocket_messages_are_capped():
    chunking = pytest.importorskip("wslink.chunking", reason="wslink (web extra) is not installed")
    original = chunking.UnChunker.set_max_message_size
    try:
        server.limit_message_size(2048)
        server.limit_message_size(4096)  # applied twice: still one cap over the original
        unchunker = chunking.UnChunker()
        unchunker.set_max_message_size(4 * 1024**3)
        assert unchunker.max_message_size == 4096
    finally:
        chunking.UnChunker.set_max_message_size = original


def test_web_without_its_extra_is_one_error_line(monkeypatch, capsys):
    for module in ("trame", "trame_vuetify", "slicer_layer_dm", "trame_slicer"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` raises ModuleNotFoundError
    assert cli.main(["web", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: the web app needs trame, trame-vuetify, ")
    assert "slicer-layer-dm" in err and "trame-slicer" in err and "make venv" in err


def test_web_options_are_checked_like_every_command(capsys):
    assert cli.main(["web", "--port", "notanumber"]) == 2
    assert capsys.readouterr().err.startswith("error: meddiffusion web: argument --port")
