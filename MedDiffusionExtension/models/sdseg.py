"""SDSeg (Stable Diffusion Segmentation, Lin et al. 2024): latent diffusion over segmentation-map latents.

- AutoencoderKL: KL-regularised autoencoder of masks (frozen once trained). What it encodes is the config's
  `mask_encoding` (models/mask_codecs.py): the paper's binary mask as {-1, 1} repeated to 3 channels, or K organ
  classes as one-hot channels or analog bits, so that one single-step pass segments every organ.
- VisionEncoder: the AE encoder architecture (initialised from it) + a new 1x1 conv, CT slice -> image latent z_c.
- Denoiser: timestep UNet on z_t || z_c predicting eps; the z_c input weights start at zero.
`SDSeg` holds the three plus `latent_scale`; `SegUNet` is the plain pixel-space baseline segmenter.
"""

import copy
from typing import Optional, Sequence

import torch
from torch import nn

from .blocks import Downsample, ResBlock, SelfAttention, Stage, UNet, Upsample, group_norm
from .mask_codecs import MaskCodec


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) from (B, 2z, h, w) moments."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype).to(self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """(B,) KL to N(0, I), summed over latent dimensions."""
        return 0.5 * (self.mean ** 2 + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class Encoder(nn.Module):
    """Conv encoder: one Stage per level, downsampling between levels (factor 2**(levels-1)), mid ResBlocks
    around optional attention, then GN-SiLU-conv to `out_channels` (the 2z moments)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 8, channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2, mid_attention: bool = True):
        super().__init__()
        widths = [channels * m for m in channel_mult]
        layers, previous = [nn.Conv2d(in_channels, channels, 3, padding=1)], channels
        for level, width in enumerate(widths):
            layers.append(Stage(previous, width, num_res_blocks))
            if level < len(widths) - 1:
                layers.append(Downsample(width))
            previous = width
        layers += [ResBlock(previous, previous), SelfAttention(previous, 1) if mid_attention else nn.Identity(),
                   ResBlock(previous, previous), group_norm(previous), nn.SiLU(),
                   nn.Conv2d(previous, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """Mirror of Encoder: latent -> conv -> mid -> one Stage per level (deepest first) with upsampling -> image."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2, mid_attention: bool = True):
        super().__init__()
        widths = [channels * m for m in channel_mult]
        previous = widths[-1]
        layers = [nn.Conv2d(in_channels, previous, 3, padding=1), ResBlock(previous, previous),
                  SelfAttention(previous, 1) if mid_attention else nn.Identity(), ResBlock(previous, previous)]
        for level in reversed(range(len(widths))):
            layers.append(Stage(previous, widths[level], num_res_blocks))
            previous = widths[level]
            if level > 0:  # the upsampling conv already narrows to the next level: full-resolution convs dominate
                layers.append(Upsample(previous, widths[level - 1]))
                previous = widths[level - 1]
        layers += [group_norm(previous), nn.SiLU(), nn.Conv2d(previous, out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class AutoencoderKL(nn.Module):
    def __init__(self, image_channels: int = 3, latent_channels: int = 4, channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2, mid_attention: bool = True):
        super().__init__()
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        arch = dict(channels=channels, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
                    mid_attention=mid_attention)
        self.encoder = Encoder(image_channels, 2 * latent_channels, **arch)
        self.decoder = Decoder(latent_channels, image_channels, **arch)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None):
        """-> (reconstruction, posterior); the recipe adds recon + beta * posterior.kl()."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior


class VisionEncoder(nn.Module):
    """Image latent z_c: the AE encoder architecture (2z moments out) followed by a new 1x1 conv to z channels."""

    def __init__(self, latent_channels: int = 4, **encoder_arch):
        super().__init__()
        self.encoder = Encoder(3, 2 * latent_channels, **encoder_arch)
        self.project = nn.Conv2d(2 * latent_channels, latent_channels, 1)

    def init_from_autoencoder(self, autoencoder: AutoencoderKL) -> None:
        """Copy the mask encoder's weights; with a multi-class mask encoding its input conv (K + 1 or bit channels,
        not 3 CT channels) has another shape and keeps its initialisation."""
        own = self.encoder.state_dict()
        fitting = {k: v for k, v in autoencoder.encoder.state_dict().items() if own[k].shape == v.shape}
        self.encoder.load_state_dict(fitting, strict=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.project(self.encoder(image))


class SDSeg(nn.Module):
    """Autoencoder, vision encoder and denoiser under one state dict, plus the latent scale (1/std of latents)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(config)
        z, ae = config["latent_channels"], config["autoencoder"]
        self.codec = MaskCodec.from_config(config.get("mask_encoding"))
        self.autoencoder = AutoencoderKL(self.codec.image_channels, z, **ae)
        self.vision_encoder = VisionEncoder(z, **ae)
        self.vision_encoder.init_from_autoencoder(self.autoencoder)
        den = dict(config["denoiser"])
        stride = self.autoencoder.downsample_factor * 2 ** (len(den["channel_mult"]) - 1)
        if config["image_size"] % stride:
            raise ValueError(f"image_size {config['image_size']} must be a multiple of {stride}")
        latent_size = config["image_size"] // self.autoencoder.downsample_factor
        resolutions = den.pop("attention_resolutions")
        levels = [level for level in range(len(den["channel_mult"])) if latent_size // 2 ** level in resolutions]
        self.denoiser = UNet(2 * z, z, attention_levels=levels, time_embedding=True, zero_init_output=True, **den)
        with torch.no_grad():
            self.denoiser.input.weight[:, z:] = 0.0  # the z_c inputs start silent, as SDSeg's added channels
        self.register_buffer("latent_scale", torch.tensor(1.0))

    # The mask encoder only turns ground-truth masks into training targets: inference encodes the CT with the
    # vision encoder and decodes the mask, so an inference-only export may leave it out (export --inference-only).
    TRAINING_ONLY = ("autoencoder.encoder.",)

    @classmethod
    def from_config(cls, config: dict) -> "SDSeg":
        return cls(config)

    @property
    def classes(self) -> int:
        """Foreground classes K (1: the binary union)."""
        return self.codec.classes

    def encode_labels(self, labels: torch.Tensor, sample: bool = True,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, 1, H, W) class indices 0..K -> scaled latent (B, z, h, w): posterior sample (or mode) * latent_scale."""
        posterior = self.autoencoder.encode(self.codec.to_image(labels))
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * self.latent_scale

    def encode_mask(self, mask01: torch.Tensor, sample: bool = True,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, 1, H, W) mask in {0, 1} -> scaled latent (the binary model's target)."""
        return self.encode_labels(mask01, sample, generator)

    def encode_image(self, ct: torch.Tensor) -> torch.Tensor:
        """(B, 1 or 3, H, W) normalised CT slice -> image latent z_c (not scaled)."""
        return self.vision_encoder(ct.expand(-1, 3, -1, -1))

    def predict_noise(self, z_t: torch.Tensor, t: torch.Tensor, z_c: torch.Tensor) -> torch.Tensor:
        return self.denoiser(torch.cat([z_t, z_c], dim=1), t)

    def decode_probabilities(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> (B, C, H, W) probabilities: C = 1 (foreground) for the binary model, else K + 1 classes."""
        return self.codec.probabilities(self.autoencoder.decode(z / self.latent_scale))

    def decode_mask(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> (B, 1, H, W) foreground probability in [0, 1] (any class but background)."""
        probabilities = self.decode_probabilities(z)
        return probabilities if self.classes == 1 else 1.0 - probabilities[:, :1]


class SegUNet(nn.Module):
    """Non-diffusion baseline: pixel-space UNet, CT slice (B, 1, H, W) -> foreground logit (B, 1, H, W), or with
    config "classes": K > 1, K + 1 class logits (background first)."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = copy.deepcopy(config)
        self.classes = int(config.get("classes", 1))
        self.unet = UNet(1, 1 if self.classes == 1 else self.classes + 1, **config["unet"])

    def probabilities(self, ct: torch.Tensor) -> torch.Tensor:
        """(B, 1) foreground probability, or (B, K + 1) class probabilities: the same channels as SDSeg's."""
        logits = self.unet(ct).float()
        return torch.sigmoid(logits) if self.classes == 1 else torch.softmax(logits, dim=1)

    @classmethod
    def from_config(cls, config: dict) -> "SegUNet":
        return cls(config)

    def forward(self, ct: torch.Tensor) -> torch.Tensor:
        return self.unet(ct)


SDSEG_CONFIGS = {
    # CPU-sized, 256^2 slices. f = 4 (latent 4 x 64^2) instead of the paper's 8 so that the latent denoiser, not
    # the pixel-space autoencoder, carries the compute: single-step must be >= 5x faster than 10-step DDIM.
    "tiny": {
        "image_size": 256,
        "latent_channels": 4,
        "autoencoder": {"channels": 8, "channel_mult": [1, 2, 4], "num_res_blocks": 1, "mid_attention": False},
        "denoiser": {"channels": 64, "channel_mult": [1, 2, 4], "num_res_blocks": 2,
                     "attention_resolutions": [16], "mid_attention": True, "num_heads": 4, "dropout": 0.0},
    },
    # Paper scale: f = 8 LDM-like autoencoder (256^2 -> 32^2 x 4), SD-like denoiser with dropout 0.2.
    "paper": {
        "image_size": 256,
        "latent_channels": 4,
        "autoencoder": {"channels": 128, "channel_mult": [1, 2, 4, 4], "num_res_blocks": 2, "mid_attention": True},
        "denoiser": {"channels": 192, "channel_mult": [1, 2, 2, 4, 4], "num_res_blocks": 2,
                     "attention_resolutions": [32, 16, 8, 4], "mid_attention": True, "num_heads": 8,
                     "dropout": 0.2},
    },
}

SEGUNET_CONFIGS = {
    # About the parameter count of tiny SDSeg (~12 M vs 13 M); six levels (8^2 at the bottom) for a CT-sized
    # receptive field, and only 16 channels at full resolution, where a pixel-space UNet spends its time.
    "tiny": {
        "image_size": 256,
        "unet": {"channels": 16, "channel_mult": [1, 2, 4, 8, 16, 16], "num_res_blocks": 1, "attention_levels": [],
                 "mid_attention": True, "num_heads": 4, "dropout": 0.0},
    },
}
