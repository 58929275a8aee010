"""Pipelines: a model + its sampler + the volume engine, from input Volumes to output Volumes."""

from .segment import SegmentationResult, segment
from .translate import translate

__all__ = ["translate", "segment", "SegmentationResult"]
