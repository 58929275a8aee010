"""MedDiffusion backend: diffusion models for MRI translation and CT segmentation on 3D volumes.

This package never imports slicer, qt or ctk: the Slicer modules and the command line both call into it.
"""

__version__ = "0.1.0"
