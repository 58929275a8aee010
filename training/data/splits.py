"""The papers' train/test splits."""

from __future__ import annotations

import numpy as np

from .layouts import Case

# The 12 BTCV test volumes of the TransUNet/Synapse protocol that SDSeg follows (18 train / 12 test).
BTCV_TEST_IDS = ("0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038")


def split_by_volume(cases: list[Case], train_fraction: float = 0.7, seed: int = 0) -> tuple[list[Case], list[Case]]:
    """CDM: 70/30 by volume (never by slice: slices of one patient must not straddle the split)."""
    order = np.random.default_rng(seed).permutation(len(cases))
    n_train = int(round(train_fraction * len(cases)))
    n_train = min(max(n_train, 1), len(cases) - 1) if len(cases) > 1 else len(cases)
    train = [cases[i] for i in sorted(order[:n_train])]
    test = [cases[i] for i in sorted(order[n_train:])]
    return train, test


def btcv_split(cases: list[Case]) -> tuple[list[Case], list[Case]]:
    """The 18/12 split when the real BTCV ids are present; otherwise the same 60/40 proportion, seeded."""
    ids = {c.case_id for c in cases}
    if set(BTCV_TEST_IDS) <= ids:
        return [c for c in cases if c.case_id not in BTCV_TEST_IDS], [c for c in cases if c.case_id in BTCV_TEST_IDS]
    return split_by_volume(cases, train_fraction=18 / 30, seed=0)
