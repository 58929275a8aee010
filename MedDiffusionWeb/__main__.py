"""`python -m MedDiffusionWeb [options]` is `meddiffusion web [options]`."""

import sys

from MedDiffusionExtension.cli import main

sys.exit(main(["web", *sys.argv[1:]]))
