"""CDM (Cross-conditioned Diffusion Model, Xing et al. 2024): T1 + T2 -> T1c + T2f, as three networks.

- MRM: masked image modelling over the stacked targets; its pooled encoder tokens give a standardized
  representation vector r (B, D) whose first half stands for T1c and second half for T2f.
- MDN: an MLP denoiser over r (what the diffusion runs on; schedules and DDIM live in `diffusion/`).
- CUNet: one-pass UNet from the sources to the targets, conditioned on r at every encoder scale.
`CDM` holds the three; `CDM_CONFIGS` (and `CUNET_CONFIGS`, the plain-UNet baseline) are plain JSON-able dicts.
"""

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import UNet, timestep_embedding, zero_module


def sincos_position_embedding(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (grid_h * grid_w, dim): half the dims encode rows, half columns."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32),
                                indexing="ij")
    parts = [f(pos.reshape(-1, 1) * freqs) for pos in (rows, cols) for f in (torch.sin, torch.cos)]
    return F.pad(torch.cat(parts, dim=1), (0, dim - 4 * quarter))


class MRM(nn.Module):
    """Modality-specific Representation Model: SimMIM over the target modalities with a small ViT encoder.

    Each modality has its own patch embedding and its own learnable mask token, so that patches can be masked in
    each modality separately (as the paper describes); the modality embeddings of a patch are summed into one
    token. The decoder is SimMIM's: a 1x1 conv to patch_size**2 values per modality, then pixel shuffle.
    """

    def __init__(self, in_channels: int = 2, patch_size: int = 16, mask_patch_size: int = 32,
                 mask_ratio: float = 0.6, width: int = 384, depth: int = 6, num_heads: int = 6,
                 representation_dim: int = 256, independent_masks: bool = True):
        super().__init__()
        if mask_patch_size % patch_size:
            raise ValueError(f"mask_patch_size {mask_patch_size} must be a multiple of patch_size {patch_size}")
        self.in_channels, self.patch_size, self.mask_patch_size = in_channels, patch_size, mask_patch_size
        self.mask_ratio, self.independent_masks, self.width = mask_ratio, independent_masks, width
        self.patch_embeds = nn.ModuleList(nn.Conv2d(1, width, patch_size, stride=patch_size)
                                          for _ in range(in_channels))
        self.mask_tokens = nn.Parameter(torch.randn(in_channels, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, num_heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.decoder = nn.Sequential(nn.Conv2d(width, in_channels * patch_size ** 2, 1), nn.PixelShuffle(patch_size))
        self.project = nn.Linear(width, representation_dim)

    def random_mask(self, batch: int, height: int, width: int,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, C, H / mask_patch, W / mask_patch) bool, True = masked; exactly round(ratio * n) patches each."""
        gh, gw = height // self.mask_patch_size, width // self.mask_patch_size
        if gh * self.mask_patch_size != height or gw * self.mask_patch_size != width:
            raise ValueError(f"image size {height}x{width} must be a multiple of mask_patch_size "
                             f"{self.mask_patch_size}")
        maps = self.in_channels if self.independent_masks else 1
        n_masked = round(self.mask_ratio * gh * gw)
        # Ranks of uniform noise give a uniformly random subset of exactly n_masked patches.
        ranks = torch.rand(batch, maps, gh * gw, generator=generator).argsort(-1).argsort(-1)
        mask = (ranks < n_masked).reshape(batch, maps, gh, gw)
        return mask.expand(batch, self.in_channels, gh, gw)

    def encode(self, targets: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, width) encoder tokens; mask (B, C, h, w) at mask-patch resolution, or None."""
        b, _, height, width = targets.shape
        gh, gw = height // self.patch_size, width // self.patch_size
        tokens = 0
        for m, embed in enumerate(self.patch_embeds):
            e = embed(targets[:, m:m + 1]).flatten(2).transpose(1, 2)  # (B, N, width)
            if mask is not None:
                scale = self.mask_patch_size // self.patch_size
                token_mask = mask[:, m].repeat_interleave(scale, 1).repeat_interleave(scale, 2).reshape(b, -1, 1)
                e = torch.where(token_mask.to(e.device), self.mask_tokens[m].to(e.dtype), e)
            tokens = tokens + e
        tokens = tokens + sincos_position_embedding(gh, gw, self.width).to(tokens)
        return self.norm(self.encoder(tokens))

    def reconstruct(self, targets: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, _, height, width = targets.shape
        tokens = self.encode(targets, mask)
        grid = tokens.transpose(1, 2).reshape(b, self.width, height // self.patch_size, width // self.patch_size)
        return self.decoder(grid)

    def pixel_mask(self, mask: torch.Tensor) -> torch.Tensor:
        s = self.mask_patch_size
        return mask.repeat_interleave(s, 2).repeat_interleave(s, 3)

    def masked_loss(self, prediction: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked pixels of each modality only (the paper's L2)."""
        weight = self.pixel_mask(mask).to(prediction.device, prediction.dtype)
        return ((prediction - targets) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)

    def loss(self, targets: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        mask = self.random_mask(targets.shape[0], targets.shape[2], targets.shape[3], generator).to(targets.device)
        return self.masked_loss(self.reconstruct(targets, mask), targets, mask)

    def represent(self, targets: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) unmasked targets -> (B, D) pooled, projected, standardized per sample (as RCG)."""
        r = self.project(self.encode(targets).mean(dim=1))
        return (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + 1e-6)


class MDNBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.inp = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), zero_module(nn.Linear(hidden, hidden)))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.inp(x) + self.emb(emb))


class MDN(nn.Module):
    """Modality-decoupled Diffusion Network: residual MLP denoiser over the (B, D) representation.

    With `decoupled_input` the T1c half and the T2f half of r_t get their own projection (Linear -> LayerNorm ->
    SiLU) before a shared mixing layer. The nonlinearity is what makes this more than one linear layer: summing two
    linear projections of the halves equals a single linear projection of the whole vector.
    """

    def __init__(self, representation_dim: int = 256, hidden: int = 1024, depth: int = 6,
                 decoupled_input: bool = True, source_condition_dim: int = 0):
        super().__init__()
        self.representation_dim, self.hidden, self.decoupled_input = representation_dim, hidden, decoupled_input
        half = representation_dim // 2
        if decoupled_input:
            self.half_projections = nn.ModuleList(
                nn.Sequential(nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.SiLU())
                for d in (half, representation_dim - half))
            self.input = nn.Linear(2 * hidden, hidden)
        else:
            self.input = nn.Linear(representation_dim, hidden)
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.source_mlp = nn.Sequential(nn.Linear(source_condition_dim, hidden), nn.SiLU(),
                                        nn.Linear(hidden, hidden)) if source_condition_dim else None
        self.blocks = nn.ModuleList(MDNBlock(hidden) for _ in range(depth))
        self.output = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), zero_module(nn.Linear(hidden, representation_dim)))

    def forward(self, r_t: torch.Tensor, t: torch.Tensor, source: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.decoupled_input:
            half = self.representation_dim // 2
            h = self.input(torch.cat([self.half_projections[0](r_t[:, :half]),
                                      self.half_projections[1](r_t[:, half:])], dim=1))
        else:
            h = self.input(r_t)
        emb = self.time_mlp(timestep_embedding(t, self.hidden))
        if self.source_mlp is not None:
            if source is None:
                raise ValueError("this MDN is source-conditioned: pass the pooled source encoding")
            emb = emb + self.source_mlp(source)
        for block in self.blocks:
            h = block(h, emb)
        return self.output(h)


class ConditionEmbedding(nn.Module):
    """Fuses the representation into a feature map: GN(1,C)-SiLU-1x1 conv on the features, MLP on r, then
    broadcast add (or FiLM: (1 + scale) * features + shift)."""

    def __init__(self, channels: int, representation_dim: int, fusion: str = "add"):
        super().__init__()
        if fusion not in ("add", "film"):
            raise ValueError(f"fusion must be 'add' or 'film', not {fusion!r}")
        self.fusion = fusion
        self.features = nn.Sequential(nn.GroupNorm(1, channels), nn.SiLU(), nn.Conv2d(channels, channels, 1))
        out = channels if fusion == "add" else 2 * channels
        self.representation = nn.Sequential(nn.Linear(representation_dim, channels), nn.SiLU(),
                                            nn.Linear(channels, out))

    def forward(self, h: torch.Tensor, representation: torch.Tensor) -> torch.Tensor:
        cond = self.representation(representation)[:, :, None, None]
        if self.fusion == "add":
            return self.features(h) + cond
        scale, shift = cond.chunk(2, dim=1)
        return self.features(h) * (1 + scale) + shift


class CUNet(nn.Module):
    """Cross-conditioned UNet: sources (B, 2, H, W) [T1, T2] -> targets (B, 2, H, W) [T1c, T2f] in one pass.

    `conditioned=False` drops the Condition Embeddings and is the plain-UNet baseline (the paper's M1).
    The output is linear by default: background is exactly -1, which tanh only reaches with unbounded logits
    (and vanishing MSE gradients); the pipeline clamps to [-1, 1].
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 2, channels: int = 64,
                 channel_mult=(1, 2, 4, 8), num_res_blocks: int = 2, attention_levels=(), mid_attention: bool = True,
                 num_heads: int = 4, dropout: float = 0.0, conditioned: bool = True, representation_dim: int = 256,
                 fusion: str = "add", output_activation: str = "none"):
        super().__init__()
        if output_activation not in ("none", "tanh"):
            raise ValueError(f"output_activation must be 'none' or 'tanh', not {output_activation!r}")
        self.conditioned, self.output_activation = conditioned, output_activation
        level_condition = (lambda c: ConditionEmbedding(c, representation_dim, fusion)) if conditioned else None
        self.unet = UNet(in_channels, out_channels, channels, channel_mult, num_res_blocks, attention_levels,
                         mid_attention, num_heads, time_embedding=False, dropout=dropout,
                         level_condition=level_condition)

    @classmethod
    def from_config(cls, config: dict) -> "CUNet":
        """From a CDM-style config: its "cunet" section plus the top-level representation_dim if present."""
        extra = {"representation_dim": config["representation_dim"]} if "representation_dim" in config else {}
        return cls(**config["cunet"], **extra)

    def forward(self, sources: torch.Tensor, representation: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.conditioned and representation is None:
            raise ValueError("this C-UNet is conditioned: pass the target representation")
        y = self.unet(sources, condition=representation if self.conditioned else None)
        return torch.tanh(y) if self.output_activation == "tanh" else y


class CDM(nn.Module):
    """The three CDM networks under one state dict (prefixes mrm., mdn., cunet.) and their config."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(config)
        d = config["representation_dim"]
        self.mrm = MRM(representation_dim=d, **config["mrm"])
        self.mdn = MDN(representation_dim=d, **config["mdn"])
        self.cunet = CUNet.from_config(config)
        stride = max(self.mrm.mask_patch_size, 2 ** (len(self.cunet.unet.encoder) - 1))
        if config["image_size"] % stride:
            raise ValueError(f"image_size {config['image_size']} must be a multiple of {stride}")

    @classmethod
    def from_config(cls, config: dict) -> "CDM":
        return cls(config)


CDM_CONFIGS = {
    # CPU-sized: 128^2 slices (BraTS 240^2 resized), ~1 M-parameter UNet, 64-d representation.
    "tiny": {
        "image_size": 128,
        "representation_dim": 64,
        "mrm": {"patch_size": 8, "mask_patch_size": 16, "mask_ratio": 0.6, "width": 128, "depth": 4,
                "num_heads": 4, "independent_masks": True},
        "mdn": {"hidden": 256, "depth": 4, "decoupled_input": True, "source_condition_dim": 0},
        "cunet": {"channels": 16, "channel_mult": [1, 2, 4, 8], "num_res_blocks": 1, "attention_levels": [],
                  "mid_attention": True, "num_heads": 4, "dropout": 0.0, "conditioned": True, "fusion": "add",
                  "output_activation": "none"},
    },
    # Roughly the paper's scale at 256^2: SimMIM mask patch 32 / ratio 0.6, ViT-S-like MRM, RCG's 256-d vector.
    "paper": {
        "image_size": 256,
        "representation_dim": 256,
        "mrm": {"patch_size": 16, "mask_patch_size": 32, "mask_ratio": 0.6, "width": 384, "depth": 6,
                "num_heads": 6, "independent_masks": True},
        "mdn": {"hidden": 1024, "depth": 6, "decoupled_input": True, "source_condition_dim": 0},
        "cunet": {"channels": 64, "channel_mult": [1, 2, 4, 8], "num_res_blocks": 2, "attention_levels": [],
                  "mid_attention": True, "num_heads": 8, "dropout": 0.0, "conditioned": True, "fusion": "add",
                  "output_activation": "none"},
    },
}

CUNET_CONFIGS = {
    # The paper's M1 baseline: the tiny CDM's C-UNet without Condition Embeddings (build_model("cunet", ...)).
    "tiny": {"image_size": CDM_CONFIGS["tiny"]["image_size"],
             "cunet": {**CDM_CONFIGS["tiny"]["cunet"], "conditioned": False}},
}
