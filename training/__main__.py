"""Entry point of `python -m training` (and of `torchrun ... -m training`)."""

from .cli import main

raise SystemExit(main())
