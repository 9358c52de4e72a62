"""``python -m smobility.ctl``."""

from __future__ import annotations

import sys

from smobility.ctl import main

sys.exit(main())
