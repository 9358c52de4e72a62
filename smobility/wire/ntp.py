# -*- test-case-name: tests.test_wire_mip -*-
"""64-bit NTP-format timestamps, as used by the Mobile IP Identification field.

RFC 5944 section 5.7.1: the Identification field carries a 64-bit NTP
timestamp (seconds since 1900-01-01 in the high 32 bits, a binary fraction in
the low 32 bits) when timestamp replay protection is used.
"""

from __future__ import annotations

from .errors import WireError

#: Seconds between the NTP era origin (1900-01-01) and the Unix epoch.
NTP_UNIX_OFFSET = 2_208_988_800
_FRACTION = 1 << 32
_MAX = (1 << 64) - 1


def to_ntp(unix_time: float) -> int:
    """Return the 64-bit NTP value for a Unix time in seconds."""
    if unix_time < -NTP_UNIX_OFFSET:
        raise WireError("time before 1900 has no NTP representation")
    value = int(round((unix_time + NTP_UNIX_OFFSET) * _FRACTION))
    # Times past 2036 wrap into NTP era 1 (RFC 5905 section 6).
    return value & _MAX


def from_ntp(value: int) -> float:
    """Return the Unix time in seconds (era 0) of a 64-bit NTP value."""
    if not 0 <= value <= _MAX:
        raise WireError("an NTP timestamp is an unsigned 64-bit integer")
    return value / _FRACTION - NTP_UNIX_OFFSET


def ntp_seconds(value: int) -> int:
    """The high 32 bits (whole seconds) of a 64-bit NTP value."""
    return (value >> 32) & 0xFFFFFFFF


def ntp_diff(a: int, b: int) -> float:
    """Seconds from NTP value ``b`` to NTP value ``a``, era-safe.

    Both values are taken modulo 2**64 and the shortest signed distance is
    returned, so comparisons keep working across the 2036 era rollover.
    """
    delta = (a - b) & _MAX
    if delta >= 1 << 63:
        delta -= 1 << 64
    return delta / _FRACTION
