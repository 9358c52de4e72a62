"""``python -m smobility.demo``: see :mod:`smobility.demo.roam`."""

from __future__ import annotations

import sys

from smobility.demo.roam import main

sys.exit(main())
