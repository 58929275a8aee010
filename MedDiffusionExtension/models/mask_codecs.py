"""How a segmentation target becomes the mask autoencoder's image, and the autoencoder's output class probabilities.

SDSeg diffuses in the latent space of an autoencoder of masks; what the autoencoder sees decides how many classes
one single-step pass can carry:

- "binary" (K = 1, the paper's BTCV setting): the {0, 1} mask as {-1, 1}, repeated to 3 channels; L1 reconstruction;
  the foreground probability is the mean of the decoded channels mapped back to [0, 1].
- "onehot": K + 1 channels, one per class (background first) in {-1, 1}; the decoder's output is read as class
  logits: cross-entropy + soft Dice reconstruction, softmax probabilities.
- "analog_bits": the class index written in ceil(log2(K + 1)) binary digits, each a {-1, 1} channel (the "analog
  bits" encoding of discrete data for diffusion); L1 reconstruction like the binary mask. A decoded digit x gives
  P(bit = 1) = (x + 1) / 2, and a class the product of its digits' probabilities, renormalised over the valid codes.

Every codec's `probabilities` returns (B, C, H, W): C = 1 (the foreground) for "binary", C = K + 1 otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("binary", "onehot", "analog_bits")
_EPS = 1e-4


class MaskCodec:
    kind = "binary"

    def __init__(self, classes: int = 1):
        if classes < 1:
            raise ValueError(f"a mask codec needs at least one foreground class, got {classes}")
        self.classes = classes

    @staticmethod
    def from_config(config: dict | None) -> "MaskCodec":
        config = dict(config or {"kind": "binary"})
        kind = config.pop("kind", "binary")
        if kind not in KINDS:
            raise ValueError(f"unknown mask_encoding kind {kind!r}; expected one of {', '.join(KINDS)}")
        return {"binary": BinaryCodec, "onehot": OneHotCodec, "analog_bits": AnalogBitsCodec}[kind](**config)

    @property
    def image_channels(self) -> int:
        return 3

    @property
    def output_channels(self) -> int:
        """Channels of `probabilities`: 1 (foreground) for a binary target, K + 1 for K classes."""
        return self.classes + 1

    def to_image(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) class indices 0..K -> (B, image_channels, H, W) autoencoder input in [-1, 1]."""
        raise NotImplementedError

    def probabilities(self, decoded: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def reconstruction_loss(self, decoded: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The autoencoder's reconstruction loss terms (summed by the recipe) for decoded images of `labels`."""
        raise NotImplementedError


class BinaryCodec(MaskCodec):
    kind = "binary"

    def __init__(self, classes: int = 1):
        if classes != 1:
            raise ValueError("the binary mask encoding has exactly one foreground class")
        super().__init__(1)

    @property
    def output_channels(self) -> int:
        return 1

    def to_image(self, labels):
        return ((labels > 0).float() * 2.0 - 1.0).expand(-1, 3, -1, -1)

    def probabilities(self, decoded):
        return ((decoded + 1.0) / 2.0).clamp(0.0, 1.0).mean(dim=1, keepdim=True)

    def reconstruction_loss(self, decoded, labels):
        return {"l1": F.l1_loss(decoded, self.to_image(labels))}


class OneHotCodec(MaskCodec):
    kind = "onehot"

    @property
    def image_channels(self) -> int:
        return self.classes + 1

    def to_image(self, labels):
        one_hot = F.one_hot(labels[:, 0].long(), self.classes + 1).permute(0, 3, 1, 2)
        return one_hot.to(torch.float32) * 2.0 - 1.0

    def probabilities(self, decoded):
        return torch.softmax(decoded.float(), dim=1)

    def reconstruction_loss(self, decoded, labels):
        target = labels[:, 0].long()
        cross_entropy = F.cross_entropy(decoded.float(), target)
        return {"ce": cross_entropy, "dice_loss": soft_dice_loss(self.probabilities(decoded), target)}


class AnalogBitsCodec(MaskCodec):
    kind = "analog_bits"

    @property
    def image_channels(self) -> int:
        return max(1, math.ceil(math.log2(self.classes + 1)))

    def _codes(self, device) -> torch.Tensor:
        """(K + 1, bits) {0, 1} digits of every valid class index, most significant first."""
        powers = 2 ** torch.arange(self.image_channels - 1, -1, -1, device=device)
        return (torch.arange(self.classes + 1, device=device)[:, None] // powers % 2).to(torch.float32)

    def to_image(self, labels):
        codes = self._codes(labels.device)
        return codes[labels[:, 0].long()].permute(0, 3, 1, 2) * 2.0 - 1.0

    def probabilities(self, decoded):
        one = ((decoded.float() + 1.0) / 2.0).clamp(_EPS, 1.0 - _EPS)  # (B, bits, H, W): P(digit = 1)
        codes = self._codes(decoded.device)  # (C, bits)
        # log P(class) = sum over digits of log P(digit = its code): (B, C, H, W) via one einsum per term.
        log_p = torch.einsum("cb,nbhw->nchw", codes, one.log()) + torch.einsum("cb,nbhw->nchw", 1.0 - codes,
                                                                                (1.0 - one).log())
        return torch.softmax(log_p, dim=1)  # renormalised over the valid codes

    def reconstruction_loss(self, decoded, labels):
        return {"l1": F.l1_loss(decoded, self.to_image(labels))}


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes present in the batch (absent ones would only add noise)."""
    classes = probabilities.shape[1]
    one_hot = F.one_hot(target.long(), classes).permute(0, 3, 1, 2).to(probabilities.dtype)
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    total = probabilities.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + 1.0) / (total + 1.0)
    present = one_hot.sum(dims)[1:] > 0
    if not bool(present.any()):
        return 1.0 - dice[1:].mean()
    return 1.0 - dice[1:][present].mean()
