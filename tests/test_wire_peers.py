# -*- test-case-name: tests.test_wire_peers -*-
"""Mobile IPv4 wire codecs checked against implementations that are not ours.

- scapy (C{scapy.layers.mobileip}) builds and dissects the fixed parts of
  Registration Requests and Replies; extensions stay raw bytes there.
- tshark dissects whole messages, extensions included, from a pcap file.

See /work/shared/PEERS.md.  The tshark tests skip without tshark, and fail
under C{CI=true}.
"""

from __future__ import annotations

import hmac
import os
import subprocess
from ipaddress import IPv4Address

from scapy.layers.inet import IP, UDP
from scapy.layers.mobileip import MobileIP, MobileIPRRP, MobileIPRRQ
from scapy.packet import Raw
from scapy.utils import wrpcap
from twisted.trial.unittest import SynchronousTestCase

from smobility.wire import mip, ntp
from tests.util import require_tool

KEY = bytes(range(16))
RELAY_KEY = bytes(range(100, 116))
HOA = IPv4Address("10.1.0.5")
HA = IPv4Address("10.1.0.1")
COA = IPv4Address("192.0.2.7")
NAI = b"laptop@example.org"
# A real NTP timestamp, so that tshark's date rendering can be checked too.
IDENT_TIME = 1_700_000_000.5
IDENT = ntp.to_ntp(IDENT_TIME)
IDENT_DATE = "Nov 14, 2023 22:13:20.500000000 UTC"


def signed_request() -> bytes:
    """A request with NAI, UDP tunnel request, revocation support and MN-HA."""
    msg = mip.RegistrationRequest(
        mip.FLAG_S | mip.FLAG_D | mip.FLAG_T,
        1800,
        HOA,
        HA,
        COA,
        IDENT,
        (
            mip.NAIExtension(NAI),
            mip.UDPTunnelRequest(encapsulation=4, force=True, fa_required=False),
            mip.RevocationSupport(0x11223344, inform=True),
        ),
    )
    return mip.append_authenticator(mip.encode(msg), mip.EXT_MN_HA, 0x1000, KEY)


def signed_reply() -> bytes:
    """An accepting reply with a UDP tunnel reply, MN-HA, then a relay's FA-HA."""
    msg = mip.RegistrationReply(
        mip.CODE_ACCEPTED,
        900,
        HOA,
        HA,
        IDENT,
        (mip.UDPTunnelReply(code=0, force=True, keepalive=25),),
    )
    data = mip.append_authenticator(mip.encode(msg), mip.EXT_MN_HA, 0x1000, KEY)
    return mip.append_authenticator(data, mip.EXT_FA_HA, 0x2000, RELAY_KEY)


def on_port_434(payload: bytes, src: str, dst: str) -> IP:
    """An IPv4/UDP packet from port 434 to port 434 around C{payload}."""
    return IP(src=src, dst=dst) / UDP(sport=434, dport=434) / Raw(load=payload)


class ScapyTests(SynchronousTestCase):
    """scapy's Mobile IP layer against our codec, both directions."""

    def test_scapy_request_decoded_by_us(self) -> None:
        """A request fixed part built by scapy, signed by us, decodes to scapy's values."""
        built = MobileIP(type=1) / MobileIPRRQ(
            flags=0x82,
            lifetime=600,
            homeaddr=str(HOA),
            haaddr=str(HA),
            coaddr=str(COA),
            id=IDENT,
        )
        fixed = bytes(built)
        self.assertEqual(len(fixed), 24)
        nai = mip.encode_extension(mip.NAIExtension(NAI))
        data = mip.append_authenticator(fixed + nai, mip.EXT_MN_HA, 0xABCD, KEY)

        msg = mip.decode(data)
        assert isinstance(msg, mip.RegistrationRequest)
        self.assertEqual(msg.flags, 0x82)
        self.assertTrue(msg.flag(mip.FLAG_S))
        self.assertTrue(msg.flag(mip.FLAG_T))
        self.assertEqual(msg.lifetime, 600)
        self.assertEqual(msg.home_address, HOA)
        self.assertEqual(msg.home_agent, HA)
        self.assertEqual(msg.care_of_address, COA)
        self.assertEqual(msg.identification, IDENT)
        self.assertEqual(msg.extensions[0], mip.NAIExtension(NAI))
        self.assertTrue(mip.verify_authenticator(msg, 1, KEY, "hmac-md5"))
        # The authenticator is HMAC-MD5 over scapy's bytes + NAI + Type, Length, SPI.
        covered = fixed + nai + bytes((32, 20)) + (0xABCD).to_bytes(4, "big")
        self.assertEqual(data, covered + hmac.new(KEY, covered, "md5").digest())

    def test_scapy_default_lifetime(self) -> None:
        """scapy's default lifetime (180) is read as such, not ours."""
        fixed = bytes(MobileIP(type=3) / MobileIPRRP(code=1, homeaddr=str(HOA), haaddr=str(HA)))
        msg = mip.decode(fixed)
        assert isinstance(msg, mip.RegistrationReply)
        self.assertEqual((msg.code, msg.lifetime, msg.identification), (1, 180, 0))

    def test_our_reply_dissected_by_scapy(self) -> None:
        """Our reply, seen on UDP 434, has the fixed-part values scapy reads."""
        data = signed_reply()
        packet = IP(bytes(on_port_434(data, "127.0.0.2", "127.0.0.1")))
        self.assertTrue(packet.haslayer(MobileIPRRP))
        self.assertEqual(packet[MobileIP].type, 3)
        rrp = packet[MobileIPRRP]
        self.assertEqual(rrp.code, 0)
        self.assertEqual(rrp.lifetime, 900)
        self.assertEqual(rrp.homeaddr, str(HOA))
        self.assertEqual(rrp.haaddr, str(HA))
        self.assertEqual(rrp.id, IDENT)
        # scapy leaves the extensions as raw bytes: exactly ours after the 20-byte fixed part.
        self.assertEqual(bytes(rrp.payload), data[20:])

    def test_our_request_dissected_by_scapy(self) -> None:
        """Our request, seen on UDP 434, has the fixed-part values scapy reads."""
        data = signed_request()
        packet = IP(bytes(on_port_434(data, "127.0.0.1", "127.0.0.2")))
        rrq = packet[MobileIPRRQ]
        self.assertEqual(packet[MobileIP].type, 1)
        self.assertEqual(rrq.flags, 0xA2)
        self.assertEqual(rrq.lifetime, 1800)
        self.assertEqual(rrq.homeaddr, str(HOA))
        self.assertEqual(rrq.haaddr, str(HA))
        self.assertEqual(rrq.coaddr, str(COA))
        self.assertEqual(rrq.id, IDENT)
        self.assertEqual(bytes(rrq.payload), data[24:])

    def test_scapy_reply_round_trip(self) -> None:
        """A reply built by scapy decodes, and our encoding of it is byte-identical."""
        built = bytes(
            MobileIP(type=3)
            / MobileIPRRP(
                code=mip.CODE_HA_ID_MISMATCH,
                lifetime=0,
                homeaddr=str(HOA),
                haaddr=str(HA),
                id=(1 << 64) - 1,
            )
        )
        msg = mip.decode(built)
        assert isinstance(msg, mip.RegistrationReply)
        self.assertEqual(msg.code, 133)
        self.assertEqual(msg.identification, (1 << 64) - 1)
        self.assertEqual(mip.encode(msg), built)


# The fields asked of tshark, in order.
TSHARK_FIELDS = (
    "mip.type",
    "mip.flags",
    "mip.life",
    "mip.homeaddr",
    "mip.haaddr",
    "mip.coa",
    "mip.code",
    "mip.ident",
    "mip.ext.type",
    "mip.auth.spi",
    "mip.auth.auth",
    "mip.nai",
    "mip.ext.utrq.encaptype",
    "mip.ext.utrq.f",
    "mip.ext.utrq.r",
    "mip.ext.utrp.code",
    "mip.ext.utrp.f",
    "mip.ext.utrp.keepalive",
    "mip.ext.rev.i",
    "mip.ext.rev.tstamp",
    "udp.payload",
    "_ws.malformed",
    "_ws.expert.severity",
)


class TsharkTests(SynchronousTestCase):
    """tshark's Mobile IP dissector reads what we send."""

    def dissect(self, *payloads: tuple[bytes, str, str]) -> list[dict[str, str]]:
        """Write C{payloads} to a pcap on UDP 434 and return tshark's fields per frame."""
        tshark = require_tool(self, "tshark")
        path = self.mktemp() + ".pcap"
        wrpcap(path, [on_port_434(data, src, dst) for data, src, dst in payloads])
        args = [tshark, "-n", "-r", path, "-T", "fields", "-E", "separator=/t"]
        for name in TSHARK_FIELDS:
            args += ["-e", name]
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "TZ": "UTC"},
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        frames = []
        for line in result.stdout.splitlines():
            values = line.split("\t")
            self.assertEqual(len(values), len(TSHARK_FIELDS), line)
            frames.append(dict(zip(TSHARK_FIELDS, values, strict=True)))
        self.assertEqual(len(frames), len(payloads), result.stdout)
        for frame in frames:
            self.assertEqual(frame["_ws.malformed"], "", frame)
            self.assertEqual(frame["_ws.expert.severity"], "", frame)
        return frames

    def test_request(self) -> None:
        """Every field of a signed request with NAI, 144 and 137 extensions."""
        data = signed_request()
        (frame,) = self.dissect((data, "127.0.0.1", "127.0.0.2"))
        self.assertEqual(frame["udp.payload"], data.hex())
        self.assertEqual(frame["mip.type"], "1")
        self.assertEqual(int(frame["mip.flags"], 16), 0xA2)
        self.assertEqual(frame["mip.life"], "1800")
        self.assertEqual(frame["mip.homeaddr"], str(HOA))
        self.assertEqual(frame["mip.haaddr"], str(HA))
        self.assertEqual(frame["mip.coa"], str(COA))
        self.assertEqual(frame["mip.code"], "")
        # tshark shows the identification as an NTP date; the raw bytes are in udp.payload.
        self.assertEqual(frame["mip.ident"], IDENT_DATE)
        self.assertEqual(bytes.fromhex(frame["udp.payload"])[16:24], IDENT.to_bytes(8, "big"))
        self.assertEqual(frame["mip.ext.type"], "131,144,137,32")
        self.assertEqual(frame["mip.nai"], NAI.decode())
        self.assertEqual(frame["mip.ext.utrq.encaptype"], "4")
        self.assertEqual(frame["mip.ext.utrq.f"], "1")
        self.assertEqual(frame["mip.ext.utrq.r"], "0")
        self.assertEqual(frame["mip.ext.rev.i"], "1")
        self.assertEqual(int(frame["mip.ext.rev.tstamp"]), 0x11223344)
        self.assertEqual(int(frame["mip.auth.spi"], 16), 0x1000)
        msg = mip.decode(data)
        auth = msg.extensions[3]
        assert isinstance(auth, mip.AuthExtension)
        self.assertEqual(frame["mip.auth.auth"].replace(":", ""), auth.authenticator.hex())

    def test_reply(self) -> None:
        """Every field of a reply with 44, MN-HA and FA-HA extensions."""
        data = signed_reply()
        (frame,) = self.dissect((data, "127.0.0.2", "127.0.0.1"))
        self.assertEqual(frame["udp.payload"], data.hex())
        self.assertEqual(frame["mip.type"], "3")
        self.assertEqual(frame["mip.code"], "0")
        self.assertEqual(frame["mip.life"], "900")
        self.assertEqual(frame["mip.homeaddr"], str(HOA))
        self.assertEqual(frame["mip.haaddr"], str(HA))
        self.assertEqual(frame["mip.coa"], "")
        self.assertEqual(frame["mip.ident"], IDENT_DATE)
        self.assertEqual(frame["mip.ext.type"], "44,32,34")
        self.assertEqual(frame["mip.ext.utrp.code"], "0")
        self.assertEqual(frame["mip.ext.utrp.f"], "1")
        self.assertEqual(frame["mip.ext.utrp.keepalive"], "25")
        spis = [int(spi, 16) for spi in frame["mip.auth.spi"].split(",")]
        self.assertEqual(spis, [0x1000, 0x2000])
        msg = mip.decode(data)
        ours = [e.authenticator.hex() for e in msg.extensions if isinstance(e, mip.AuthExtension)]
        self.assertEqual(frame["mip.auth.auth"].replace(":", "").split(","), ours)

    def test_both_in_one_capture(self) -> None:
        """A request and its reply in one capture, with every flag and lifetime 0xffff."""
        req = mip.RegistrationRequest(
            0xFF, 0xFFFF, HOA, HA, COA, 0, (mip.UDPTunnelRequest(47, False, True),)
        )
        rep = mip.RegistrationReply(mip.CODE_HA_UNKNOWN_HA, 0, HOA, HA, 0)
        frames = self.dissect(
            (mip.encode(req), "127.0.0.1", "127.0.0.2"),
            (mip.encode(rep), "127.0.0.2", "127.0.0.1"),
        )
        self.assertEqual(int(frames[0]["mip.flags"], 16), 0xFF)
        self.assertEqual(frames[0]["mip.life"], "65535")
        self.assertEqual(frames[0]["mip.ext.utrq.encaptype"], "47")
        self.assertEqual(frames[0]["mip.ext.utrq.f"], "0")
        self.assertEqual(frames[0]["mip.ext.utrq.r"], "1")
        self.assertEqual(frames[1]["mip.code"], "136")
        self.assertEqual(frames[1]["mip.life"], "0")
        self.assertEqual(frames[1]["mip.ext.type"], "")

    def test_truncation_is_flagged(self) -> None:
        """Sanity check of the check: tshark flags a cut extension as malformed."""
        data = signed_request()[:-3]
        tshark = require_tool(self, "tshark")
        path = self.mktemp() + ".pcap"
        wrpcap(path, [on_port_434(data, "127.0.0.1", "127.0.0.2")])
        result = subprocess.run(
            [tshark, "-n", "-r", path, "-T", "fields", "-e", "_ws.malformed"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotEqual(result.stdout.strip(), "")
