"""Training package: datasets for real layouts, one trainer, per-method recipes, evaluation and export, the phantom
generators (phantoms/) and the benchmarks (bench.py): the tooling, never installed into Slicer."""
