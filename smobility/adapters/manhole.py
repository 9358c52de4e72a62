# -*- test-case-name: tests.test_manhole -*-
"""
The manhole: an SSH-reachable Python console inside a running daemon.

The home agent uses it to expose its live state (engine, bindings, mobile
nodes, counters) to an administrator.  The rules are strict, because the
console runs arbitrary Python with the daemon's privileges:

- it listens on a loopback address only;
- the only authentication is public keys listed in ONE authorized_keys file
  named in the configuration, re-read at every login so that edits take
  effect without a restart; there is never a fallback to system passwords;
- without a usable key file the console does not start, and
  L{ManholeError} says why in one sentence.

Modelled on C{twisted.conch.manhole_tap}, with the checker of
C{twisted.conch.tap} (L{SSHPublicKeyChecker}) over a single file.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.application.internet import StreamServerEndpointService
from twisted.conch import error as conch_error
from twisted.conch import interfaces as iconch
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, tcp
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "AuthorizedKeysFile",
    "ManholeError",
    "ManholeService",
    "USER_SIGNATURE_ALGORITHMS",
    "fingerprint",
    "load_host_key",
    "make_manhole_service",
    "read_authorized_keys",
]

_log = Logger()

_GROUP_OR_OTHER_WRITABLE = stat.S_IWGRP | stat.S_IWOTH
_GROUP_OR_OTHER_ANY = stat.S_IRWXG | stat.S_IRWXO
# Usernames come from the network: log a bounded, printable form only.
_MAX_LOGGED_USERNAME = 64
# The signature algorithms a login key may use: those Key.verify checks,
# less SHA-1 RSA ("ssh-rsa") and DSA, which OpenSSH has retired too.
USER_SIGNATURE_ALGORITHMS = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)


class ManholeError(Exception):
    """One clear sentence saying why the console cannot start."""


def fingerprint(key: keys.Key) -> str:
    """
    Return C{key}'s fingerprint as C{ssh-keygen -l} prints it
    (C{SHA256:} and unpadded base64), the only form of a key we ever log.
    """
    digest: str = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
    return "SHA256:" + digest.rstrip("=")


def _printable_username(username: bytes) -> str:
    text = username[:_MAX_LOGGED_USERNAME].decode("utf-8", "backslashreplace")
    return text.encode("unicode_escape").decode("ascii")


def _parse_authorized_key(line: bytes) -> keys.Key | None:
    """
    Parse one C{type base64 [comment]} line, or return L{None}.

    Lines with OpenSSH key options (C{from=...}, C{command=...}) are refused
    rather than accepted without their restrictions.  Parse errors are not
    passed on: their messages quote the line.
    """
    fields = line.split()
    if len(fields) < 2:
        return None
    try:
        key: keys.Key = keys.Key.fromString(b" ".join(fields[:2]), type="public_openssh")
    except Exception:
        return None
    if not key.isPublic() or fields[0] != key.sshType():
        return None
    return key


def read_authorized_keys(path: Path) -> tuple[list[keys.Key], list[int]]:
    """
    Read the public keys in the authorized_keys file at C{path}.

    @return: the keys, and the numbers of the lines that are neither blank,
        comments nor plain public keys.
    @raise OSError: if the file cannot be read.
    """
    found: list[keys.Key] = []
    bad: list[int] = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            key = _parse_authorized_key(line)
            if key is None:
                bad.append(number)
            else:
                found.append(key)
    return found, bad


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """
    The keys of one authorized_keys file, valid for any username.

    The file is read again at each lookup, so adding or removing a key takes
    effect at the next login.  A file that has become unreadable grants
    nothing.
    """

    def __init__(self, path: Path) -> None:
        """
        @param path: the authorized_keys file.
        """
        self.path = path

    def getAuthorizedKeys(self, avatarId: bytes) -> Iterable[keys.Key]:
        """
        Return the keys in the file, whatever the username C{avatarId}.
        """
        try:
            found, _ = read_authorized_keys(self.path)
        except OSError as e:
            _log.error(
                "manhole: cannot read authorized keys file {path}: {reason}",
                path=str(self.path),
                reason=e.strerror or str(e),
            )
            return []
        return found


def _signature_algorithm(credentials: Any) -> bytes | None:
    """
    The algorithm of C{credentials}' signature (or, for a query, the one
    announced), if it is in L{USER_SIGNATURE_ALGORITHMS}; else L{None}.
    """
    announced: bytes = credentials.algName
    if announced not in USER_SIGNATURE_ALGORITHMS:
        return None
    if credentials.signature:
        try:
            used: bytes = getNS(credentials.signature)[0]
        except Exception:
            return None
        if used != announced:
            return None
    return announced


@implementer(ICredentialsChecker)
class _LoggingPublicKeyChecker:
    """
    L{SSHPublicKeyChecker} over an L{IAuthorizedKeysDB}, logging each
    decision with the username and the key fingerprint.

    Unlike the plain checker, a signature-less query for a key that is not
    authorized is refused at once, as OpenSSH does, instead of inviting the
    client to sign with it.
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, keydb: AuthorizedKeysFile) -> None:
        self._keydb = keydb
        self._checker = SSHPublicKeyChecker(keydb)

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes | tuple[()]]:
        """
        Check C{credentials} (an L{ISSHPrivateKey}) against the key database.
        """
        user = _printable_username(credentials.username)
        try:
            offered: keys.Key = keys.Key.fromString(credentials.blob)
        except Exception:
            _log.warn("manhole: login refused for {user}: unusable key", user=user)
            return defer.fail(UnauthorizedLogin("unusable key"))
        fp = fingerprint(offered)
        algorithm = _signature_algorithm(credentials)
        if algorithm is None:
            _log.warn(
                "manhole: login refused for {user} with key {fingerprint}:"
                " signature algorithm not accepted",
                user=user,
                fingerprint=fp,
            )
            return defer.fail(UnauthorizedLogin("signature algorithm not accepted"))
        if not credentials.signature:
            if any(k == offered for k in self._keydb.getAuthorizedKeys(credentials.username)):
                return defer.fail(conch_error.ValidPublicKey())
            _log.warn(
                "manhole: login refused for {user}: key {fingerprint} not authorized",
                user=user,
                fingerprint=fp,
            )
            return defer.fail(UnauthorizedLogin("key not authorized"))

        def accepted(avatar_id: bytes | tuple[()]) -> bytes | tuple[()]:
            _log.info(
                "manhole: login accepted for {user} with key {fingerprint}",
                user=user,
                fingerprint=fp,
            )
            return avatar_id

        def refused(failure: Any) -> Any:
            failure.trap(UnauthorizedLogin)
            _log.warn(
                "manhole: login refused for {user} with key {fingerprint}: {reason}",
                user=user,
                fingerprint=fp,
                reason=failure.getErrorMessage(),
            )
            return failure

        d: defer.Deferred[bytes | tuple[()]] = self._checker.requestAvatarId(credentials)
        d.addCallbacks(accepted, refused)
        return d


class _ManholeServerTransport(SSHServerTransport):
    """
    The SSH server transport, advertising the right C{server-sig-algs}.

    Twisted advertises its host key algorithms there (RFC 8308), so with an
    ECDSA host key an OpenSSH client believes RSA login keys cannot be used
    and does not offer them.  Advertise the algorithms logins may use.
    """

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        """Send C{extensions}, with our user signature algorithms."""
        fixed = [
            (name, b",".join(USER_SIGNATURE_ALGORITHMS) if name == b"server-sig-algs" else value)
            for name, value in extensions
        ]
        super().sendExtInfo(fixed)


class _ExitStatusOnClose:
    """
    Stands in for the SSH session protocol so that leaving the console
    (^D, or the end of ssh's input) reports exit status 0 before closing the
    channel: without it the client exits with 255, its own error status.
    """

    def __init__(self, proto: Any) -> None:
        self._proto = proto

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proto, name)

    def loseConnection(self) -> None:
        """Send exit status 0, then close the channel."""
        self._proto.processEnded(Failure(ProcessDone(0)))


class _ManholeSession(manhole_ssh.TerminalSession):
    """
    A terminal session that also takes window resizes and end-of-input
    (Twisted's raises L{NotImplementedError} for both), so that piping
    commands into C{ssh -tt} ends the session cleanly.
    """

    _terminal: Any = None

    def openShell(self, proto: Any) -> None:
        """Start the chained terminal protocol on C{proto}."""
        terminal = self.chainedProtocolFactory()
        self._terminal = terminal
        self.transportFactory(
            _ExitStatusOnClose(proto),
            terminal,
            iconch.IConchUser(self.original),
            self.width,
            self.height,
        )

    def windowChanged(self, newWindowSize: tuple[int, int, int, int]) -> None:
        """Pass the new size on to the console."""
        height, width = newWindowSize[:2]
        self.height, self.width = height, width
        if self._terminal is not None and self._terminal.terminalProtocol is not None:
            self._terminal.terminalProtocol.terminalSize(width, height)

    def eofReceived(self) -> None:
        """End the session: no more input will come."""
        if self._terminal is not None:
            self._terminal.loseConnection()


class _ConsoleFactory:
    """Build the terminal protocol: a colored Python console on C{namespace}."""

    def __init__(self, namespace: dict[str, object]) -> None:
        self.namespace = namespace

    def __call__(self) -> insults.ServerProtocol:
        return insults.ServerProtocol(manhole.ColoredManhole, self.namespace)


@implementer(IStreamServerEndpoint)
class _RecordingEndpoint:
    """A TCP endpoint that remembers the address it listens on."""

    def __init__(self, inner: TCP4ServerEndpoint | TCP6ServerEndpoint) -> None:
        self._inner = inner
        self.address: IAddress | None = None

    def listen(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IListeningPort]:
        def record(port: IListeningPort) -> IListeningPort:
            self.address = cast(tcp.Port, port).getHost()
            return port

        d: defer.Deferred[IListeningPort] = self._inner.listen(protocolFactory)
        d.addCallback(record)
        return d


class ManholeService(StreamServerEndpointService):
    """
    The SSH listener of the console.

    Failing to listen (address in use) raises at start-up, as a
    C{strports.service} listener does, instead of only being logged.
    """

    _raiseSynchronously = True

    def __init__(self, endpoint: _RecordingEndpoint, factory: manhole_ssh.ConchFactory) -> None:
        super().__init__(endpoint, factory)
        self._recorder = endpoint

    def listeningAddress(self) -> IAddress | None:
        """The address listened on (the real port when 0 was asked), or None."""
        return self._recorder.address

    def stopService(self) -> defer.Deferred[None]:
        """Stop listening; the address is forgotten."""
        self._recorder.address = None
        d: defer.Deferred[None] = super().stopService()
        return d


def _check_listen(listen: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(listen)
    except ValueError:
        raise ManholeError(
            f"The manhole listen address {listen!r} is not an IP address;"
            " it must be a loopback address such as 127.0.0.1 or ::1."
        ) from None
    if not address.is_loopback:
        raise ManholeError(
            f"The manhole listen address {listen} is not a loopback address;"
            " the console only listens on 127.0.0.0/8 or ::1."
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ManholeError(f"The manhole port {port!r} is not a TCP port number (0-65535).")
    return address


def _check_authorized_keys(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ManholeError(
            f"The manhole authorized_keys file {path} does not exist;"
            " the console accepts public keys only and will not start without it."
        ) from None
    except OSError as e:
        raise ManholeError(
            f"The manhole authorized_keys file {path} cannot be examined: {e.strerror}."
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ManholeError(f"The manhole authorized_keys file {path} is not a regular file.")
    try:
        found, bad = read_authorized_keys(path)
    except OSError as e:
        raise ManholeError(
            f"The manhole authorized_keys file {path} cannot be read: {e.strerror}."
        ) from None
    if bad:
        _log.warn(
            "manhole: ignoring line(s) {lines} of {path}: not a plain public key"
            " ('type base64 comment'; key options are not supported)",
            lines=", ".join(str(number) for number in bad),
            path=str(path),
        )
    if not found:
        raise ManholeError(f"The manhole authorized_keys file {path} holds no valid public key.")
    if st.st_mode & _GROUP_OR_OTHER_WRITABLE:
        _log.warn(
            "manhole: authorized keys file {path} is writable by group or others"
            " (mode {mode:04o}); anyone who can write it can log in",
            path=str(path),
            mode=stat.S_IMODE(st.st_mode),
        )


def _make_private_dirs(directory: Path) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700)


def _generate_host_key(path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    _make_private_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def load_host_key(path: Path) -> keys.Key:
    """
    Load the SSH host key at C{path}, generating an ECDSA P-256 key there
    first (mode 0600, in a 0700 directory if one has to be created) when
    there is none.

    @raise ManholeError: if the key cannot be created or loaded.
    """
    if not os.path.lexists(path):
        try:
            _generate_host_key(path)
        except OSError as e:
            raise ManholeError(
                f"The manhole host key {path} cannot be created: {e.strerror or e}."
            ) from None
        created = True
    else:
        created = False
    try:
        key: keys.Key = keys.Key.fromFile(str(path))
    except OSError as e:
        raise ManholeError(f"The manhole host key {path} cannot be read: {e.strerror}.") from None
    except keys.EncryptedKeyError:
        raise ManholeError(
            f"The manhole host key {path} is protected by a passphrase; it must not be."
        ) from None
    except Exception:
        raise ManholeError(f"The manhole host key {path} is not an SSH private key.") from None
    if key.isPublic():
        raise ManholeError(f"The manhole host key {path} is a public key, not a private key.")
    if created:
        _log.info(
            "manhole: generated SSH host key {path} ({fingerprint})",
            path=str(path),
            fingerprint=fingerprint(key),
        )
    elif stat.S_IMODE(path.stat().st_mode) & _GROUP_OR_OTHER_ANY:
        _log.warn(
            "manhole: host key {path} is accessible by group or others; it should be mode 0600",
            path=str(path),
        )
    return key


def make_manhole_service(
    *,
    listen: str,
    port: int,
    authorized_keys: Path,
    host_key: Path,
    namespace: dict[str, object],
    reactor: Any = None,
) -> ManholeService:
    """
    Build the SSH manhole service: a Python console on C{namespace}, on
    C{listen}:C{port}, for holders of a key in C{authorized_keys}.

    @param listen: a loopback IP address (127.0.0.0/8 or ::1).
    @param port: the TCP port; 0 picks a free one (see
        L{ManholeService.listeningAddress}).
    @param authorized_keys: an OpenSSH authorized_keys file; any username
        is accepted with a key listed there.
    @param host_key: the server's private key; generated when missing.
    @param namespace: the console's variables.  Each session gets a copy of
        the dict whose values are the caller's live objects.
    @param reactor: the reactor to listen with; the global one by default.
    @raise ManholeError: if the console cannot start safely.
    """
    address = _check_listen(listen, port)
    authorized_keys = Path(authorized_keys)
    _check_authorized_keys(authorized_keys)
    key = load_host_key(Path(host_key))

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    realm = manhole_ssh.TerminalRealm()
    realm.sessionFactory = _ManholeSession
    # Twisted annotates this as a class; any callable returning the terminal
    # protocol works (twisted.conch.manhole_tap passes one too).
    realm.chainedProtocolFactory = _ConsoleFactory(namespace)  # type: ignore[assignment]
    # TerminalRealm provides IRealm without declaring it.
    checker = _LoggingPublicKeyChecker(AuthorizedKeysFile(authorized_keys))
    portal = Portal(cast(IRealm, realm), [checker])

    factory = manhole_ssh.ConchFactory(portal)
    factory.protocol = _ManholeServerTransport
    # Instance attributes, because ConchFactory's class-level dicts are shared
    # by every factory; the values are Key objects, whatever Twisted's
    # annotation says (SSHFactory calls Key methods on them).
    factory.publicKeys = {key.sshType(): key.public()}
    factory.privateKeys = {key.sshType(): key}  # type: ignore[dict-item]

    endpoint: TCP4ServerEndpoint | TCP6ServerEndpoint
    if address.version == 6:
        endpoint = TCP6ServerEndpoint(reactor, port, interface=str(address))
    else:
        endpoint = TCP4ServerEndpoint(reactor, port, interface=str(address))
    return ManholeService(_RecordingEndpoint(endpoint), factory)
