"""Entry point of ``python -m bench``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
