"""The mask autoencoder round-trip counts (training/evaluation/roundtrip.py) on stand-in autoencoders."""

import numpy as np
import torch
import torch.nn.functional as F

from MedDiffusionExtension.models.mask_codecs import MaskCodec
from training.evaluation.roundtrip import round_trip_counts


class StandInAutoencoder:
    """Encodes class indices as one-hot 'latents' and decodes them back, with class `lost` turned to background."""

    def __init__(self, classes: int, lost: int | None = None):
        self.codec = MaskCodec.from_config({"kind": "onehot", "classes": classes})
        self.lost = lost

    def encode_labels(self, labels, sample=True):
        assert not sample  # the round trip uses the posterior mode
        return labels.float()

    def decode_probabilities(self, z):
        labels = z[:, 0].long()
        if self.lost is not None:
            labels = torch.where(labels == self.lost, 0, labels)
        return F.one_hot(labels, self.codec.classes + 1).permute(0, 3, 1, 2).float()


def _batches():
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(3, 1, 16, 16, dtype=torch.long)
    labels[0, 0, 2:8, 2:8] = 1
    labels[1, 0, 4:6, 4:12] = 2
    labels[2, 0] = torch.randint(0, 3, (16, 16), generator=generator)
    return [{"classes": labels[:2]}, {"classes": labels[2:]}]


def test_a_lossless_round_trip_counts_every_voxel_as_hit():
    intersection, predicted, reference, present = round_trip_counts(StandInAutoencoder(2), _batches())
    assert np.array_equal(intersection, reference) and np.array_equal(predicted, reference)
    assert present.tolist() == [3, 2, 2]  # background on every slice, each organ on two
    labels = torch.cat([b["classes"] for b in _batches()])
    assert reference.tolist() == [int((labels == c).sum()) for c in range(3)]


def test_an_organ_the_autoencoder_loses_scores_zero_and_the_others_stay_exact():
    intersection, predicted, reference, _ = round_trip_counts(StandInAutoencoder(2, lost=2), _batches())
    assert intersection[2] == 0 and predicted[2] == 0 and reference[2] > 0
    assert intersection[1] == reference[1] == predicted[1]
    assert predicted[0] == reference[0] + reference[2]


class StandInBinaryAutoencoder:
    """A union model's stand-in: the decoded foreground probability is the mask times `level`."""

    codec = MaskCodec.from_config(None)

    def __init__(self, level: float):
        self.level = level

    def encode_labels(self, labels, sample=True):
        return labels.float()

    def decode_probabilities(self, z):
        return z * self.level


def test_a_binary_model_counts_the_union_mask_thresholded_at_one_half():
    masks = [{"mask": (batch["classes"] > 0).float()} for batch in _batches()]
    foreground = int(sum(batch["mask"].sum() for batch in masks))
    intersection, predicted, reference, present = round_trip_counts(StandInBinaryAutoencoder(0.5), masks)
    assert reference[1] == predicted[1] == intersection[1] == foreground and present.tolist() == [3, 3]
    intersection, predicted, _, _ = round_trip_counts(StandInBinaryAutoencoder(0.49), masks)
    assert intersection[1] == predicted[1] == 0 and predicted[0] == 3 * 16 * 16
