"""What keeps the web app safe to open: bind address and access token, uploads confined to the app's own folder.

Pure Python (no Slicer, no trame), so every rule here is tested without a browser:

- `is_local_host`: the addresses that only this machine can reach; anything else needs the access token.
- `new_token`: the random token a non-local bind requires (the page URL carries it as `?secret=...`).
- `safe_file_name`: an uploaded name reduced to one plain file name; it never becomes a path of its own.
- `WorkArea`: the app's temporary folder (uploads, runner jobs, downloads), removed when the app ends; uploads are
  written under generated folder names with sanitized file names, after checking their size; a zipped DICOM series
  is extracted member by member under generated names (no member path is ever used), within a size budget.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import shutil
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
ZIP_SUFFIX = ".zip"
DEFAULT_MAX_UPLOAD_MB = 512
MAX_ZIP_MEMBERS = 5000
# An uncompressed DICOM series is at most this many times the upload limit (a zip bomb stops here).
ZIP_EXPANSION_LIMIT = 4


class UploadRefused(ValueError):
    """An upload that is not accepted; the message is one line for the page."""


def is_local_host(host: str) -> bool:
    """True for loopback names and addresses (localhost, 127.0.0.0/8, ::1)."""
    host = (host or "").strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A random access token (about 190 bits), URL-safe."""
    return secrets.token_urlsafe(24)


def one_line(text: str, limit: int = 400) -> str:
    """`text` as one printable line of at most `limit` characters."""
    flat = " ".join("".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in str(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def suffix_of(name: str) -> str:
    lowered = name.lower()
    for suffix in VOLUME_SUFFIXES + (ZIP_SUFFIX,):
        if lowered.endswith(suffix):
            return suffix
    return ""


def safe_file_name(name: str, fallback: str = "upload") -> str:
    """One plain file name from an uploaded name: the part after the last / or \\, control characters and anything
    outside letters, digits, `._-` and space replaced, no leading dots, at most 100 characters (suffix kept)."""
    base = re.split(r"[/\\]", str(name))[-1]
    base = unicodedata.normalize("NFKC", base)
    base = "".join(ch if (ch.isalnum() and ch.isascii()) or ch in "._- " else "_" for ch in base).strip(" ")
    base = base.lstrip(".")
    if len(base) > 100:
        suffix = suffix_of(base)
        base = base[: 100 - len(suffix)] + suffix
    return base if base and base not in (".", "..") else fallback


def node_name(file_name: str) -> str:
    """The scene name of a volume loaded from `file_name`: the name without its volume suffix."""
    suffix = suffix_of(file_name)
    return (file_name[: -len(suffix)] if suffix else file_name) or "volume"


@dataclass
class StoredUpload:
    display_name: str  # the sanitized name, for messages and the node name
    path: Path  # a file, or a folder holding an extracted DICOM series
    is_dicom_folder: bool


class WorkArea:
    """The app's temporary folder: everything the app writes goes under it; `close()` removes it."""

    def __init__(self, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20, parent: str | None = None):
        self.max_upload_bytes = int(max_upload_bytes)
        self.root = Path(tempfile.mkdtemp(prefix="meddiffusion-web-", dir=parent)).resolve()
        self._count = 0

    def folder(self, kind: str) -> Path:
        """A new, empty folder under the work area, named `<kind>-<n>` (never from user input)."""
        self._count += 1
        path = self.root / f"{re.sub(r'[^a-z]', '', kind) or 'work'}-{self._count}"
        path.mkdir()
        return path

    def inside(self, path: Path) -> bool:
        try:
            Path(path).resolve().relative_to(self.root)
        except ValueError:
            return False
        return True

    def check_sizes(self, files: list[dict]) -> None:
        total = 0
        for file in files:
            content = file.get("content")
            size = len(content) if content is not None else int(file.get("size") or 0)
            total += max(size, int(file.get("size") or 0))
        if total > self.max_upload_bytes:
            raise UploadRefused(f"the upload is {total / 2**20:.1f} MB; the limit is {self.max_upload_bytes / 2**20:.0f} MB")

    def store(self, files: list[dict]) -> list[StoredUpload]:
        """Write uploaded files ({"name", "content": bytes, ...} as trame delivers them) into a new folder.
        A volume file is kept as one file; a .zip is extracted as a DICOM series folder. Raises UploadRefused."""
        if not files:
            raise UploadRefused("no file was received")
        self.check_sizes(files)
        folder = self.folder("upload")
        stored = []
        try:
            for index, file in enumerate(files):
                name = safe_file_name(file.get("name") or "")
                suffix = suffix_of(name)
                if not suffix:
                    raise UploadRefused(f"{name}: not a volume; upload NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage "
                                        "(.mha) or a zipped DICOM series (.zip)")
                content = file.get("content")
                if content is None:
                    raise UploadRefused(f"{name}: the file's content did not arrive")
                data = bytes(content)
                target = folder / f"{index}-{name}"
                assert self.inside(target) and target.parent == folder
                if suffix == ZIP_SUFFIX:
                    series = folder / f"{index}-dicom"
                    series.mkdir()
                    self._extract_zip(data, series, name)
                    stored.append(StoredUpload(name, series, True))
                else:
                    target.write_bytes(data)
                    stored.append(StoredUpload(name, target, False))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return stored

    def _extract_zip(self, data: bytes, folder: Path, name: str) -> None:
        import io

        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise UploadRefused(f"{name}: not a valid zip archive") from None
        members = [m for m in archive.infolist() if not m.is_dir()]
        if not members:
            raise UploadRefused(f"{name}: the archive holds no file")
        if len(members) > MAX_ZIP_MEMBERS:
            raise UploadRefused(f"{name}: the archive holds {len(members)} files; at most {MAX_ZIP_MEMBERS} are accepted")
        budget = self.max_upload_bytes * ZIP_EXPANSION_LIMIT
        written = 0
        for index, member in enumerate(members):
            parts = re.split(r"[/\\]", member.filename)
            if "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store":
                continue  # macOS archive metadata, not slices
            base = safe_file_name(parts[-1], "file")
            target = folder / f"{index:05d}-{base}"  # member paths are never used: only a sanitized base name
            with archive.open(member) as source, open(target, "wb") as sink:
                while True:
                    block = source.read(1 << 20)
                    if not block:
                        break
                    written += len(block)
                    if written > budget:
                        raise UploadRefused(f"{name}: the archive expands beyond {budget / 2**20:.0f} MB")
                    sink.write(block)

    def discard(self, stored: list[StoredUpload]) -> None:
        """Remove uploaded files once they are loaded into the scene (only ever under the work area)."""
        for item in stored:
            folder = item.path.parent
            if self.inside(folder) and folder != self.root:
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
