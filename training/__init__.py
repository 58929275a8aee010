"""Training package: datasets for real layouts, one trainer, per-method recipes, evaluation and export."""
