"""The bundled sample cases (Resources/SampleData): SHA-256 checked, registered in SampleData, loaded for self-tests.

Resources/SampleData/SHA256SUMS lists every file as `<sha256>  <relative path>` (sha256sum's format). Files are
named `<case>-<role>.nii.gz`, the case's main image without a role: `PhantomBrainMR-t1n.nii.gz`, `-t2w`, `-t1c`,
`-t2f`, `-seg` for the brain MRI case; `PhantomAbdomenCT.nii.gz` (or `...-img`) and `...-label` for the CT case.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import slicer

from . import backend

CHECKSUMS_FILE = "SHA256SUMS"
CATEGORY = "MedDiffusion"
IMAGE = "image"  # the role of a case's file that has no role suffix


@dataclass(frozen=True)
class SampleCase:
    sampleName: str  # name in the SampleData module
    roles: tuple  # every file role of the case, in display order
    required: tuple  # roles the self-tests and the modules need
    labelRoles: tuple  # roles that are label maps (loaded as segmentations / labelmaps)


SAMPLE_CASES = {
    "mri": SampleCase("MedDiffusionBrainMRI", ("t1n", "t2w", "t1c", "t2f", "seg"), ("t1n", "t2w"), ("seg",)),
    "ct": SampleCase("MedDiffusionAbdomenCT", (IMAGE, "label"), (IMAGE,), ("label",)),
}
_ROLE_ALIASES = {"img": IMAGE}
_KNOWN_ROLES = {role for case in SAMPLE_CASES.values() for role in case.roles} | set(_ROLE_ALIASES)
_EXTENSIONS = r"(\.seg)?\.(nii\.gz|nii|nrrd|nhdr|mha)$"


def sampleDataFolder() -> Path:
    return backend.resourcesFolder() / "SampleData"


def readChecksums(folder: Path) -> dict[str, str]:
    """relative path -> sha256 from SHA256SUMS ({} when there is none)."""
    path = Path(folder) / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    checksums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            checksums[parts[1].lstrip("*")] = parts[0].lower()
    return checksums


def splitName(relativePath: str) -> tuple[str, str]:
    """("PhantomBrainMR", "t1n") for PhantomBrainMR-t1n.nii.gz; ("PhantomAbdomenCT", "image") for PhantomAbdomenCT.nii.gz."""
    stem = re.sub(_EXTENSIONS, "", Path(relativePath).name, flags=re.IGNORECASE)
    match = re.fullmatch(r"(.+)[-_]([A-Za-z0-9]+)", stem)
    if match and match.group(2).lower() in _KNOWN_ROLES:
        role = match.group(2).lower()
        return match.group(1), _ROLE_ALIASES.get(role, role)
    return stem, IMAGE


def caseFiles(caseKey: str, folder: Optional[Path] = None) -> dict[str, tuple[Path, str]]:
    """role -> (path, sha256) of a sample case; FileNotFoundError naming what is missing."""
    folder = Path(folder) if folder is not None else sampleDataFolder()
    case = SAMPLE_CASES[caseKey]
    groups: dict[str, dict] = {}
    for relative, checksum in readChecksums(folder).items():
        if re.search(_EXTENSIONS, relative, flags=re.IGNORECASE) and (folder / relative).is_file():
            prefix, role = splitName(relative)
            groups.setdefault(prefix, {})[role] = (folder / relative, checksum)
    others = {r for key, c in SAMPLE_CASES.items() if key != caseKey for r in c.roles} - set(case.roles)
    for prefix in sorted(groups):
        files = groups[prefix]
        if all(r in files for r in case.required) and not others & set(files):
            return {role: files[role] for role in case.roles if role in files}
    raise FileNotFoundError(f"no sample case {case.sampleName} (files for {', '.join(case.required)}) in {folder}; "
                            f"it needs those files, listed in {CHECKSUMS_FILE}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def nodeName(path: Path) -> str:
    return re.sub(_EXTENSIONS, "", Path(path).name, flags=re.IGNORECASE)


def registerSampleData(iconPath: Optional[str] = None, folder: Optional[Path] = None) -> list[str]:
    """Register the bundled cases in the SampleData module; returns the registered sample names."""
    import SampleData

    registered = []
    for key, case in SAMPLE_CASES.items():
        try:
            files = caseFiles(key, folder)
        except FileNotFoundError as error:
            logging.info(f"MedDiffusion: sample case not registered: {error}")
            continue
        roles = list(files)
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY, sampleName=case.sampleName,
            uris=[files[r][0].resolve().as_uri() for r in roles],
            fileNames=[files[r][0].name for r in roles],
            nodeNames=[nodeName(files[r][0]) for r in roles],
            checksums=[f"SHA256:{files[r][1]}" for r in roles],
            loadFileType=["SegmentationFile" if r in case.labelRoles else "VolumeFile" for r in roles],
            thumbnailFileName=iconPath)
        registered.append(case.sampleName)
    return registered


def loadSampleCase(caseKey: str, roles=None, folder: Optional[Path] = None) -> dict:
    """Load a sample case's volumes (checksums verified first); returns role -> volume node."""
    case = SAMPLE_CASES[caseKey]
    files = caseFiles(caseKey, folder)
    wanted = list(roles) if roles is not None else list(files)
    nodes = {}
    for role in wanted:
        if role not in files:
            raise FileNotFoundError(f"sample case {case.sampleName} has no {role} file")
        path, expected = files[role]
        actual = sha256(path)
        if actual != expected:
            raise RuntimeError(f"{path} does not match its checksum in {CHECKSUMS_FILE} "
                               f"({actual[:12]}... != {expected[:12]}...); the sample data is corrupt")
        nodes[role] = slicer.util.loadVolume(str(path), {"name": nodeName(path), "show": False,
                                                         "labelmap": role in case.labelRoles})
    return nodes
