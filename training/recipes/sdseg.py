"""SDSeg training, as in the paper's code: first the mask autoencoder, then the latent diffusion segmenter.

1. stage=autoencoder  KL autoencoder of {-1, 1} masks (L1 reconstruction + small KL): trains model.autoencoder
2. stage=ldm          vision encoder (initialised from the AE encoder) + denoiser on z_t || z_c with the frozen AE;
                      loss L1(eps) + lambda * L1(z0_hat); latents scaled by 1/std of the first batch's latents
                      (options beyond the paper: mask_loss_weight, last_step_fraction, latent_targets,
                      train_mask_decoder; see the defaults)
stage=segunet trains the plain pixel-space UNet baseline (BCE + soft Dice) on the same slices.

Multi-organ (config organs = BTCV label values): the autoencoder encodes K organ classes (config mask_encoding:
"onehot" or "analog_bits", models/mask_codecs.py) and its reconstruction loss is the codec's; the SegUNet baseline
gets K + 1 output classes (cross-entropy + soft Dice). warm_start=true starts any stage from a model of another
target (e.g. the binary union model): every tensor whose name and shape fit is copied, the rest start fresh.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from MedDiffusionExtension.diffusion import x0_and_eps_from_output
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.models import SDSEG_CONFIGS, SEGUNET_CONFIGS, build_model
from MedDiffusionExtension.models.mask_codecs import soft_dice_loss
from MedDiffusionExtension.weights.organs import organ_segments

from ..data import SegmentationSlices, btcv_split, read_btcv
from .common import LICENSE, PHANTOM_NOTICE, StagedRecipe, load_matching, load_stage

STAGES = ("autoencoder", "ldm", "segunet")
CITATION = ("Lin T, Chen Z, Yan Z, Yu W, Zheng F. Stable Diffusion Segmentation for Biomedical Images with "
            "Single-step Reverse Process. MICCAI 2024.")


class SDSegRecipe(StagedRecipe):
    defaults = {
        "stage": "autoencoder",
        "init": None,
        # True: `init` is a model of this same stage to train further (all weights kept, no re-initialisation of
        # the vision encoder, the loaded latent scale kept): how the bundled 0.2.0 continued from 0.1.0.
        "finetune": False,
        "data_root": "data/btcv_phantoms",
        "cache_dir": "cache/sdseg",
        "architecture": "tiny",
        "window": [-175.0, 250.0],  # one HU window for training and inference (the reference code used two)
        "labels": None,  # None: union of every organ (the paper's BTCV setting)
        # Multi-organ: the BTCV label values of the K classes, in class order (None: one binary target), and how
        # the mask autoencoder encodes them ("onehot" | "analog_bits").
        "organs": None,
        "mask_encoding": "onehot",
        # True: `init` is a model of another target or encoding; tensors whose names and shapes fit are copied.
        "warm_start": False,
        # ldm stage: keep init's vision encoder (and denoiser) instead of copying the mask encoder into it; the
        # latent scale is still measured anew (for a warm start from another target's model).
        "keep_vision_encoder": False,
        "kl_weight": 1e-6,
        "latent_loss_weight": 1.0,  # lambda
        # ldm stage: weight of the mask autoencoder's own reconstruction loss (the codec's: cross-entropy + soft Dice
        # for organ classes, L1 for the binary mask) on the decoded one-step estimate z0_hat, through the frozen
        # decoder. 0 (default): the paper's latent losses only. The latent L1 weighs an organ by its latent pixels,
        # so an adrenal gland or the gallbladder hardly counts; in pixel space the soft Dice weighs every organ alike.
        "mask_loss_weight": 0.0,
        # ldm stage: the fraction of each batch trained at the last timestep T-1, the one the single-step reverse
        # process starts from (the rest stays uniform over 0..T-1, as in the paper). 0 (default): the paper's uniform
        # draw, where about one draw in ten lands in the last tenth of the schedule that single-step inference uses.
        "last_step_fraction": 0.0,
        # ldm stage: False trains the single step only through the frozen mask decoder, from pure noise at T-1 (what
        # inference runs), with the decoded-mask loss alone: no mask encoder and no latent targets are needed, so an
        # inference-only export (e.g. a bundled model) can be fine-tuned. Needs finetune=true,
        # last_step_fraction=1.0 and mask_loss_weight > 0. True (default): the paper's latent losses.
        "latent_targets": True,
        # ldm stage with latent_targets=false: True also trains the mask decoder, so the single step is trained end
        # to end (vision encoder, denoiser, decoder) on the decoded mask. The decoder then no longer decodes the mask
        # encoder's latents as it did (the latent space of an exported model is the single step's own); False
        # (default): the decoder stays the frozen autoencoder's, as in the paper.
        "train_mask_decoder": False,
        "schedule": {"kind": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0155, "num_steps": 1000},
        # In-plane pixel spacing (mm) slices are resampled to, for training and in the card; None: the dataset's
        # default (weights.card.LEGACY_TRAINING_FIELDS). slice_thickness_mm: the range the training data spans.
        "spacing_mm": None,
        "slice_thickness_mm": None,
        # Acquisition randomization of the training slices (training.data.augment): "acquisition" (default ranges),
        # "none", or {"seed": int, <range field>: value, ...} over the defaults. Never applied outside training.
        "augment": "acquisition",
        "name": "sdseg-tiny-phantom",
        "version": "0.1.0",
    }

    stages = STAGES
    normalization_kind = "ct_window"
    modality = "ct"

    def __init__(self, config=None, name=None, check_keys=True):
        super().__init__(config, name, check_keys)
        if not 0.0 <= self.config["last_step_fraction"] <= 1.0:
            raise InputError(f"last_step_fraction must be between 0 and 1, got {self.config['last_step_fraction']!r}")
        if not self.config["latent_targets"] and not (
                self.stage == "ldm" and self.config["finetune"] and self.config["last_step_fraction"] == 1.0
                and self.config["mask_loss_weight"] > 0):
            raise InputError("latent_targets=false trains a fine-tuned single step through the decoder: use it with "
                             "stage=ldm, finetune=true, last_step_fraction=1.0 and mask_loss_weight > 0")
        if self.config["train_mask_decoder"] and self.config["latent_targets"]:
            raise InputError("train_mask_decoder=true changes what the latent targets decode to: use it with "
                             "latent_targets=false")
        organs = self.config["organs"]
        if organs is not None:
            if not organs or len(set(organs)) != len(organs) or not all(isinstance(o, int) and 0 < o < 256 for o in organs):
                raise ValueError(f"organs must be distinct label values 1..255, got {organs!r}")
            self.architecture = dict(self.architecture)
            if self.stage == "segunet":
                self.architecture["classes"] = len(organs)
            else:
                self.architecture["mask_encoding"] = {"kind": self.config["mask_encoding"], "classes": len(organs)}

    @property
    def multi_organ(self) -> bool:
        return self.config["organs"] is not None

    def architecture_table(self):
        return SEGUNET_CONFIGS if self.stage == "segunet" else SDSEG_CONFIGS

    def _load_init(self, model):
        if self.config["warm_start"] and self.config["init"]:
            return load_matching(model, self.config["init"])
        if not self.config["latent_targets"]:  # the mask encoder only makes latent targets: none are needed
            return load_stage(model, self.config["init"], new_prefixes=("autoencoder.encoder.",), inference_only_ok=True)
        return load_stage(model, self.config["init"])

    def build_model(self):
        if self.stage == "segunet":
            return self._load_init(build_model("segunet", self.architecture))
        model = self._load_init(build_model("sdseg", self.architecture))
        if self.stage == "ldm" and self.config["init"] and not self.config["finetune"] \
                and not self.config["keep_vision_encoder"]:
            # The vision encoder starts as a copy of the trained mask encoder (the paper's initialisation).
            model.vision_encoder.init_from_autoencoder(model.autoencoder)
        return model

    def trainable_parameters(self, model):
        if self.stage == "autoencoder":
            return list(model.autoencoder.parameters())
        if self.stage == "ldm":
            decoder = list(model.autoencoder.decoder.parameters()) if self.config["train_mask_decoder"] else []
            return list(model.vision_encoder.parameters()) + list(model.denoiser.parameters()) + decoder
        return list(model.parameters())

    def train_dataset(self):
        cases = btcv_split(read_btcv(Path(self.config["data_root"])))[0]
        return SegmentationSlices(cases, self.model_grid(), Path(self.config["cache_dir"]), tuple(self.config["window"]),
                                  self.config["labels"], augment=self.augmentation(), classes=self.config["organs"])

    def _target(self, batch):
        """(B, 1, H, W) class indices: the organ classes of a multi-organ model, else the binary mask."""
        return batch["classes"] if self.multi_organ else batch["mask"].long()

    def augmentation_fixed(self) -> dict:
        return {"window": tuple(self.config["window"])}

    def on_start(self, model, loader):
        if self.stage != "ldm" or self.config["finetune"]:
            return None
        batch = next(iter(loader))
        with torch.no_grad():
            model.latent_scale.fill_(1.0)
            device = model.latent_scale.device
            latents = model.encode_labels(self._target(batch).to(device), sample=True)
            scale = 1.0 / latents.float().std().clamp_min(1e-6)
            model.latent_scale.fill_(float(scale))
        return {"latent_scale": float(scale)}

    def loss(self, model, batch, generator):
        image, mask = batch["image"], batch["mask"]
        target = self._target(batch)
        if self.stage == "autoencoder":
            posterior = model.autoencoder.encode(model.codec.to_image(target))
            terms = model.codec.reconstruction_loss(model.autoencoder.decode(posterior.sample(generator)), target)
            kl = posterior.kl().mean()
            logs = {name: value.detach() for name, value in terms.items()}
            return sum(terms.values()) + self.config["kl_weight"] * kl, {**logs, "kl": kl.detach()}
        if self.stage == "segunet" and self.multi_organ:
            logits = model(image).float()
            cross_entropy = F.cross_entropy(logits, target[:, 0])
            dice = soft_dice_loss(torch.softmax(logits, dim=1), target[:, 0])
            return cross_entropy + dice, {"ce": cross_entropy.detach(), "dice_loss": dice.detach()}
        if self.stage == "segunet":
            logits = model(image)
            probability = torch.sigmoid(logits)
            dice = 1 - (2 * (probability * mask).sum() + 1) / (probability.sum() + mask.sum() + 1)
            bce = F.binary_cross_entropy_with_logits(logits, mask)
            return bce + dice, {"bce": bce.detach(), "dice_loss": dice.detach()}
        if not self.config["latent_targets"]:
            return self._decoded_mask_loss(model, image, target, generator)
        with torch.no_grad():
            z0 = model.encode_labels(target, sample=True, generator=generator)
        condition = model.encode_image(image)
        t = self.schedule.sample_timesteps(z0.shape[0], generator)
        if self.config["last_step_fraction"]:
            at_last = torch.rand(t.shape, generator=generator) < self.config["last_step_fraction"]
            t = torch.where(at_last, torch.full_like(t, self.schedule.num_steps - 1), t)
        t = t.to(z0.device)
        noise = torch.randn(z0.shape, generator=generator).to(z0.device)
        z_t = self.schedule.add_noise(z0, noise, t)
        eps_hat = model.predict_noise(z_t, t, condition)
        z0_hat, _ = x0_and_eps_from_output(self.schedule, z_t, t, eps_hat, "epsilon")
        noise_loss = F.l1_loss(eps_hat, noise)
        latent_loss = F.l1_loss(z0_hat, z0)
        logs = {"l_eps": noise_loss.detach(), "l_z0": latent_loss.detach()}
        loss = noise_loss + self.config["latent_loss_weight"] * latent_loss
        if self.config["mask_loss_weight"]:
            mask_loss, mask_logs = self._mask_loss(model, z0_hat, target)
            logs.update(mask_logs)
            loss = loss + mask_loss
        return loss, logs

    def _mask_loss(self, model, z0_hat, target):
        """The mask autoencoder's own reconstruction loss on the decoded estimate, times mask_loss_weight."""
        terms = model.codec.reconstruction_loss(model.autoencoder.decode(z0_hat / model.latent_scale), target)
        logs = {f"mask_{name}": value.detach() for name, value in terms.items()}
        return self.config["mask_loss_weight"] * sum(terms.values()), logs

    def _decoded_mask_loss(self, model, image, target, generator):
        """The single step as inference runs it (pure noise at T-1, one z0 estimate), scored only on the decoded mask."""
        condition = model.encode_image(image)
        z_t = torch.randn(condition.shape, generator=generator).to(condition.device)  # z and z_c: the same shape
        t = torch.full((image.shape[0],), self.schedule.num_steps - 1, dtype=torch.long, device=condition.device)
        z0_hat, _ = x0_and_eps_from_output(self.schedule, z_t, t, model.predict_noise(z_t, t, condition), "epsilon")
        return self._mask_loss(model, z0_hat, target)

    def describe_data(self, dataset):
        return {"dataset": f"BTCV layout at {self.config['data_root']}", "split": "BTCV 18/12 (or 60/40 when ids differ)",
                "train_cases": len(dataset.slices.case_ids), "train_slices": len(dataset),
                "target": self._target_description(),
                "notice": PHANTOM_NOTICE}

    def _target_description(self) -> str:
        if self.multi_organ:
            return f"{len(self.config['organs'])} organ classes (BTCV labels {self.config['organs']})"
        return "union of all labelled organs" if self.config["labels"] is None else f"labels {self.config['labels']}"

    def export_card(self):
        method = "segunet" if self.stage == "segunet" else "sdseg"
        if self.multi_organ:
            what = "segmentation of each abdominal organ (one label per organ)"
            segments, output = organ_segments(self.config["organs"]), "organ label map (BTCV numbering)"
        else:
            what = "segmentation of abdominal organs (union)"
            segments = [{"name": "abdominal organs", "label": 1, "color": [0.86, 0.38, 0.28]}]
            output = "binary label map"
        description = (f"SDSeg: single-step latent diffusion {what} in CT." if method == "sdseg"
                       else f"Plain UNet baseline: {what} in CT.")
        return {
            "name": self.config["name"], "version": self.config["version"], "task": "segmentation", "method": method,
            "stage": self.stage,
            "description": description,
            "inputs": [{"name": "image", "modality": "CT (Hounsfield units)"}],
            "outputs": [{"name": "label", "modality": output}],
            "segments": segments,
            "normalization": {"kind": "ct_window", "window": list(self.config["window"])},
            "architecture": self.architecture,
            "sampling": {"schedule": self.config["schedule"], "prediction_type": "epsilon", "steps": 1, "eta": 0.0,
                         # trailing spacing starts multi-step DDIM at t = 999 like the single step; the last step
                         # lands on the z0 estimate itself
                         "timestep_spacing": "trailing", "set_alpha_to_one": True,
                         # trained at t = T - 1 alone: DDIM's other timesteps were never trained (the task warns)
                         "single_step_only": self.stage == "ldm" and self.config["last_step_fraction"] == 1.0},
            "geometry": self.geometry_card(),
            "metrics": {},
            "license": LICENSE,
            "citation": CITATION,
            "intended_use": PHANTOM_NOTICE,
        }
