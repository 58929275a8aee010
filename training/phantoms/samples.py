"""The bundled sample cases (Resources/SampleData): one small brain MRI case and one abdominal CT case.

Regenerate with `python -m training phantoms samples --out Resources/SampleData`. The files are
byte-for-byte reproducible on one platform (seeded, gzip without timestamps); SHA256SUMS records their digests in
`sha256sum -c` format and samples.json describes each file for Slicer's SampleData registration.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .brain import SEQUENCES, simulate_brain
from .mni_template import TEMPLATE_ATTRIBUTION
from .ct import btcv_grid, render_abdomen
from .ct_anatomy import draw_abdomen
from .nifti import sha256_of, write_nifti

MRI_SAMPLE = {"seed": 0, "shape": (128, 128, 80)}  # 1.875 x 1.875 x 1.94 mm over the BraTS field of view
CT_SAMPLE = {"seed": 8, "shape": (256, 256, 64), "spacing": (1.6, 1.6, 2.5), "centre_ras": (0.0, -15.0, 35.0)}
MRI_PREFIX = "PhantomBrainMR"
CT_PREFIX = "PhantomAbdomenCT"
CHECKSUMS = "SHA256SUMS"
MANIFEST = "samples.json"

_DESCRIPTIONS = {
    "t1n": "native T1 (MPRAGE)", "t1c": "post-gadolinium T1 (MPRAGE)", "t2w": "T2 (spin echo)",
    "t2f": "T2-FLAIR", "seg": "BraTS labels: 1 necrotic core, 2 oedema, 3 enhancing tumour",
}


def sample_file_names() -> list[str]:
    names = [f"{MRI_PREFIX}-{key}.nii.gz" for key in (*SEQUENCES, "seg")]
    return names + [f"{CT_PREFIX}.nii.gz", f"{CT_PREFIX}-label.nii.gz"]


def write_samples(out_dir) -> dict[str, str]:
    """Write the sample files, SHA256SUMS and samples.json into out_dir; returns {file name: sha256}."""
    out_dir = Path(out_dir)
    brain = simulate_brain(MRI_SAMPLE["seed"], MRI_SAMPLE["shape"])
    entries = []
    for key in SEQUENCES:
        path = write_nifti(out_dir / f"{MRI_PREFIX}-{key}.nii.gz", brain.images[key], brain.ijk_to_ras, np.int16)
        entries.append((path, "MRI", _DESCRIPTIONS[key], brain.info))
    path = write_nifti(out_dir / f"{MRI_PREFIX}-seg.nii.gz", brain.seg, brain.ijk_to_ras, np.uint8)
    entries.append((path, "MRI labels", _DESCRIPTIONS["seg"], brain.info))

    ct_grid = btcv_grid(CT_SAMPLE["shape"], CT_SAMPLE["spacing"], CT_SAMPLE["centre_ras"])
    ct = render_abdomen(draw_abdomen(CT_SAMPLE["seed"]), ct_grid)
    path = write_nifti(out_dir / f"{CT_PREFIX}.nii.gz", ct.image, ct.ijk_to_ras, np.int16)
    entries.append((path, "CT", "abdominal CT in HU", ct.info))
    path = write_nifti(out_dir / f"{CT_PREFIX}-label.nii.gz", ct.label, ct.ijk_to_ras, np.uint8)
    entries.append((path, "CT labels", "BTCV organ labels 1-13", ct.info))

    digests = {path.name: sha256_of(path) for path, *_ in entries}
    (out_dir / CHECKSUMS).write_text("".join(f"{digest}  {name}\n" for name, digest in digests.items()), encoding="utf-8")
    manifest = {
        "generator": "python -m training phantoms samples --out Resources/SampleData",
        "attribution": TEMPLATE_ATTRIBUTION,
        "files": [{"name": path.name, "kind": kind, "description": description, "sha256": digests[path.name],
                   "bytes": path.stat().st_size, "phantom": {k: v for k, v in info.items() if k != "protocol"}}
                  for path, kind, description, info in entries],
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return digests


def read_checksums(folder) -> dict[str, str]:
    lines = (Path(folder) / CHECKSUMS).read_text(encoding="utf-8").splitlines()
    return {name.strip(): digest for digest, name in (line.split(maxsplit=1) for line in lines if line.strip())}


def verify_samples(folder) -> list[str]:
    """Names of sample files that are missing or whose SHA-256 differs from SHA256SUMS (empty when all good)."""
    folder = Path(folder)
    expected = read_checksums(folder)
    return [name for name, digest in expected.items()
            if not (folder / name).is_file() or sha256_of(folder / name) != digest]
