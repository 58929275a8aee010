"""Datasets: readers for the real on-disk layouts (BraTS2023, UPenn-GBM, IXI, BTCV), the papers' splits, and slice
datasets with an on-disk cache so an epoch never decodes NIfTI again."""

from .augment import CTAcquisition, CTAugment, MRIAcquisition, MRIAugment, build_augmentation
from .layouts import Case, read_brats, read_btcv, read_ixi, read_upenn_gbm, read_mri_cases
from .slices import CachedSlices, SegmentationSlices, TranslationSlices
from .splits import btcv_split, split_by_volume

__all__ = [
    "Case", "read_brats", "read_upenn_gbm", "read_ixi", "read_btcv", "read_mri_cases", "split_by_volume",
    "btcv_split", "CachedSlices", "TranslationSlices", "SegmentationSlices", "CTAcquisition", "CTAugment",
    "MRIAcquisition", "MRIAugment", "build_augmentation",
]
