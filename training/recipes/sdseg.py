"""SDSeg training, as in the paper's code: first the mask autoencoder, then the latent diffusion segmenter.

1. stage=autoencoder  KL autoencoder of {-1, 1} masks (L1 reconstruction + small KL): trains model.autoencoder
2. stage=ldm          vision encoder (initialised from the AE encoder) + denoiser on z_t || z_c with the frozen AE;
                      loss L1(eps) + lambda * L1(z0_hat); latents scaled by 1/std of the first batch's latents
stage=segunet trains the plain pixel-space UNet baseline (BCE + soft Dice) on the same slices.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from MedDiffusionExtension.diffusion import x0_and_eps_from_output
from MedDiffusionExtension.models import SDSEG_CONFIGS, SEGUNET_CONFIGS, build_model

from ..data import SegmentationSlices, btcv_split, read_btcv
from .common import LICENSE, PHANTOM_NOTICE, StagedRecipe, load_stage

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
        "kl_weight": 1e-6,
        "latent_loss_weight": 1.0,  # lambda
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

    def architecture_table(self):
        return SEGUNET_CONFIGS if self.stage == "segunet" else SDSEG_CONFIGS

    def build_model(self):
        if self.stage == "segunet":
            return build_model("segunet", self.architecture)
        model = load_stage(build_model("sdseg", self.architecture), self.config["init"])
        if self.stage == "ldm" and self.config["init"] and not self.config["finetune"]:
            # The vision encoder starts as a copy of the trained mask encoder (the paper's initialisation).
            model.vision_encoder.init_from_autoencoder(model.autoencoder)
        return model

    def trainable_parameters(self, model):
        if self.stage == "autoencoder":
            return list(model.autoencoder.parameters())
        if self.stage == "ldm":
            return list(model.vision_encoder.parameters()) + list(model.denoiser.parameters())
        return list(model.parameters())

    def train_dataset(self):
        cases = btcv_split(read_btcv(Path(self.config["data_root"])))[0]
        return SegmentationSlices(cases, self.model_grid(), Path(self.config["cache_dir"]), tuple(self.config["window"]),
                                  self.config["labels"], augment=self.augmentation())

    def augmentation_fixed(self) -> dict:
        return {"window": tuple(self.config["window"])}

    def on_start(self, model, loader):
        if self.stage != "ldm" or self.config["finetune"]:
            return None
        batch = next(iter(loader))
        with torch.no_grad():
            model.latent_scale.fill_(1.0)
            device = model.latent_scale.device
            latents = model.encode_mask(batch["mask"].to(device), sample=True)
            scale = 1.0 / latents.float().std().clamp_min(1e-6)
            model.latent_scale.fill_(float(scale))
        return {"latent_scale": float(scale)}

    def loss(self, model, batch, generator):
        image, mask = batch["image"], batch["mask"]
        if self.stage == "autoencoder":
            x = (mask * 2.0 - 1.0).expand(-1, 3, -1, -1)
            posterior = model.autoencoder.encode(x)
            recon = model.autoencoder.decode(posterior.sample(generator))
            l1 = F.l1_loss(recon, x)
            kl = posterior.kl().mean()
            return l1 + self.config["kl_weight"] * kl, {"l1": l1.detach(), "kl": kl.detach()}
        if self.stage == "segunet":
            logits = model(image)
            probability = torch.sigmoid(logits)
            dice = 1 - (2 * (probability * mask).sum() + 1) / (probability.sum() + mask.sum() + 1)
            bce = F.binary_cross_entropy_with_logits(logits, mask)
            return bce + dice, {"bce": bce.detach(), "dice_loss": dice.detach()}
        with torch.no_grad():
            z0 = model.encode_mask(mask, sample=True, generator=generator)
        condition = model.encode_image(image)
        t = self.schedule.sample_timesteps(z0.shape[0], generator).to(z0.device)
        noise = torch.randn(z0.shape, generator=generator).to(z0.device)
        z_t = self.schedule.add_noise(z0, noise, t)
        eps_hat = model.predict_noise(z_t, t, condition)
        z0_hat, _ = x0_and_eps_from_output(self.schedule, z_t, t, eps_hat, "epsilon")
        noise_loss = F.l1_loss(eps_hat, noise)
        latent_loss = F.l1_loss(z0_hat, z0)
        logs = {"l_eps": noise_loss.detach(), "l_z0": latent_loss.detach()}
        return noise_loss + self.config["latent_loss_weight"] * latent_loss, logs

    def describe_data(self, dataset):
        return {"dataset": f"BTCV layout at {self.config['data_root']}", "split": "BTCV 18/12 (or 60/40 when ids differ)",
                "train_cases": len(dataset.slices.case_ids), "train_slices": len(dataset),
                "target": "union of all labelled organs" if self.config["labels"] is None else f"labels {self.config['labels']}",
                "notice": PHANTOM_NOTICE}

    def export_card(self):
        method = "segunet" if self.stage == "segunet" else "sdseg"
        return {
            "name": self.config["name"], "version": self.config["version"], "task": "segmentation", "method": method,
            "stage": self.stage,
            "description": "SDSeg: single-step latent diffusion segmentation of abdominal organs (union) in CT.",
            "inputs": [{"name": "image", "modality": "CT (Hounsfield units)"}],
            "outputs": [{"name": "label", "modality": "binary label map"}],
            "segments": [{"name": "abdominal organs", "label": 1, "color": [0.86, 0.38, 0.28]}],
            "normalization": {"kind": "ct_window", "window": list(self.config["window"])},
            "architecture": self.architecture,
            "sampling": {"schedule": self.config["schedule"], "prediction_type": "epsilon", "steps": 1, "eta": 0.0,
                         # trailing spacing starts multi-step DDIM at t = 999 like the single step; the last step
                         # lands on the z0 estimate itself
                         "timestep_spacing": "trailing", "set_alpha_to_one": True},
            "geometry": self.geometry_card(),
            "metrics": {},
            "license": LICENSE,
            "citation": CITATION,
            "intended_use": PHANTOM_NOTICE,
        }
