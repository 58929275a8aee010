"""Phantom data: multi-contrast brain MRI with gliomas (BraTS layout), abdominal CT with organ labels (BTCV
layout), IXI-style T1/T2 pairs, the bundled sample cases and the documentation figures.

Shapes are given in NIfTI order (ni, nj, nk), e.g. (240, 240, 155); arrays come back in the project's (k, j, i)
order with their 4x4 ijk-to-RAS matrix, so `Volume(*case["t1n"])` works. Every generator is deterministic per
seed. Command line: `python -m training phantoms {brats,btcv,ixi,samples,figures} --help`.

BraTS and BTCV datasets can be written under acquisition profiles (`--acquisition {fixed,train,shifted}`):
the original single acquisition, randomised scanners for training, or a held-out shifted distribution; the ranges
are documented in acquisition.py.
"""

from .acquisition import PROFILES
from .brain import BrainPhantom, brats_grid, generate_brain_case, simulate_brain
from .ct import BTCV_LABELS, CTPhantom, btcv_grid, generate_ct_case, simulate_ct
from .layouts import (write_brats_case, write_brats_dataset, write_btcv_case, write_btcv_dataset, write_ixi_case,
                      write_ixi_dataset)
from .samples import sample_file_names, verify_samples, write_samples

__all__ = [
    "PROFILES",
    "BrainPhantom", "brats_grid", "generate_brain_case", "simulate_brain",
    "BTCV_LABELS", "CTPhantom", "btcv_grid", "generate_ct_case", "simulate_ct",
    "write_brats_case", "write_brats_dataset", "write_btcv_case", "write_btcv_dataset", "write_ixi_case",
    "write_ixi_dataset", "sample_file_names", "verify_samples", "write_samples",
]
