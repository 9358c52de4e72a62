# -*- test-case-name: tests.test_manhole -*-
"""
Tests for L{smobility.adapters.manhole}: refusals, host key handling, the
public-key checker, and a real OpenSSH client logging in to the console.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh import keys
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, protocol, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smobility.adapters.manhole import (
    AuthorizedKeysFile,
    ManholeError,
    _LoggingPublicKeyChecker,
    _ManholeSession,
    fingerprint,
    load_host_key,
    make_manhole_service,
)
from tests.util import skip_or_fail

SSH = "/usr/bin/ssh"


def _new_client_key(kind: str = "ed25519") -> tuple[bytes, bytes]:
    """A fresh key pair, ed25519 or rsa: (OpenSSH private key, public key line)."""
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    private_text = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_line = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private_text, public_line


def _messages(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


class _Files:
    """Per-test paths in a fresh temporary directory."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.root = Path(case.mktemp()).absolute()
        self.root.mkdir()
        self.authorized_keys = self.root / "authorized_keys"
        self.host_key = self.root / "hostkeys" / "manhole_host_key"

    def authorize(self, *lines: bytes) -> None:
        self.authorized_keys.write_bytes(b"".join(line + b"\n" for line in lines))
        self.authorized_keys.chmod(0o600)


class RefusalTests(SynchronousTestCase):
    """
    The console refuses to start, with one sentence naming what is wrong,
    when it could not be safe.
    """

    def setUp(self) -> None:
        self.files = _Files(self)
        self.files.authorize(_new_client_key()[1] + b" admin@example")

    def make(self, listen: str = "127.0.0.1", port: int = 2222) -> Any:
        return make_manhole_service(
            listen=listen,
            port=port,
            authorized_keys=self.files.authorized_keys,
            host_key=self.files.host_key,
            namespace={},
            reactor=MemoryReactor(),
        )

    def test_non_loopback_listen(self) -> None:
        """Any address outside 127.0.0.0/8 and ::1 is refused."""
        for listen in ("0.0.0.0", "192.0.2.7", "::", "2001:db8::1", "::ffff:127.0.0.1"):
            with self.assertRaises(ManholeError) as caught:
                self.make(listen=listen)
            self.assertIn(listen, str(caught.exception))
            self.assertIn("loopback", str(caught.exception))

    def test_hostname_listen(self) -> None:
        """A name, even C{localhost}, is refused: it could resolve anywhere."""
        with self.assertRaises(ManholeError) as caught:
            self.make(listen="localhost")
        self.assertIn("'localhost'", str(caught.exception))

    def test_bad_port(self) -> None:
        """The port must be a TCP port number."""
        for port in (-1, 65536):
            self.assertRaises(ManholeError, self.make, port=port)

    def test_missing_authorized_keys(self) -> None:
        """No authorized_keys file: no console, and the path is named."""
        self.files.authorized_keys.unlink()
        with self.assertRaises(ManholeError) as caught:
            self.make()
        self.assertIn(str(self.files.authorized_keys), str(caught.exception))
        self.assertIn("does not exist", str(caught.exception))

    def test_authorized_keys_not_a_file(self) -> None:
        """A directory in place of the key file is refused."""
        self.files.authorized_keys.unlink()
        self.files.authorized_keys.mkdir()
        with self.assertRaises(ManholeError) as caught:
            self.make()
        self.assertIn("not a regular file", str(caught.exception))

    def test_empty_authorized_keys(self) -> None:
        """An empty file, or one with only comments, holds no key."""
        for content in (b"", b"# nobody yet\n\n"):
            self.files.authorized_keys.write_bytes(content)
            with self.assertRaises(ManholeError) as caught:
                self.make()
            self.assertIn(str(self.files.authorized_keys), str(caught.exception))
            self.assertIn("no valid public key", str(caught.exception))

    def test_garbage_authorized_keys(self) -> None:
        """
        Lines that are not plain public keys count for nothing, and what they
        hold is never logged (it may be a private key pasted by mistake).
        """
        private_text, public_line = _new_client_key()
        self.files.authorized_keys.write_bytes(
            b"zzjunkzz\nssh-ed25519 AAAA\n"
            + b'from="10.0.0.1" '
            + public_line
            + b"\n"
            + private_text
        )
        with capturedLogs() as events:
            self.assertRaises(ManholeError, self.make)
        text = "\n".join(_messages(events))
        self.assertIn("line(s) 1, 2, 3, 4,", text)
        self.assertNotIn("zzjunkzz", text)
        self.assertNotIn(public_line.split()[1].decode(), text)
        self.assertNotIn("OPENSSH", text)

    def test_group_writable_authorized_keys_warns(self) -> None:
        """A key file others can write is used, with a warning."""
        self.files.authorized_keys.chmod(0o664)
        with capturedLogs() as events:
            self.make()
        self.assertTrue(any("writable by group or others" in m for m in _messages(events)))

    def test_loopback_addresses_accepted(self) -> None:
        """Any 127/8 address and ::1 are accepted, each on its own family."""
        for listen in ("127.0.0.1", "127.3.2.1", "::1"):
            reactor = MemoryReactor()
            service = make_manhole_service(
                listen=listen,
                port=2222,
                authorized_keys=self.files.authorized_keys,
                host_key=self.files.host_key,
                namespace={},
                reactor=reactor,
            )
            service.startService()
            [(port, _factory, _backlog, interface)] = reactor.tcpServers
            self.assertEqual((port, interface), (2222, listen))
            service.stopService()


class HostKeyTests(SynchronousTestCase):
    """The host key is generated once, private, and reused."""

    def setUp(self) -> None:
        self.files = _Files(self)

    def test_generated_private(self) -> None:
        """A missing host key is generated: mode 0600, in a 0700 directory."""
        with capturedLogs() as events:
            key = load_host_key(self.files.host_key)
        self.assertFalse(key.isPublic())
        self.assertEqual(key.sshType(), b"ecdsa-sha2-nistp256")
        mode = stat.S_IMODE(self.files.host_key.stat().st_mode)
        self.assertEqual(mode, 0o600)
        dir_mode = stat.S_IMODE(self.files.host_key.parent.stat().st_mode)
        self.assertEqual(dir_mode & 0o077, 0)
        self.assertTrue(
            self.files.host_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        )
        self.assertTrue(any(fingerprint(key) in m for m in _messages(events)))

    def test_reused(self) -> None:
        """An existing host key is loaded, not replaced."""
        first = load_host_key(self.files.host_key)
        content = self.files.host_key.read_bytes()
        second = load_host_key(self.files.host_key)
        self.assertEqual(first, second)
        self.assertEqual(self.files.host_key.read_bytes(), content)

    def test_existing_key_of_another_type(self) -> None:
        """An administrator's own ed25519 host key is used as it is."""
        self.files.host_key.parent.mkdir()
        self.files.host_key.write_bytes(_new_client_key()[0])
        self.files.host_key.chmod(0o600)
        self.assertEqual(load_host_key(self.files.host_key).sshType(), b"ssh-ed25519")

    def test_unusable(self) -> None:
        """A host key file that is garbage or a public key is refused."""
        self.files.host_key.parent.mkdir()
        for content in (b"not a key\n", _new_client_key()[1] + b"\n"):
            self.files.host_key.write_bytes(content)
            with self.assertRaises(ManholeError) as caught:
                load_host_key(self.files.host_key)
            self.assertIn(str(self.files.host_key), str(caught.exception))


class CheckerTests(SynchronousTestCase):
    """The public-key checker over the one authorized_keys file."""

    def setUp(self) -> None:
        self.files = _Files(self)
        self.private_text, self.public_line = _new_client_key()
        self.key = keys.Key.fromString(self.private_text)
        self.files.authorize(self.public_line + b" admin@example")
        self.checker = _LoggingPublicKeyChecker(AuthorizedKeysFile(self.files.authorized_keys))

    def credentials(
        self,
        key: keys.Key,
        signed: bool = True,
        username: bytes = b"anyone",
        algorithm: bytes | None = None,
    ) -> Any:
        algorithm = algorithm or key.sshType()
        sig_data = b"session-data"
        signature = key.sign(sig_data, signatureType=algorithm) if signed else None
        return SSHPrivateKey(username, algorithm, key.public().blob(), sig_data, signature)

    def result(self, credentials: Any) -> Any:
        d = self.checker.requestAvatarId(credentials)
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        self.assertEqual(len(outcome), 1)
        return outcome[0]

    def test_accepts_any_username(self) -> None:
        """A listed key logs in under any username, which is logged with the fingerprint."""
        with capturedLogs() as events:
            self.assertEqual(self.result(self.credentials(self.key, username=b"ops")), b"ops")
        text = "\n".join(_messages(events))
        self.assertIn("accepted for ops", text)
        self.assertIn(fingerprint(self.key), text)
        self.assertNotIn(self.public_line.split()[1].decode(), text)

    def test_query_for_listed_key(self) -> None:
        """An unsigned query for a listed key is answered 'go ahead and sign'."""
        outcome = self.result(self.credentials(self.key, signed=False))
        self.assertIsInstance(outcome, Failure)
        outcome.trap(ValidPublicKey)

    def test_unlisted_key_refused(self) -> None:
        """A key not in the file is refused, even before it signs, and logged."""
        other = keys.Key.fromString(_new_client_key()[0])
        for signed in (False, True):
            with capturedLogs() as events:
                outcome = self.result(self.credentials(other, signed=signed))
            outcome.trap(UnauthorizedLogin)
            text = "\n".join(_messages(events))
            self.assertIn("refused for anyone", text)
            self.assertIn(fingerprint(other), text)

    def test_bad_signature_refused(self) -> None:
        """A listed key with a forged signature is refused."""
        credentials = self.credentials(self.key)
        credentials.signature = keys.Key.fromString(_new_client_key()[0]).sign(b"session-data")
        self.result(credentials).trap(UnauthorizedLogin)

    def test_rsa_signature_algorithms(self) -> None:
        """RSA keys log in with SHA-2 signatures, never with SHA-1 ones."""
        rsa_private, rsa_public = _new_client_key("rsa")
        rsa_key = keys.Key.fromString(rsa_private)
        self.files.authorize(rsa_public)
        for algorithm in (b"rsa-sha2-256", b"rsa-sha2-512"):
            self.assertEqual(self.result(self.credentials(rsa_key, algorithm=algorithm)), b"anyone")
        for signed in (False, True):
            with capturedLogs() as events:
                outcome = self.result(self.credentials(rsa_key, signed, algorithm=b"ssh-rsa"))
            outcome.trap(UnauthorizedLogin)
            self.assertTrue(any("algorithm not accepted" in m for m in _messages(events)))

    def test_signature_must_match_announced_algorithm(self) -> None:
        """A signature of another algorithm than the one announced is refused."""
        rsa_private, rsa_public = _new_client_key("rsa")
        rsa_key = keys.Key.fromString(rsa_private)
        self.files.authorize(rsa_public)
        credentials = self.credentials(rsa_key, algorithm=b"rsa-sha2-256")
        credentials.signature = rsa_key.sign(credentials.sigData, signatureType=b"ssh-rsa")
        self.result(credentials).trap(UnauthorizedLogin)

    def test_file_reread_at_each_login(self) -> None:
        """Adding or removing a key takes effect at the next login."""
        other = keys.Key.fromString(_new_client_key()[0])
        self.result(self.credentials(other)).trap(UnauthorizedLogin)
        self.files.authorize(self.public_line, other.public().toString("openssh"))
        self.assertEqual(self.result(self.credentials(other)), b"anyone")
        self.files.authorize(other.public().toString("openssh"))
        self.result(self.credentials(self.key)).trap(UnauthorizedLogin)

    def test_file_gone_grants_nothing(self) -> None:
        """If the file disappears, nobody logs in, and the failure is logged."""
        self.files.authorized_keys.unlink()
        with capturedLogs() as events:
            self.result(self.credentials(self.key)).trap(UnauthorizedLogin)
        self.assertTrue(any("cannot read authorized keys" in m for m in _messages(events)))
        self.flushLoggedErrors()


class _FakeTerminalProtocol:
    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def terminalSize(self, width: int, height: int) -> None:
        self.sizes.append((width, height))


class _FakeTerminal:
    def __init__(self) -> None:
        self.terminalProtocol = _FakeTerminalProtocol()
        self.lost = False

    def loseConnection(self) -> None:
        self.lost = True


class SessionTests(SynchronousTestCase):
    """The terminal session handles what Twisted's leaves unimplemented."""

    def test_window_changed(self) -> None:
        """A window resize reaches the console as width and height."""
        session = _ManholeSession(object())
        terminal = _FakeTerminal()
        session._terminal = terminal
        session.windowChanged((40, 132, 0, 0))
        self.assertEqual(terminal.terminalProtocol.sizes, [(132, 40)])

    def test_eof_received(self) -> None:
        """The end of the client's input ends the console."""
        session = _ManholeSession(object())
        terminal = _FakeTerminal()
        session._terminal = terminal
        session.eofReceived()
        self.assertTrue(terminal.lost)

    def test_before_shell(self) -> None:
        """Resize and end of input before a shell is open do nothing."""
        session = _ManholeSession(object())
        session.windowChanged((24, 80, 0, 0))
        session.eofReceived()


class _SSHProcess(protocol.ProcessProtocol):
    """Collects an ssh client's output; lets a test wait for some of it."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.exit_code: int | None = None
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self._waiting: list[tuple[bytes, int, defer.Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.out += data
        still: list[tuple[bytes, int, defer.Deferred[None]]] = []
        for needle, start, d in self._waiting:
            if needle in self.out[start:]:
                d.callback(None)
            else:
                still.append((needle, start, d))
        self._waiting = still

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.ended.callback(self.exit_code)
        for _needle, _start, d in self._waiting:
            d.errback(AssertionError(f"ssh ended first; stdout {self.out!r}, stderr {self.err!r}"))
        self._waiting = []

    def wait_for(self, needle: bytes, start: int) -> defer.Deferred[None]:
        """Fire once C{needle} appears in the output after offset C{start}."""
        d: defer.Deferred[None] = defer.Deferred()
        if needle in self.out[start:]:
            d.callback(None)
        elif self.ended.called:
            d.errback(AssertionError(f"ssh ended; stdout {self.out!r}, stderr {self.err!r}"))
        else:
            self._waiting.append((needle, start, d))
        return d


class OpenSSHClientTests(TestCase):
    """
    The real OpenSSH client, an independent implementation, logs in to the
    console on loopback with a listed key and is refused with another.
    """

    timeout = 20

    def setUp(self) -> None:
        if not os.path.exists(SSH):
            skip_or_fail(self, f"needs the OpenSSH client {SSH} (not installed)")
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.files = _Files(self)
        self.home = self.files.root / "home"
        self.home.mkdir(mode=0o700)
        self.client_private, client_public = _new_client_key()
        self.files.authorize(b"# the lab administrator", client_public + b" admin@lab")
        self.live: list[int] = []
        self.marker = "marker-" + os.urandom(8).hex()
        self.service = make_manhole_service(
            listen="127.0.0.1",
            port=0,
            authorized_keys=self.files.authorized_keys,
            host_key=self.files.host_key,
            namespace={"marker_value": self.marker, "live": self.live},
            reactor=self.reactor,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        address = self.service.listeningAddress()
        assert isinstance(address, IPv4Address)
        self.port: int = address.port

    def write_key(self, name: str, private_text: bytes) -> Path:
        path = self.files.root / name
        path.write_bytes(private_text)
        path.chmod(0o600)
        return path

    def spawn_ssh(self, key_file: Path, *options: str) -> _SSHProcess:
        """Start ssh to the console; the test ends it if it is still running."""
        proto = _SSHProcess()
        args = [
            SSH,
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-e",
            "none",
            *options,
            "-i",
            str(key_file),
            "-p",
            str(self.port),
            "-tt",
            "admin@127.0.0.1",
        ]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C"}
        transport = self.reactor.spawnProcess(proto, SSH, args, env=env)

        def reap() -> defer.Deferred[int | None] | None:
            if proto.ended.called:
                return None
            transport.signalProcess("KILL")
            return proto.ended

        self.addCleanup(reap)
        return proto

    @defer.inlineCallbacks
    def test_login_and_evaluate(self) -> Generator[defer.Deferred[Any], Any, None]:
        """
        With a listed key, ssh gets the Python console: it reads a value from
        the namespace, changes a live object, and leaves with ^D.  The host key
        it checks is the one on disk.
        """
        host_public = load_host_key(self.files.host_key).public().toString("openssh")
        known_hosts = self.files.root / "known_hosts"
        known_hosts.write_bytes(f"[127.0.0.1]:{self.port} ".encode() + host_public + b"\n")
        ssh = self.spawn_ssh(
            self.write_key("client_key", self.client_private),
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
        )
        transport = ssh.transport
        assert transport is not None

        yield ssh.wait_for(b">>> ", 0)
        mark = len(ssh.out)
        transport.write(b"print(marker_value)\r")
        yield ssh.wait_for(self.marker.encode(), mark)
        yield ssh.wait_for(b">>> ", mark)

        mark = len(ssh.out)
        transport.write(b"live.append(42)\r")
        yield ssh.wait_for(b">>> ", mark)
        self.assertEqual(self.live, [42])

        transport.write(b"\x04")
        exit_code = yield ssh.ended
        self.assertEqual(exit_code, 0, ssh.err)

    @defer.inlineCallbacks
    def test_end_of_input_ends_session(self) -> Generator[defer.Deferred[Any], Any, None]:
        """Closing ssh's input ends the session cleanly (no server error)."""
        ssh = self.spawn_ssh(
            self.write_key("client_key", self.client_private),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        )
        transport = ssh.transport
        assert transport is not None
        yield ssh.wait_for(b">>> ", 0)
        transport.closeStdin()
        exit_code = yield ssh.ended
        self.assertEqual(exit_code, 0, ssh.err)

    @defer.inlineCallbacks
    def test_rsa_key_scripted(self) -> Generator[defer.Deferred[Any], Any, None]:
        """
        An RSA key works too (the server advertises the SHA-2 RSA signature
        algorithms, whatever its host key), and a command piped into ssh runs
        before the session ends with status 0.
        """
        rsa_private, rsa_public = _new_client_key("rsa")
        self.files.authorize(rsa_public)
        ssh = self.spawn_ssh(
            self.write_key("rsa_key", rsa_private),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        )
        transport = ssh.transport
        assert transport is not None
        transport.write(b"print(marker_value)\n")
        transport.closeStdin()
        exit_code = yield ssh.ended
        self.assertEqual(exit_code, 0, ssh.err)
        self.assertIn(self.marker.encode(), ssh.out)

    @defer.inlineCallbacks
    def test_client_killed(self) -> Generator[defer.Deferred[Any], Any, None]:
        """A client that vanishes mid-session leaves no error behind."""
        ssh = self.spawn_ssh(
            self.write_key("client_key", self.client_private),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        )
        transport = ssh.transport
        assert transport is not None
        yield ssh.wait_for(b">>> ", 0)
        transport.signalProcess("KILL")
        yield ssh.ended
        # Let the server see the connection go before the test ends.
        yield task.deferLater(self.reactor, 0.2, lambda: None)
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_unlisted_key_refused(self) -> Generator[defer.Deferred[Any], Any, None]:
        """A key that is not in authorized_keys gets 'Permission denied'."""
        other_private, _ = _new_client_key()
        with capturedLogs() as events:
            ssh = self.spawn_ssh(
                self.write_key("other_key", other_private),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            )
            exit_code = yield ssh.ended
        self.assertNotEqual(exit_code, 0)
        self.assertIn(b"Permission denied", ssh.err)
        self.assertNotIn(self.marker.encode(), ssh.out)
        other = keys.Key.fromString(other_private)
        self.assertTrue(
            any("refused for admin" in m and fingerprint(other) in m for m in _messages(events))
        )
