# -*- test-case-name: tests.test_socks -*-
"""Tests for L{smobility.adapters.socks}, L{smobility.store.users} and
L{smobility.ctl.socks_users}, all in memory (no root, no network).

The ingress protocol runs on L{StringTransport}s with a L{Clock}; its
multiplexer is a fake endpoint the tests complete by hand.  The client
endpoint meets the ingress through L{twisted.test.iosim} pumps.  Real peers
(curl, microsocks, Dante) are in L{tests.test_socks_peers}.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import ipaddress
import json
import os
import stat
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from smobility.adapters import socks
from smobility.adapters.socks import (
    REFUSAL_REASONS,
    SOCKS5ClientEndpoint,
    SOCKS5IngressFactory,
    SOCKS5IngressProtocol,
    SOCKSError,
    ThreadedVerifier,
    make_ingress_service,
)
from smobility.ctl import main as ctl_main
from smobility.ctl import socks_users as ctl_socks
from smobility.store.users import UserStore, UserStoreError

MUX = ("127.0.0.1", 8443)
MUX_BOUND = IPv4Address("TCP", "127.0.0.1", 50000)
CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)
PROXY = IPv4Address("TCP", "127.0.0.1", 1080)

FAST = settings(max_examples=200, deadline=None, database=None)


# ---------------------------------------------------------------------------
# Messages a client sends (built here by hand, from RFC 1928/1929).


def greeting(methods: bytes = b"\x02") -> bytes:
    return bytes((5, len(methods))) + methods


def auth(user: bytes = b"alice", password: bytes = b"secret") -> bytes:
    return bytes((1, len(user))) + user + bytes((len(password),)) + password


def request(
    host: str | bytes = "127.0.0.1", port: int = 8443, *, cmd: int = 1, atyp: int | None = None
) -> bytes:
    if isinstance(host, bytes):
        addr = bytes((len(host),)) + host
        atyp = 3 if atyp is None else atyp
    elif ":" in host:
        addr = ipaddress.IPv6Address(host).packed
        atyp = 4 if atyp is None else atyp
    else:
        addr = ipaddress.IPv4Address(host).packed
        atyp = 1 if atyp is None else atyp
    return bytes((5, cmd, 0, atyp)) + addr + struct.pack("!H", port)


def reply(code: int, host: bytes = b"\x00\x00\x00\x00", port: int = 0) -> bytes:
    """An RFC 1928 reply with an IPv4 bound address."""
    return bytes((5, code, 0, 1)) + host + struct.pack("!H", port)


HELLO = greeting() + auth() + request()
#: What the ingress answers to HELLO before the multiplexer is connected.
ANSWER_BEFORE_CONNECT = b"\x05\x02" + b"\x01\x00"
#: ... and the success reply with the bound address 127.0.0.1:50000.
SUCCESS = reply(0, b"\x7f\x00\x00\x01", 50000)


# ---------------------------------------------------------------------------
# Fakes


class FakeUsers:
    """A user database with plain passwords; optionally answers later."""

    def __init__(self, users: dict[bytes, bytes] | None = None, *, later: bool = False) -> None:
        self.users = users if users is not None else {b"alice": b"secret", b"bob": b"hunter2"}
        self.later = later
        self.pending: list[tuple[Deferred[bool], bool]] = []
        self.calls: list[bytes] = []

    def verify(self, name: bytes, password: bytes) -> bool | Deferred[bool]:
        self.calls.append(name)
        ok = name in self.users and hmac.compare_digest(self.users[name], password)
        if not self.later:
            return ok
        d: Deferred[bool] = Deferred()
        self.pending.append((d, ok))
        return d

    def answer(self) -> None:
        for d, ok in self.pending:
            d.callback(ok)
        self.pending = []


@implementer(IStreamClientEndpoint)
class FakeMux:
    """An endpoint whose connection attempts the test completes or fails."""

    def __init__(self) -> None:
        self.attempts: list[tuple[IProtocolFactory, Deferred[IProtocol]]] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        d: Deferred[IProtocol] = Deferred()
        self.attempts.append((protocolFactory, d))
        return d

    def succeed(self, index: int = -1) -> tuple[Protocol, StringTransport]:
        factory, d = self.attempts[index]
        proto = factory.buildProtocol(IPv4Address("TCP", *MUX))
        assert proto is not None
        transport = StringTransport(
            hostAddress=MUX_BOUND, peerAddress=IPv4Address("TCP", *MUX)
        )
        proto.makeConnection(transport)
        d.callback(proto)
        return proto, transport  # type: ignore[return-value]

    def fail(self, exc: Exception, index: int = -1) -> None:
        self.attempts[index][1].errback(exc)


class Harness:
    """One ingress factory on a clock with a fake multiplexer."""

    def __init__(self, testcase: SynchronousTestCase, **kwargs: Any) -> None:
        self.clock = Clock()
        self.mux = FakeMux()
        self.users = kwargs.pop("users", None) or FakeUsers()
        self.events: list[dict[str, Any]] = []
        testcase.patch(socks, "log", Logger(namespace="test",
                                            observer=cast(ILogObserver, self.events.append)))
        self.factory = SOCKS5IngressFactory(
            users=self.users,
            allowed=kwargs.pop("allowed", MUX),
            reactor=self.clock,
            mux_endpoint=self.mux,
            **kwargs,
        )

    def connect(self) -> tuple[SOCKS5IngressProtocol, StringTransport]:
        proto = self.factory.buildProtocol(CLIENT)
        transport = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 1080),
                                    peerAddress=CLIENT)
        proto.makeConnection(transport)
        return proto, transport

    def messages(self) -> list[str]:
        out = []
        for e in self.events:
            fields = {k: v for k, v in e.items() if not k.startswith("log_")}
            out.append(e["log_format"].format(**fields))
        return out


def lose(proto: Protocol, transport: StringTransport) -> None:
    """Deliver the end of a connection the way a reactor would."""
    transport.connected = False
    proto.connectionLost(Failure(error.ConnectionDone()))


# ---------------------------------------------------------------------------
# The ingress


class IngressSuccessTests(SynchronousTestCase):
    """A CONNECT to the multiplexer, fed whole and byte by byte, then spliced."""

    def check_splice(self, h: Harness, proto: SOCKS5IngressProtocol,
                     transport: StringTransport) -> None:
        self.assertEqual(transport.value(), ANSWER_BEFORE_CONNECT)
        self.assertEqual(len(h.mux.attempts), 1)
        self.assertEqual(transport.producerState, "paused")
        mux, mux_transport = h.mux.succeed()
        self.assertEqual(transport.value(), ANSWER_BEFORE_CONNECT + SUCCESS)
        self.assertEqual(transport.producerState, "producing")
        # Flow control both ways.
        self.assertIs(transport.producer, mux_transport)
        self.assertTrue(transport.streaming)
        self.assertIs(mux_transport.producer, transport)
        self.assertTrue(mux_transport.streaming)
        # Data both ways, unchanged.
        proto.dataReceived(b"POST /up HTTP/1.1\r\n")
        self.assertEqual(mux_transport.value(), b"POST /up HTTP/1.1\r\n")
        mux.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(transport.value()[len(ANSWER_BEFORE_CONNECT + SUCCESS):],
                         b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(h.factory.counters, {"accepted": 1})
        self.assertFalse(transport.disconnecting)
        # The handshake timeout no longer applies.
        h.clock.advance(3600)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_whole(self) -> None:
        """Greeting, authentication and request in one segment."""
        h = Harness(self)
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        self.check_splice(h, proto, transport)

    def test_byte_by_byte(self) -> None:
        """One byte at a time: nothing is answered before a message is complete."""
        h = Harness(self)
        proto, transport = h.connect()
        expected = b""
        boundaries = {len(greeting()): b"\x05\x02", len(greeting() + auth()): b"\x01\x00"}
        for i in range(len(HELLO)):
            proto.dataReceived(HELLO[i : i + 1])
            expected += boundaries.get(i + 1, b"")
            self.assertEqual(transport.value(), expected, f"after byte {i + 1}")
            if i + 1 < len(HELLO):
                self.assertEqual(h.mux.attempts, [])
        self.check_splice(h, proto, transport)

    def test_early_data(self) -> None:
        """Bytes sent right after the request reach the multiplexer once connected."""
        h = Harness(self)
        proto, transport = h.connect()
        proto.dataReceived(HELLO + b"GET / HTTP/1.1\r\n")
        proto.dataReceived(b"\r\n")
        _, mux_transport = h.mux.succeed()
        self.assertEqual(mux_transport.value(), b"GET / HTTP/1.1\r\n\r\n")

    def test_mux_closes(self) -> None:
        """The multiplexer closing closes the client's connection, and frees the slots."""
        h = Harness(self)
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        mux, mux_transport = h.mux.succeed()
        mux.connectionLost(Failure(error.ConnectionDone()))
        self.assertTrue(transport.disconnecting)
        lose(proto, transport)
        self.assertEqual((h.factory.active, dict(h.factory.per_user)), (0, {}))

    def test_client_closes(self) -> None:
        """The client closing closes the multiplexer's connection."""
        h = Harness(self)
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        _, mux_transport = h.mux.succeed()
        lose(proto, transport)
        self.assertTrue(mux_transport.disconnecting)
        self.assertEqual((h.factory.active, dict(h.factory.per_user)), (0, {}))

    def test_client_closes_while_connecting(self) -> None:
        """The attempt to reach the multiplexer is cancelled; nothing is counted as refused."""
        h = Harness(self)
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        d = h.mux.attempts[0][1]
        d.addErrback(lambda f: f.trap(CancelledError))
        lose(proto, transport)
        self.assertTrue(d.called)
        self.assertEqual(h.factory.counters, {})
        self.assertEqual((h.factory.active, dict(h.factory.per_user)), (0, {}))

    def test_other_methods_offered_too(self) -> None:
        """A client offering no-auth and GSSAPI besides username/password gets 0x02."""
        h = Harness(self)
        proto, transport = h.connect()
        proto.dataReceived(greeting(b"\x00\x01\x02"))
        self.assertEqual(transport.value(), b"\x05\x02")

    def test_ipv6_mux(self) -> None:
        """A multiplexer configured by IPv6 address is reached by an IPv6 request."""
        h = Harness(self, allowed=("::1", 8443))
        proto, transport = h.connect()
        proto.dataReceived(greeting() + auth() + request("::1"))
        self.assertEqual(len(h.mux.attempts), 1)

    def test_literal_as_domain_name(self) -> None:
        """An address sent as a domain name (ATYP 3) is compared as that address."""
        h = Harness(self)
        proto, transport = h.connect()
        proto.dataReceived(greeting() + auth() + request(b"127.0.0.1"))
        self.assertEqual(len(h.mux.attempts), 1)

    def test_mux_by_name(self) -> None:
        """A multiplexer configured by name admits that name, in any case, with a final dot."""
        for name in (b"mux.example", b"MUX.Example."):
            h = Harness(self, allowed=("mux.example", 8443))
            proto, transport = h.connect()
            proto.dataReceived(greeting() + auth() + request(name))
            self.assertEqual(len(h.mux.attempts), 1, name)

    def test_mux_by_name_and_address(self) -> None:
        """By address, a multiplexer configured by name needs its allowed_addresses."""
        h = Harness(self, allowed=("mux.example", 8443), allowed_addresses=["10.1.2.3"])
        proto, transport = h.connect()
        proto.dataReceived(greeting() + auth() + request("10.1.2.3"))
        self.assertEqual(len(h.mux.attempts), 1)

    def test_deferred_verify(self) -> None:
        """While a password is checked, reading pauses; the answer resumes the handshake."""
        users = FakeUsers(later=True)
        h = Harness(self, users=users)
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        self.assertEqual(transport.value(), b"\x05\x02")
        self.assertEqual(transport.producerState, "paused")
        users.answer()
        self.assertEqual(transport.value(), ANSWER_BEFORE_CONNECT)
        self.assertEqual(len(h.mux.attempts), 1)

    def test_client_leaves_during_verify(self) -> None:
        """A check that ends after the client left changes nothing."""
        users = FakeUsers(later=True)
        h = Harness(self, users=users)
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        lose(proto, transport)
        users.answer()
        self.assertEqual(transport.value(), b"\x05\x02")
        self.assertEqual(h.mux.attempts, [])
        self.assertEqual((h.factory.active, dict(h.factory.per_user)), (0, {}))

    def test_success_log_line(self) -> None:
        """One log line names the peer and the user."""
        h = Harness(self)
        proto, _ = h.connect()
        proto.dataReceived(HELLO)
        h.mux.succeed()
        self.assertEqual(
            h.messages(),
            ["SOCKS5 ingress: 192.0.2.7:40000 user 'alice' connected to the multiplexer"],
        )


class IngressRefusalTests(SynchronousTestCase):
    """Every refusal: the exact RFC bytes, a close, a counter and one log line."""

    def refused(self, h: Harness, data: bytes, expected: bytes, reason: str,
                *, byte_by_byte: bool = False) -> StringTransport:
        proto, transport = h.connect()
        if byte_by_byte:
            for i in range(len(data)):
                proto.dataReceived(data[i : i + 1])
        else:
            proto.dataReceived(data)
        self.assertEqual(transport.value(), expected)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.factory.counters[reason], 1)
        self.assertEqual(sum(h.factory.counters.values()), 1, h.factory.counters)
        self.assertIn(reason, REFUSAL_REASONS)
        self.assertEqual(len(h.events), 1, h.messages())
        self.assertIn(f"({reason})", h.messages()[0])
        self.assertEqual(h.mux.attempts, [])
        # More bytes after a refusal are ignored.
        proto.dataReceived(b"\x05\x01\x00" * 10)
        self.assertEqual(transport.value(), expected)
        lose(proto, transport)
        self.assertEqual((h.factory.active, dict(h.factory.per_user)), (0, {}))
        return transport

    def test_no_auth_only(self) -> None:
        """A client that offers only "no authentication" gets 0xFF and is closed."""
        for bbb in (False, True):
            self.refused(Harness(self), greeting(b"\x00"), b"\x05\xff", "no_acceptable_method",
                         byte_by_byte=bbb)

    def test_no_methods(self) -> None:
        """NMETHODS 0: no acceptable method."""
        self.refused(Harness(self), b"\x05\x00", b"\x05\xff", "no_acceptable_method")

    def test_gssapi_only(self) -> None:
        self.refused(Harness(self), greeting(b"\x01\x00"), b"\x05\xff", "no_acceptable_method")

    def test_socks4(self) -> None:
        """A SOCKS4 request is not SOCKS5: closed without an answer."""
        self.refused(Harness(self), b"\x04\x01\x00\x50\x7f\x00\x00\x01alice\x00", b"",
                     "malformed")

    def test_wrong_password(self) -> None:
        """RFC 1929 status 0x01, then close; the password is never logged."""
        for bbb in (False, True):
            h = Harness(self)
            self.refused(h, greeting() + auth(password=b"wrong-pw") + request(),
                         b"\x05\x02\x01\x01", "bad_credentials", byte_by_byte=bbb)
            self.assertNotIn("wrong-pw", h.messages()[0])
            self.assertNotIn("secret", h.messages()[0])
            self.assertNotIn("wrong-pw", repr(h.events))
            self.assertEqual(h.users.calls, [b"alice"])

    def test_unknown_user(self) -> None:
        """An unknown user gets exactly the answer of a wrong password."""
        self.refused(Harness(self), greeting() + auth(user=b"mallory"), b"\x05\x02\x01\x01",
                     "bad_credentials")

    def test_empty_fields(self) -> None:
        """Empty user names and passwords fail without a lookup."""
        for user, password in ((b"", b"secret"), (b"alice", b"")):
            h = Harness(self)
            self.refused(h, greeting() + auth(user, password), b"\x05\x02\x01\x01",
                         "bad_credentials")
            self.assertEqual(h.users.calls, [])

    def test_auth_version(self) -> None:
        """A subnegotiation version other than 1 is not RFC 1929."""
        self.refused(Harness(self), greeting() + b"\x05" + auth()[1:], b"\x05\x02", "malformed")

    def test_verify_error(self) -> None:
        """A failing user database is a refusal (status 0x01), and logged as an error."""

        class Broken:
            def verify(self, name: bytes, password: bytes) -> bool:
                raise RuntimeError("database is locked")

        h = Harness(self, users=Broken())
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        self.assertEqual(transport.value(), b"\x05\x02\x01\x01")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.factory.counters, {"auth_error": 1})

    def test_bind(self) -> None:
        """BIND: reply 0x07 "command not supported"."""
        self.refused(Harness(self), greeting() + auth() + request(cmd=2),
                     ANSWER_BEFORE_CONNECT + reply(7), "command_not_supported")

    def test_udp_associate(self) -> None:
        """UDP ASSOCIATE: reply 0x07."""
        for bbb in (False, True):
            self.refused(Harness(self), greeting() + auth() + request("0.0.0.0", 0, cmd=3),
                         ANSWER_BEFORE_CONNECT + reply(7), "command_not_supported",
                         byte_by_byte=bbb)

    def test_unknown_command(self) -> None:
        self.refused(Harness(self), greeting() + auth() + request(cmd=9),
                     ANSWER_BEFORE_CONNECT + reply(7), "command_not_supported")

    def test_other_address(self) -> None:
        """Any other destination: reply 0x02 "not allowed by ruleset"; never an open proxy."""
        for dest in ("127.0.0.2", "10.0.0.1", "0.0.0.0", "255.255.255.255"):
            h = Harness(self)
            self.refused(h, greeting() + auth() + request(dest),
                         ANSWER_BEFORE_CONNECT + reply(2), "not_allowed")
            self.assertIn(f"{dest}:8443", h.messages()[0])

    def test_other_port(self) -> None:
        for port in (0, 22, 8442, 8444, 65535):
            self.refused(Harness(self), greeting() + auth() + request(port=port),
                         ANSWER_BEFORE_CONNECT + reply(2), "not_allowed")

    def test_ipv6_destination(self) -> None:
        """IPv6 destinations are parsed; one that is not the multiplexer is refused."""
        for dest in ("::1", "::ffff:127.0.0.1", "2001:db8::1"):
            h = Harness(self)
            self.refused(h, greeting() + auth() + request(dest),
                         ANSWER_BEFORE_CONNECT + reply(2), "not_allowed", byte_by_byte=True)
        h = Harness(self, allowed=("::1", 8443))
        self.refused(h, greeting() + auth() + request("::2"),
                     ANSWER_BEFORE_CONNECT + reply(2), "not_allowed")

    def test_domain_names(self) -> None:
        """By name: refused unless the multiplexer is configured by that very name."""
        for name in (b"localhost", b"mux.example", b"", b"\xff\xfe", b"127.0.0.1.nip.io",
                     b"x" * 255):
            self.refused(Harness(self), greeting() + auth() + request(name),
                         ANSWER_BEFORE_CONNECT + reply(2), "not_allowed")
        for name in (b"evil.example", b"mux.example.evil", b"xmux.example"):
            self.refused(Harness(self, allowed=("mux.example", 8443)),
                         greeting() + auth() + request(name),
                         ANSWER_BEFORE_CONNECT + reply(2), "not_allowed")

    def test_address_for_named_mux(self) -> None:
        """A multiplexer configured by name and no addresses: requests by address fail."""
        self.refused(Harness(self, allowed=("mux.example", 8443)),
                     greeting() + auth() + request("127.0.0.1"),
                     ANSWER_BEFORE_CONNECT + reply(2), "not_allowed")

    def test_control_characters_in_log(self) -> None:
        """A name with a newline cannot forge a second log line."""
        h = Harness(self)
        self.refused(h, greeting() + auth() + request(b"a\nSOCKS5 ingress: fake"),
                     ANSWER_BEFORE_CONNECT + reply(2), "not_allowed")
        self.assertNotIn("\n", h.messages()[0])

    def test_address_type(self) -> None:
        """An undefined ATYP: reply 0x08 "address type not supported"."""
        self.refused(Harness(self), greeting() + auth() + b"\x05\x01\x00\x05",
                     ANSWER_BEFORE_CONNECT + reply(8), "address_type_not_supported")

    def test_request_version(self) -> None:
        self.refused(Harness(self), greeting() + auth() + b"\x04" + request()[1:],
                     ANSWER_BEFORE_CONNECT, "malformed")

    def test_handshake_timeout(self) -> None:
        """A client that never finishes is aborted after handshake_timeout seconds."""
        for partial in (b"", greeting()[:1], greeting(), greeting() + auth(),
                        greeting() + auth() + request()[:-1]):
            h = Harness(self, handshake_timeout=5.0)
            proto, transport = h.connect()
            proto.dataReceived(partial)
            h.clock.advance(4.9)
            self.assertFalse(transport.disconnecting)
            h.clock.advance(0.1)
            self.assertTrue(transport.disconnected)  # aborted, not flushed
            self.assertEqual(h.factory.counters, {"handshake_timeout": 1})
            self.assertEqual(len(h.events), 1)

    def test_slow_loris(self) -> None:
        """One byte a second does not keep the handshake alive: the limit is total."""
        h = Harness(self, handshake_timeout=10.0)
        proto, transport = h.connect()
        for i in range(len(HELLO) - 1):
            if transport.disconnecting:
                break
            proto.dataReceived(HELLO[i : i + 1])
            h.clock.advance(1.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.factory.counters, {"handshake_timeout": 1})

    def test_timeout_while_verifying(self) -> None:
        users = FakeUsers(later=True)
        h = Harness(self, users=users, handshake_timeout=5.0)
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        h.clock.advance(5)
        self.assertEqual(h.factory.counters, {"handshake_timeout": 1})
        lose(proto, transport)
        users.answer()
        self.assertEqual(transport.value(), b"\x05\x02")

    def test_per_user_limit(self) -> None:
        """The (max_per_user+1)th connection of one user gets 0x01; others are not affected."""
        h = Harness(self, max_per_user=2)
        conns = []
        for _ in range(2):
            proto, transport = h.connect()
            proto.dataReceived(HELLO)
            h.mux.succeed()
            conns.append((proto, transport))
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        # The password was right, and the client is told so; the request fails.
        self.assertEqual(transport.value(), ANSWER_BEFORE_CONNECT + reply(1))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.factory.counters["per_user_limit"], 1)
        self.assertEqual(len(h.mux.attempts), 2)
        lose(proto, transport)
        # Another user is not limited by alice's connections.
        proto, transport = h.connect()
        proto.dataReceived(greeting() + auth(b"bob", b"hunter2") + request())
        self.assertEqual(len(h.mux.attempts), 3)
        # Closing one of alice's frees a slot.
        lose(*conns[0])
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        self.assertEqual(len(h.mux.attempts), 4)
        self.assertEqual(h.factory.per_user[b"alice"], 2)

    def test_connection_limit(self) -> None:
        """Over max_connections a connection is aborted at once, before any byte."""
        h = Harness(self, max_connections=2)
        first = h.connect()
        h.connect()
        proto, transport = h.connect()
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(h.factory.counters, {"connection_limit": 1})
        lose(proto, transport)
        self.assertEqual(h.factory.active, 2)
        lose(*first)
        proto, transport = h.connect()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(h.factory.active, 2)

    def mux_failure(self, exc: Exception | None, code: int, reason: str) -> None:
        h = Harness(self, connect_timeout=7.0)
        proto, transport = h.connect()
        proto.dataReceived(HELLO)
        if exc is None:
            h.clock.advance(7)
        else:
            h.mux.fail(exc)
        self.assertEqual(transport.value(), ANSWER_BEFORE_CONNECT + reply(code))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.factory.counters, {reason: 1})
        self.assertEqual(len(h.events), 1)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_mux_refused(self) -> None:
        self.mux_failure(error.ConnectionRefusedError(), 5, "mux_refused")

    def test_mux_unreachable(self) -> None:
        self.mux_failure(error.NoRouteError(), 4, "mux_unreachable")
        self.mux_failure(error.TCPTimedOutError(), 4, "mux_unreachable")

    def test_mux_timeout(self) -> None:
        """No answer from the multiplexer within connect_timeout: host unreachable."""
        self.mux_failure(None, 4, "mux_timeout")

    def test_mux_other_error(self) -> None:
        self.mux_failure(OSError("boom"), 1, "mux_failed")

    def test_too_much_early_data(self) -> None:
        h = Harness(self)
        proto, transport = h.connect()
        proto.dataReceived(HELLO + b"x" * (socks._MAX_PENDING + 1))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.factory.counters, {"malformed": 1})


class ParserFuzzTests(SynchronousTestCase):
    """Arbitrary byte streams, in arbitrary pieces: never an exception."""

    prefixes = st.sampled_from(
        [b"", greeting(), greeting(b"\x00\x02"), greeting() + auth(),
         greeting() + auth(b"alice", b"wrong"), greeting() + auth() + b"\x05\x01\x00"]
    )

    def run_stream(self, data: bytes, cuts: list[int], later: bool, **kwargs: Any) -> None:
        h = Harness(self, users=FakeUsers(later=later), **kwargs)
        proto, transport = h.connect()
        pieces, last = [], 0
        for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
            pieces.append(data[last:cut])
            last = cut
        for piece in pieces:
            proto.dataReceived(piece)
        h.users.answer()
        h.clock.advance(1)
        if h.mux.attempts and not transport.disconnecting:
            mux, mux_transport = h.mux.succeed()
            proto.dataReceived(b"more")
            mux.dataReceived(b"back")
        h.clock.advance(60)
        for key in h.factory.counters:
            self.assertIn(key, REFUSAL_REASONS + ("accepted",))
        # Anything but a spliced connection has been closed by now.
        self.assertTrue(transport.disconnecting or h.factory.counters["accepted"] == 1)
        lose(proto, transport)
        self.assertEqual((h.factory.active, dict(h.factory.per_user)), (0, {}))

    @FAST
    @given(st.binary(max_size=600), st.lists(st.integers(0, 700), max_size=20), st.booleans())
    def test_arbitrary(self, data: bytes, cuts: list[int], later: bool) -> None:
        self.run_stream(data, cuts, later)

    @FAST
    @given(prefixes, st.binary(max_size=300), st.lists(st.integers(0, 700), max_size=20),
           st.booleans())
    def test_after_valid_prefix(self, prefix: bytes, rest: bytes, cuts: list[int],
                                later: bool) -> None:
        self.run_stream(prefix + rest, cuts, later)

    @FAST
    @given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=300),
           st.lists(st.integers(0, 400), max_size=10))
    def test_requests(self, cmd: int, atyp: int, rest: bytes, cuts: list[int]) -> None:
        data = greeting() + auth() + bytes((5, cmd, 0, atyp)) + rest
        self.run_stream(data, cuts, False, max_per_user=1)


class EncodingTests(SynchronousTestCase):
    """Reply encoding and the request parser on their own."""

    def test_reply_ipv6(self) -> None:
        self.assertEqual(
            socks.encode_reply(0, IPv6Address("TCP", "::1", 443)),
            b"\x05\x00\x00\x04" + b"\x00" * 15 + b"\x01\x01\xbb",
        )

    def test_reply_unknown_address(self) -> None:
        self.assertEqual(socks.encode_reply(1, None), reply(1))
        self.assertEqual(socks.encode_reply(1, HostnameAddress(b"x", 1)), reply(1))

    def test_parse_domain(self) -> None:
        parsed = socks.parse_request(request(b"mux.example", 443))
        assert parsed is not None
        self.assertEqual(parsed[1], socks.Request(1, 3, b"mux.example", 443))
        self.assertIsNone(socks.parse_request(request(b"mux.example", 443)[:-1]))


# ---------------------------------------------------------------------------
# The client endpoint


@implementer(IStreamClientEndpoint)
class PumpEndpoint:
    """Connects in memory to C{server_factory}; the test pumps with L{pump_all}."""

    def __init__(self, server_factory: IProtocolFactory, clock: Clock,
                 server_address: IPv4Address = PROXY) -> None:
        self.server_factory = server_factory
        self.clock = clock
        self.server_address = server_address
        self.pumps: list[iosim.IOPump] = []
        self.others: list[PumpEndpoint] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        client_address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.pumps))
        client = protocolFactory.buildProtocol(self.server_address)
        server = self.server_factory.buildProtocol(client_address)
        assert client is not None and server is not None
        cio = iosim.FakeTransport(client, False, client_address, self.server_address)
        sio = iosim.FakeTransport(server, True, self.server_address, client_address)
        self.pumps.append(iosim.connect(server, sio, client, cio, greet=False, clock=self.clock))
        return succeed(client)

    def pump_all(self) -> None:
        for _ in range(100):
            moved = False
            for endpoint in [self, *self.others]:
                for pump in endpoint.pumps:
                    moved = pump.pump() or moved
            if not moved:
                return


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.transport.write(data)  # type: ignore[union-attr]


class Recorder(Protocol):
    """The protocol a caller hands to the client endpoint."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.received = b""

    def connectionMade(self) -> None:  # noqa: N802
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.events.append(data)
        self.received += data

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: N802, B008
        self.events.append("lost")


class RecorderFactory(Factory):
    def __init__(self) -> None:
        self.protocols: list[Recorder] = []
        self.addresses: list[IAddress | None] = []

    def buildProtocol(self, addr: IAddress | None) -> Recorder:  # noqa: N802
        self.addresses.append(addr)
        p = Recorder()
        self.protocols.append(p)
        return p


class ClientAgainstIngressTests(SynchronousTestCase):
    """Our client endpoint through our ingress, in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        quiet = Logger(namespace="test", observer=cast(ILogObserver, lambda e: None))
        self.patch(socks, "log", quiet)
        self.mux_endpoint = PumpEndpoint(Factory.forProtocol(Echo), self.clock,
                                         IPv4Address("TCP", *MUX))
        self.ingress = SOCKS5IngressFactory(
            users=FakeUsers(), allowed=MUX, reactor=self.clock, mux_endpoint=self.mux_endpoint
        )
        self.proxy = PumpEndpoint(self.ingress, self.clock)
        self.proxy.others.append(self.mux_endpoint)

    def connect(self, host: str = "127.0.0.1", port: int = 8443,
                password: str = "secret") -> tuple[Deferred[IProtocol], RecorderFactory]:
        endpoint = SOCKS5ClientEndpoint(self.proxy, host, port, username="alice",
                                        password=password, reactor=self.clock)
        factory = RecorderFactory()
        d = endpoint.connect(factory)
        self.proxy.pump_all()
        return d, factory

    def test_connect_and_echo(self) -> None:
        d, factory = self.connect()
        proto = self.successResultOf(d)
        self.assertIs(proto, factory.protocols[0])
        self.assertEqual(factory.addresses, [HostnameAddress(b"127.0.0.1", 8443)])
        self.assertEqual(factory.protocols[0].events, ["made"])
        cast(Recorder, proto).transport.write(b"ping")  # type: ignore[union-attr]
        self.proxy.pump_all()
        self.assertEqual(factory.protocols[0].received, b"ping")
        self.assertEqual(self.ingress.counters, {"accepted": 1})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wrong_password(self) -> None:
        d, factory = self.connect(password="nope")
        e = self.failureResultOf(d, SOCKSError).value
        self.assertEqual(str(e), "the SOCKS5 proxy at 127.0.0.1:1080 rejected the username or "
                                 "password")
        self.assertEqual(factory.protocols, [])

    def test_refused_destination(self) -> None:
        d, _ = self.connect("mux.example", 8443)
        e = self.failureResultOf(d, SOCKSError).value
        self.assertEqual(
            str(e),
            "the SOCKS5 proxy at 127.0.0.1:1080 refused the destination mux.example:8443 "
            "(connection not allowed by ruleset)",
        )
        self.assertEqual(e.reply_code, 2)

    def test_refused_ipv6_destination(self) -> None:
        d, _ = self.connect("2001:db8::1", 443)
        self.assertIn("refused the destination [2001:db8::1]:443 (connection not allowed",
                      str(self.failureResultOf(d, SOCKSError).value))


class ClientScriptedTests(SynchronousTestCase):
    """The client endpoint against a proxy scripted byte by byte."""

    def start(self, host: str = "mux.example", port: int = 8443, **kwargs: Any
              ) -> tuple[Deferred[IProtocol], RecorderFactory, Protocol, StringTransport, Clock]:
        clock = Clock()
        holder: list[Protocol] = []

        @implementer(IStreamClientEndpoint)
        class Proxy:
            _host, _port = "127.0.0.1", 1080

            def connect(self, pf: IProtocolFactory) -> Deferred[IProtocol]:
                p = pf.buildProtocol(PROXY)
                assert p is not None
                holder.append(p)  # type: ignore[arg-type]
                return succeed(p)

        endpoint = SOCKS5ClientEndpoint(Proxy(), host, port, username="alice",
                                        password="secret", reactor=clock, **kwargs)
        factory = RecorderFactory()
        d = endpoint.connect(factory)
        transport = StringTransport(peerAddress=PROXY)
        holder[0].makeConnection(transport)
        return d, factory, holder[0], transport, clock

    def feed(self, proto: Protocol, data: bytes, byte_by_byte: bool) -> None:
        if byte_by_byte:
            for i in range(len(data)):
                proto.dataReceived(data[i : i + 1])
        else:
            proto.dataReceived(data)

    def test_bytes_on_the_wire(self) -> None:
        """Method 0x02 only; RFC 1929 request; CONNECT by name (ATYP 3)."""
        d, factory, proto, transport, _ = self.start()
        self.assertEqual(transport.value(), b"\x05\x01\x02")
        proto.dataReceived(b"\x05\x02")
        self.assertEqual(transport.value(), b"\x05\x01\x02" + b"\x01\x05alice\x06secret")
        transport.clear()
        proto.dataReceived(b"\x01\x00")
        self.assertEqual(transport.value(), b"\x05\x01\x00\x03\x0bmux.example\x20\xfb")
        self.assertNoResult(d)

    def test_replies_split_anyhow(self) -> None:
        """Replies with every ATYP, whole or byte by byte, with data right behind."""
        bound = {
            "ipv4": reply(0, b"\x0a\x00\x00\x01", 1234),
            "ipv6": b"\x05\x00\x00\x04" + bytes(16) + b"\x04\xd2",
            "name": b"\x05\x00\x00\x03\x04host\x04\xd2",
        }
        for label, success in bound.items():
            for bbb in (False, True):
                d, factory, proto, transport, clock = self.start()
                self.feed(proto, b"\x05\x02\x01\x00" + success + b"HTTP/1.1 200", bbb)
                p = self.successResultOf(d)
                self.assertIsInstance(p, Recorder, label)
                assert isinstance(p, Recorder)
                self.assertEqual(p.events[0], "made")
                self.assertEqual(p.received, b"HTTP/1.1 200", label)
                proto.dataReceived(b" OK")
                self.assertEqual(p.received, b"HTTP/1.1 200 OK")
                proto.connectionLost(Failure(error.ConnectionDone()))
                self.assertEqual(p.events[-1], "lost")
                self.assertEqual(clock.getDelayedCalls(), [])

    def test_no_acceptable_method(self) -> None:
        d, _, proto, transport, _ = self.start()
        proto.dataReceived(b"\x05\xff")
        self.assertEqual(
            str(self.failureResultOf(d, SOCKSError).value),
            "the SOCKS5 proxy at 127.0.0.1:1080 offers no acceptable authentication method",
        )
        self.assertTrue(transport.disconnecting)

    def test_method_not_offered(self) -> None:
        """A proxy that picks "no authentication" although we did not offer it."""
        d, _, proto, _, _ = self.start()
        proto.dataReceived(b"\x05\x00")
        self.assertIn("chose authentication method 0x00, which was not offered",
                      str(self.failureResultOf(d, SOCKSError).value))

    def test_rejected(self) -> None:
        for status in (b"\x01\x01", b"\x01\xff"):
            d, _, proto, transport, _ = self.start()
            proto.dataReceived(b"\x05\x02" + status)
            self.assertEqual(
                str(self.failureResultOf(d, SOCKSError).value),
                "the SOCKS5 proxy at 127.0.0.1:1080 rejected the username or password",
            )
            self.assertTrue(transport.disconnecting)

    def test_every_refusal_code(self) -> None:
        for code, text in socks.REPLY_TEXT.items():
            if code == 0:
                continue
            d, _, proto, _, _ = self.start()
            proto.dataReceived(b"\x05\x02\x01\x00" + reply(code))
            e = self.failureResultOf(d, SOCKSError).value
            self.assertEqual(str(e), "the SOCKS5 proxy at 127.0.0.1:1080 refused the "
                                     f"destination mux.example:8443 ({text})")
            self.assertEqual(e.reply_code, code)
        d, _, proto, _, _ = self.start()
        proto.dataReceived(b"\x05\x02\x01\x00" + reply(0x42))
        self.assertIn("(reply code 66)", str(self.failureResultOf(d, SOCKSError).value))

    def test_short_refusal_then_close(self) -> None:
        """A proxy that sends only the start of a refusal and closes."""
        d, _, proto, _, _ = self.start()
        proto.dataReceived(b"\x05\x02\x01\x00\x05\x05")
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertIn("(connection refused)", str(self.failureResultOf(d, SOCKSError).value))

    def test_malformed(self) -> None:
        for data in (b"\x04\x02", b"\x05\x80", b"\x05\x02\x01\x00\x05\x00\x00\x09"):
            d, _, proto, _, _ = self.start()
            proto.dataReceived(data)
            self.assertEqual(str(self.failureResultOf(d, SOCKSError).value),
                             "the SOCKS5 proxy at 127.0.0.1:1080 sent a malformed reply")

    def test_closed_during_handshake(self) -> None:
        d, _, proto, _, _ = self.start()
        proto.dataReceived(b"\x05\x02")
        proto.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(
            str(self.failureResultOf(d, SOCKSError).value),
            "the SOCKS5 proxy at 127.0.0.1:1080 closed the connection during the handshake",
        )

    def test_timeout(self) -> None:
        d, _, proto, transport, clock = self.start(timeout=5.0)
        proto.dataReceived(b"\x05\x02")
        clock.advance(5)
        self.assertEqual(
            str(self.failureResultOf(d, SOCKSError).value),
            "the SOCKS5 proxy at 127.0.0.1:1080 did not complete the handshake within 5 s",
        )
        self.assertTrue(transport.disconnected)

    def test_cancel(self) -> None:
        d, _, proto, transport, clock = self.start()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(transport.disconnected)
        proto.connectionLost(Failure(error.ConnectionAborted()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_proxy_unreachable(self) -> None:
        """A proxy that cannot be reached: the sentence names it."""
        reactor = MemoryReactorClock()
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", 1080)
        endpoint = SOCKS5ClientEndpoint(proxy, "mux.example", 8443, username="alice",
                                        password="secret", reactor=reactor)
        d = endpoint.connect(RecorderFactory())
        iosim.ConnectionCompleter(reactor).failOnce(Failure(error.ConnectionRefusedError()))
        self.assertEqual(
            str(self.failureResultOf(d, SOCKSError).value),
            "cannot connect to the SOCKS5 proxy at 127.0.0.1:1080: Connection was refused by "
            "other side.",
        )

    def test_cancel_while_reaching_proxy(self) -> None:
        reactor = MemoryReactorClock()
        proxy = TCP4ClientEndpoint(reactor, "127.0.0.1", 1080)
        endpoint = SOCKS5ClientEndpoint(proxy, "mux.example", 8443, username="alice",
                                        password="secret", reactor=reactor)
        d = endpoint.connect(RecorderFactory())
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_proxy_endpoint_fails(self) -> None:
        @implementer(IStreamClientEndpoint)
        class Broken:
            def connect(self, pf: IProtocolFactory) -> Deferred[IProtocol]:
                return fail(error.DNSLookupError("proxy.example"))

        endpoint = SOCKS5ClientEndpoint(Broken(), "mux.example", 8443, username="a",
                                        password="b", reactor=Clock())
        e = self.failureResultOf(endpoint.connect(RecorderFactory()), SOCKSError).value
        self.assertTrue(str(e).startswith("cannot connect to the SOCKS5 proxy at ?: "), str(e))

    @FAST
    @given(st.binary(max_size=120), st.lists(st.integers(0, 130), max_size=12), st.booleans())
    def test_fuzz_replies(self, data: bytes, cuts: list[int], close: bool) -> None:
        """Arbitrary proxy replies: a result or a SOCKSError, never anything else."""
        d, factory, proto, transport, clock = self.start()
        last = 0
        for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
            proto.dataReceived(data[last:cut])
            last = cut
        if close:
            proto.connectionLost(Failure(error.ConnectionDone()))
        clock.advance(60)
        result: list[Any] = []
        d.addBoth(result.append)
        self.assertEqual(len(result), 1)
        if isinstance(result[0], Failure):
            self.assertIsInstance(result[0].value, SOCKSError)
        else:
            self.assertIs(result[0], factory.protocols[0])

    def test_validation(self) -> None:
        proxy = TCP4ClientEndpoint(Clock(), "127.0.0.1", 1080)  # type: ignore[arg-type]
        for kwargs in ({"username": "", "password": "x"}, {"username": "x", "password": ""},
                       {"username": "u" * 256, "password": "x"},
                       {"username": "x", "password": "é" * 128}):
            self.assertRaises(ValueError, SOCKS5ClientEndpoint, proxy, "mux.example", 1,
                              reactor=Clock(), **kwargs)
        self.assertRaises(ValueError, SOCKS5ClientEndpoint, proxy, "mux.example", 0,
                          username="u", password="p", reactor=Clock())
        self.assertRaises(ValueError, SOCKS5ClientEndpoint, proxy, "a" * 256, 1,
                          username="u", password="p", reactor=Clock())

    def test_interface_and_repr(self) -> None:
        proxy = TCP4ClientEndpoint(Clock(), "127.0.0.1", 1080)  # type: ignore[arg-type]
        endpoint = SOCKS5ClientEndpoint(proxy, "mux.example", 8443, username="alice",
                                        password="topsecret", reactor=Clock())
        self.assertTrue(verifyObject(IStreamClientEndpoint, endpoint))
        self.assertNotIn("topsecret", repr(endpoint))
        self.assertIn("mux.example:8443", repr(endpoint))


# ---------------------------------------------------------------------------
# The service and the threaded verifier


class ServiceTests(SynchronousTestCase):
    def test_listens(self) -> None:
        reactor = MemoryReactorClock()
        service = make_ingress_service(listen="127.0.0.1", port=1080, users=FakeUsers(),
                                       allowed=MUX, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port, factory, _, interface = reactor.tcpServers[0]
        self.assertEqual((port, interface), (1080, "127.0.0.1"))
        self.assertIsInstance(factory, SOCKS5IngressFactory)
        self.assertIs(service.factory, factory)
        self.assertIsInstance(cast(SOCKS5IngressFactory, factory).users, ThreadedVerifier)
        self.assertEqual(service.name, "socks5-ingress")

    def test_ipv6_and_direct(self) -> None:
        reactor = MemoryReactorClock()
        users = FakeUsers()
        service = make_ingress_service(listen="::1", port=1080, users=users, allowed=MUX,
                                       reactor=reactor, verify_in_thread=False)
        self.assertIsInstance(service.endpoint, TCP6ServerEndpoint)
        self.assertIs(cast(SOCKS5IngressFactory, service.factory).users, users)

    def test_bad_allowed(self) -> None:
        """A port out of range or a wildcard address is refused at construction."""
        for allowed in (("127.0.0.1", 0), ("127.0.0.1", 65536), ("0.0.0.0", 8443),
                        ("::", 8443)):
            self.assertRaises(ValueError, SOCKS5IngressFactory, users=FakeUsers(),
                              allowed=allowed, reactor=Clock())

    def test_threaded_verifier(self) -> None:
        """The check runs through the reactor's thread pool."""
        ran: list[str] = []

        class Pool:
            def callInThreadWithCallback(self, onResult: Any, f: Any, *a: Any) -> None:  # noqa: N802, N803
                ran.append("pool")
                onResult(True, f(*a))

        class Reactor:
            def getThreadPool(self) -> Pool:  # noqa: N802
                return Pool()

            def callFromThread(self, f: Any, *a: Any) -> None:  # noqa: N802
                f(*a)

        verifier = ThreadedVerifier(FakeUsers(), Reactor())
        self.assertTrue(self.successResultOf(verifier.verify(b"alice", b"secret")))
        self.assertFalse(self.successResultOf(verifier.verify(b"alice", b"x")))
        self.assertEqual(ran, ["pool", "pool"])


# ---------------------------------------------------------------------------
# The user store


class UserStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp()) / "state" / "mux.sqlite"
        self.store = UserStore(self.path)
        self.addCleanup(self.store.close)

    def test_add_verify_remove_list(self) -> None:
        self.store.add("alice", "secret")
        self.store.add("bob", b"hunter2")
        self.assertTrue(self.store.verify("alice", "secret"))
        self.assertTrue(self.store.verify(b"alice", b"secret"))
        self.assertTrue(self.store.verify("bob", "hunter2"))
        self.assertFalse(self.store.verify("alice", "Secret"))
        self.assertFalse(self.store.verify("alice", "hunter2"))
        self.assertFalse(self.store.verify("carol", "secret"))
        self.assertEqual([n for n, _ in self.store.list()], ["alice", "bob"])
        self.store.remove("alice")
        self.assertFalse(self.store.verify("alice", "secret"))
        self.assertEqual([n for n, _ in self.store.list()], ["bob"])

    def test_persists(self) -> None:
        self.store.add("alice", "secret")
        again = UserStore(self.path)
        self.addCleanup(again.close)
        self.assertTrue(again.verify("alice", "secret"))

    def test_created(self) -> None:
        self.patch(time, "time", lambda: 1_700_000_000.5)
        self.store.add("alice", "pw")
        self.assertEqual(self.store.list(), [("alice", 1_700_000_000.5)])

    def test_file_mode(self) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.path.parent).st_mode) & 0o077, 0)

    def test_hash_format(self) -> None:
        """scrypt$N$r$p$salt$hash with N=2**14, r=8, p=1 and a 16-byte random salt."""
        self.store.add("alice", "secret")
        self.store.add("bob", "secret")
        rows = dict(self.store._db.execute("SELECT name, hash FROM socks_users").fetchall())
        parts = rows["alice"].split("$")
        self.assertEqual(parts[:4], ["scrypt", "16384", "8", "1"])
        salt, digest = base64.b64decode(parts[4]), base64.b64decode(parts[5])
        self.assertEqual(len(salt), 16)
        self.assertEqual(
            digest, hashlib.scrypt(b"secret", salt=salt, n=2**14, r=8, p=1, dklen=len(digest))
        )
        self.assertNotEqual(rows["alice"], rows["bob"])  # salted
        self.assertNotIn("secret", rows["alice"])

    def test_other_parameters(self) -> None:
        """A hash with other (stored) parameters still verifies: they are self-described."""
        salt = b"0123456789abcdef"
        digest = hashlib.scrypt(b"pw", salt=salt, n=2**10, r=4, p=2, dklen=32)
        stored = f"scrypt$1024$4$2${base64.b64encode(salt).decode()}$" \
                 f"{base64.b64encode(digest).decode()}"
        self.store._db.execute("INSERT INTO socks_users VALUES ('old', ?, 0, 0)", (stored,))
        self.assertTrue(self.store.verify("old", "pw"))
        self.assertFalse(self.store.verify("old", "px"))

    def test_refusals(self) -> None:
        self.store.add("alice", "secret")
        cases: list[tuple[str, str | bytes, str]] = [
            ("alice", "other", "already exists"),
            ("", "pw", "cannot be empty"),
            ("x" * 256, "pw", "at most 255 bytes"),
            ("é" * 128, "pw", "at most 255 bytes"),
            ("a\nb", "pw", "control characters"),
            ("carol", "", "cannot be empty"),
            ("carol", "p" * 256, "at most 255 bytes"),
        ]
        for name, password, text in cases:
            e = self.assertRaises(UserStoreError, self.store.add, name, password)
            self.assertIn(text, str(e))
        self.store.add("x" * 255, "p" * 255)
        self.assertTrue(self.store.verify("x" * 255, "p" * 255))
        e = self.assertRaises(UserStoreError, self.store.remove, "carol")
        self.assertEqual(str(e), "there is no SOCKS user 'carol'")

    def counting_scrypt(self) -> list[bytes]:
        calls: list[bytes] = []
        real = hashlib.scrypt

        def scrypt(password: bytes, **kw: Any) -> bytes:
            calls.append(kw["salt"])
            return real(password, **kw)

        self.patch(hashlib, "scrypt", scrypt)
        return calls

    def test_constant_time_unknown(self) -> None:
        """An unknown user costs one scrypt run too, and a compare_digest."""
        self.store.add("alice", "secret")
        calls = self.counting_scrypt()
        compared: list[int] = []
        real_compare = hmac.compare_digest

        def compare(a: bytes, b: bytes) -> bool:
            compared.append(len(a))
            return real_compare(a, b)

        self.patch(hmac, "compare_digest", compare)
        for name in ("carol", b"\xff\xfe", "alice"):
            self.assertFalse(self.store.verify(name, "wrong"))
        self.assertTrue(self.store.verify("alice", "secret"))
        self.assertEqual(len(calls), 4)
        self.assertEqual(compared, [32, 32, 32, 32])
        # The unknown names were checked against the same dummy salt.
        self.assertEqual(calls[0], calls[1])
        self.assertNotEqual(calls[0], calls[2])

    def test_disabled_and_damaged(self) -> None:
        """A disabled user or an unreadable hash: refused, after a full scrypt run."""
        self.store.add("alice", "secret")
        self.store.add("bob", "secret")
        self.store._db.execute("UPDATE socks_users SET disabled = 1 WHERE name = 'alice'")
        self.store._db.execute("UPDATE socks_users SET hash = 'md5$x' WHERE name = 'bob'")
        self.store._db.execute(
            "INSERT INTO socks_users VALUES ('huge', 'scrypt$1073741824$8$1$AAAA$AAAA', 0, 0)"
        )
        calls = self.counting_scrypt()
        for name in ("alice", "bob", "huge"):
            self.assertFalse(self.store.verify(name, "secret"))
        self.assertEqual(len(calls), 3)

    def test_open_failure(self) -> None:
        from smobility.store.sqlite import StoreError

        blocker = Path(self.mktemp())
        blocker.write_text("a file, not a directory")
        self.assertRaises(StoreError, UserStore, blocker / "mux.sqlite")

    def test_shares_the_state_database(self) -> None:
        """The table lives beside the home agent's tables in the same file."""
        from smobility.store.sqlite import SQLiteStore

        other = SQLiteStore(self.path)
        self.addCleanup(other.close)
        self.store.add("alice", "secret")
        self.assertEqual(other.load_bindings(), [])
        self.assertTrue(self.store.verify("alice", "secret"))


# ---------------------------------------------------------------------------
# smobility-ctl socks-users


class CtlTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = str(Path(self.mktemp()) / "mux.sqlite")

    @contextlib.contextmanager
    def captured(self, stdin: str = "") -> Iterator[tuple[io.StringIO, io.StringIO]]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", io.StringIO(stdin))
        yield out, err

    def run_ctl(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        with self.captured(stdin) as (out, err):
            code = ctl_main(["socks-users", *argv])
        return code, out.getvalue(), err.getvalue()

    def verify(self, name: str, password: str) -> bool:
        store = UserStore(self.db)
        try:
            return store.verify(name, password)
        finally:
            store.close()

    def test_add_from_file(self) -> None:
        f = Path(self.mktemp())
        f.write_text("pa ss\nignored\n")
        self.assertEqual(self.run_ctl("add", "alice", "--db", self.db, "--password-file", str(f)),
                         (0, "added SOCKS user alice\n", ""))
        self.assertTrue(self.verify("alice", "pa ss"))

    def test_add_from_stdin(self) -> None:
        code, out, _ = self.run_ctl("add", "alice", "--password-stdin", "--db", self.db,
                                    stdin="s3cret\r\n")
        self.assertEqual(code, 0)
        self.assertTrue(self.verify("alice", "s3cret"))
        self.assertNotIn("s3cret", out)

    def test_add_prompted(self) -> None:
        answers = iter(["pw-1", "pw-1"])
        prompts: list[str] = []

        def fake_getpass(prompt: str = "") -> str:
            prompts.append(prompt)
            return next(answers)

        self.patch(ctl_socks.getpass, "getpass", fake_getpass)
        self.assertEqual(self.run_ctl("add", "alice", "--db", self.db)[0], 0)
        self.assertEqual(len(prompts), 2)
        self.assertTrue(self.verify("alice", "pw-1"))

    def test_add_prompted_mismatch(self) -> None:
        answers = iter(["pw-1", "pw-2"])
        self.patch(ctl_socks.getpass, "getpass", lambda prompt="": next(answers))
        code, out, err = self.run_ctl("add", "alice", "--db", self.db)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "smobility-ctl: the two passwords differ; nothing was changed\n")
        self.assertEqual(self.run_ctl("list", "--db", self.db)[1], "no SOCKS users\n")

    def test_add_failures(self) -> None:
        self.run_ctl("add", "alice", "--password-stdin", "--db", self.db, stdin="pw\n")
        cases = [
            (("add", "alice", "--password-stdin"), "pw2\n",
             "smobility-ctl: the SOCKS user 'alice' already exists\n"),
            (("add", "bob", "--password-stdin"), "\n",
             "smobility-ctl: the password cannot be empty\n"),
            (("add", "b" * 256, "--password-stdin"), "pw\n",
             "smobility-ctl: a SOCKS user name is at most 255 bytes (RFC 1929); this one has "
             "256\n"),
            (("add", "bob", "--password-file", "/nonexistent/pw"), "",
             "smobility-ctl: cannot read the password file /nonexistent/pw: No such file or "
             "directory\n"),
            (("remove", "bob"), "", "smobility-ctl: there is no SOCKS user 'bob'\n"),
        ]
        for argv, stdin, message in cases:
            self.assertEqual(self.run_ctl(*argv, "--db", self.db, stdin=stdin),
                             (1, "", message))

    def test_list_and_remove(self) -> None:
        self.patch(time, "time", lambda: 1_700_000_000.0)
        for name in ("bob", "alice"):
            self.run_ctl("add", name, "--password-stdin", "--db", self.db, stdin="pw\n")
        self.assertEqual(
            self.run_ctl("list", "--db", self.db),
            (0, "alice\t2023-11-14T22:13:20Z\nbob\t2023-11-14T22:13:20Z\n", ""),
        )
        code, out, _ = self.run_ctl("list", "--json", "--db", self.db)
        self.assertEqual(json.loads(out), [{"name": "alice", "created": "2023-11-14T22:13:20Z"},
                                           {"name": "bob", "created": "2023-11-14T22:13:20Z"}])
        self.assertEqual(self.run_ctl("remove", "alice", "--db", self.db),
                         (0, "removed SOCKS user alice\n", ""))
        self.assertEqual(self.run_ctl("list", "--db", self.db)[1], "bob\t2023-11-14T22:13:20Z\n")

    def test_usage(self) -> None:
        """--db is required; --password-file and --password-stdin exclude each other."""
        for argv in (("list",), ("add", "alice", "--password-stdin"),
                     ("add", "a", "--db", "x", "--password-stdin", "--password-file", "f"),
                     ("remove", "--db", "x"), ()):
            with self.captured():
                e = self.assertRaises(SystemExit, ctl_main, ["socks-users", *argv])
            self.assertEqual(e.code, 2, argv)

    def test_database_mode(self) -> None:
        self.run_ctl("add", "alice", "--password-stdin", "--db", self.db, stdin="pw\n")
        self.assertEqual(stat.S_IMODE(os.stat(self.db).st_mode), 0o600)
