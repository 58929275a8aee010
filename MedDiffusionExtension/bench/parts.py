"""What one slice costs: the network parts a method's slice model calls, with inputs of the right shapes, and the
floating-point operations of one pass of each, counted by torch's FlopCounterMode on the meta device (shapes only:
no memory, no arithmetic)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch


@dataclass(frozen=True)
class NetworkPart:
    """One network call of a slice model: `owner.attribute(*inputs(batch, device))`. `per_step`: called once per
    sampling step (the MDN, SDSeg's denoiser), else once per slice and sample. `convolutional`: whether the memory
    layout can matter (the MDN is an MLP)."""

    name: str
    owner: Any
    attribute: str
    inputs: Callable[[int, torch.device], tuple]
    per_step: bool = False
    convolutional: bool = True

    @property
    def run(self) -> Callable:
        return getattr(self.owner, self.attribute)


def network_parts(method: str, network: torch.nn.Module, image_size: int) -> list[NetworkPart]:
    """The parts of `network` a `method` slice model calls, in call order."""
    size = image_size
    if method == "cdm":
        dim = network.mdn.representation_dim
        conditioned = network.mdn.source_mlp is not None

        def mdn_inputs(batch, device):
            source = torch.randn(batch, dim, device=device) if conditioned else None
            return torch.randn(batch, dim, device=device), torch.full((batch,), 999, device=device), source

        parts = [NetworkPart("MRM source encoding", network.mrm, "represent",
                             lambda b, d: (torch.randn(b, 2, size, size, device=d),))] if conditioned else []
        return parts + [
            NetworkPart("MDN step", network, "mdn", mdn_inputs, per_step=True, convolutional=False),
            NetworkPart("C-UNet", network, "cunet",
                        lambda b, d: (torch.randn(b, 2, size, size, device=d), torch.randn(b, dim, device=d))),
        ]
    if method == "sdseg":
        latent_channels = network.config["latent_channels"]
        latent = size // network.autoencoder.downsample_factor

        def z(batch, device):
            return torch.randn(batch, latent_channels, latent, latent, device=device)

        decode = "decode_probabilities" if hasattr(network, "decode_probabilities") else "decode_mask"
        return [
            NetworkPart("vision encoder", network, "encode_image",
                        lambda b, d: (torch.randn(b, 1, size, size, device=d),)),
            NetworkPart("denoiser step", network, "predict_noise",
                        lambda b, d: (z(b, d), torch.full((b,), 999, device=d), z(b, d)), per_step=True),
            NetworkPart("mask decoder", network, decode, lambda b, d: (z(b, d),)),
        ]
    raise ValueError(f"no network parts known for method {method!r}")


def count_flops(function: Callable, *inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        function(*inputs)
    return counter.get_total_flops()


@functools.lru_cache(maxsize=16)
def _slice_flops(method: str, architecture_json: str) -> tuple[tuple[str, int], ...]:
    from ..models import build_model

    architecture = json.loads(architecture_json)
    meta = torch.device("meta")
    with meta:
        network = build_model(method, architecture).eval()
    parts = network_parts(method, network, architecture["image_size"])
    return tuple((part.name, count_flops(part.run, *part.inputs(1, meta))) for part in parts)


def slice_flops(method: str, architecture: dict) -> Optional[dict[str, int]]:
    """FLOPs of one pass of each network part for one slice; None where the network cannot be counted on the meta
    device (a part that needs real data)."""
    try:
        return dict(_slice_flops(method, json.dumps(architecture, sort_keys=True)))
    except (KeyError, ValueError, TypeError, RuntimeError, NotImplementedError):
        return None
