# -*- test-case-name: tests.test_config -*-
"""
Load and validate smobility's configuration: one TOML file per role.

Each role has one loader (L{load_home}, L{load_client}, L{load_relay},
L{load_mux}) that reads the file with C{tomllib}, checks every key and
returns a frozen dataclass.  Anything wrong raises L{ConfigError}, whose text
is one sentence naming the file, the key, what is wrong and what is expected.
Things that are allowed but unwise (a key written inline, a key file that
group or other may read) do not stop the load: they are collected in the
C{warnings} tuple of the returned configuration for the service to log.

Key material never appears in an error, a warning or a C{repr}.  Relative
paths are resolved against the directory of the configuration file.
"""

from __future__ import annotations

import difflib
import enum
import hmac
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "ALGORITHMS",
    "RELAY_MODES",
    "AuthKey",
    "ClientConfig",
    "ClientTunnelConfig",
    "ESPKeys",
    "HomeTunnelConfig",
    "HomeIKEConfig",
    "IKEParameters",
    "NodeIKEConfig",
    "ClientIKEConfig",
    "ProxyConfig",
    "TransportConfig",
    "ConfigError",
    "HomeConfig",
    "ManholeConfig",
    "MobileNodeConfig",
    "MuxConfig",
    "RelayConfig",
    "RelayHomeAgentConfig",
    "RelayIKEConfig",
    "RelayPeerConfig",
    "VisitorConfig",
    "load_client",
    "load_home",
    "load_mux",
    "load_relay",
]

ALGORITHMS: tuple[str, ...] = ("hmac-md5", "hmac-sha256")
"""Authentication algorithms a security association may name; the first is
the default (RFC 5944 requires every implementation to support it)."""

MIN_SPI = 256
"""Smallest SPI a configuration may use: RFC 5944 reserves 0-255."""

MAX_SPI = 0xFFFFFFFF
"""Largest SPI (the field is 32 bits)."""

MIN_KEY_BYTES = 16
"""Shortest accepted authentication key, in bytes."""

MAX_KEY_BYTES = 64
"""Longest accepted authentication key, in bytes."""

# A key file holds at most 64 bytes as hex plus some whitespace; anything
# much bigger is the wrong file (and we do not want to slurp /dev/zero).
_MAX_KEY_FILE_BYTES = 4096

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# RFC 7542 (which updates RFC 2794's NAI): user "@" realm, ASCII subset.
_NAI_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@" + _LABEL + r"(?:\." + _LABEL + r")*"
)
# The NAI extension's length is one byte.
_MAX_NAI = 253
# The documented defaults bind to all interfaces, as a UDP service does.
_ANY_IPV4 = "0.0.0.0"  # noqa: S104
_HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_TOML_POS_RE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")

_SPI_EXPECTED = (
    f"an integer from {MIN_SPI} to {MAX_SPI} (SPIs 0-255 are reserved by RFC 5944)"
)
_PORT_EXPECTED = "an integer from 1 to 65535"
_LIFETIME_EXPECTED = "an integer number of seconds from 1 to 65535"
_IPV4_EXPECTED = 'an IPv4 address such as "192.0.2.1"'
_IPV4_LISTEN_EXPECTED = 'an IPv4 address to bind to, such as "0.0.0.0" or "127.0.0.1"'
_IP_LISTEN_EXPECTED = 'an IP address to bind to, such as "0.0.0.0", "::" or "127.0.0.1"'
_PATH_EXPECTED = "a file path (relative paths are resolved against the config file's directory)"
_NAME_EXPECTED = "1 to 64 characters from A-Z, a-z, 0-9, '_', '.', '-'"
_NAI_EXPECTED = (
    f'a network access identifier such as "laptop@example.org" (at most {_MAX_NAI} characters)'
)
_KEY_EXPECTED = (
    f"hex text encoding {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes "
    "(digits 0-9 and a-f, two per byte, whitespace ignored)"
)


class ConfigError(Exception):
    """
    A configuration file cannot be used.

    C{str(error)} is one sentence,
    C{"<file>: <key path>: <what is wrong>; expected <what>"}.  For a problem
    with the file as a whole (unreadable, not TOML) C{key} is C{""} and the
    key path is left out of the sentence.  The text never contains key
    material.

    @ivar file: the configuration file, as given to the loader.
    @ivar key: the dotted key path, e.g. C{"mobile_node[0].spi"}, or C{""}.
    @ivar problem: what is wrong.
    @ivar expected: what is expected instead.
    """

    file: str
    key: str
    problem: str
    expected: str

    def __init__(self, file: str, key: str, problem: str, expected: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.expected = expected
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(f"{where}{problem}; expected {expected}")


@dataclass(frozen=True, repr=False, eq=False)
class AuthKey:
    """
    A security association for Mobile IP authentication extensions: an SPI,
    a shared key and the algorithm (RFC 5944 section 3.5).

    The C{repr} shows the SPI and the algorithm, never the key, and equality
    compares the key in constant time.
    """

    spi: int
    key: bytes
    algorithm: str = ALGORITHMS[0]

    def __repr__(self) -> str:
        return f"AuthKey(spi={self.spi}, algorithm={self.algorithm!r}, key=<hidden>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AuthKey):
            return NotImplemented
        return (
            self.spi == other.spi
            and self.algorithm == other.algorithm
            and hmac.compare_digest(self.key, other.key)
        )

    def __hash__(self) -> int:
        return hash((self.spi, self.algorithm))


@dataclass(frozen=True)
class MobileNodeConfig:
    """One mobile node the home agent serves (a C{[[mobile_node]]} table)."""

    name: str
    home_address: IPv4Address
    auth: AuthKey
    max_lifetime: int
    simultaneous_bindings: int
    nai: str | None
    esp: ESPKeys | None = None
    ike: NodeIKEConfig | None = None


@dataclass(frozen=True, repr=False, eq=False)
class NodeIKEConfig:
    """How one mobile node authenticates its IKEv2 SA (a ``[mobile_node.ike]`` table).

    ``identity`` is the node's IKE ID as written (FQDN, RFC 822 address,
    IPv4 address or a DN such as ``"CN=laptop"``) and ``identity_kind`` its
    type (``"fqdn"``, ``"rfc822"``, ``"ipv4"``, ``"dn"``).  ``auth`` is
    ``"psk"`` (with the secret ``psk``) or ``"pubkey"`` (a certificate from
    the home server's CA).  The ``repr`` never shows the secret.
    """

    identity: str
    identity_kind: str
    auth: str
    psk: bytes = b""

    def __repr__(self) -> str:
        return (
            f"NodeIKEConfig(identity={self.identity!r}, kind={self.identity_kind!r}, "
            f"auth={self.auth!r})"
        )


@dataclass(frozen=True)
class IKEParameters:
    """IKEv2 settings both roles share: suites, lifetimes (0: never rekey), liveness (0: off)."""

    proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    lifetime: int
    child_lifetime: int
    liveness: int


@dataclass(frozen=True)
class HomeIKEConfig:
    """The home agent's IKEv2 responder (the ``[ike]`` table of the home file).

    ``identity``/``identity_kind`` as in :class:`NodeIKEConfig` (default: the
    first home agent address); ``cert``/``key`` are its certificate and key
    for certificate authentication; ``ca_db`` the state database holding the
    CA that clients' certificates are checked against (with revocation);
    ``port`` the plain IKE port (500; 0: only the NAT-T port of [tunnel]);
    ``dns`` the DNS servers given to clients in the configuration payload.
    """

    identity: str
    identity_kind: str
    params: IKEParameters
    cert: Path | None
    key: Path | None
    ca_db: Path
    port: int
    dns: tuple[IPv4Address, ...] = ()


@dataclass(frozen=True, repr=False, eq=False)
class ClientIKEConfig:
    """The client's IKEv2 initiator (the ``[ike]`` table of the client file).

    ``home_agent_identity`` is the ID the home agent must prove (its
    certificate must name it too, with ``auth = "pubkey"``); ``ca_file`` is
    the home server's CA certificate.
    """

    identity: str
    identity_kind: str
    auth: str
    psk: bytes
    home_agent_identity: str
    home_agent_identity_kind: str
    params: IKEParameters
    cert: Path | None
    key: Path | None
    ca_file: Path | None

    def __repr__(self) -> str:
        return (
            f"ClientIKEConfig(identity={self.identity!r}, auth={self.auth!r}, "
            f"home_agent_identity={self.home_agent_identity!r})"
        )


@dataclass(frozen=True, repr=False, eq=False)
class ESPKeys:
    """Manual ESP keys of one client (the fallback until IKE provides them).

    Named from the client's side, the same in both files: ``to_home`` is the
    SA the client sends on, ``to_client`` the one the home agent sends on.
    Keys are AES-GCM keying material: key followed by the 4-byte salt (20
    bytes for AES-128, 36 for AES-256, RFC 4106).
    """

    algorithm: str
    spi_to_home: int
    spi_to_client: int
    key_to_home: bytes
    key_to_client: bytes

    def __repr__(self) -> str:
        return (
            f"ESPKeys(algorithm={self.algorithm!r}, spi_to_home=0x{self.spi_to_home:08x}, "
            f"spi_to_client=0x{self.spi_to_client:08x}, keys=<hidden>)"
        )


@dataclass(frozen=True)
class HomeTunnelConfig:
    """The home agent's data plane: TUN device, ESP-in-UDP port, home LAN."""

    device: str
    listen: str
    port: int
    lan_interface: str | None
    path_mtu: int
    keepalive: int


@dataclass(frozen=True, repr=False)
class ProxyConfig:
    """One proxy on an HTTP transport's path (the password is never shown)."""

    kind: str
    host: str
    port: int
    username: str | None
    password: str | None

    def __repr__(self) -> str:
        return f"ProxyConfig(kind={self.kind!r}, host={self.host!r}, port={self.port})"


@dataclass(frozen=True, repr=False)
class TransportConfig:
    """One way to reach the home agent, in the client's order of preference.

    ``kind`` "udp": registration and ESP-in-UDP straight to the home agent.
    ``kind`` "http": datagrams framed in HTTP(S) to the multiplexer, directly
    or through ``proxy`` (and ``outer_proxy`` in front of it).
    ``kind`` "relay": registration through the relay (a Mobile IP foreign
    agent) at ``relay``:``port``, authenticated to it with ``auth`` (the
    Mobile-Foreign association); ESP and IKE to ``relay``:``esp_port``.
    ``kind`` "gateway": an IKEv2 tunnel to the IPsec VPN gateway at
    ``gateway``:``port`` set up with ``ike`` (whose ``home_agent_identity``
    is the identity the gateway must prove), then registration with the home
    agent at ``inside_home_agent`` inside that tunnel.

    ``port`` is only read for "relay" (default 434) and "gateway" (4500).
    A "relay" transport has ``mode`` "forward" (the client's own ESP and IKE
    with home pass through the relay) or "terminate" (the relay ends them:
    ``ike`` is then the client's IKEv2 with the relay, whose
    ``home_agent_identity`` is the identity the relay must prove).
    The ``repr`` never shows a key, a token or a secret.
    """

    kind: str
    fallback_after: float
    mux_host: str | None = None
    mux_port: int = 8443
    tls: bool = True
    tls_name: str | None = None
    ca_file: Path | None = None
    token: bytes = b""
    upload: str = "stream"
    proxy: ProxyConfig | None = None
    outer_proxy: ProxyConfig | None = None
    relay: IPv4Address | None = None
    port: int = 434
    esp_port: int = 4500
    auth: AuthKey | None = None
    gateway: IPv4Address | None = None
    inside_home_agent: IPv4Address | None = None
    ike: ClientIKEConfig | None = None
    mode: str = "forward"

    def __repr__(self) -> str:
        if self.kind == "relay":
            return (
                f"TransportConfig(kind='relay', relay={self.relay}:{self.port}, "
                f"esp_port={self.esp_port}, mode={self.mode!r}, auth={self.auth!r}, "
                f"ike={self.ike!r})"
            )
        if self.kind == "gateway":
            return (
                f"TransportConfig(kind='gateway', gateway={self.gateway}:{self.port}, "
                f"inside_home_agent={self.inside_home_agent}, ike={self.ike!r})"
            )
        via = [p for p in (self.outer_proxy, self.proxy) if p is not None]
        mux = f"{self.mux_host}:{self.mux_port}"
        return f"TransportConfig(kind={self.kind!r}, mux={mux}, via={via})"

    def label(self) -> str:
        """A short name for logs and the timeline."""
        if self.kind in ("udp", "relay", "gateway"):
            return self.kind
        hops = [p.kind for p in (self.outer_proxy, self.proxy) if p is not None]
        return "http" + "".join(f"+{h}" for h in hops) + ("(tls)" if self.tls else "")


@dataclass(frozen=True)
class ClientTunnelConfig:
    """The client's data plane: TUN device, ports, routes."""

    device: str
    port: int
    local_port: int
    home_network: IPv4Network
    routes: str
    path_mtu: int
    keepalive: int


@dataclass(frozen=True)
class ManholeConfig:
    """The home agent's admin console over SSH (the C{[manhole]} table)."""

    listen: str
    port: int
    authorized_keys: Path
    host_key: Path


@dataclass(frozen=True)
class HomeConfig:
    """The home agent's configuration (C{smobility-home})."""

    path: Path
    addresses: tuple[IPv4Address, ...]
    listen: str
    home_network: IPv4Network
    port: int
    replay_window: float
    max_lifetime: int
    state_db: Path
    mobile_nodes: tuple[MobileNodeConfig, ...]
    manhole: ManholeConfig | None
    warnings: tuple[str, ...]
    tunnel: HomeTunnelConfig | None = None
    ike: HomeIKEConfig | None = None
    relays: tuple[RelayPeerConfig, ...] = ()


@dataclass(frozen=True)
class RelayPeerConfig:
    """A relay the home agent accepts relayed registrations from (a ``[[relay]]`` table).

    ``auth`` is the Foreign-Home security association: the relay appends its
    authenticator to the registrations it forwards (RFC 5944 3.5.4).
    ``ike_identity`` (with ``ike_auth`` and ``psk``) lets the relay run IKEv2
    with the home agent on behalf of the clients registered through it (a
    relay in "terminate" mode); ``None``: the relay only forwards.
    ``gateway``: the relay may be its clients' IPsec VPN gateway (a relay in
    "gateway" mode), passing on their co-located registrations without FA-HA.
    """

    address: IPv4Address
    auth: AuthKey
    ike_identity: str | None = None
    ike_identity_kind: str = "fqdn"
    ike_auth: str = "psk"
    psk: bytes = field(default=b"", repr=False)
    gateway: bool = False


@dataclass(frozen=True)
class VisitorConfig:
    """A client the relay serves (a ``[[visitor]]`` table of the relay's file).

    Identified by ``home_address`` when given, else by ``name`` (a plain name
    or the client's NAI); ``auth`` is the Mobile-Foreign security association.
    ``ike_identity`` (and ``psk`` with shared keys) is how the client proves
    itself in IKEv2 with a relay in "terminate" or "gateway" mode (``auth``
    is ``None`` in "gateway" mode when not given: no registration passes the
    relay as a foreign agent then).
    """

    name: str
    home_address: IPv4Address | None
    auth: AuthKey | None
    ike_identity: str | None = None
    ike_identity_kind: str = "fqdn"
    psk: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, repr=False, eq=False)
class RelayIKEConfig:
    """The relay's own IKEv2 (the ``[ike]`` table of a relay in "terminate" mode).

    The relay answers its visitors' IKE (they prove ``[[visitor]]``
    ``ike_identity``) and starts IKE with each visitor's home agent on its
    behalf.  ``auth`` "psk": the secrets of ``[[visitor]]`` and
    ``[[home_agent]]``; "pubkey": the relay's ``cert``/``key`` from the home
    CA (``ca_file``), which the visitors and home agents present too.
    ``pool`` ("gateway" mode): the network the visitors' virtual addresses
    come from, the n-th visitor getting its n-th host address.
    """

    identity: str
    identity_kind: str
    auth: str
    params: IKEParameters
    cert: Path | None
    key: Path | None
    ca_file: Path | None
    pool: IPv4Network | None = None

    def __repr__(self) -> str:
        return f"RelayIKEConfig(identity={self.identity!r}, auth={self.auth!r})"


@dataclass(frozen=True, repr=False)
class RelayHomeAgentConfig:
    """A home agent of the relay's (a ``[[home_agent]]`` table)."""

    address: IPv4Address
    auth: AuthKey
    ike_identity: str
    ike_identity_kind: str
    psk: bytes = b""
    inside_address: IPv4Address | None = None

    def __repr__(self) -> str:
        return f"RelayHomeAgentConfig(address={self.address}, ike_identity={self.ike_identity!r})"


@dataclass(frozen=True)
class ClientConfig:
    """The mobile client's configuration (C{smobility-client})."""

    path: Path
    name: str
    home_address: IPv4Address
    home_agent: IPv4Address
    home_agent_port: int
    auth: AuthKey
    lifetime: int
    care_of_address: IPv4Address | None
    local_address: str
    local_port: int
    retransmit_initial: float
    retransmit_max: float
    max_attempts: int
    reregister_margin: float
    udp_tunnel: str
    nai: str | None
    status_file: Path | None
    warnings: tuple[str, ...]
    tunnel: ClientTunnelConfig | None = None
    esp: ESPKeys | None = None
    transports: tuple[TransportConfig, ...] = ()
    climb_back_after: float = 30.0
    ike: ClientIKEConfig | None = None


RELAY_MODES: tuple[str, ...] = ("forward", "terminate", "gateway")
"""How the relay carries a client's traffic; the first is the default.

"forward" (the seed's figure 6): the client's own end-to-end ESP with its
home agent goes inside IP-in-IP, the relay translates addresses for the
client and never sees cleartext.  "terminate" (figures 1 and 3): the relay
ends the client's ESP and keeps its own SA with the home agent."""


@dataclass(frozen=True)
class RelayConfig:
    """The relay's configuration (a Mobile IP foreign agent, C{smobility-relay})."""

    path: Path
    listen: str
    port: int
    address: IPv4Address
    home_agents: tuple[tuple[IPv4Address, AuthKey], ...]
    visitors: tuple[VisitorConfig, ...]
    max_lifetime: int
    pending_timeout: float
    warnings: tuple[str, ...]
    mode: str = RELAY_MODES[0]
    esp_port: int = 4500
    ike: RelayIKEConfig | None = None
    home_agent_ike: tuple[RelayHomeAgentConfig, ...] = ()


@dataclass(frozen=True)
class MuxConfig:
    """The HTTP(S) multiplexer and its SOCKS5 ingress (C{smobility-mux})."""

    path: Path
    listen: str
    port: int
    tls: bool
    tls_cert: Path | None
    tls_key: Path | None
    home_agent: IPv4Address
    home_agent_port: int
    socks_listen: str
    socks_port: int
    state_db: Path
    warnings: tuple[str, ...]
    esp_port: int = 4500
    max_sessions: int = 256
    max_buffer: int = 262144
    idle_timeout: float = 60.0
    keepalive: float = 10.0
    socks: bool = True
    socks_handshake_timeout: float = 10.0
    socks_max_per_user: int = 16
    tls_name: str | None = None


# ---------------------------------------------------------------------------
# Reading machinery


class _Missing(enum.Enum):
    REQUIRED = enum.auto()


_REQUIRED = _Missing.REQUIRED


def _type_name(value: object) -> str:
    # Names the TOML type of a value without ever showing the value itself.
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _show(value: str) -> str:
    # Echo a (non-secret) string value, shortened.
    if len(value) > 64:
        return repr(value[:61] + "...")
    return repr(value)


class _Context:
    """One configuration file being loaded: its name, directory and warnings."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.display = os.fspath(path)
        self.path = Path(os.path.abspath(self.display))
        self.base = self.path.parent
        self.warnings: list[str] = []
        self.mode = 0

    def error(self, key: str, problem: str, expected: str) -> ConfigError:
        return ConfigError(self.display, key, problem, expected)

    def warn(self, key: str, text: str) -> None:
        self.warnings.append(f"{self.display}: {key}: {text}")

    def resolve(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base / p


def _open(path: str | os.PathLike[str]) -> tuple[_Context, dict[str, Any]]:
    ctx = _Context(path)
    try:
        with open(ctx.path, "rb") as f:
            ctx.mode = os.fstat(f.fileno()).st_mode
            data = f.read()
    except OSError as e:
        raise ctx.error(
            "", f"cannot read the file ({e.strerror or type(e).__name__})",
            "a readable TOML file",
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ctx.error(
            "", f"the file is not UTF-8 text (bad byte at offset {e.start})",
            "a UTF-8 encoded TOML file",
        ) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = _TOML_POS_RE.search(message)
        where = "at the end of the file"
        if m is not None:
            if m.group(1) is not None:
                where = f"at line {m.group(1)}, column {m.group(2)}"
            message = message[: m.start()]
        raise ctx.error(
            "", f"invalid TOML {where}: {message}",
            "valid TOML syntax (see https://toml.io)",
        ) from None
    return ctx, doc


class _Reader:
    """Typed access to one TOML table; every failure names file and key."""

    def __init__(
        self,
        ctx: _Context,
        table: Mapping[str, Any],
        prefix: str,
        allowed: Collection[str],
    ) -> None:
        self.ctx = ctx
        self.table = table
        self.prefix = prefix
        # Unknown keys are checked first: a typo is usually the real cause
        # of a "missing key" error that would come later.
        for name in table:
            if name not in allowed:
                close = difflib.get_close_matches(name, list(allowed), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.fail(
                    name, f"unknown key{hint}",
                    "one of: " + ", ".join(sorted(allowed)),
                )

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, problem: str, expected: str) -> NoReturn:
        raise self.ctx.error(self.key(name), problem, expected)

    def warn(self, name: str, text: str) -> None:
        self.ctx.warn(self.key(name), text)

    def has(self, name: str) -> bool:
        return name in self.table

    def raw(self, name: str, expected: str, default: object) -> object:
        if name not in self.table:
            if default is _REQUIRED:
                self.fail(name, "required key is missing", expected)
            return default
        value: object = self.table[name]
        return value

    def string(
        self, name: str, expected: str, default: str | _Missing = _REQUIRED
    ) -> str:
        value = self.raw(name, expected, default)
        if not isinstance(value, str):
            self.fail(name, f"must be a string, not {_type_name(value)}", expected)
        return value

    def optional_string(self, name: str, expected: str) -> str | None:
        if name not in self.table:
            return None
        return self.string(name, expected)

    def integer(
        self,
        name: str,
        low: int,
        high: int | None,
        expected: str,
        default: int | _Missing = _REQUIRED,
    ) -> int:
        value = self.raw(name, expected, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"must be an integer, not {_type_name(value)}", expected)
        if value < low or (high is not None and value > high):
            self.fail(name, f"{value} is out of range", expected)
        return value

    def number(
        self,
        name: str,
        expected: str,
        default: float | _Missing = _REQUIRED,
        *,
        above: float | None = None,
        below: float | None = None,
        at_most: float | None = None,
    ) -> float:
        value = self.raw(name, expected, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"must be a number, not {_type_name(value)}", expected)
        number = float(value)
        if not math.isfinite(number):
            self.fail(name, "must be a finite number", expected)
        if (
            (above is not None and number <= above)
            or (below is not None and number >= below)
            or (at_most is not None and number > at_most)
        ):
            self.fail(name, f"{value} is out of range", expected)
        return number

    def boolean(self, name: str, expected: str, default: bool | _Missing = _REQUIRED) -> bool:
        value = self.raw(name, expected, default)
        if not isinstance(value, bool):
            self.fail(name, f"must be a boolean, not {_type_name(value)}", expected)
        return value

    def port(self, name: str, default: int | _Missing = _REQUIRED) -> int:
        return self.integer(name, 1, 65535, _PORT_EXPECTED, default)

    def lifetime(self, name: str, default: int | _Missing = _REQUIRED) -> int:
        return self.integer(name, 1, 65535, _LIFETIME_EXPECTED, default)

    def parse_ipv4(self, name: str, value: str, expected: str) -> IPv4Address:
        try:
            return IPv4Address(value)
        except ValueError:
            self.fail(name, f"{_show(value)} is not an IPv4 address", expected)

    def ipv4(self, name: str, expected: str = _IPV4_EXPECTED) -> IPv4Address:
        return self.parse_ipv4(name, self.string(name, expected), expected)

    def listen(self, name: str, default: str, *, ipv4_only: bool) -> str:
        expected = _IPV4_LISTEN_EXPECTED if ipv4_only else _IP_LISTEN_EXPECTED
        value = self.string(name, expected, default)
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address
            address = IPv4Address(value) if ipv4_only else ipaddress.ip_address(value)
        except ValueError:
            kind = "an IPv4" if ipv4_only else "an IP"
            self.fail(name, f"{_show(value)} is not {kind} address", expected)
        return str(address)

    def path(self, name: str, expected: str = _PATH_EXPECTED) -> Path:
        value = self.string(name, expected)
        if not value or "\0" in value:
            self.fail(name, "is not a usable path", expected)
        return self.ctx.resolve(value)

    def optional_path(self, name: str, expected: str = _PATH_EXPECTED) -> Path | None:
        if name not in self.table:
            return None
        return self.path(name, expected)

    def name(self, name: str) -> str:
        value = self.string(name, _NAME_EXPECTED)
        if _NAME_RE.fullmatch(value) is None:
            self.fail(name, f"{_show(value)} is not a valid name", _NAME_EXPECTED)
        return value

    def nai(self, name: str) -> str | None:
        value = self.optional_string(name, _NAI_EXPECTED)
        if value is None:
            return None
        if len(value) > _MAX_NAI or _NAI_RE.fullmatch(value) is None:
            self.fail(name, f"{_show(value)} is not a valid NAI", _NAI_EXPECTED)
        return value

    def choice(
        self, name: str, choices: Collection[str], default: str, *, echo: bool = True
    ) -> str:
        expected = "one of " + ", ".join(f'"{c}"' for c in choices)
        value = self.string(name, expected, default)
        if value not in choices:
            what = _show(value) if echo else "the value"
            self.fail(name, f"{what} is not a known choice", expected)
        return value

    def section(self, name: str, allowed: Collection[str]) -> _Reader:
        """Return a reader for the required table C{name}."""
        table = self.subtable(name, allowed, required=True)
        if table is None:  # pragma: no cover - subtable() failed already
            self.fail(name, "required section is missing", f"a [{self.key(name)}] table")
        return table

    def subtable(
        self, name: str, allowed: Collection[str], *, required: bool
    ) -> _Reader | None:
        expected = f"a [{self.key(name)}] table"
        if name not in self.table:
            if required:
                self.fail(name, "required section is missing", expected)
            return None
        value = self.table[name]
        if not isinstance(value, dict):
            self.fail(name, f"must be a table, not {_type_name(value)}", expected)
        return _Reader(self.ctx, value, self.key(name), allowed)

    def array_of_tables(
        self, name: str, allowed: Collection[str], *, minimum: int
    ) -> list[_Reader]:
        plural = "table" if minimum == 1 else "tables"
        expected = f"at least {minimum} [[{self.key(name)}]] {plural}"
        value = self.table.get(name, [])
        if isinstance(value, dict):
            self.fail(
                name, f"is a single table written as [{self.key(name)}]",
                f"an array of tables written as [[{self.key(name)}]]",
            )
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            self.fail(name, f"must be an array of tables, not {_type_name(value)}", expected)
        if len(value) < minimum:
            problem = "required section is missing" if name not in self.table else "too few entries"
            self.fail(name, problem, expected)
        return [
            _Reader(self.ctx, table, f"{self.key(name)}[{i}]", allowed)
            for i, table in enumerate(value)
        ]


class _Unique:
    """Remembers values seen under one key, to report duplicates by index."""

    def __init__(self, what: str) -> None:
        self.seen: dict[object, str] = {}
        self.what = what

    def check(self, r: _Reader, name: str, value: object, shown: str) -> None:
        if value in self.seen:
            r.fail(
                name, f"{shown} is already used by {self.seen[value]}",
                f"a {self.what} that is unique in the file",
            )
        self.seen[value] = r.prefix


# ---------------------------------------------------------------------------
# Keys

_AUTH_KEYS = ("spi", "key", "key_file", "algorithm")


def _parse_hex(r: _Reader, name: str, text: str, source: str) -> bytes:
    digits = "".join(text.split())
    if _HEX_RE.fullmatch(digits) is None:
        # Never echo the text: it is (meant to be) a secret.
        r.fail(name, f"{source} is not valid hex", _KEY_EXPECTED)
    key = bytes.fromhex(digits)
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        r.fail(name, f"{source} is {len(key)} bytes long", _KEY_EXPECTED)
    return key


def _read_key_file(r: _Reader, path: Path, name: str = "key_file") -> bytes:
    expected = "a readable regular file holding the key as " + _KEY_EXPECTED
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            r.fail(name, f"key file {path} is not a regular file", expected)
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        r.fail(
            name,
            f"cannot read key file {path} ({e.strerror or type(e).__name__})",
            expected,
        )
    if len(data) > _MAX_KEY_FILE_BYTES:
        r.fail(name, f"key file {path} is larger than {_MAX_KEY_FILE_BYTES} bytes", expected)
    if st.st_mode & 0o077:
        r.warn(
            name,
            f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}, so group or "
            "other users may read or change it; expected mode 0600 or 0400 "
            "(chmod go= on the file)",
        )
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        r.fail(name, f"the content of key file {path} is not valid hex", _KEY_EXPECTED)
    return _parse_hex(r, name, text, f"the content of key file {path}")


def _read_auth(r: _Reader) -> AuthKey:
    """Read spi/key/key_file/algorithm from the table C{r}."""
    spi = r.integer("spi", MIN_SPI, MAX_SPI, _SPI_EXPECTED)
    algorithm = r.choice("algorithm", ALGORITHMS, ALGORITHMS[0], echo=False)
    one_of = 'exactly one of key = "<hex>" or key_file = "<path>"'
    if r.has("key") and r.has("key_file"):
        r.fail("key", "both key and key_file are given", one_of)
    if r.has("key"):
        value = r.table["key"]
        if not isinstance(value, str):
            r.fail("key", f"must be a string, not {_type_name(value)}", _KEY_EXPECTED)
        key = _parse_hex(r, "key", value, "the key")
        loose = ", which group or other users may read" if r.ctx.mode & 0o077 else ""
        r.warn(
            "key",
            f"the key is written inline in the configuration file{loose}; "
            "expected key_file naming a file only the service user can read (mode 0600)",
        )
    elif r.has("key_file"):
        key = _read_key_file(r, r.path("key_file"))
    else:
        r.fail("key", "neither key nor key_file is given", one_of)
    return AuthKey(spi=spi, key=key, algorithm=algorithm)


# ---------------------------------------------------------------------------
# Data plane

ESP_ALGORITHMS: tuple[str, ...] = ("aes128gcm16", "aes256gcm16")
_ESP_KEYMAT = {"aes128gcm16": 20, "aes256gcm16": 36}
_ESP_KEYS = (
    "algorithm", "spi_to_home", "spi_to_client", "key_to_home", "key_to_home_file",
    "key_to_client", "key_to_client_file",
)
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_IFNAME_EXPECTED = "an interface name of 1 to 15 characters from A-Z, a-z, 0-9, '_', '.', '-'"


def _esp_key(r: _Reader, name: str, size: int) -> bytes:
    expected = f"{size} bytes of AES-GCM keying material (key then 4-byte salt) as hex"
    if r.has(name) and r.has(f"{name}_file"):
        r.fail(name, f"both {name} and {name}_file are given", "exactly one of them")
    if r.has(name):
        value = r.table[name]
        if not isinstance(value, str):
            r.fail(name, f"must be a string, not {_type_name(value)}", expected)
        key = _parse_hex(r, name, value, "the key")
        r.warn(
            name,
            "the key is written inline in the configuration file; expected "
            f"{name}_file naming a file only the service user can read (mode 0600)",
        )
    elif r.has(f"{name}_file"):
        path = r.path(f"{name}_file")
        key = _read_key_file(r, path, f"{name}_file")
    else:
        r.fail(name, f"neither {name} nor {name}_file is given", expected)
    if len(key) != size:
        r.fail(name, f"the key is {len(key)} bytes long", expected)
    return key


def _read_esp(parent: _Reader) -> ESPKeys:
    r = parent.section("esp", _ESP_KEYS)
    algorithm = r.choice("algorithm", ESP_ALGORITHMS, ESP_ALGORITHMS[0])
    size = _ESP_KEYMAT[algorithm]
    spi_expected = "an ESP SPI from 256 to 4294967295"
    to_home = r.integer("spi_to_home", 256, 0xFFFFFFFF, spi_expected)
    to_client = r.integer("spi_to_client", 256, 0xFFFFFFFF, spi_expected)
    if to_home == to_client:
        r.fail("spi_to_client", "equals esp.spi_to_home", "an SPI different from spi_to_home")
    return ESPKeys(
        algorithm=algorithm,
        spi_to_home=to_home,
        spi_to_client=to_client,
        key_to_home=_esp_key(r, "key_to_home", size),
        key_to_client=_esp_key(r, "key_to_client", size),
    )


def _ifname(r: _Reader, name: str, default: str | _Missing) -> str:
    value = r.string(name, _IFNAME_EXPECTED, default)
    if _IFNAME_RE.fullmatch(value) is None:
        r.fail(name, f"{_show(value)} is not a valid interface name", _IFNAME_EXPECTED)
    return value


# The keys each kind of [[transport]] takes besides kind and fallback_after.
# "key" is the Mobile-Foreign key (hex) of a relay transport but the path of
# the private key of a gateway transport, as in [ike].
_TRANSPORT_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "udp": (),
    "http": (
        "mux_host", "mux_port", "tls", "tls_name", "ca_file", "token_file", "token", "upload",
        "proxy", "outer_proxy",
    ),
    "relay": ("relay", "port", "esp_port", "mode", "ike") + _AUTH_KEYS,
    "gateway": (
        "gateway", "port", "inside_home_agent", "auth", "identity", "gateway_identity", "psk",
        "psk_file", "cert", "key", "ca_file",
    ),
}
_TRANSPORT_KINDS = tuple(_TRANSPORT_KIND_KEYS)
_TRANSPORT_KEYS = ("kind", "fallback_after") + tuple(
    dict.fromkeys(k for keys in _TRANSPORT_KIND_KEYS.values() for k in keys)
)
_TRANSPORT_LABELS = {"http": "HTTP", "relay": "relay", "gateway": "gateway"}
_PROXY_KEYS = ("kind", "host", "port", "username", "password", "password_file")


def _read_secret_text(r: _Reader, name: str) -> str | None:
    """A password given inline (with a warning) or in a file (first line)."""
    if r.has(name) and r.has(f"{name}_file"):
        r.fail(name, f"both {name} and {name}_file are given", "exactly one of them")
    if r.has(name):
        r.warn(name, f"written inline; expected {name}_file naming a file of mode 0600")
        return r.string(name, "a string")
    if r.has(f"{name}_file"):
        path = r.path(f"{name}_file")
        try:
            st = os.stat(path)
            text = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            r.fail(f"{name}_file", f"cannot read {path} ({e})", "a readable text file")
        if st.st_mode & 0o077:
            r.warn(f"{name}_file", f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; expected 0600")
        if not text or not text[0]:
            r.fail(f"{name}_file", f"{path} is empty", "the secret on the first line")
        return text[0]
    return None


def _read_proxy(parent: _Reader, name: str) -> ProxyConfig | None:
    p = parent.subtable(name, _PROXY_KEYS, required=False)
    if p is None:
        return None
    kind = p.choice("kind", ("socks5", "http-connect", "http-plain"), "http-connect")
    host = p.string("host", "the proxy's address or name")
    port = p.port("port")
    username = p.optional_string("username", "a user name")
    password = _read_secret_text(p, "password")
    if (username is None) != (password is None):
        p.fail("username", "username and password go together", "both or neither")
    if kind == "socks5" and username is None:
        p.fail("username", "the SOCKS5 ingress needs a username", "username and password")
    return ProxyConfig(kind, host, port, username, password)


def _check_transport_keys(t: _Reader, kind: str) -> None:
    """Refuse a key that belongs to another kind of transport, naming the kinds it fits."""
    for name in t.table:
        if name in ("kind", "fallback_after") or name in _TRANSPORT_KIND_KEYS[kind]:
            continue
        kinds = [k for k, keys in _TRANSPORT_KIND_KEYS.items() if name in keys]
        labels = " and ".join(_TRANSPORT_LABELS[k] for k in kinds)
        t.fail(
            name, f'only {labels} transports take this key (this one is kind = "{kind}")',
            " or ".join(f'kind = "{k}"' for k in kinds),
        )


def _read_relay_transport(
    t: _Reader, fallback: float, home_agent: IPv4Address
) -> TransportConfig:
    relay = t.ipv4("relay", 'the relay\'s IPv4 address, such as "192.0.2.4"')
    if relay == home_agent:
        t.fail(
            "relay", f"{relay} is also client.home_agent",
            "the relay's address (a foreign agent), different from the home agent's",
        )
    port = t.port("port", 434)
    esp_port = t.port("esp_port", 4500)
    if esp_port == port:
        t.fail(
            "esp_port", f"{esp_port} is also {t.key('port')}",
            "the relay's ESP-in-UDP port (esp_port of its [relay] table, default 4500), "
            "different from its registration port",
        )
    auth = _read_auth(t)
    mode = t.choice("mode", RELAY_MODES, RELAY_MODES[0])
    ike = None
    i = t.subtable("ike", _RELAY_TRANSPORT_IKE_KEYS, required=mode == "terminate")
    if i is not None and mode != "terminate":
        t.fail("ike", 'is only read with mode = "terminate"', 'mode = "terminate", or no [ike]')
    if i is not None:
        ike = _read_peer_ike(i, "relay_identity", str(relay), "the relay")
    return TransportConfig(
        "relay", fallback, relay=relay, port=port, esp_port=esp_port, auth=auth, mode=mode,
        ike=ike,
    )


_RELAY_TRANSPORT_IKE_KEYS = (
    "identity", "auth", "psk", "psk_file", "cert", "key", "ca_file", "relay_identity",
) + ("proposals", "esp_proposals", "lifetime", "child_lifetime", "liveness")


def _read_peer_ike(i: _Reader, peer_key: str, peer_default: str, peer: str) -> ClientIKEConfig:
    """An initiator's IKE table: our identity and credentials, the identity ``peer`` must prove."""
    identity, kind = _ike_identity(i, "identity")
    auth = i.choice("auth", _IKE_AUTH, "psk")
    psk = _ike_psk(i, auth == "psk")
    peer_identity, peer_kind = _ike_identity(i, peer_key, peer_default)
    cert = i.optional_path("cert", "a path to the client's certificate (PEM)")
    key = i.optional_path("key", "a path to the client's private key (PEM)")
    ca_file = i.optional_path("ca_file", f"a path to the CA certificate of {peer} (PEM)")
    for name, value in (("cert", cert), ("key", key), ("ca_file", ca_file)):
        if auth == "pubkey" and value is None:
            i.fail(name, 'required key is missing (auth is "pubkey")', "a PEM file path")
        if auth == "psk" and value is not None:
            i.warn(name, 'is ignored because auth is "psk"')
    return ClientIKEConfig(
        identity=identity, identity_kind=kind, auth=auth, psk=psk,
        home_agent_identity=peer_identity, home_agent_identity_kind=peer_kind,
        params=_ike_params(i), cert=cert, key=key, ca_file=ca_file,
    )


def _read_gateway_transport(t: _Reader, fallback: float) -> TransportConfig:
    gateway = t.ipv4("gateway", 'the VPN gateway\'s IPv4 address, such as "192.0.2.5"')
    port = t.port("port", 4500)
    inside = t.ipv4(
        "inside_home_agent",
        'the home agent\'s IPv4 address inside the home network, such as "10.77.0.1"',
    )
    if inside == gateway:
        t.fail(
            "inside_home_agent", f"{inside} is also {t.key('gateway')}",
            "the home agent's address behind the gateway, not the gateway's own",
        )
    identity, kind = _ike_identity(t, "identity")
    auth = t.choice("auth", _IKE_AUTH, "psk")
    psk = _ike_psk(t, auth == "psk")
    gw_identity, gw_kind = _ike_identity(t, "gateway_identity", str(gateway))
    cert = t.optional_path("cert", "a path to the client's certificate (PEM)")
    key = t.optional_path("key", "a path to the client's private key (PEM)")
    ca_file = t.optional_path("ca_file", "a path to the CA certificate of the gateway (PEM)")
    for name, value in (("cert", cert), ("key", key), ("ca_file", ca_file)):
        if auth == "pubkey" and value is None:
            t.fail(name, 'required key is missing (auth is "pubkey")', "a PEM file path")
        if auth == "psk" and value is not None:
            t.warn(name, 'is ignored because auth is "psk"')
    ike = ClientIKEConfig(
        identity=identity, identity_kind=kind, auth=auth, psk=psk,
        home_agent_identity=gw_identity, home_agent_identity_kind=gw_kind,
        params=IKEParameters(_IKE_DEFAULT_PROPOSALS, _IKE_DEFAULT_ESP, 14400, 3600, 30),
        cert=cert, key=key, ca_file=ca_file,
    )
    return TransportConfig(
        "gateway", fallback, port=port, gateway=gateway, inside_home_agent=inside, ike=ike
    )


def _read_transports(top: _Reader, home_agent: IPv4Address) -> tuple[TransportConfig, ...]:
    result: list[TransportConfig] = []
    for t in top.array_of_tables("transport", _TRANSPORT_KEYS, minimum=0):
        kind = t.choice("kind", _TRANSPORT_KINDS, "udp")
        fallback = t.number(
            "fallback_after", "seconds greater than 0", 4.0, above=0.0, at_most=600.0
        )
        _check_transport_keys(t, kind)
        if kind == "udp":
            result.append(TransportConfig("udp", fallback))
            continue
        if kind == "relay":
            result.append(_read_relay_transport(t, fallback, home_agent))
            continue
        if kind == "gateway":
            result.append(_read_gateway_transport(t, fallback))
            continue
        mux_host = t.string("mux_host", "the multiplexer's address as the last hop dials it")
        mux_port = t.port("mux_port", 8443)
        tls = t.boolean("tls", "true or false", True)
        tls_name = t.optional_string("tls_name", "the DNS name in the multiplexer's certificate")
        ca_file = t.optional_path("ca_file")
        if tls and ca_file is None:
            t.fail("ca_file", "required with tls = true", "the home server's CA certificate (PEM)")
        token_text = _read_secret_text(t, "token")
        if token_text is None:
            t.fail("token", "neither token nor token_file is given",
                   "the credential from `smobility-ctl tokens issue`")
        try:
            token = bytes.fromhex(token_text.strip())
        except ValueError:
            t.fail("token", "the credential is not hex", "the 64 hex digits the ctl printed")
        upload = t.choice("upload", ("stream", "batch"), "stream")
        proxy = _read_proxy(t, "proxy")
        outer = _read_proxy(t, "outer_proxy")
        if outer is not None and proxy is None:
            t.fail("outer_proxy", "given without proxy", "a [transport.proxy] behind it")
        if proxy is not None and proxy.kind == "http-plain" and tls:
            t.fail("proxy", "plain HTTP requests cannot carry TLS", "tls = false, or http-connect")
        result.append(TransportConfig(
            "http", fallback, mux_host, mux_port, tls, tls_name, ca_file, token, upload,
            proxy, outer,
        ))
    return tuple(result)


_HOME_TUNNEL_KEYS = ("device", "listen", "port", "lan_interface", "path_mtu", "keepalive")
_CLIENT_TUNNEL_KEYS = (
    "device", "port", "local_port", "home_network", "routes", "path_mtu", "keepalive",
)


def _read_home_tunnel(top: _Reader) -> HomeTunnelConfig | None:
    t = top.subtable("tunnel", _HOME_TUNNEL_KEYS, required=False)
    if t is None:
        return None
    lan = _ifname(t, "lan_interface", "") if t.has("lan_interface") else None
    return HomeTunnelConfig(
        device=_ifname(t, "device", "smob-ha0"),
        listen=t.listen("listen", _ANY_IPV4, ipv4_only=True),
        port=t.port("port", 4500),
        lan_interface=lan,
        path_mtu=t.integer("path_mtu", 576, 65535, "an MTU from 576 to 65535", 1500),
        keepalive=t.integer("keepalive", 1, 3600, "seconds from 1 to 3600", 20),
    )


def _read_client_tunnel(top: _Reader) -> ClientTunnelConfig | None:
    t = top.subtable("tunnel", _CLIENT_TUNNEL_KEYS, required=False)
    if t is None:
        return None
    net_expected = 'the home network in CIDR form, such as "10.10.0.0/24"'
    net_text = t.string("home_network", net_expected)
    try:
        network = IPv4Network(net_text, strict=True)
    except ValueError:
        t.fail("home_network", f"{_show(net_text)} is not a valid IPv4 network", net_expected)
    return ClientTunnelConfig(
        device=_ifname(t, "device", "smob0"),
        port=t.port("port", 4500),
        local_port=t.integer("local_port", 0, 65535, "a port from 0 (any) to 65535", 4500),
        home_network=network,
        routes=t.choice("routes", ("home", "all"), "home"),
        path_mtu=t.integer("path_mtu", 576, 65535, "an MTU from 576 to 65535", 1500),
        keepalive=t.integer("keepalive", 1, 3600, "seconds from 1 to 3600", 20),
    )


# ---------------------------------------------------------------------------
# IKEv2

_IKE_DEFAULT_PROPOSALS = ("aes128gcm16-prfsha256-ecp256", "aes256gcm16-prfsha384-x25519")
_IKE_DEFAULT_ESP = ("aes128gcm16", "aes256gcm16")
_IKE_PARAM_KEYS = ("proposals", "esp_proposals", "lifetime", "child_lifetime", "liveness")
_HOME_IKE_KEYS = ("identity", "cert", "key", "ca_db", "port", "dns") + _IKE_PARAM_KEYS
_NODE_IKE_KEYS = ("identity", "auth", "psk", "psk_file")
_CLIENT_IKE_KEYS = (
    "identity", "auth", "psk", "psk_file", "cert", "key", "ca_file", "home_agent_identity",
) + _IKE_PARAM_KEYS
_IKE_AUTH = ("psk", "pubkey")
_IKE_ID_EXPECTED = (
    'an IKE identity: a DNS name ("laptop.example.org"), an e-mail address '
    '("laptop@example.org"), an IPv4 address or a distinguished name ("CN=laptop, O=Example")'
)
_MIN_PSK = 16
_PSK_EXPECTED = f"a shared secret of at least {_MIN_PSK} characters (psk_file: its first line)"


def _ike_identity(r: _Reader, name: str, default: str | _Missing = _REQUIRED) -> tuple[str, str]:
    """An IKE identity as written and its kind: fqdn, rfc822, ipv4 or dn."""
    value = r.string(name, _IKE_ID_EXPECTED, default)
    try:
        return str(IPv4Address(value)), "ipv4"
    except ValueError:
        pass
    if "=" in value:
        from cryptography import x509

        try:
            x509.Name.from_rfc4514_string(value.replace(", ", ","))
        except ValueError:
            r.fail(name, f"{_show(value)} is not a valid distinguished name", _IKE_ID_EXPECTED)
        return value, "dn"
    if "@" in value:
        if not value.isascii() or _NAI_RE.fullmatch(value) is None:
            r.fail(name, f"{_show(value)} is not a valid e-mail address", _IKE_ID_EXPECTED)
        return value, "rfc822"
    if not value.isascii() or len(value) > 253 or _DNS_NAME_RE.fullmatch(value) is None:
        r.fail(name, f"{_show(value)} is not a valid identity", _IKE_ID_EXPECTED)
    return value.rstrip(".").lower(), "fqdn"


def _ike_psk(r: _Reader, required: bool) -> bytes:
    text = _read_secret_text(r, "psk")
    if text is None:
        if required:
            r.fail("psk", "neither psk nor psk_file is given (auth is \"psk\")", _PSK_EXPECTED)
        return b""
    if not required:
        r.warn("psk", 'is ignored because auth is "pubkey"')
        return b""
    if len(text) < _MIN_PSK:
        # The length only: never the secret.
        r.fail("psk", f"the secret is {len(text)} characters long", _PSK_EXPECTED)
    return text.encode("utf-8")


def _ike_list(r: _Reader, name: str, default: tuple[str, ...], esp: bool) -> tuple[str, ...]:
    from smobility.engines.ike import ESPSuite, IKESuite

    kind = "ESP" if esp else "IKE"
    example = ", ".join(f'"{d}"' for d in default)
    expected = f"a non-empty array of {kind} proposals in strongSwan notation, such as [{example}]"
    value = r.raw(name, expected, list(default))
    if not isinstance(value, list) or not value:
        r.fail(name, "must be a non-empty array" if isinstance(value, list)
               else f"must be an array, not {_type_name(value)}", expected)
    out: list[str] = []
    for i, item in enumerate(value):
        key = f"{name}[{i}]"
        if not isinstance(item, str):
            r.fail(key, f"must be a string, not {_type_name(item)}", expected)
        try:
            (ESPSuite if esp else IKESuite).parse(item)
        except ValueError:
            r.fail(key, f"{_show(item)} is not a supported {kind} proposal", expected)
        out.append(item)
    return tuple(out)


def _ike_params(r: _Reader) -> IKEParameters:
    lifetime_expected = "seconds from 60 to 604800, or 0 (never rekey)"

    def lifetime(name: str, default: int) -> int:
        v = r.integer(name, 0, 604800, lifetime_expected, default)
        if 0 < v < 60:
            r.fail(name, f"{v} is out of range", lifetime_expected)
        return v

    return IKEParameters(
        proposals=_ike_list(r, "proposals", _IKE_DEFAULT_PROPOSALS, esp=False),
        esp_proposals=_ike_list(r, "esp_proposals", _IKE_DEFAULT_ESP, esp=True),
        lifetime=lifetime("lifetime", 14400),
        child_lifetime=lifetime("child_lifetime", 3600),
        liveness=r.integer("liveness", 0, 3600, "seconds from 1 to 3600, or 0 (off)", 30),
    )


def _read_home_ike(
    top: _Reader, addresses: tuple[IPv4Address, ...], state_db: Path
) -> HomeIKEConfig | None:
    i = top.subtable("ike", _HOME_IKE_KEYS, required=False)
    if i is None:
        return None
    identity, kind = _ike_identity(i, "identity", str(addresses[0]))
    cert = i.optional_path("cert", "a path to the home agent's certificate (PEM)")
    key = i.optional_path("key", "a path to the home agent's private key (PEM)")
    if (cert is None) != (key is None):
        i.fail("key" if key is None else "cert", "cert and key go together", "both or neither")
    ca_db = i.optional_path("ca_db", "a path to the state database holding the CA") or state_db
    dns_expected = 'an array of IPv4 addresses such as ["10.77.0.1"]'
    raw_dns = i.raw("dns", dns_expected, [])
    if not isinstance(raw_dns, list) or not all(isinstance(d, str) for d in raw_dns):
        i.fail("dns", f"must be an array of strings, not {_type_name(raw_dns)}", dns_expected)
    dns = tuple(i.parse_ipv4(f"dns[{n}]", d, dns_expected) for n, d in enumerate(raw_dns))
    return HomeIKEConfig(
        identity=identity, identity_kind=kind, params=_ike_params(i), cert=cert, key=key,
        ca_db=ca_db, port=i.integer("port", 0, 65535, "a port from 1 to 65535, or 0 (none)", 500),
        dns=dns,
    )


def _read_node_ike(n: _Reader) -> NodeIKEConfig:
    i = n.section("ike", _NODE_IKE_KEYS)
    identity, kind = _ike_identity(i, "identity")
    auth = i.choice("auth", _IKE_AUTH, "psk")
    return NodeIKEConfig(identity, kind, auth, _ike_psk(i, auth == "psk"))


def _read_client_ike(top: _Reader, home_agent: IPv4Address) -> ClientIKEConfig | None:
    i = top.subtable("ike", _CLIENT_IKE_KEYS, required=False)
    if i is None:
        return None
    identity, kind = _ike_identity(i, "identity")
    auth = i.choice("auth", _IKE_AUTH, "psk")
    psk = _ike_psk(i, auth == "psk")
    ha_identity, ha_kind = _ike_identity(i, "home_agent_identity", str(home_agent))
    cert = i.optional_path("cert", "a path to the client's certificate (PEM)")
    key = i.optional_path("key", "a path to the client's private key (PEM)")
    ca_file = i.optional_path("ca_file", "a path to the home server's CA certificate (PEM)")
    if auth == "pubkey":
        for name, value in (("cert", cert), ("key", key), ("ca_file", ca_file)):
            if value is None:
                i.fail(name, 'required key is missing (auth is "pubkey")',
                       "a PEM file path")  # fmt: skip
    else:
        for name, value in (("cert", cert), ("key", key), ("ca_file", ca_file)):
            if value is not None:
                i.warn(name, 'is ignored because auth is "psk"')
    return ClientIKEConfig(
        identity=identity, identity_kind=kind, auth=auth, psk=psk,
        home_agent_identity=ha_identity, home_agent_identity_kind=ha_kind,
        params=_ike_params(i), cert=cert, key=key, ca_file=ca_file,
    )


# ---------------------------------------------------------------------------
# Home agent

_HOME_TOP = ("home", "mobile_node", "manhole", "tunnel", "ike", "relay")
_HOME_KEYS = (
    "addresses", "listen", "home_network", "port", "replay_window",
    "max_lifetime", "state_db",
)
_NODE_KEYS = (
    "name", "home_address", "max_lifetime", "simultaneous_bindings", "nai", "esp", "ike",
) + _AUTH_KEYS
_MANHOLE_KEYS = ("listen", "port", "authorized_keys", "host_key")
_HOME_RELAY_KEYS = (
    "address", "ike_identity", "ike_auth", "psk", "psk_file", "gateway",
) + _AUTH_KEYS


def _read_addresses(r: _Reader) -> tuple[IPv4Address, ...]:
    expected = 'a non-empty array of IPv4 addresses such as ["192.0.2.1"]'
    value = r.raw("addresses", expected, _REQUIRED)
    if not isinstance(value, list):
        r.fail("addresses", f"must be an array, not {_type_name(value)}", expected)
    if not value:
        r.fail("addresses", "is empty", expected)
    result: list[IPv4Address] = []
    for i, item in enumerate(value):
        key = f"addresses[{i}]"
        if not isinstance(item, str):
            r.fail(key, f"must be a string, not {_type_name(item)}", _IPV4_EXPECTED)
        address = r.parse_ipv4(key, item, _IPV4_EXPECTED)
        if address in result:
            r.fail(key, f"{address} is listed twice", "each address once")
        result.append(address)
    return tuple(result)


def _read_home_relays(
    top: _Reader, addresses: tuple[IPv4Address, ...]
) -> tuple[RelayPeerConfig, ...]:
    """The optional [[relay]] tables: relays and their Foreign-Home associations."""
    relays: list[RelayPeerConfig] = []
    seen = _Unique("relay address")
    spis = _Unique("SPI")
    for r in top.array_of_tables("relay", _HOME_RELAY_KEYS, minimum=0):
        address = r.ipv4("address", 'the relay\'s IPv4 address, such as "192.0.2.4"')
        if address in addresses:
            r.fail(
                "address", f"{address} is one of home.addresses",
                "the address of a relay (a foreign agent), not of the home agent",
            )
        seen.check(r, "address", address, str(address))
        auth = _read_auth(r)
        spis.check(r, "spi", auth.spi, f"SPI {auth.spi}")
        gateway = r.boolean("gateway", "true or false", False)
        if not r.has("ike_identity"):
            for name in ("ike_auth", "psk", "psk_file"):
                if r.has(name):
                    r.fail(name, "is only read with ike_identity",
                           "ike_identity (the relay's IKE identity), or no IKE keys")  # fmt: skip
            relays.append(RelayPeerConfig(address=address, auth=auth, gateway=gateway))
            continue
        ike_identity, ike_kind = _ike_identity(r, "ike_identity")
        ike_auth = r.choice("ike_auth", _IKE_AUTH, "psk")
        relays.append(RelayPeerConfig(
            address=address, auth=auth, ike_identity=ike_identity, ike_identity_kind=ike_kind,
            ike_auth=ike_auth, psk=_ike_psk(r, ike_auth == "psk"), gateway=gateway,
        ))  # fmt: skip
    return tuple(relays)


def _read_manhole(top: _Reader, state_db: Path) -> ManholeConfig | None:
    m = top.subtable("manhole", _MANHOLE_KEYS, required=False)
    if m is None:
        return None
    expected = 'a loopback address, such as "127.0.0.1" or "::1"'
    listen = m.listen("listen", "127.0.0.1", ipv4_only=False)
    if not ipaddress.ip_address(listen).is_loopback:
        m.fail(
            "listen",
            f"{listen} is not a loopback address "
            "(the console must not be reachable from the network)",
            expected,
        )
    port = m.port("port", 2222)
    authorized_keys = m.path("authorized_keys", "a path to an SSH authorized_keys file")
    if m.has("host_key"):
        host_key = m.path("host_key")
    else:
        host_key = state_db.parent / "manhole_host_key"
    return ManholeConfig(
        listen=listen, port=port, authorized_keys=authorized_keys, host_key=host_key
    )


def load_home(path: str | os.PathLike[str]) -> HomeConfig:
    """
    Load and validate a home agent configuration file.

    @raise ConfigError: if the file cannot be read, is not TOML, or any key
        is unknown, missing, of the wrong type or out of range.
    """
    ctx, doc = _open(path)
    top = _Reader(ctx, doc, "", _HOME_TOP)
    home = top.section("home", _HOME_KEYS)
    addresses = _read_addresses(home)
    listen = home.listen("listen", _ANY_IPV4, ipv4_only=True)
    net_expected = 'an IPv4 network in CIDR form with no host bits set, such as "10.10.0.0/24"'
    net_text = home.string("home_network", net_expected)
    try:
        home_network = IPv4Network(net_text, strict=True)
    except ValueError:
        home.fail("home_network", f"{_show(net_text)} is not a valid IPv4 network", net_expected)
    port = home.port("port", 434)
    replay_window = home.number(
        "replay_window", "a number of seconds greater than 0 and at most 3600",
        7.0, above=0.0, at_most=3600.0,
    )
    max_lifetime = home.lifetime("max_lifetime", 1800)
    state_db = home.path("state_db", "a path to the SQLite state database")

    tunnel = _read_home_tunnel(top)
    home_ike = _read_home_ike(top, addresses, state_db)
    ike_ids = _Unique("IKE identity")
    esp_spis = _Unique("ESP SPI")
    nodes: list[MobileNodeConfig] = []
    names = _Unique("name")
    home_addresses = _Unique("home address")
    spis = _Unique("SPI")
    nais = _Unique("NAI")
    for n in top.array_of_tables("mobile_node", _NODE_KEYS, minimum=1):
        name = n.name("name")
        names.check(n, "name", name, repr(name))
        home_address = n.ipv4("home_address")
        inside = f"an address inside home.home_network {home_network}"
        if home_address not in home_network:
            n.fail("home_address", f"{home_address} is outside the home network", inside)
        if home_network.prefixlen <= 30 and home_address in (
            home_network.network_address, home_network.broadcast_address,
        ):
            n.fail(
                "home_address",
                f"{home_address} is the network's own or broadcast address",
                inside + " other than its network and broadcast addresses",
            )
        if home_address in addresses:
            n.fail(
                "home_address", f"{home_address} is one of the home agent's addresses",
                "an address of the mobile node, not of the home agent",
            )
        home_addresses.check(n, "home_address", home_address, str(home_address))
        auth = _read_auth(n)
        spis.check(n, "spi", auth.spi, f"SPI {auth.spi}")
        node_lifetime = n.lifetime("max_lifetime", max_lifetime)
        bindings = n.integer(
            "simultaneous_bindings", 1, 16, "an integer from 1 to 16", 1
        )
        nai = n.nai("nai")
        if nai is not None:
            nais.check(n, "nai", nai.lower(), repr(nai))
        esp = None
        if tunnel is not None:
            if not n.has("esp") and not n.has("ike"):
                n.fail(
                    "esp", "required section is missing ([tunnel] is configured)",
                    f"a [{n.prefix}.esp] table with the node's manual ESP keys, or a "
                    f"[{n.prefix}.ike] table to key the tunnel with IKEv2",
                )
        if n.has("esp") and n.has("ike"):
            n.fail(
                "ike", "both [esp] (manual keys) and [ike] are given for this node",
                "exactly one of them: manual ESP keys or IKEv2",
            )
        node_ike = None
        if n.has("ike"):
            node_ike = _read_node_ike(n)
            ike_ids.check(n, "ike.identity", (node_ike.identity_kind, node_ike.identity),
                          repr(node_ike.identity))  # fmt: skip
            if tunnel is None:
                n.warn("ike", "is ignored because no [tunnel] is configured")
            if home_ike is None:
                home_ike = HomeIKEConfig(
                    identity=str(addresses[0]), identity_kind="ipv4",
                    params=IKEParameters(_IKE_DEFAULT_PROPOSALS, _IKE_DEFAULT_ESP, 14400,
                                         3600, 30),
                    cert=None, key=None, ca_db=state_db, port=500,
                )  # fmt: skip
            if node_ike.auth == "pubkey" and home_ike.cert is None:
                n.fail(
                    "ike.auth", '"pubkey" needs the home agent\'s own certificate',
                    "ike.cert and ike.key in the home agent's [ike] table",
                )
        if n.has("esp"):
            esp = _read_esp(n)
            esp_spis.check(n, "esp.spi_to_home", esp.spi_to_home, f"SPI {esp.spi_to_home}")
            esp_spis.check(
                n, "esp.spi_to_client", esp.spi_to_client, f"SPI {esp.spi_to_client}"
            )
        nodes.append(MobileNodeConfig(
            name=name, home_address=home_address, auth=auth,
            max_lifetime=node_lifetime, simultaneous_bindings=bindings, nai=nai,
            esp=esp, ike=node_ike,
        ))
    manhole = _read_manhole(top, state_db)
    relays = _read_home_relays(top, addresses)
    return HomeConfig(
        path=ctx.path, addresses=addresses, listen=listen,
        home_network=home_network, port=port, replay_window=replay_window,
        max_lifetime=max_lifetime, state_db=state_db,
        mobile_nodes=tuple(nodes), manhole=manhole,
        warnings=tuple(ctx.warnings), tunnel=tunnel, ike=home_ike, relays=relays,
    )


# ---------------------------------------------------------------------------
# Client

_CLIENT_KEYS = (
    "name", "home_address", "home_agent", "home_agent_port", "lifetime",
    "care_of_address", "local_address", "local_port", "retransmit_initial",
    "retransmit_max", "max_attempts", "reregister_margin", "udp_tunnel",
    "nai", "status_file", "climb_back_after",
) + _AUTH_KEYS
_UDP_TUNNEL = ("auto", "force", "off")


def load_client(path: str | os.PathLike[str]) -> ClientConfig:
    """
    Load and validate a mobile client configuration file.

    @raise ConfigError: if the file cannot be read, is not TOML, or any key
        is unknown, missing, of the wrong type or out of range.
    """
    ctx, doc = _open(path)
    top = _Reader(ctx, doc, "", ("client", "tunnel", "esp", "transport", "ike"))
    c = top.section("client", _CLIENT_KEYS)
    name = c.name("name")
    home_address = c.ipv4("home_address")
    home_agent = c.ipv4("home_agent")
    if home_agent == home_address:
        c.fail(
            "home_agent", f"{home_agent} is also client.home_address",
            "the home agent's address, different from the client's home address",
        )
    home_agent_port = c.port("home_agent_port", 434)
    auth = _read_auth(c)
    lifetime = c.lifetime("lifetime", 600)
    coa_expected = '"auto" or an IPv4 address such as "192.0.2.7"'
    coa_text = c.string("care_of_address", coa_expected, "auto")
    care_of_address = None if coa_text == "auto" else c.parse_ipv4(
        "care_of_address", coa_text, coa_expected
    )
    local_address = c.listen("local_address", _ANY_IPV4, ipv4_only=True)
    local_port = c.integer(
        "local_port", 0, 65535, "an integer from 0 (any port) to 65535", 0
    )
    retransmit_initial = c.number(
        "retransmit_initial", "a number of seconds greater than 0", 1.0, above=0.0
    )
    retransmit_max = c.number(
        "retransmit_max", "a number of seconds greater than 0", 32.0, above=0.0
    )
    if retransmit_max < retransmit_initial:
        c.fail(
            "retransmit_max",
            f"{retransmit_max:g} is less than client.retransmit_initial ({retransmit_initial:g})",
            "a number of seconds at least as large as client.retransmit_initial",
        )
    max_attempts = c.integer(
        "max_attempts", 0, None, "0 (retry forever) or a positive integer", 0
    )
    reregister_margin = c.number(
        "reregister_margin",
        "a fraction of the granted lifetime between 0 and 1 (exclusive), such as 0.8",
        0.8, above=0.0, below=1.0,
    )
    udp_tunnel = c.choice("udp_tunnel", _UDP_TUNNEL, "auto")
    nai = c.nai("nai")
    status_file = c.optional_path("status_file")
    climb_back_after = c.number(
        "climb_back_after", "seconds greater than 0", 30.0, above=0.0, at_most=86400.0
    )
    transports = _read_transports(top, home_agent)
    tunnel = _read_client_tunnel(top)
    if tunnel is not None and not top.has("esp") and not top.has("ike"):
        top.fail("esp", "required section is missing ([tunnel] is configured)",
                 "an [esp] table with the client's manual ESP keys, or an [ike] table "
                 "to key the tunnel with IKEv2")
    if tunnel is not None and top.has("esp") and top.has("ike"):
        top.fail("ike", "both [esp] (manual keys) and [ike] are given",
                 "exactly one of them: manual ESP keys or IKEv2")
    esp = _read_esp(top) if top.has("esp") else None
    ike = _read_client_ike(top, home_agent)
    if ike is not None and tunnel is None:
        top.warn("ike", "is ignored because no [tunnel] is configured")
    if tunnel is not None and home_address not in tunnel.home_network:
        top.fail("tunnel", f"client.home_address {home_address} is outside "
                 f"tunnel.home_network {tunnel.home_network}",
                 "the home network that holds the client's home address")
    return ClientConfig(
        path=ctx.path, name=name, home_address=home_address,
        home_agent=home_agent, home_agent_port=home_agent_port, auth=auth,
        lifetime=lifetime, care_of_address=care_of_address,
        local_address=local_address, local_port=local_port,
        retransmit_initial=retransmit_initial, retransmit_max=retransmit_max,
        max_attempts=max_attempts, reregister_margin=reregister_margin,
        udp_tunnel=udp_tunnel, nai=nai, status_file=status_file,
        warnings=tuple(ctx.warnings), tunnel=tunnel, esp=esp,
        transports=transports, climb_back_after=climb_back_after, ike=ike,
    )


# ---------------------------------------------------------------------------
# Relay

_RELAY_TOP = ("relay", "home_agent", "visitor", "ike")
_RELAY_IKE_KEYS = ("identity", "auth", "cert", "key", "ca_file", "pool") + _IKE_PARAM_KEYS
_RELAY_KEYS = (
    "listen", "port", "address", "max_lifetime", "pending_timeout", "mode", "esp_port",
)
_RELAY_HA_KEYS = ("address", "ike_identity", "psk", "psk_file", "inside_address") + _AUTH_KEYS
_VISITOR_KEYS = ("name", "home_address", "ike_identity", "psk", "psk_file") + _AUTH_KEYS
_VISITOR_EXPECTED = (
    "a name of 1 to 64 characters from A-Z, a-z, 0-9, '_', '.', '-', "
    'or a network access identifier such as "laptop@example.org"'
)


def load_relay(path: str | os.PathLike[str]) -> RelayConfig:
    """
    Load and validate a relay (Mobile IP foreign agent) configuration file.

    @raise ConfigError: if the file cannot be read, is not TOML, or any key
        is unknown, missing, of the wrong type or out of range.
    """
    ctx, doc = _open(path)
    top = _Reader(ctx, doc, "", _RELAY_TOP)
    relay = top.section("relay", _RELAY_KEYS)
    listen = relay.listen("listen", _ANY_IPV4, ipv4_only=True)
    port = relay.port("port", 434)
    address = relay.ipv4(
        "address", 'the relay\'s care-of address, an IPv4 address such as "192.0.2.1"'
    )
    max_lifetime = relay.lifetime("max_lifetime", 600)
    pending_timeout = relay.number(
        "pending_timeout", "a number of seconds greater than 0 and at most 3600",
        7.0, above=0.0, at_most=3600.0,
    )
    mode = relay.choice("mode", RELAY_MODES, RELAY_MODES[0])
    esp_port = relay.port("esp_port", 4500)
    if esp_port == port:
        relay.fail(
            "esp_port", f"{esp_port} is also relay.port",
            "the port where clients send ESP and IKE (default 4500), different from "
            "the registration port",
        )

    ike = _read_relay_ike(top, mode, address)
    ike_psk = ike is not None and ike.auth == "psk"

    def ike_keys(r: _Reader, identity_default: str | _Missing) -> tuple[str, str, bytes]:
        """The IKE identity and secret of a peer of a terminating relay."""
        if ike is None:
            for name in ("ike_identity", "psk", "psk_file"):
                if r.has(name):
                    r.warn(name, 'is ignored because relay.mode is "forward"')
            return "", "fqdn", b""
        identity, kind = _ike_identity(r, "ike_identity", identity_default)
        return identity, kind, _ike_psk(r, ike_psk)

    home_agents: list[tuple[IPv4Address, AuthKey]] = []
    ha_ike: list[RelayHomeAgentConfig] = []
    ha_addresses = _Unique("home agent address")
    ha_spis = _Unique("SPI")
    for h in top.array_of_tables("home_agent", _RELAY_HA_KEYS, minimum=1):
        ha = h.ipv4("address")
        ha_addresses.check(h, "address", ha, str(ha))
        auth = _read_auth(h)
        ha_spis.check(h, "spi", auth.spi, f"SPI {auth.spi}")
        home_agents.append((ha, auth))
        if mode == "gateway":
            # As a VPN gateway the relay runs no IKE with home: no keys to read.
            identity, kind, psk = str(ha), "ipv4", b""
            for name in ("ike_identity", "psk", "psk_file"):
                if h.has(name):
                    h.warn(name, 'is ignored because relay.mode is "gateway"')
        else:
            identity, kind, psk = ike_keys(h, str(ha))
        inside = None
        if mode == "gateway":
            inside = h.ipv4(
                "inside_address",
                "the home agent's address inside the home network, where the relay's VPN "
                'clients register (such as "10.77.0.1")',
            )
            if ike is not None and ike.pool is not None and inside in ike.pool:
                h.fail(
                    "inside_address", f"{inside} is in ike.pool {ike.pool}",
                    "an address of the home network outside the VPN clients' pool",
                )  # fmt: skip
        elif h.has("inside_address"):
            h.warn("inside_address", 'is ignored because relay.mode is not "gateway"')
        if ike is not None:
            ha_ike.append(RelayHomeAgentConfig(ha, auth, identity, kind, psk, inside))

    visitors: list[VisitorConfig] = []
    v_names = _Unique("visitor name")
    v_addresses = _Unique("visitor home address")
    v_spis = _Unique("SPI")
    for v in top.array_of_tables("visitor", _VISITOR_KEYS, minimum=0):
        vname = v.string("name", _VISITOR_EXPECTED)
        if _NAME_RE.fullmatch(vname) is None and (
            len(vname) > _MAX_NAI or _NAI_RE.fullmatch(vname) is None
        ):
            v.fail("name", f"{_show(vname)} is neither a name nor an NAI", _VISITOR_EXPECTED)
        v_names.check(v, "name", vname.lower(), repr(vname))
        home_address = None
        if v.has("home_address"):
            home_address = v.ipv4(
                "home_address", 'the client\'s home address, an IPv4 address such as "10.0.0.7"'
            )
            owner = "relay.address" if home_address == address else None
            owner = ha_addresses.seen.get(home_address, owner)
            if owner is not None:
                v.fail(
                    "home_address", f"{home_address} is also the address of {owner}",
                    "the visiting client's own home address",
                )
            v_addresses.check(v, "home_address", home_address, str(home_address))
        mnfa: AuthKey | None = None
        if mode != "gateway" or any(v.has(k) for k in _AUTH_KEYS):
            mnfa = _read_auth(v)
            v_spis.check(v, "spi", mnfa.spi, f"SPI {mnfa.spi}")
        if mode == "terminate" and home_address is None:
            v.fail("home_address", 'required key is missing (relay.mode is "terminate")',
                   "the client's home address: the traffic selector of its SAs")  # fmt: skip
        identity, kind, psk = ike_keys(v, _REQUIRED)
        visitors.append(VisitorConfig(
            name=vname, home_address=home_address, auth=mnfa,
            ike_identity=identity or None, ike_identity_kind=kind, psk=psk,
        ))  # fmt: skip

    if ike is not None and ike.pool is not None and len(visitors) > ike.pool.num_addresses - 2:
        top.fail(
            "ike", f"ike.pool {ike.pool} has {ike.pool.num_addresses - 2} host addresses for "
            f"{len(visitors)} visitors", "a pool with a host address for every [[visitor]]",
        )  # fmt: skip
    return RelayConfig(
        path=ctx.path, listen=listen, port=port, address=address,
        home_agents=tuple(home_agents), visitors=tuple(visitors),
        max_lifetime=max_lifetime, pending_timeout=pending_timeout,
        warnings=tuple(ctx.warnings), mode=mode, esp_port=esp_port, ike=ike,
        home_agent_ike=tuple(ha_ike),
    )


def _read_relay_ike(top: _Reader, mode: str, address: IPv4Address) -> RelayIKEConfig | None:
    """The relay's [ike] table: required in "terminate" mode, refused in "forward" mode."""
    i = top.subtable("ike", _RELAY_IKE_KEYS, required=mode != "forward")
    if i is None:
        return None
    if mode == "forward":
        top.fail("ike", 'is only read with relay.mode = "terminate" or "gateway"',
                 'mode = "terminate" or "gateway", or no [ike] table')  # fmt: skip
    identity, kind = _ike_identity(i, "identity", str(address))
    auth = i.choice("auth", _IKE_AUTH, "psk")
    cert = i.optional_path("cert", "a path to the relay's certificate (PEM)")
    key = i.optional_path("key", "a path to the relay's private key (PEM)")
    ca_file = i.optional_path("ca_file", "a path to the home server's CA certificate (PEM)")
    for name, value in (("cert", cert), ("key", key), ("ca_file", ca_file)):
        if auth == "pubkey" and value is None:
            i.fail(name, 'required key is missing (auth is "pubkey")', "a PEM file path")
        if auth == "psk" and value is not None:
            i.warn(name, 'is ignored because auth is "psk"')
    pool = None
    pool_expected = 'the virtual addresses of the VPN clients in CIDR form, such as "10.79.0.0/24"'
    if mode == "gateway":
        text = i.string("pool", pool_expected)
        try:
            pool = IPv4Network(text, strict=True)
        except ValueError:
            i.fail("pool", f"{_show(text)} is not a valid IPv4 network", pool_expected)
        if pool.num_addresses < 4:
            i.fail("pool", f"{pool} holds no address for a client", pool_expected)
    elif i.has("pool"):
        i.warn("pool", 'is ignored because relay.mode is not "gateway"')
    return RelayIKEConfig(
        identity=identity, identity_kind=kind, auth=auth, params=_ike_params(i),
        cert=cert, key=key, ca_file=ca_file, pool=pool,
    )


# ---------------------------------------------------------------------------
# Multiplexer

_MUX_KEYS = (
    "listen", "port", "tls", "tls_cert", "tls_key", "tls_name", "home_agent",
    "home_agent_port", "esp_port", "max_sessions", "max_buffer", "idle_timeout",
    "keepalive", "socks", "socks_listen", "socks_port", "socks_handshake_timeout",
    "socks_max_per_user", "state_db",
)
# One largest tunnel frame (smobility.wire.httptunnel.MAX_FRAME): a session's
# buffer must hold at least that.
_MUX_MIN_BUFFER = 3 + 16384
_MUX_MAX_BUFFER = 64 * 1024 * 1024
_DNS_NAME_RE = re.compile(_LABEL + r"(?:\." + _LABEL + r")*\.?")
_TLS_NAME_EXPECTED = (
    'the host name (or IP address) clients check the certificate against, '
    'such as "mux.example.org"'
)


def _overlap(a: str, b: str) -> bool:
    # Two bind addresses collide if equal or if either is a wildcard.
    wild = (_ANY_IPV4, "::")
    return a == b or a in wild or b in wild


def _mux_tls_name(m: _Reader) -> str | None:
    value = m.optional_string("tls_name", _TLS_NAME_EXPECTED)
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if len(value) > 253 or _DNS_NAME_RE.fullmatch(value) is None:
        m.fail("tls_name", f"{_show(value)} is not a host name", _TLS_NAME_EXPECTED)
    return value.rstrip(".").lower()


def load_mux(path: str | os.PathLike[str]) -> MuxConfig:
    """
    Load and validate an HTTP(S) multiplexer / SOCKS5 ingress configuration.

    @raise ConfigError: if the file cannot be read, is not TOML, or any key
        is unknown, missing, of the wrong type or out of range.
    """
    ctx, doc = _open(path)
    top = _Reader(ctx, doc, "", ("mux",))
    m = top.section("mux", _MUX_KEYS)
    listen = m.listen("listen", _ANY_IPV4, ipv4_only=False)
    port = m.port("port", 8443)
    tls = m.boolean("tls", "true or false", True)
    tls_cert = m.optional_path("tls_cert", "a path to the PEM certificate (chain)")
    tls_key = m.optional_path("tls_key", "a path to the PEM private key")
    tls_name = _mux_tls_name(m)
    if tls:
        for name, value in (("tls_cert", tls_cert), ("tls_key", tls_key)):
            if value is None:
                m.fail(
                    name, "required key is missing (mux.tls is true)",
                    "a PEM file path, or mux.tls = false",
                )
    else:
        for name, value in (("tls_cert", tls_cert), ("tls_key", tls_key)):
            if value is not None:
                m.warn(name, "is ignored because mux.tls is false")
        if tls_name is not None:
            m.warn("tls_name", "is ignored because mux.tls is false")
    home_agent = m.ipv4("home_agent")
    home_agent_port = m.port("home_agent_port", 434)
    esp_port = m.port("esp_port", 4500)
    if esp_port == home_agent_port:
        m.fail(
            "esp_port", f"{esp_port} is also mux.home_agent_port",
            "the home agent's ESP-in-UDP port (tunnel.port of the home agent, default "
            "4500), different from its registration port",
        )
    max_sessions = m.integer(
        "max_sessions", 1, 65535, "an integer from 1 to 65535 (one UDP socket each)", 256
    )
    max_buffer = m.integer(
        "max_buffer", _MUX_MIN_BUFFER, _MUX_MAX_BUFFER,
        f"a number of bytes from {_MUX_MIN_BUFFER} (one largest frame) to {_MUX_MAX_BUFFER}",
        262144,
    )
    idle_timeout = m.number(
        "idle_timeout", "a number of seconds greater than 0 and at most 86400",
        60.0, above=0.0, at_most=86400.0,
    )
    keepalive = m.number(
        "keepalive",
        "a number of seconds greater than 0 and at most 300 (well under the idle "
        "timeouts of proxies on the way)",
        10.0, above=0.0, at_most=300.0,
    )
    socks = m.boolean("socks", "true or false", True)
    socks_listen = m.listen("socks_listen", "127.0.0.1", ipv4_only=False)
    socks_port = m.port("socks_port", 1080)
    if socks and socks_port == port and _overlap(listen, socks_listen):
        m.fail(
            "socks_port", f"{socks_port} is also mux.port on an overlapping address",
            "a port different from mux.port, or non-overlapping listen addresses",
        )
    socks_handshake_timeout = m.number(
        "socks_handshake_timeout", "a number of seconds greater than 0 and at most 300",
        10.0, above=0.0, at_most=300.0,
    )
    socks_max_per_user = m.integer(
        "socks_max_per_user", 1, 4096, "an integer from 1 to 4096", 16
    )
    if not socks:
        for name in ("socks_listen", "socks_port", "socks_handshake_timeout",
                     "socks_max_per_user"):
            if m.has(name):
                m.warn(name, "is ignored because mux.socks is false")
    state_db = m.path("state_db", "a path to the SQLite state database")
    return MuxConfig(
        path=ctx.path, listen=listen, port=port, tls=tls, tls_cert=tls_cert,
        tls_key=tls_key, home_agent=home_agent, home_agent_port=home_agent_port,
        socks_listen=socks_listen, socks_port=socks_port, state_db=state_db,
        warnings=tuple(ctx.warnings), esp_port=esp_port, max_sessions=max_sessions,
        max_buffer=max_buffer, idle_timeout=idle_timeout, keepalive=keepalive,
        socks=socks, socks_handshake_timeout=socks_handshake_timeout,
        socks_max_per_user=socks_max_per_user, tls_name=tls_name,
    )
