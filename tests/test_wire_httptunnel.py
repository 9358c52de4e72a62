"""The HTTP tunnel's frames: encoding, the stream decoder, fuzzing."""

from __future__ import annotations

import random
import struct

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from smobility.wire.errors import WireError
from smobility.wire.httptunnel import (
    HEADER_LEN,
    MAX_FRAME,
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    close_frame,
    decode_frames,
    encode_frame,
    keepalive_frame,
)

FAST = settings(max_examples=200, deadline=None, database=None)

FRAMES = st.one_of(
    st.builds(
        Frame,
        st.sampled_from([FrameType.MIP, FrameType.ESP]),
        st.binary(max_size=300),
    ),
    st.just(Frame(FrameType.KEEPALIVE, b"")),
    st.builds(
        lambda text: Frame(FrameType.CLOSE, text.encode("utf-8")),
        st.text(max_size=40),
    ),
)


def split_randomly(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut C{data} into pieces of random sizes (some empty)."""
    pieces = []
    pos = 0
    while pos < len(data):
        n = rng.randint(0, 40)
        pieces.append(data[pos : pos + n])
        pos += n
    return pieces


class EncodeTests(SynchronousTestCase):
    """Encoding single frames."""

    def test_layout(self) -> None:
        """type, 2-byte length in network order, payload."""
        self.assertEqual(encode_frame(FrameType.MIP, b"abc"), b"\x01\x00\x03abc")
        self.assertEqual(encode_frame(2, b"\xff"), b"\x02\x00\x01\xff")
        self.assertEqual(keepalive_frame(), b"\x03\x00\x00")
        self.assertEqual(close_frame("bye"), b"\x04\x00\x03bye")
        self.assertEqual(len(encode_frame(FrameType.ESP, b"x" * MAX_PAYLOAD)), MAX_FRAME)
        self.assertEqual(HEADER_LEN, 3)

    def test_round_trip_all_types(self) -> None:
        frames = [
            Frame(FrameType.MIP, b"\x01" * 24),
            Frame(FrameType.ESP, b"\x00\x00\x00\x00ike"),
            Frame(FrameType.ESP, b"\xff"),
            Frame(FrameType.KEEPALIVE, b""),
            Frame(FrameType.CLOSE, "adieu \u00e9".encode()),
            Frame(FrameType.ESP, b"z" * MAX_PAYLOAD),
            Frame(FrameType.MIP, b""),
        ]
        data = b"".join(f.encode() for f in frames)
        self.assertEqual(decode_frames(data), frames)
        self.assertEqual(decode_frames(data)[4].reason, "adieu \u00e9")

    def test_bad_type(self) -> None:
        for t in (0, 5, 255):
            e = self.assertRaises(WireError, encode_frame, t, b"")
            self.assertIn("unknown frame type", str(e))

    def test_oversize(self) -> None:
        e = self.assertRaises(WireError, encode_frame, FrameType.MIP, b"x" * (MAX_PAYLOAD + 1))
        self.assertIn("exceeds", str(e))

    def test_keepalive_payload(self) -> None:
        self.assertRaises(WireError, encode_frame, FrameType.KEEPALIVE, b"x")

    def test_close_not_utf8(self) -> None:
        self.assertRaises(WireError, encode_frame, FrameType.CLOSE, b"\xff\xfe")

    def test_close_reason_cut(self) -> None:
        """A long reason is cut to one frame without splitting a UTF-8 sequence."""
        frame = close_frame("\u00e9" * MAX_PAYLOAD)
        (decoded,) = decode_frames(frame)
        self.assertLessEqual(len(decoded.payload), MAX_PAYLOAD)
        self.assertEqual(set(decoded.reason), {"\u00e9"})

    def test_wire_error_is_value_error(self) -> None:
        self.assertTrue(issubclass(WireError, ValueError))


class DecoderTests(SynchronousTestCase):
    """The stream decoder."""

    FRAMES = [
        Frame(FrameType.MIP, b"registration request"),
        Frame(FrameType.KEEPALIVE, b""),
        Frame(FrameType.ESP, bytes(range(256)) * 4),
        Frame(FrameType.CLOSE, b"done"),
    ]
    DATA = b"".join(f.encode() for f in FRAMES)

    def test_whole(self) -> None:
        d = FrameDecoder()
        self.assertEqual(d.feed(self.DATA), self.FRAMES)
        self.assertEqual(d.pending, 0)
        d.finish()

    def test_byte_at_a_time(self) -> None:
        d = FrameDecoder()
        out: list[Frame] = []
        for i in range(len(self.DATA)):
            out += d.feed(self.DATA[i : i + 1])
            self.assertLess(d.pending, MAX_FRAME)
        self.assertEqual(out, self.FRAMES)
        d.finish()

    def test_random_splits(self) -> None:
        rng = random.Random(4500)
        for _ in range(50):
            d = FrameDecoder()
            out: list[Frame] = []
            for piece in split_randomly(self.DATA * 3, rng):
                out += d.feed(piece)
            self.assertEqual(out, self.FRAMES * 3)
            d.finish()

    def test_partial_kept(self) -> None:
        d = FrameDecoder()
        self.assertEqual(d.feed(self.DATA[:5]), [])
        self.assertEqual(d.pending, 5)
        e = self.assertRaises(WireError, d.finish)
        self.assertIn("inside a frame", str(e))

    def test_oversize_length_fails_at_header(self) -> None:
        """A length over the maximum fails before any payload is buffered."""
        d = FrameDecoder()
        e = self.assertRaises(WireError, d.feed, struct.pack("!BH", 1, MAX_PAYLOAD + 1))
        self.assertIn("exceeds", str(e))

    def test_bad_type_fails(self) -> None:
        d = FrameDecoder()
        self.assertRaises(WireError, d.feed, b"\x09\x00\x00")

    def test_keepalive_with_payload_fails_at_header(self) -> None:
        d = FrameDecoder()
        self.assertRaises(WireError, d.feed, b"\x03\x00\x05")

    def test_failed_decoder_stays_failed(self) -> None:
        d = FrameDecoder()
        self.assertRaises(WireError, d.feed, b"\x00\x00\x00")
        self.assertRaises(WireError, d.feed, keepalive_frame())
        self.assertRaises(WireError, d.finish)
        self.assertEqual(d.pending, 0)

    def test_iter_feed_yields_good_frames_before_error(self) -> None:
        """iter_feed lets the caller act on each frame before a bad one raises."""
        d = FrameDecoder()
        seen: list[Frame] = []
        data = self.FRAMES[0].encode() + b"\x07\x00\x00" + self.FRAMES[1].encode()

        def consume() -> None:
            for frame in d.iter_feed(data):
                seen.append(frame)

        self.assertRaises(WireError, consume)
        self.assertEqual(seen, [self.FRAMES[0]])

    def test_iter_feed_takes_data_at_once(self) -> None:
        """The data is buffered by the call itself, not when iterating."""
        d = FrameDecoder()
        d.iter_feed(self.DATA[:4])
        self.assertEqual(d.pending, 4)
        self.assertEqual(d.feed(self.DATA[4:]), self.FRAMES)

    def test_decode_frames_truncated(self) -> None:
        self.assertRaises(WireError, decode_frames, self.DATA[:-1])


class FuzzTests(SynchronousTestCase):
    """Random frames and random bytes: only WireError escapes, memory stays bounded."""

    @FAST
    @given(st.lists(FRAMES, max_size=20), st.randoms(use_true_random=False))
    def test_round_trip_any_split(self, frames: list[Frame], rng: random.Random) -> None:
        data = b"".join(f.encode() for f in frames)
        d = FrameDecoder()
        out: list[Frame] = []
        for piece in split_randomly(data, rng):
            out += d.feed(piece)
            self.assertLess(d.pending, MAX_FRAME)
        d.finish()
        self.assertEqual(out, frames)

    @FAST
    @given(st.lists(st.binary(max_size=64), max_size=30))
    def test_garbage(self, pieces: list[bytes]) -> None:
        d = FrameDecoder()
        try:
            for piece in pieces:
                for frame in d.feed(piece):
                    self.assertIsInstance(frame.type, FrameType)
                    self.assertLessEqual(len(frame.payload), MAX_PAYLOAD)
                self.assertLess(d.pending, MAX_FRAME)
            d.finish()
        except WireError:
            pass

    @FAST
    @given(st.lists(FRAMES, min_size=1, max_size=8), st.integers(0, 2000), st.binary(max_size=8))
    def test_corruption(self, frames: list[Frame], where: int, junk: bytes) -> None:
        """Bytes spliced into a good stream: frames or WireError, nothing else."""
        data = b"".join(f.encode() for f in frames)
        where %= len(data) + 1
        bad = data[:where] + junk + data[where:]
        try:
            decode_frames(bad)
        except WireError:
            pass

    @FAST
    @given(st.integers(0, 255), st.integers(0, 0xFFFF))
    @example(3, 0)
    @example(1, 0)
    @example(4, MAX_PAYLOAD)
    @example(2, MAX_PAYLOAD + 1)
    def test_any_header(self, type_: int, length: int) -> None:
        """Every possible header: accepted exactly when type and length are valid."""
        d = FrameDecoder()
        header = struct.pack("!BH", type_, length)
        valid = 1 <= type_ <= 4 and length <= MAX_PAYLOAD and not (type_ == 3 and length)
        try:
            d.feed(header)
        except WireError:
            self.assertFalse(valid)
        else:
            self.assertTrue(valid)
            self.assertEqual(d.pending, HEADER_LEN if length else 0)
