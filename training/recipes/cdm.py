"""CDM training, in the paper's three stages, each a run of the shared trainer:

1. stage=mrm   masked modelling over the targets (T1c, T2f): trains model.mrm (not its projection head)
2. stage=mdn   diffusion over the frozen MRM's representation vectors: trains model.mdn
3. stage=cunet the C-UNet from (T1, T2) to the targets given the ground-truth representation: trains model.cunet
stage=unet trains the plain UNet baseline M1 (same backbone, no representation) for the ablation.
Each stage starts from the previous stage's exported folder (init=...) and exports the whole CDM, so the last
export is the complete model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from MedDiffusionExtension.diffusion import training_target
from MedDiffusionExtension.models import CDM_CONFIGS, build_model

from ..data import TranslationSlices, read_mri_cases, split_by_volume
from .common import LICENSE, PHANTOM_NOTICE, StagedRecipe, load_stage, mse

STAGES = ("mrm", "mdn", "cunet", "unet")
CITATION = ("Xing Z, Yang S, Chen S, Ye T, Yang Y, Qin J, Zhu L. Cross-conditioned Diffusion Model for Medical Image "
            "to Image Translation. MICCAI 2024.")


class CDMRecipe(StagedRecipe):
    defaults = {
        "stage": "mrm",
        "init": None,  # model folder exported by the previous stage
        "data_root": "data/brats_phantoms",
        "layout": "brats",  # brats | upenn | ixi
        "cache_dir": "cache/cdm",
        "architecture": "tiny",  # a CDM_CONFIGS name or a full config dict
        "train_fraction": 0.7,
        "split_seed": 0,
        "min_foreground": 0.05,
        "schedule": {"kind": "linear", "beta_start": 0.0015, "beta_end": 0.0195, "num_steps": 1000},  # RCG
        "prediction_type": "sample",  # RCG's x0-prediction
        "sampling_steps": 30,
        # The paper's MDN sees no source image. True conditions it on a pooled source encoding: the frozen MRM
        # encoder applied to (T1, T2), so that the sampled representation fits the slice being translated.
        "mdn_source_condition": False,
        # In-plane pixel spacing (mm) slices are resampled to, for training and in the card; None: the dataset's
        # default (weights.card.LEGACY_TRAINING_FIELDS). slice_thickness_mm: the range the training data spans.
        "spacing_mm": None,
        "slice_thickness_mm": None,
        # Acquisition randomization of the training slices (training.data.augment): "acquisition" (default ranges),
        # "none", or {"seed": int, <range field>: value, ...} over the defaults. Never applied outside training.
        "augment": "acquisition",
        "name": "cdm-tiny-phantom",
        "version": "0.1.0",
    }

    stages = STAGES
    normalization_kind = "mri_percentile"
    modality = "mri"

    def architecture_table(self):
        return CDM_CONFIGS

    def __init__(self, config=None, name=None, check_keys=True):
        super().__init__(config, name, check_keys)
        if self.config["mdn_source_condition"]:
            mdn = dict(self.architecture["mdn"], source_condition_dim=self.architecture["representation_dim"])
            self.architecture = dict(self.architecture, mdn=mdn)

    def build_model(self):
        if self.stage == "unet":
            config = {"image_size": self.architecture["image_size"],
                      "cunet": {**self.architecture["cunet"], "conditioned": False}}
            # init: an exported M1 UNet to train further (e.g. beside a CDM stage, for the same wall time)
            return load_stage(build_model("cunet", config), self.config["init"])
        return load_stage(build_model("cdm", self.architecture), self.config["init"], new_prefixes=(f"{self.stage}.",))

    def trainable_parameters(self, model):
        if self.stage == "mrm":
            # The masked-modelling loss never reaches the projection head (it only shapes represent()'s output),
            # so it stays at its seeded initialisation; training it would leave DDP waiting for its gradients.
            return [p for name, p in model.mrm.named_parameters() if not name.startswith("project.")]
        part = model if self.stage == "unet" else {"mdn": model.mdn, "cunet": model.cunet}[self.stage]
        return list(part.parameters())

    def _cases(self, train: bool):
        cases = read_mri_cases(Path(self.config["data_root"]), self.config["layout"])
        chosen = split_by_volume(cases, self.config["train_fraction"], self.config["split_seed"])[0 if train else 1]
        return [c for c in chosen if {"t1n", "t2w", "t1c", "t2f"} <= set(c.paths)]

    def train_dataset(self):
        return TranslationSlices(self._cases(train=True), self.model_grid(), Path(self.config["cache_dir"]),
                                 self.config["min_foreground"], augment=self.augmentation())

    def loss(self, model, batch, generator):
        sources, targets = batch["sources"], batch["targets"]
        if self.stage == "mrm":
            loss = model.mrm.loss(targets, generator)
        elif self.stage == "mdn":
            with torch.no_grad():
                representation = model.mrm.represent(targets)
                source = model.mrm.represent(sources) if self.config["mdn_source_condition"] else None
            t = self.schedule.sample_timesteps(targets.shape[0], generator).to(targets.device)
            noise = torch.randn(representation.shape, generator=generator).to(targets.device)
            noisy = self.schedule.add_noise(representation, noise, t)
            target = training_target(self.schedule, representation, noise, t, self.config["prediction_type"])
            loss = mse(model.mdn(noisy, t, source), target)
        elif self.stage == "cunet":
            with torch.no_grad():
                representation = model.mrm.represent(targets)
            loss = mse(model.cunet(sources, representation), targets)
        else:
            loss = mse(model(sources), targets)
        return loss, {}

    def describe_data(self, dataset):
        return {"dataset": f"{self.config['layout']} layout at {self.config['data_root']}",
                "split": f"{self.config['train_fraction']:.0%} of volumes for training (seed {self.config['split_seed']})",
                "train_cases": len(dataset.slices.case_ids), "train_slices": len(dataset), "notice": PHANTOM_NOTICE}

    def export_card(self):
        method = "cunet" if self.stage == "unet" else "cdm"
        return {
            "name": self.config["name"], "version": self.config["version"], "task": "translation", "method": method,
            "stage": self.stage,
            "description": "CDM (MRM + MDN + C-UNet) synthesizing post-contrast T1 and T2-FLAIR from T1 and T2 MRI."
            if method == "cdm" else "Plain UNet baseline (CDM ablation M1): T1 + T2 -> T1c + T2-FLAIR.",
            "inputs": [{"name": "t1", "modality": "MR T1-weighted, native (BraTS t1n)"},
                       {"name": "t2", "modality": "MR T2-weighted (BraTS t2w)"}],
            "outputs": [{"name": "t1c", "modality": "MR T1-weighted post-contrast (synthetic)"},
                        {"name": "t2f", "modality": "MR T2-FLAIR (synthetic)"}],
            "normalization": {"kind": "mri_percentile", "lower": 0.5, "upper": 99.5,
                              "output": "model range [-1, 1] mapped linearly to [0, 1000] (background 0)"},
            "architecture": self.architecture if method == "cdm" else
            {"image_size": self.architecture["image_size"], "cunet": {**self.architecture["cunet"], "conditioned": False}},
            "sampling": {"schedule": self.config["schedule"], "prediction_type": self.config["prediction_type"],
                         "steps": self.config["sampling_steps"], "eta": 0.0, "timestep_spacing": "leading",
                         # the last DDIM step lands on x0_hat itself, not on the slightly noisy abar_0 level
                         "set_alpha_to_one": True},
            "geometry": self.geometry_card(),
            "metrics": {},
            "license": LICENSE,
            "citation": CITATION,
            "intended_use": PHANTOM_NOTICE,
            # Trained on BraTS-style cases; an input that is not skull-stripped is warned about at run time.
            "input_requirements": {"skull_stripped": True, "co_registered": True,
                                   "note": "skull-stripped brain MRI, T1 and T2 co-registered (BraTS-style)"},
        }
