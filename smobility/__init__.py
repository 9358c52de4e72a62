# -*- test-case-name: tests.test_packaging -*-
"""
smobility: secure IP mobility for roaming clients.

A mobile client keeps one permanent home address wherever it roams: it registers
each care-of address with its home agent (Mobile IPv4, RFC 5944), directly or
through a relay, and its traffic is protected with ESP keyed by IKEv2.  The roles
run as twistd plugins: smobility-home, smobility-relay, smobility-mux and
smobility-client.
"""

from __future__ import annotations

__version__ = "0.1.0"
