# -*- test-case-name: tests.test_wire_httptunnel -*-
"""Frames of the HTTP(S) tunnel between a roaming client and the multiplexer.

Both directions carry the same frames, back to back in an HTTP body::

    type (1 byte) | length (2 bytes, network order) | payload (length bytes)

========== ===== ===================================================
type       value payload
========== ===== ===================================================
MIP        1     one Mobile IP datagram (home agent's UDP port 434)
ESP        2     one ESP-in-UDP datagram, RFC 3948 forms included
                 (non-ESP marker, 0xFF keepalive; home agent's 4500)
KEEPALIVE  3     empty
CLOSE      4     a reason, UTF-8 text
========== ===== ===================================================

A payload is at most :data:`MAX_PAYLOAD` bytes.  An HTTP body is cut into
chunks anywhere (by proxies, TCP, TLS records), so :class:`FrameDecoder`
takes arbitrary pieces and returns the complete frames, keeping at most one
partial frame.  Every problem raises :class:`~smobility.wire.errors.WireError`
and nothing else.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from smobility.wire.errors import WireError

__all__ = [
    "HEADER_LEN",
    "MAX_FRAME",
    "MAX_PAYLOAD",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "WireError",
    "close_frame",
    "decode_frames",
    "encode_frame",
    "keepalive_frame",
]

MAX_PAYLOAD = 16384
"""Largest payload of one frame, in bytes; a longer length is a protocol error."""

HEADER_LEN = 3
"""Bytes in a frame header (type and length)."""

MAX_FRAME = HEADER_LEN + MAX_PAYLOAD
"""Largest encoded frame, in bytes."""

_HEADER = struct.Struct("!BH")


class FrameType(enum.IntEnum):
    """The frame types."""

    MIP = 1
    """A Mobile IP registration datagram (home agent's UDP port, 434 by default)."""
    ESP = 2
    """An ESP-in-UDP datagram (home agent's UDP port 4500 by default)."""
    KEEPALIVE = 3
    """Nothing: keeps proxies and idle timers from closing the stream."""
    CLOSE = 4
    """The sender explains why something ends (UTF-8 reason)."""


_TYPES = frozenset(int(t) for t in FrameType)


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    type: FrameType
    payload: bytes

    @property
    def reason(self) -> str:
        """The text of a CLOSE frame (the payload, UTF-8 decoded)."""
        return self.payload.decode("utf-8", errors="replace")

    def encode(self) -> bytes:
        """The frame's bytes on the wire."""
        return encode_frame(self.type, self.payload)


def _check(type_: int, payload: bytes) -> FrameType:
    if type_ not in _TYPES:
        raise WireError(f"unknown frame type {type_}; expected 1 (MIP) to 4 (CLOSE)")
    if len(payload) > MAX_PAYLOAD:
        raise WireError(
            f"frame payload of {len(payload)} bytes exceeds the maximum of {MAX_PAYLOAD}"
        )
    kind = FrameType(type_)
    if kind is FrameType.KEEPALIVE and payload:
        raise WireError(f"KEEPALIVE frame with a {len(payload)}-byte payload; expected none")
    if kind is FrameType.CLOSE:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("CLOSE frame whose reason is not UTF-8 text") from None
    return kind


def encode_frame(type_: int, payload: bytes = b"") -> bytes:
    """Encode one frame.

    :raises WireError: for an unknown type, a payload longer than
        :data:`MAX_PAYLOAD`, a KEEPALIVE with a payload or a CLOSE whose
        payload is not UTF-8.
    """
    kind = _check(type_, payload)
    return _HEADER.pack(kind, len(payload)) + payload


def keepalive_frame() -> bytes:
    """The encoded KEEPALIVE frame."""
    return _HEADER.pack(FrameType.KEEPALIVE, 0)


def close_frame(reason: str) -> bytes:
    """An encoded CLOSE frame; a reason too long for one frame is cut short.

    The cut never splits a UTF-8 sequence.
    """
    raw = reason.encode("utf-8")
    if len(raw) > MAX_PAYLOAD:
        raw = raw[:MAX_PAYLOAD].decode("utf-8", errors="ignore").encode("utf-8")
    return _HEADER.pack(FrameType.CLOSE, len(raw)) + raw


class FrameDecoder:
    """Splits a byte stream into frames, whatever the pieces it is fed.

    Memory is bounded: between calls at most one partial frame
    (:data:`MAX_FRAME` bytes) is kept.  After a :class:`WireError` the stream
    has no frame boundaries left to trust: the decoder stays failed and every
    later call raises again.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._error: WireError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back (0 at a frame boundary)."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> list[Frame]:
        """Take the next piece of the stream; return the frames it completes.

        :raises WireError: at the first bad frame header or payload (the
            frames before it in ``data`` are lost; use :meth:`iter_feed` to
            act on them first).
        """
        return list(self.iter_feed(data))

    def iter_feed(self, data: bytes) -> Iterator[Frame]:
        """Take the next piece of the stream; yield the frames it completes, in order.

        ``data`` is taken at once; the frames are decoded as the iterator is
        consumed, so a caller can act on each good frame before a bad one
        raises :class:`WireError`.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        try:
            while True:
                frame = self._next()
                if frame is None:
                    return
                yield frame
        finally:
            if self._pos:
                del self._buffer[: self._pos]
                self._pos = 0

    def _next(self) -> Frame | None:
        if self._error is not None:
            raise self._error
        buf = self._buffer
        pos = self._pos
        if len(buf) - pos < HEADER_LEN:
            return None
        type_, length = _HEADER.unpack_from(buf, pos)
        try:
            if type_ not in _TYPES:
                _check(type_, b"")
            if length > MAX_PAYLOAD:
                raise WireError(
                    f"frame length {length} exceeds the maximum payload of {MAX_PAYLOAD}"
                )
            if type_ == FrameType.KEEPALIVE and length:
                raise WireError(f"KEEPALIVE frame with a {length}-byte payload; expected none")
            if len(buf) - pos - HEADER_LEN < length:
                return None
            start = pos + HEADER_LEN
            payload = bytes(buf[start : start + length])
            kind = _check(type_, payload)
        except WireError as e:
            self._error = e
            self._buffer = bytearray()
            self._pos = 0
            raise
        self._pos = start + length
        return Frame(kind, payload)

    def finish(self) -> None:
        """Declare the end of the stream.

        :raises WireError: if it ends inside a frame (or the decoder failed).
        """
        if self._error is not None:
            raise self._error
        if self.pending:
            raise WireError(f"stream ends inside a frame ({self.pending} bytes left over)")


def decode_frames(data: bytes) -> list[Frame]:
    """Decode a complete body of frames (for example a batched POST).

    :raises WireError: for a bad frame or a body that ends inside a frame.
    """
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    decoder.finish()
    return frames
