"""`python -m training evaluate {translation,segmentation}`: paper-shaped tables and figures on a test split."""

from .command import COMMAND

__all__ = ["COMMAND"]
