# -*- test-case-name: tests.test_wire_mip -*-
"""The one error type raised by every codec in :mod:`smobility.wire`."""

from __future__ import annotations


class WireError(ValueError):
    """Raised when bytes cannot be decoded, or values cannot be encoded.

    Every decoder in :mod:`smobility.wire` raises this and nothing else on bad
    input, so a network adapter needs exactly one ``except`` clause.  The
    message is one sentence that is safe to log (it never holds key material).
    """
