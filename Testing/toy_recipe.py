"""A toy recipe for the trainer's tests: a tiny MLP regressing a seeded linear map, with input noise drawn from the
trainer's generator (so exact resume must restore that generator) and dropout drawn from the global torch RNG.

Importable as `Testing.toy_recipe:ToyRecipe` from the repository root (for `python -m training --recipe ...`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from training.recipes import Recipe


class LinearMapData(Dataset):
    def __init__(self, items: int, seed: int, dim: int = 4):
        generator = torch.Generator().manual_seed(seed)
        weights = torch.Generator().manual_seed(1234)
        self.map = torch.randn(dim, dim, generator=weights)
        self.x = torch.randn(items, dim, generator=generator)
        self.y = self.x @ self.map

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


class ToyRecipe(Recipe):
    defaults = {"hidden": 16, "items": 40, "noise": 0.05, "dropout": 0.1, "measure_scale": False}

    def build_model(self) -> nn.Module:
        hidden = self.config["hidden"]
        return nn.Sequential(
            nn.Linear(4, hidden), nn.Tanh(), nn.Dropout(self.config["dropout"]), nn.Linear(hidden, 4)
        )

    def train_dataset(self) -> Dataset:
        return LinearMapData(self.config["items"], seed=0)

    def val_dataset(self) -> Dataset:
        return LinearMapData(8, seed=1)

    def loss(self, model, batch, generator):
        x = batch["x"]
        noisy = x + self.config["noise"] * torch.randn(x.shape, generator=generator).to(x.device)
        error = nn.functional.mse_loss(model(noisy), batch["y"])
        return error, {"rmse": float(error.detach().sqrt())}

    def on_start(self, model, loader):
        if not self.config["measure_scale"]:
            return None
        first = next(iter(loader))
        return {"target_scale": float(first["y"].std())}

    def export_card(self) -> dict:
        return {
            "version": "0.0.1",
            "task": "translation",
            "method": "toy",
            "inputs": [{"name": "x", "modality": "vector"}],
            "outputs": [{"name": "y", "modality": "vector"}],
            "normalization": {"kind": "none"},
            "architecture": {"hidden": self.config["hidden"]},
            "license": "Apache-2.0",
            "citation": "none (test model)",
        }
