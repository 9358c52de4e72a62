# -*- test-case-name: tests.test_bench -*-
"""``python -m smobility.bench``: see L{smobility.bench.runner}."""

from __future__ import annotations

import sys

from smobility.bench.runner import main

sys.exit(main())
