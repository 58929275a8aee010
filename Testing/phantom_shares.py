"""A phantom dataset option drawn per case (`--pelvis-share`, `--lesion-share`): which cases it marked and what it
changed in them, against the same dataset written without it."""

from __future__ import annotations

import json
from pathlib import Path

from training.phantoms import write_btcv_dataset
from training.phantoms.nifti import sha256_of


def cases_marked_by_share(root: Path, share_option: str, record_key: str, n: int = 5) -> dict[str, dict[str, bool]]:
    """n small shifted-profile cases written plainly and with share_option=0.5; per case: "marked" (its record
    carries record_key), "same_image" and "same_label" (byte-identical to the plain case's files)."""
    plain, mixed = root / "plain", root / "mixed"
    write_btcv_dataset(plain, n, seed=0, shape=(48, 48, 12), acquisition="shifted")
    write_btcv_dataset(mixed, n, seed=0, shape=(48, 48, 12), acquisition="shifted", **{share_option: 0.5})
    records = json.loads((mixed / "acquisitions.json").read_text(encoding="utf-8"))["cases"]

    def same(case: str, kind: str) -> bool:
        name = f"{kind}/{'img' if kind == 'img' else 'label'}{case}.nii.gz"
        return sha256_of(plain / name) == sha256_of(mixed / name)

    return {case: {"marked": record_key in record, "same_image": same(case, "img"), "same_label": same(case, "label")}
            for case, record in records.items()}
