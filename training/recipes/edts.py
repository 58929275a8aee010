"""EDTS-Trans training (T1 -> T2): the regression network, then the mask-guided diffusion refiner, in one trainer.

The paper trains everything jointly. Here the stages are separate runs of the shared trainer (a CPU budget trains
each network faster alone; "joint" is there for long runs):
1. stage=regn     RegN alone: L1 + ssim_weight * (1 - SSIM) on T2_bar.
2. stage=refiner  the refiner with RegN frozen (init = stage 1's export): the denoising loss plus L1 + ssim_weight *
                  (1 - SSIM) on T2_tilde (the refiner's x0 estimate at the sampled timestep) and on the fused T2_out.
3. stage=joint    both networks, every term: the paper's objective (L1 + SSIM terms on T2_bar, T2_tilde, T2_out).
stage=unet trains a plain UNet baseline T1 -> T2 (blocks.UNet, no diffusion, no mask) with the T2_bar loss.

The TSM is never trained: M is computed from T2_bar without gradient. The denoising loss is the MSE (or L1) between
the refiner's output and its target for `prediction_type`: x0 ("sample") by default, so that T2_tilde, which the
image losses compare with T2, is the output itself at every timestep (the tiny architecture's refiner outputs T2_bar
plus a correction, `refiner_residual`); with "epsilon" the x0 estimate multiplies the model's error by
sqrt((1 - abar_t) / abar_t), about 157 at t = 999 of this schedule.
Augmentation: the project's MRI acquisition randomization on T1 (T2 is the clean target; n_sources = 1), then one
of the 8 flips / 90-degree rotations, the same for T1 and T2 (the paper's), drawn from the trainer's generator.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from MedDiffusionExtension.diffusion import training_target, x0_and_eps_from_output
from MedDiffusionExtension.errors import InputError
from MedDiffusionExtension.models import EDTS_CONFIGS, build_model

from ..data import TranslationSlices, read_mri_cases, split_by_volume
from ..losses import l1_ssim_loss
from .common import LICENSE, PHANTOM_NOTICE, StagedRecipe, load_stage

STAGES = ("regn", "refiner", "joint", "unet")
CITATION = ("Xiao R, Ni Z, Zhu J, Wang H. Learning MRI Translation with Explicit Dynamic Texture and Structure "
            "Priors (EDTS-Trans).")


def dihedral(images: torch.Tensor, choice: int) -> torch.Tensor:
    """One of the 8 symmetries of the square on (C, H, W): rotate by choice % 4 quarter turns, then flip if >= 4."""
    out = torch.rot90(images, choice % 4, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if choice >= 4 else out


class EDTSRecipe(StagedRecipe):
    defaults = {
        "stage": "regn",
        "init": None,  # model folder exported by the previous stage
        "data_root": "data/brats_phantoms",
        "layout": "brats",  # brats | upenn | ixi (IXI: T1 -> T2 pairs)
        "cache_dir": "cache/edts",
        "architecture": "tiny",  # an EDTS_CONFIGS name or a full config dict
        # tsm.features = "vgg16": a local torchvision VGG16 state dict (.safetensors, or .pth read with
        # weights_only=True), needed when the run does not start from an export that holds them already.
        "vgg16_weights": None,
        "source": "t1n",
        "target": "t2w",
        "train_fraction": 0.7,
        "split_seed": 0,
        "min_foreground": 0.05,
        "ssim_weight": 0.5,  # alpha; 0 is the "without SSIM loss" ablation
        "denoise_loss": "mse",  # mse | l1, on the refiner's output vs its target
        "denoise_weight": 1.0,
        "flips_rotations": True,
        "schedule": {"kind": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_steps": 1000},  # DDPM's
        "prediction_type": "sample",
        "sampling_steps": 20,
        "spacing_mm": None,
        "slice_thickness_mm": None,
        "augment": "acquisition",
        "name": "edts-tiny-phantom",
        "version": "0.1.0",
    }

    stages = STAGES
    normalization_kind = "mri_percentile"
    modality = "mri"

    def __init__(self, config=None, name=None, check_keys=True):
        super().__init__(config, name, check_keys)
        if self.config["denoise_loss"] not in ("mse", "l1"):
            raise InputError(f"denoise_loss must be mse or l1, got {self.config['denoise_loss']!r}")
        if self.architecture.get("refiner_residual") and self.config["prediction_type"] != "sample":
            raise InputError("a residual refiner (architecture refiner_residual) predicts x0: use prediction_type=sample")

    def architecture_table(self):
        return EDTS_CONFIGS

    def unet_architecture(self) -> dict:
        """The plain baseline: the refiner's UNet shape, one input (T1) and one output (T2), no conditioning."""
        unet = {k: v for k, v in self.architecture["refiner"].items() if k != "attention_levels"}
        return {"image_size": self.architecture["image_size"],
                "cunet": {**unet, "in_channels": 1, "out_channels": 1, "attention_levels": [], "conditioned": False,
                          "output_activation": "none"}}

    def build_model(self):
        if self.stage == "unet":
            return load_stage(build_model("cunet", self.unet_architecture()), self.config["init"])
        model = build_model("edts", self.architecture)
        if self.config["init"]:
            return load_stage(model, self.config["init"])
        if self.architecture["tsm"]["features"] == "vgg16":
            if not self.config["vgg16_weights"]:
                raise InputError("architecture tsm.features is vgg16: pass vgg16_weights=<torchvision VGG16 state dict>")
            model.tsm.load_vgg16(self.config["vgg16_weights"])
        return model

    def trainable_parameters(self, model):
        if self.stage == "unet":
            return list(model.parameters())
        parts = {"regn": [model.regn], "refiner": [model.refiner], "joint": [model.regn, model.refiner]}[self.stage]
        return [p for part in parts for p in part.parameters()]

    def _cases(self, train: bool):
        cases = read_mri_cases(Path(self.config["data_root"]), self.config["layout"])
        chosen = split_by_volume(cases, self.config["train_fraction"], self.config["split_seed"])[0 if train else 1]
        return [c for c in chosen if {self.config["source"], self.config["target"]} <= set(c.paths)]

    def train_dataset(self):
        return TranslationSlices(self._cases(train=True), self.model_grid(), Path(self.config["cache_dir"]),
                                 self.config["min_foreground"], sources=(self.config["source"],),
                                 targets=(self.config["target"],), augment=self.augmentation())

    def augmentation_fixed(self) -> dict:
        return {"n_sources": 1}  # T1 is the only input: it alone gets the scanner effects

    def _oriented(self, batch, generator):
        t1, t2 = batch["sources"], batch["targets"]
        if not self.config["flips_rotations"]:
            return t1, t2
        choices = torch.randint(0, 8, (t1.shape[0],), generator=generator).tolist()
        pairs = [dihedral(torch.cat([a, b]), c) for a, b, c in zip(t1, t2, choices)]
        stacked = torch.stack(pairs)
        return stacked[:, :1], stacked[:, 1:]

    def _image_terms(self, name: str, prediction, t2, logs: dict) -> torch.Tensor:
        l1, dissimilarity = l1_ssim_loss(prediction, t2, self.config["ssim_weight"])
        logs[f"l1_{name}"], logs[f"ssim_{name}"] = l1.detach(), (1 - dissimilarity).detach()
        return l1 + self.config["ssim_weight"] * dissimilarity

    def loss(self, model, batch, generator):
        t1, t2 = self._oriented(batch, generator)
        logs: dict[str, torch.Tensor] = {}
        if self.stage == "unet":
            return self._image_terms("unet", model(t1), t2, logs), logs
        if self.stage == "regn":
            return self._image_terms("bar", model.regress(t1), t2, logs), logs
        with torch.set_grad_enabled(self.stage == "joint"):
            t2_bar = model.regress(t1)
        mask = model.structure_mask(t2_bar.detach())
        t = self.schedule.sample_timesteps(t2.shape[0], generator).to(t2.device)
        noise = torch.randn(t2.shape, generator=generator).to(t2.device)
        x_t = self.schedule.add_noise(t2, noise, t)
        output = model.predict(x_t, t, t2_bar, mask)
        prediction_type = self.config["prediction_type"]
        target = training_target(self.schedule, t2, noise, t, prediction_type)
        denoise = (F.mse_loss if self.config["denoise_loss"] == "mse" else F.l1_loss)(output.float(), target.float())
        t2_tilde, _ = x0_and_eps_from_output(self.schedule, x_t, t, output, prediction_type)
        total = self.config["denoise_weight"] * denoise
        total = total + self._image_terms("tilde", t2_tilde, t2, logs)
        total = total + self._image_terms("out", model.fuse(t2_tilde, t2_bar, mask), t2, logs)
        bar = self._image_terms("bar", t2_bar, t2, logs)
        if self.stage == "joint":
            total = total + bar
        logs.update(denoise=denoise.detach(), mask_mean=mask.mean().detach())
        return total, logs

    def describe_data(self, dataset):
        return {"dataset": f"{self.config['layout']} layout at {self.config['data_root']}",
                "pairs": f"{self.config['source']} -> {self.config['target']}",
                "split": f"{self.config['train_fraction']:.0%} of volumes for training (seed {self.config['split_seed']})",
                "train_cases": len(dataset.slices.case_ids), "train_slices": len(dataset), "notice": PHANTOM_NOTICE}

    def _features_card(self) -> dict:
        tsm = self.architecture["tsm"]
        if tsm["features"] == "fixed":
            return {"kind": "fixed", "seed": tsm.get("seed", 0), "width": tsm.get("width", 64),
                    "note": "VGG16-architecture stack with deterministic Kaiming-normal weights (not ImageNet "
                            "features); the weights are stored in the model file"}
        card = {"kind": "vgg16", "note": "user-supplied torchvision VGG16 weights, stored in the model file"}
        weights = self.config["vgg16_weights"]
        if weights and Path(weights).is_file():
            card.update(file=Path(weights).name, sha256=hashlib.sha256(Path(weights).read_bytes()).hexdigest())
        return card

    def export_card(self):
        baseline = self.stage == "unet"
        card = {
            "name": self.config["name"], "version": self.config["version"], "task": "translation",
            "method": "cunet" if baseline else "edts", "stage": self.stage,
            "description": "Plain UNet baseline: T1 -> T2, trained with the EDTS-Trans loss." if baseline else
            "EDTS-Trans: regression T1 -> T2, a texture/structure mask of it, and a mask-guided diffusion refiner "
            "fused by the mask.",
            "inputs": [{"name": "t1", "modality": "MR T1-weighted, native (BraTS t1n)"}],
            "outputs": [{"name": "t2w", "modality": "MR T2-weighted (synthetic)"}],
            "normalization": {"kind": "mri_percentile", "lower": 0.5, "upper": 99.5,
                              "output": "model range [-1, 1] mapped linearly to [0, 1000] (background 0)"},
            "architecture": self.unet_architecture() if baseline else self.architecture,
            "geometry": self.geometry_card(),
            "loss": {"image": "L1 + ssim_weight * (1 - SSIM)", "ssim_weight": self.config["ssim_weight"],
                     "denoise": None if baseline else
                     f"{self.config['denoise_loss']} on the {self.config['prediction_type']} target"},
            "metrics": {},
            "license": LICENSE,
            "citation": CITATION,
            "intended_use": PHANTOM_NOTICE,
            # BraTS and UPenn-GBM are skull-stripped, IXI is not: the model expects what it was trained on.
            "input_requirements": {"skull_stripped": self.config["layout"] != "ixi", "co_registered": False,
                                   "note": "brain T1 MRI, skull-stripped like BraTS" if self.config["layout"] != "ixi"
                                   else "brain T1 MRI with the skull, like IXI"},
        }
        if not baseline:
            card["sampling"] = {"schedule": self.config["schedule"], "prediction_type": self.config["prediction_type"],
                                "steps": self.config["sampling_steps"], "eta": 0.0, "timestep_spacing": "trailing",
                                "set_alpha_to_one": True, "clip_sample": 1.0}
            card["texture_structure_features"] = self._features_card()
        return card
