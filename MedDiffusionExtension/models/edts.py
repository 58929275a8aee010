"""EDTS-Trans (Xiao et al.): T1 -> T2 by regression, a texture/structure mask, and a mask-guided diffusion refiner.

- RegN: a U-Net whose levels are transformer blocks (channel attention + gated feed-forward, so full-resolution
  levels stay affordable), a latent module at the bottom, a refinement module, and the input T1 added to its output:
  T2_bar = T1 + Conv(RM(decoder(...))).
- TextureStructureMask (TSM): frozen VGG16-architecture features of T2_bar -> where T2_bar has texture and structure,
  as a map M. Never trained; its weights travel in the model file like any other tensor.
- Refiner: a timestep UNet (blocks.UNet) denoising x_t given T2_bar and M (3 input channels, 1 output channel).
  With `refiner_residual` (x0-prediction only) its output is T2_bar plus the UNet's correction: an untrained
  refiner then already returns T2_bar, so a short training cannot make the fused output worse than the regression.
- Fusion: T2_out = M * T2_tilde + (1 - M) * T2_bar, T2_tilde being the refiner's sample.
All images are in model units [-1, 1]. Sampling lives in `diffusion/` and the pipelines; training in
training/recipes/edts.py.

How the TSM reads the paper's description (each choice is a config value recorded in the card):
- Features: the outputs of torchvision's VGG16 `features` stack cut after the configured indices (4, 9, 16, 23:
  relu1_2, relu2_2, relu3_3, relu4_3, at 1, 1/2, 1/4 and 1/8 of the image size). The grayscale image goes from
  [-1, 1] to [0, 1], is repeated to 3 channels and ImageNet-normalized. Convolutions pad by reflection instead of
  zeros, so the image border does not look like an edge (the weights are the same either way).
- Which weights: `features="vgg16"` takes a user's local torchvision VGG16 state dict (keys "features.N.weight" and
  "features.N.bias"; .safetensors, or a .pth read with torch.load(weights_only=True)) through `load_vgg16`;
  nothing is downloaded. `features="fixed"` keeps the stack's own deterministic initialisation: Kaiming-normal
  (fan_out, ReLU gain, as torchvision initialises VGG) drawn from a torch.Generator seeded with `seed`, zero
  biases. Random convolutions still respond to edges and texture, and the mask of a model is reproducible from its
  file alone; they are not ImageNet features, and the card says which were used. `width` scales the channel counts
  (64 = VGG16 as published; a pretrained state dict needs 64).
- Dispersion index: the paper's per-channel variance / (mean + 1e-12) averaged over the channels, but with the mean
  and variance taken over a `window` x `window` neighbourhood of every pixel (reflect-padded) instead of the whole
  map, whose single number per layer cannot make a spatial map (`dispersion="local"`). Flat regions then score 0
  and edges and texture high. `dispersion="channels"` is the other spatial reading: per pixel, the variance over
  the channels divided by their mean; it scores a flat region by the shape of its feature vector, which depends on
  the intensity (with the fixed full-width stack it marked most of the background of phantom slices).
- Normalization (`normalize="minmax"`): each image's dispersion map is scaled to [-1, 1] before the sigmoid. The
  dispersion of ReLU features is never negative, so without it every sigmoid is >= 0.5, the product of four such
  maps is >= 0.0625 and the threshold t = 0.05 can never be crossed. A map whose spread is within float noise of
  nothing (a flat image) normalizes to -1 everywhere: nothing stands out, so nothing is marked. "none" follows the
  paper literally.
- Top-down products: p_k = sigmoid(n_k) * bilinear(p_{k+1}), from the deepest layer to the shallowest (p_0).
- Threshold refinement (`mask="dynamic"`, the paper's): M = p_0 where p_0 < t, else sigmoid(1 - p_0), so M is a
  soft weight in [0, t) (refiner nearly ignored) or (0.5, 0.72] (textured: mostly the refiner). `mask="binary"`
  gives M = [p_0 >= t] in {0, 1}. `threshold=x` at call time binarizes the dynamic map at x, the paper's fixed-
  threshold ablation (any x in [t, 0.5] marks the same pixels as the binary mask).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import UNet, zero_module

# torchvision's VGG16 ("configuration D"): conv widths, "M" = 2x2 max pooling. Each conv is followed by a ReLU, so
# `features` indices are conv 0, relu 1, conv 2, relu 3, pool 4, conv 5, ... pool 23, ... pool 30.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DISPERSION_EPS = 1e-12
# A dispersion map whose spread is below this fraction of the mean feature magnitude is flat (float noise only).
FLAT_SPREAD = 1e-4


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of every pixel (a transformer token per pixel)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ChannelAttention(nn.Module):
    """Multi-head self-attention across channels ("transposed" attention, as in Restormer): q, k, v from a 1x1 then
    a depthwise 3x3 conv; each head's attention map is (C/h x C/h) over L2-normalized rows with a learnt temperature.
    Its cost grows linearly with the pixels, which pixel attention at 128^2 or 256^2 could not afford."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.qkv_local = nn.Conv2d(3 * channels, 3 * channels, 3, padding=1, groups=3 * channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_local(self.qkv(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attention = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project((attention @ v).reshape(b, c, h, w))


class GatedFeedForward(nn.Module):
    """1x1 expand to two branches, depthwise 3x3, GELU(gate) * value, 1x1 back (zero-initialised: blocks start as
    the identity)."""

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = max(int(channels * expansion), 1)
        self.expand = nn.Conv2d(channels, 2 * hidden, 1)
        self.local = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.project = zero_module(nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.local(self.expand(x)).chunk(2, dim=1)
        return self.project(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    """x + FFN(LN(x + ATTN(LN(x)))): the paper's block, whose only residual around the FFN is the block input."""

    def __init__(self, channels: int, num_heads: int, ffn_expansion: float):
        super().__init__()
        self.norm1, self.attention = ChannelLayerNorm(channels), ChannelAttention(channels, num_heads)
        self.norm2, self.ffn = ChannelLayerNorm(channels), GatedFeedForward(channels, ffn_expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(self.norm2(x + self.attention(self.norm1(x))))


def transformer_stage(channels: int, blocks: int, num_heads: int, ffn_expansion: float) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(channels, num_heads, ffn_expansion) for _ in range(blocks)))


class PixelDown(nn.Module):
    """Halve the size, `channels` -> `out_channels`: 3x3 conv to out/4 channels, then 2x2 pixel unshuffle."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"a pixel-unshuffle level needs a multiple of 4 channels, got {out_channels}")
        self.layers = nn.Sequential(nn.Conv2d(channels, out_channels // 4, 3, padding=1, bias=False),
                                    nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PixelUp(nn.Module):
    """Double the size, `channels` -> `out_channels`: 3x3 conv to 4 * out channels, then 2x2 pixel shuffle."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(channels, 4 * out_channels, 3, padding=1, bias=False),
                                    nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class RegN(nn.Module):
    """The regression network: T1 (B, 1, S, S) -> T2_bar (B, 1, S, S) = T1 + Conv(RM(decoded features)).

    Level l (0..L-2) works at 1/2**l of the size with channels * channel_mult[l] features: transformer blocks, then
    the skip is taken and the features are downsampled. The last level is the latent module at the bottom. Each
    decoder level upsamples, concatenates the skip, merges with a 1x1 conv and runs transformer blocks; the
    refinement module (more blocks at full resolution) and a 3x3 conv (zero-initialised: T2_bar starts as T1) end it.
    """

    def __init__(self, in_channels: int = 1, channels: int = 48, channel_mult: Sequence[int] = (1, 2, 4, 8),
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_heads: Sequence[int] = (1, 2, 4, 8),
                 ffn_expansion: float = 2.66, refinement_blocks: int = 4):
        super().__init__()
        if not len(channel_mult) == len(num_blocks) == len(num_heads) >= 2:
            raise ValueError("channel_mult, num_blocks and num_heads need one entry per level (at least 2)")
        widths = [channels * m for m in channel_mult]
        self.levels = len(widths)
        self.input = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.encoder = nn.ModuleList(transformer_stage(widths[level], num_blocks[level], num_heads[level],
                                                       ffn_expansion) for level in range(self.levels - 1))
        self.downsamples = nn.ModuleList(PixelDown(widths[level], widths[level + 1]) for level in range(self.levels - 1))
        self.latent = transformer_stage(widths[-1], num_blocks[-1], num_heads[-1], ffn_expansion)
        self.upsamples = nn.ModuleList(PixelUp(widths[level + 1], widths[level])
                                       for level in reversed(range(self.levels - 1)))
        self.merges = nn.ModuleList(nn.Conv2d(2 * widths[level], widths[level], 1)
                                    for level in reversed(range(self.levels - 1)))
        self.decoder = nn.ModuleList(transformer_stage(widths[level], num_blocks[level], num_heads[level],
                                                       ffn_expansion) for level in reversed(range(self.levels - 1)))
        self.refinement = transformer_stage(widths[0], refinement_blocks, num_heads[0], ffn_expansion)
        self.output = zero_module(nn.Conv2d(widths[0], in_channels, 3, padding=1))

    def forward(self, t1: torch.Tensor) -> torch.Tensor:
        h, skips = self.input(t1), []
        for stage, down in zip(self.encoder, self.downsamples):
            h = stage(h)
            skips.append(h)
            h = down(h)
        h = self.latent(h)
        for up, merge, stage in zip(self.upsamples, self.merges, self.decoder):
            h = stage(merge(torch.cat([up(h), skips.pop()], dim=1)))
        return t1 + self.output(self.refinement(h))


def vgg16_features(length: int, width: int = 64) -> nn.Sequential:
    """The first `length` modules of torchvision's VGG16 `features` (same indices, so a torchvision state dict's
    "features.N.*" keys load by index), channel counts scaled by width / 64, convolutions padded by reflection."""
    layers: list[nn.Module] = []
    previous = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            out = item * width // 64
            layers += [nn.Conv2d(previous, out, 3, padding=1, padding_mode="reflect"), nn.ReLU()]
            previous = out
    if not 0 < length <= len(layers):
        raise ValueError(f"VGG16 features have {len(layers)} modules, cannot cut after {length}")
    return nn.Sequential(*layers[:length])


def read_vgg16_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A local torchvision-format VGG16 state dict: .safetensors, or a .pth/.pt read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG16 weights {path} not found (a torchvision VGG16 state dict is expected)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


class TextureStructureMask(nn.Module):
    """TSM: image (B, 1, S, S) in [-1, 1] -> texture/structure map M (B, 1, S, S); frozen (see the module docstring).

    probability(image) gives p_0 before the threshold refinement; forward(image, threshold) the mask.
    """

    def __init__(self, features: str = "fixed", layers: Sequence[int] = (4, 9, 16, 23), threshold: float = 0.05,
                 normalize: str = "minmax", mask: str = "dynamic", seed: int = 0, width: int = 64,
                 dispersion: str = "local", window: int = 3):
        super().__init__()
        if dispersion not in ("local", "channels"):
            raise ValueError(f"dispersion must be 'local' or 'channels', not {dispersion!r}")
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be an odd number of pixels, got {window}")
        if features not in ("fixed", "vgg16"):
            raise ValueError(f"features must be 'fixed' or 'vgg16', not {features!r}")
        if normalize not in ("minmax", "none"):
            raise ValueError(f"normalize must be 'minmax' or 'none', not {normalize!r}")
        if mask not in ("dynamic", "binary"):
            raise ValueError(f"mask must be 'dynamic' or 'binary', not {mask!r}")
        if list(layers) != sorted(set(layers)) or not layers:
            raise ValueError(f"layers must be increasing VGG16 feature indices, got {list(layers)}")
        if features == "vgg16" and width != 64:
            raise ValueError("pretrained VGG16 weights need width 64")
        self.features_kind, self.layers, self.threshold = features, [int(i) for i in layers], float(threshold)
        self.normalize, self.mask_kind, self.dispersion_kind, self.window = normalize, mask, dispersion, window
        self.features = vgg16_features(self.layers[-1], width)
        generator = torch.Generator().manual_seed(seed)
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                nn.init.zeros_(module.bias)
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def load_vgg16(self, path: str | Path) -> None:
        """Copy the convolutions this stack uses from a torchvision VGG16 state dict file."""
        state = read_vgg16_state_dict(path)
        wanted = {f"features.{key}": value for key, value in self.features.state_dict().items()}
        missing = [key for key in wanted if key not in state]
        if missing:
            raise ValueError(f"{path} is not a torchvision VGG16 state dict: no {', '.join(missing[:3])}")
        unfit = [key for key, value in wanted.items() if tuple(state[key].shape) != tuple(value.shape)]
        if unfit:
            raise ValueError(f"{path}: {unfit[0]} has shape {tuple(state[unfit[0]].shape)}, "
                             f"VGG16 needs {tuple(wanted[unfit[0]].shape)}")
        self.features.load_state_dict({key[len("features."):]: state[key].float() for key in wanted})

    def feature_maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = ((image.float() + 1.0) / 2.0).expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        maps, start = [], 0
        for end in self.layers:
            x = self.features[start:end](x)
            maps.append(x)
            start = end
        return maps

    def dispersion(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) ReLU features -> (B, 1, h, w) dispersion index (see the module docstring)."""
        if self.dispersion_kind == "channels":
            mean = features.mean(dim=1, keepdim=True)
            return features.var(dim=1, unbiased=False, keepdim=True) / (mean + DISPERSION_EPS)
        padded = F.pad(features, (self.window // 2,) * 4, mode="reflect") if self.window > 1 else features
        mean = F.avg_pool2d(padded, self.window, stride=1)
        variance = (F.avg_pool2d(padded * padded, self.window, stride=1) - mean * mean).clamp_min(0.0)
        return (variance / (mean + DISPERSION_EPS)).mean(dim=1, keepdim=True)

    def _normalized(self, dispersion: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.normalize == "none":
            return dispersion
        low = dispersion.amin(dim=(1, 2, 3), keepdim=True)
        spread = dispersion.amax(dim=(1, 2, 3), keepdim=True) - low
        flat = spread <= FLAT_SPREAD * features.abs().mean(dim=(1, 2, 3), keepdim=True) + DISPERSION_EPS
        scaled = 2.0 * (dispersion - low) / torch.where(flat, torch.ones_like(spread), spread) - 1.0
        return torch.where(flat, torch.full_like(scaled, -1.0), scaled)

    def probability(self, image: torch.Tensor) -> torch.Tensor:
        """p_0 (B, 1, S, S): the top-down product of the per-layer sigmoid maps, at the image size."""
        p = None
        for features in reversed(self.feature_maps(image)):
            score = torch.sigmoid(self._normalized(self.dispersion(features), features))
            p = score if p is None else score * F.interpolate(p, size=score.shape[-2:], mode="bilinear",
                                                              align_corners=False)
        if p.shape[-2:] != image.shape[-2:]:
            p = F.interpolate(p, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return p

    def forward(self, image: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
        # float32 whatever the caller's autocast: the threshold must mark the same pixels on every device
        with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
            p0 = self.probability(image)
            dynamic = torch.where(p0 < self.threshold, p0, torch.sigmoid(1.0 - p0))
            if threshold is not None:
                return (dynamic >= threshold).to(image.dtype)
            if self.mask_kind == "binary":
                return (p0 >= self.threshold).to(image.dtype)
            return dynamic.to(image.dtype)


class EDTS(nn.Module):
    """RegN, TSM and the refiner under one state dict (prefixes regn., tsm., refiner.) and their config."""

    # Every part runs at inference (the TSM makes the refiner's condition), so nothing is training-only.
    TRAINING_ONLY: tuple[str, ...] = ()

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.regn = RegN(**config["regn"])
        self.tsm = TextureStructureMask(**config["tsm"])
        self.refiner = UNet(3, 1, time_embedding=True, zero_init_output=True, **config["refiner"])
        self.refiner_residual = bool(config.get("refiner_residual", False))
        pools = sum(isinstance(module, nn.MaxPool2d) for module in self.tsm.features)
        stride = 2 ** max(len(config["regn"]["channel_mult"]) - 1, len(config["refiner"]["channel_mult"]) - 1, pools)
        if config["image_size"] % stride:
            raise ValueError(f"image_size {config['image_size']} must be a multiple of {stride}")

    @classmethod
    def from_config(cls, config: dict) -> "EDTS":
        return cls(config)

    def regress(self, t1: torch.Tensor) -> torch.Tensor:
        return self.regn(t1)

    def structure_mask(self, t2_bar: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
        """M from the TSM (no gradient); threshold=x: the dynamic map binarized at x (fixed-threshold ablation)."""
        return self.tsm(t2_bar, threshold)

    @staticmethod
    def full_mask(t2_bar: torch.Tensor) -> torch.Tensor:
        """M = 1 everywhere (the "without M" ablation: the output is the refiner's alone)."""
        return torch.ones_like(t2_bar)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, t2_bar: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The refiner's output in the card's sampling.prediction_type (x0 when refiner_residual is set)."""
        output = self.refiner(torch.cat([x_t, t2_bar, mask.to(x_t.dtype)], dim=1), t)
        return output + t2_bar if self.refiner_residual else output

    @staticmethod
    def fuse(t2_tilde: torch.Tensor, t2_bar: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask * t2_tilde + (1 - mask) * t2_bar


EDTS_CONFIGS = {
    # CPU-sized at 128^2 (BraTS 240^2 x 1 mm shown at 1.875 mm): four levels of 16..128 channels; the fixed VGG16
    # stack at a quarter of its width (1/16 of the operations; at full width the mask of a batch took about as long
    # as a training step of the refiner); the refiner corrects T2_bar (x0-prediction) to make the most of few steps.
    "tiny": {
        "image_size": 128,
        "regn": {"channels": 16, "channel_mult": [1, 2, 4, 8], "num_blocks": [1, 1, 1, 2], "num_heads": [1, 1, 2, 4],
                 "ffn_expansion": 2.0, "refinement_blocks": 1},
        "tsm": {"features": "fixed", "layers": [4, 9, 16, 23], "threshold": 0.05, "normalize": "minmax",
                "mask": "dynamic", "seed": 0, "width": 16, "dispersion": "local", "window": 3},
        "refiner": {"channels": 16, "channel_mult": [1, 2, 4, 8], "num_res_blocks": 1, "attention_levels": [],
                    "mid_attention": True, "num_heads": 4, "dropout": 0.0},
        "refiner_residual": True,
    },
    # The paper's scale at 256^2: 4 U-Net levels; Restormer-sized RegN (25.6 M parameters); pretrained VGG16 (a
    # local file). The paper gives no refiner width: 32 channels bring RegN + refiner to 38 M, near the size it
    # reports for the whole model.
    "paper": {
        "image_size": 256,
        "regn": {"channels": 48, "channel_mult": [1, 2, 4, 8], "num_blocks": [4, 6, 6, 8], "num_heads": [1, 2, 4, 8],
                 "ffn_expansion": 2.66, "refinement_blocks": 4},
        "tsm": {"features": "vgg16", "layers": [4, 9, 16, 23], "threshold": 0.05, "normalize": "minmax",
                "mask": "dynamic", "seed": 0, "width": 64, "dispersion": "local", "window": 3},
        "refiner": {"channels": 32, "channel_mult": [1, 2, 4, 8], "num_res_blocks": 2, "attention_levels": [3],
                    "mid_attention": True, "num_heads": 8, "dropout": 0.0},
        "refiner_residual": False,
    },
}
