"""Layer 1: pure codecs (bytes <-> values).  No I/O, no Twisted, no clock.

Every decoder raises :class:`WireError` and nothing else on bad input.
"""

from __future__ import annotations

from .errors import WireError

__all__ = ["WireError"]
