"""Slice models by method: how a loaded network turns a batch of normalized slices into output channels.

Each pipeline file registers the methods it runs with `@slice_model("key")`; the task pipelines look the method
up here instead of branching on it. Adding a method is one pipeline file and one entry in tasks/methods.py.
"""

from __future__ import annotations

from typing import Callable

from ..errors import InputError

# method -> factory(network, card, **options) -> slice_model(batch) -> tensor (B, C, S, S)
SLICE_MODELS: dict[str, Callable] = {}


def slice_model(method: str):
    def register(factory: Callable) -> Callable:
        SLICE_MODELS[method] = factory
        return factory

    return register


def build_slice_model(network, card, **options):
    factory = SLICE_MODELS.get(card.method)
    if factory is None:
        raise InputError(f"no pipeline runs {card.method} models in this version of MedDiffusion")
    return factory(network, card, **options)
