# -*- test-case-name: tests.test_config -*-
"""Tests for L{smobility.config}."""

from __future__ import annotations

import os
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from smobility.config import (
    AuthKey,
    ClientConfig,
    ConfigError,
    HomeConfig,
    MuxConfig,
    RelayConfig,
    RelayPeerConfig,
    TransportConfig,
    VisitorConfig,
    load_client,
    load_home,
    load_mux,
    load_relay,
)

ETC = Path(__file__).resolve().parent.parent / "etc"

# Test keys.  Every error and warning is checked not to contain them.
KEY_HEX = "00112233445566778899aabbccddeeff"
INLINE_HEX = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4"
SECRETS = (KEY_HEX, INLINE_HEX, KEY_HEX.upper(), INLINE_HEX.upper())

HOME = """\
[home]
addresses = ["192.0.2.1"]
home_network = "10.10.0.0/24"
state_db = "state/home.sqlite"

[[mobile_node]]
name = "n1"
home_address = "10.10.0.10"
spi = 1000
key_file = "keys/node.key"

[[mobile_node]]
name = "n2"
home_address = "10.10.0.11"
spi = 1001
key_file = "keys/node.key"
"""

MANHOLE = """
[manhole]
authorized_keys = "admin_keys"
"""

CLIENT = """\
[client]
name = "laptop"
home_address = "10.10.0.10"
home_agent = "192.0.2.1"
spi = 1000
key_file = "keys/node.key"
"""

RELAY = """\
[relay]
address = "198.51.100.1"

[[home_agent]]
address = "192.0.2.1"
spi = 2000
key_file = "keys/node.key"
"""

VISITOR = """
[[visitor]]
name = "laptop@home.example"
spi = 3000
key_file = "keys/node.key"
"""

MUX = """\
[mux]
home_agent = "192.0.2.1"
state_db = "mux.sqlite"
tls = false
"""


def edit(text: str, *pairs: tuple[str, str]) -> str:
    """Replace each C{old} by C{new} in C{text}; C{old} must occur exactly once."""
    for old, new in pairs:
        if text.count(old) != 1:
            raise AssertionError(f"{old!r} occurs {text.count(old)} times")
        text = text.replace(old, new)
    return text


class ConfigTestCase(SynchronousTestCase):
    """Writes configuration files and a key file into a fresh directory."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        (self.dir / "keys").mkdir(parents=True)
        self.keyFile = self.writeKey("node.key", KEY_HEX + "\n")

    def writeKey(self, name: str, content: str | bytes, mode: int = 0o600) -> Path:
        """Write a key file under keys/ with C{mode}."""
        path = self.dir / "keys" / name
        data = content.encode("ascii") if isinstance(content, str) else content
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def write(self, text: str, name: str = "test.toml", mode: int = 0o600) -> Path:
        """Write a configuration file and return its path."""
        path = self.dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        return path

    def assertClean(self, text: str) -> None:
        """Fail if C{text} contains key material of the tests."""
        for secret in SECRETS:
            self.assertNotIn(secret, text)
            self.assertNotIn(secret.lower(), text.lower())

    def assertError(
        self,
        loader: Callable[[Path], object],
        text: str,
        key: str,
        *fragments: str,
    ) -> ConfigError:
        """
        Loading C{text} with C{loader} fails with a one-sentence L{ConfigError}
        that names the file and C{key} and contains every fragment.
        """
        path = self.write(text)
        error: ConfigError = self.assertRaises(ConfigError, loader, path)
        message = str(error)
        self.assertEqual(error.file, str(path))
        self.assertEqual(error.key, key, message)
        prefix = f"{path}: {key}: " if key else f"{path}: "
        self.assertTrue(message.startswith(prefix), message)
        self.assertIn("; expected ", message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertClean(message)
        return error


class ConfigErrorTests(SynchronousTestCase):
    """The shape of L{ConfigError}."""

    def test_sentence(self) -> None:
        """The text is C{"<file>: <key>: <problem>; expected <what>"}."""
        e = ConfigError("home.toml", "home.port", "70000 is out of range", "a port")
        self.assertEqual(str(e), "home.toml: home.port: 70000 is out of range; expected a port")
        self.assertEqual((e.file, e.key), ("home.toml", "home.port"))
        self.assertEqual((e.problem, e.expected), ("70000 is out of range", "a port"))

    def test_fileLevel(self) -> None:
        """With no key, the key part is left out."""
        e = ConfigError("home.toml", "", "cannot read the file", "a readable file")
        self.assertEqual(str(e), "home.toml: cannot read the file; expected a readable file")


class ExampleTests(SynchronousTestCase):
    """Every file in etc/ loads as it is."""

    def assertOnlyKnownWarnings(self, warnings: tuple[str, ...]) -> None:
        key = (ETC / "keys" / "laptop.mnha").read_text().strip()
        for warning in warnings:
            self.assertNotIn(key, warning)
            self.assertNotIn("00112233445566778899aabbccddeeff", warning)
            self.assertTrue("group or other" in warning or "inline" in warning, warning)

    def test_lab_home_and_client(self) -> None:
        """etc/home.toml and etc/client.toml are the lab's, with the data plane."""
        home = load_home(ETC / "home.toml")
        client = load_client(ETC / "client.toml")
        self.assertEqual(home.addresses, (IPv4Address("172.31.0.2"),))
        assert home.tunnel is not None and client.tunnel is not None
        self.assertEqual(home.tunnel.lan_interface, "lan0")
        self.assertEqual(client.tunnel.home_network, home.home_network)
        node = home.mobile_nodes[0]
        assert node.esp is not None and client.esp is not None
        self.assertEqual(
            (node.esp.spi_to_home, node.esp.spi_to_client, node.esp.key_to_home),
            (client.esp.spi_to_home, client.esp.spi_to_client, client.esp.key_to_home),
        )
        self.assertEqual(len(node.esp.key_to_client), 20)
        self.assertIn(client.home_agent, home.addresses)
        self.assertEqual(client.auth, node.auth)
        for warning in home.warnings + client.warnings:
            self.assertNotIn(node.esp.key_to_home.hex(), warning)

    def test_home(self) -> None:
        """etc/loopback/home.toml is the loopback first-run home agent."""
        c = load_home(ETC / "loopback" / "home.toml")
        self.assertIsInstance(c, HomeConfig)
        self.assertEqual(c.addresses, (IPv4Address("127.0.0.1"),))
        self.assertEqual(c.listen, "127.0.0.1")
        self.assertEqual(c.home_network, IPv4Network("10.77.0.0/24"))
        self.assertEqual(c.port, 434)
        self.assertEqual(c.state_db, Path("/var/lib/smobility/loopback-home.sqlite"))
        (node,) = c.mobile_nodes
        self.assertEqual(node.name, "laptop")
        self.assertEqual(node.home_address, IPv4Address("10.77.0.10"))
        self.assertEqual((node.auth.spi, node.auth.algorithm), (1000, "hmac-md5"))
        self.assertEqual(len(node.auth.key), 16)
        self.assertEqual(node.max_lifetime, 600)
        self.assertEqual(node.simultaneous_bindings, 1)
        self.assertEqual(node.nai, "laptop@home.example")
        assert c.manhole is not None
        self.assertEqual((c.manhole.listen, c.manhole.port), ("127.0.0.1", 2222))
        self.assertEqual(c.manhole.authorized_keys, Path("/etc/smobility/admin_keys"))
        self.assertEqual(c.manhole.host_key, Path("/var/lib/smobility/manhole_host_key"))
        self.assertOnlyKnownWarnings(c.warnings)

    def test_client(self) -> None:
        """etc/loopback/client.toml matches etc/loopback/home.toml."""
        c = load_client(ETC / "loopback" / "client.toml")
        self.assertIsInstance(c, ClientConfig)
        home = load_home(ETC / "loopback" / "home.toml")
        node = home.mobile_nodes[0]
        self.assertEqual(c.auth, node.auth)
        self.assertEqual(c.home_address, node.home_address)
        self.assertIn(c.home_agent, home.addresses)
        self.assertEqual(c.home_agent_port, home.port)
        self.assertEqual(c.nai, node.nai)
        self.assertIsNone(c.care_of_address)
        self.assertEqual(c.lifetime, 600)
        self.assertEqual(c.status_file, Path("/run/smobility-loopback-client.json"))
        self.assertOnlyKnownWarnings(c.warnings)

    def test_relay(self) -> None:
        """etc/relay.toml is the lab's relay, and etc/home.toml knows it."""
        c = load_relay(ETC / "relay.toml")
        self.assertIsInstance(c, RelayConfig)
        self.assertEqual((c.listen, c.port, c.esp_port), ("0.0.0.0", 434, 4500))
        self.assertEqual(c.address, IPv4Address("172.31.4.2"))
        self.assertEqual(c.mode, "forward")
        ((ha, faha),) = c.home_agents
        self.assertEqual(ha, IPv4Address("172.31.0.2"))
        (visitor,) = c.visitors
        assert visitor.auth is not None
        self.assertEqual(
            (visitor.name, visitor.home_address, visitor.auth.spi),
            ("laptop", IPv4Address("10.77.0.10"), 3000),
        )
        self.assertOnlyKnownWarnings(c.warnings)
        home = load_home(ETC / "home.toml")
        self.assertIn(ha, home.addresses)
        (relay,) = home.relays
        self.assertEqual(relay, RelayPeerConfig(c.address, faha))
        self.assertEqual(visitor.home_address, home.mobile_nodes[0].home_address)
        # Three different keys: MN-HA, FA-HA and MN-FA.
        keys = {home.mobile_nodes[0].auth.key, faha.key, visitor.auth.key}
        self.assertEqual(len(keys), 3)
        for warning in c.warnings + home.warnings:
            for key in keys:
                self.assertNotIn(key.hex(), warning)

    def test_mux(self) -> None:
        """etc/mux.toml loads, without TLS."""
        c = load_mux(ETC / "mux.toml")
        self.assertIsInstance(c, MuxConfig)
        self.assertFalse(c.tls)
        self.assertEqual(c.warnings, ())

    def test_keyFile(self) -> None:
        """etc/keys/laptop.mnha is 32 hex digits and a newline."""
        data = (ETC / "keys" / "laptop.mnha").read_bytes()
        self.assertEqual(len(data), 33)
        self.assertTrue(data.endswith(b"\n"))
        self.assertEqual(len(bytes.fromhex(data.decode("ascii"))), 16)


class FileTests(ConfigTestCase):
    """Problems with the file as a whole."""

    def test_missingFile(self) -> None:
        """A file that does not exist is named in the error."""
        path = self.dir / "nope.toml"
        for loader in (load_home, load_client, load_relay, load_mux):
            e = self.assertRaises(ConfigError, loader, path)
            self.assertEqual((e.file, e.key), (str(path), ""))
            self.assertTrue(str(e).startswith(f"{path}: cannot read the file"), str(e))

    def test_directory(self) -> None:
        """A directory is not a configuration file."""
        e = self.assertRaises(ConfigError, load_home, self.dir)
        self.assertIn("cannot read the file", str(e))

    def test_syntaxError(self) -> None:
        """tomllib's line and column are reported."""
        text = "[home]\nport = 434\nlisten = \n"
        for loader in (load_home, load_client, load_relay, load_mux):
            self.assertError(loader, text, "", "invalid TOML at line 3, column 10")

    def test_syntaxErrorAtEnd(self) -> None:
        """An error at the end of the file says so."""
        self.assertError(load_home, "[home]\nport = ", "", "invalid TOML at the end of the file")

    def test_syntaxErrorDoesNotEcho(self) -> None:
        """A syntax error in a key line does not show the key."""
        text = f'[client]\nkey = "{INLINE_HEX}\n'
        e = self.assertError(load_client, text, "", "invalid TOML at line 2")
        self.assertClean(str(e))

    def test_notUTF8(self) -> None:
        """A file that is not UTF-8 text is refused."""
        path = self.dir / "bin.toml"
        path.write_bytes(b"[home]\nname = '\xff'\n")
        e = self.assertRaises(ConfigError, load_home, path)
        self.assertIn("not UTF-8", str(e))

    def test_wrongRole(self) -> None:
        """A client file given to the home loader names the unknown section."""
        self.assertError(
            load_home, CLIENT, "client", "unknown key", "home, ike, manhole, mobile_node"
        )

    def test_pathLike(self) -> None:
        """The loaders accept C{str} and C{os.PathLike}; C{path} is absolute."""
        path = self.write(MUX)
        self.assertEqual(load_mux(str(path)).path, path.absolute())
        self.assertEqual(load_mux(path).path, path.absolute())


class HomeTests(ConfigTestCase):
    """L{load_home}."""

    def load(self, text: str) -> HomeConfig:
        return load_home(self.write(text))

    def fails(self, text: str, key: str, *fragments: str) -> ConfigError:
        return self.assertError(load_home, text, key, *fragments)

    def test_defaults(self) -> None:
        """Optional keys take their documented defaults."""
        c = self.load(HOME)
        self.assertEqual(c.listen, "0.0.0.0")
        self.assertEqual(c.port, 434)
        self.assertEqual(c.replay_window, 7.0)
        self.assertEqual(c.max_lifetime, 1800)
        self.assertEqual(c.state_db, self.dir.absolute() / "state" / "home.sqlite")
        self.assertIsNone(c.manhole)
        self.assertEqual(c.warnings, ())
        n1, n2 = c.mobile_nodes
        self.assertEqual(n1.auth, AuthKey(1000, bytes.fromhex(KEY_HEX), "hmac-md5"))
        self.assertEqual((n1.max_lifetime, n1.simultaneous_bindings, n1.nai), (1800, 1, None))
        self.assertEqual(n2.home_address, IPv4Address("10.10.0.11"))

    def test_everyKey(self) -> None:
        """Every key given explicitly is used."""
        c = self.load(
            edit(
                HOME,
                (
                    'state_db = "state/home.sqlite"\n',
                    'state_db = "/var/lib/x.sqlite"\nlisten = "192.0.2.1"\nport = 4434\n'
                    "replay_window = 2.5\nmax_lifetime = 900\n",
                ),
                (
                    "spi = 1001\n",
                    "spi = 1001\nmax_lifetime = 60\nsimultaneous_bindings = 4\n"
                    'nai = "n2@example.org"\nalgorithm = "hmac-sha256"\n',
                ),
            )
            + MANHOLE
            + 'listen = "::1"\nport = 2022\nhost_key = "hk"\n'
        )
        self.assertEqual((c.listen, c.port), ("192.0.2.1", 4434))
        self.assertEqual((c.replay_window, c.max_lifetime), (2.5, 900))
        self.assertEqual(c.state_db, Path("/var/lib/x.sqlite"))
        n1, n2 = c.mobile_nodes
        self.assertEqual(n1.max_lifetime, 900)
        self.assertEqual((n2.max_lifetime, n2.simultaneous_bindings), (60, 4))
        self.assertEqual((n2.nai, n2.auth.algorithm), ("n2@example.org", "hmac-sha256"))
        assert c.manhole is not None
        self.assertEqual((c.manhole.listen, c.manhole.port), ("::1", 2022))
        self.assertEqual(c.manhole.host_key, self.dir.absolute() / "hk")
        self.assertEqual(c.manhole.authorized_keys, self.dir.absolute() / "admin_keys")

    def test_integerReplayWindow(self) -> None:
        """An integer is fine for a number of seconds."""
        c = self.load(edit(HOME, ("[home]\n", "[home]\nreplay_window = 30\n")))
        self.assertEqual(c.replay_window, 30.0)

    def test_manholeDefaults(self) -> None:
        """The manhole defaults to 127.0.0.1:2222 and a host key next to state_db."""
        c = self.load(HOME + MANHOLE)
        assert c.manhole is not None
        self.assertEqual((c.manhole.listen, c.manhole.port), ("127.0.0.1", 2222))
        self.assertEqual(c.manhole.host_key, self.dir.absolute() / "state" / "manhole_host_key")

    def test_manholeLoopbackRange(self) -> None:
        """Any 127.0.0.0/8 address is loopback."""
        c = self.load(HOME + MANHOLE + 'listen = "127.0.0.2"\n')
        assert c.manhole is not None
        self.assertEqual(c.manhole.listen, "127.0.0.2")

    # Structure

    def test_missingHomeSection(self) -> None:
        self.fails(edit(HOME, ("[home]\n", "[other]\n")), "other", "unknown key")
        text = HOME.split("[[mobile_node]]", 1)[1]
        self.fails("[[mobile_node]]" + text, "home", "required section is missing", "[home]")

    def test_homeNotATable(self) -> None:
        self.fails('home = "yes"\n', "home", "must be a table, not a string")

    def test_missingMobileNodes(self) -> None:
        text = HOME.split("[[mobile_node]]", 1)[0]
        self.fails(text, "mobile_node", "required section is missing", "[[mobile_node]]")

    def test_mobileNodeSingleTable(self) -> None:
        text = HOME.split("[[mobile_node]]", 1)[0] + "[mobile_node]\nname = 'x'\n"
        self.fails(text, "mobile_node", "single table", "[[mobile_node]]")

    def test_unknownTopLevel(self) -> None:
        self.fails(
            HOME + "\n[manhol]\n",
            "manhol",
            "did you mean 'manhole'",
            "one of: home, ike, manhole, mobile_node",
        )

    def test_unknownHomeKey(self) -> None:
        e = self.fails(
            edit(HOME, ("addresses =", "adresses =")),
            "home.adresses",
            "unknown key (did you mean 'addresses'?)",
            "addresses",
            "state_db",
        )
        self.assertIn("replay_window", e.expected)

    def test_unknownNodeKey(self) -> None:
        self.fails(
            edit(HOME, ("spi = 1001", "spi = 1001\nspii = 5")),
            "mobile_node[1].spii",
            "unknown key",
            "key_file",
            "simultaneous_bindings",
        )

    def test_unknownManholeKey(self) -> None:
        self.fails(
            HOME + MANHOLE + "authorised_keys = 'x'\n",
            "manhole.authorised_keys",
            "unknown key",
            "authorized_keys",
        )

    def test_unknownKeyBeforeMissing(self) -> None:
        """A typo is reported as such, not as the missing key it hides."""
        self.fails(edit(HOME, ("state_db", "statedb")), "home.statedb", "unknown key")

    # Addresses and networks

    def test_badAddress(self) -> None:
        self.fails(
            edit(HOME, ('"192.0.2.1"]', '"192.0.2.1", "192.0.2.300"]')),
            "home.addresses[1]",
            "'192.0.2.300' is not an IPv4 address",
        )

    def test_ipv6Address(self) -> None:
        self.fails(edit(HOME, ('"192.0.2.1"]', '"2001:db8::1"]')), "home.addresses[0]", "IPv4")

    def test_addressNotString(self) -> None:
        self.fails(
            edit(HOME, ('"192.0.2.1"]', "3221225985]")),
            "home.addresses[0]",
            "must be a string, not an integer",
        )

    def test_addressesEmpty(self) -> None:
        self.fails(edit(HOME, ('["192.0.2.1"]', "[]")), "home.addresses", "is empty")

    def test_addressesNotArray(self) -> None:
        self.fails(
            edit(HOME, ('["192.0.2.1"]', '"192.0.2.1"')),
            "home.addresses",
            "must be an array, not a string",
        )

    def test_addressesMissing(self) -> None:
        self.fails(
            edit(HOME, ('addresses = ["192.0.2.1"]\n', "")),
            "home.addresses",
            "required key is missing",
        )

    def test_addressTwice(self) -> None:
        self.fails(
            edit(HOME, ('"192.0.2.1"]', '"192.0.2.1", "192.0.2.1"]')),
            "home.addresses[1]",
            "listed twice",
        )

    def test_listenNotIPv4(self) -> None:
        self.fails(
            edit(HOME, ("[home]\n", '[home]\nlisten = "localhost"\n')),
            "home.listen",
            "'localhost' is not an IPv4 address",
        )
        self.fails(edit(HOME, ("[home]\n", '[home]\nlisten = "::"\n')), "home.listen", "IPv4")

    def test_networkHostBits(self) -> None:
        self.fails(
            edit(HOME, ("10.10.0.0/24", "10.10.0.1/24")),
            "home.home_network",
            "'10.10.0.1/24' is not a valid IPv4 network",
            "no host bits",
        )

    def test_networkGarbage(self) -> None:
        self.fails(edit(HOME, ("10.10.0.0/24", "ten")), "home.home_network", "'ten'")

    def test_homeAddressOutside(self) -> None:
        self.fails(
            edit(HOME, ("10.10.0.11", "10.11.0.11")),
            "mobile_node[1].home_address",
            "10.11.0.11 is outside the home network",
            "10.10.0.0/24",
        )

    def test_homeAddressNetworkOrBroadcast(self) -> None:
        self.fails(
            edit(HOME, ("10.10.0.10", "10.10.0.0")), "mobile_node[0].home_address", "broadcast"
        )
        self.fails(
            edit(HOME, ("10.10.0.10", "10.10.0.255")), "mobile_node[0].home_address", "broadcast"
        )

    def test_homeAddressIsHomeAgent(self) -> None:
        text = edit(
            HOME, ('["192.0.2.1"]', '["192.0.2.1", "10.10.0.1"]'), ("10.10.0.10", "10.10.0.1")
        )
        self.fails(text, "mobile_node[0].home_address", "home agent's addresses")

    def test_homeAddressMissing(self) -> None:
        self.fails(
            edit(HOME, ('home_address = "10.10.0.11"\n', "")),
            "mobile_node[1].home_address",
            "required key is missing",
        )

    # Duplicates

    def test_duplicateHomeAddress(self) -> None:
        self.fails(
            edit(HOME, ("10.10.0.11", "10.10.0.10")),
            "mobile_node[1].home_address",
            "10.10.0.10 is already used by mobile_node[0]",
            "unique",
        )

    def test_duplicateSPI(self) -> None:
        self.fails(
            edit(HOME, ("spi = 1001", "spi = 1000")),
            "mobile_node[1].spi",
            "SPI 1000 is already used by mobile_node[0]",
        )

    def test_duplicateName(self) -> None:
        self.fails(
            edit(HOME, ('name = "n2"', 'name = "n1"')),
            "mobile_node[1].name",
            "'n1' is already used by mobile_node[0]",
        )

    def test_duplicateNAI(self) -> None:
        text = edit(
            HOME,
            ("spi = 1000", 'spi = 1000\nnai = "a@example.org"'),
            ("spi = 1001", 'spi = 1001\nnai = "A@Example.org"'),
        )
        self.fails(text, "mobile_node[1].nai", "already used by mobile_node[0]")

    # Names

    def test_badName(self) -> None:
        self.fails(
            edit(HOME, ('name = "n2"', 'name = "has space"')),
            "mobile_node[1].name",
            "'has space' is not a valid name",
            "A-Z",
        )
        self.fails(edit(HOME, ('name = "n2"', 'name = ""')), "mobile_node[1].name")
        self.fails(edit(HOME, ('name = "n2"', f'name = "{"x" * 65}"')), "mobile_node[1].name")

    def test_badNAI(self) -> None:
        self.fails(
            edit(HOME, ("spi = 1000", 'spi = 1000\nnai = "no-at-sign"')),
            "mobile_node[0].nai",
            "'no-at-sign' is not a valid NAI",
        )
        self.fails(
            edit(HOME, ("spi = 1000", "spi = 1000\nnai = 7")),
            "mobile_node[0].nai",
            "must be a string, not an integer",
        )

    # SPI

    def test_reservedSPI(self) -> None:
        e = self.fails(
            edit(HOME, ("spi = 1000", "spi = 255")),
            "mobile_node[0].spi",
            "255 is out of range",
            "256",
            "reserved by RFC 5944",
        )
        self.assertIn("4294967295", e.expected)

    def test_spiTooLarge(self) -> None:
        self.fails(
            edit(HOME, ("spi = 1000", "spi = 4294967296")), "mobile_node[0].spi", "out of range"
        )

    def test_spiString(self) -> None:
        self.fails(
            edit(HOME, ("spi = 1000", 'spi = "1000"')),
            "mobile_node[0].spi",
            "must be an integer, not a string",
        )

    def test_spiMissing(self) -> None:
        self.fails(
            edit(HOME, ("spi = 1000\n", "")), "mobile_node[0].spi", "required key is missing"
        )

    # Numbers

    def test_portString(self) -> None:
        self.fails(
            edit(HOME, ("[home]\n", '[home]\nport = "434"\n')),
            "home.port",
            "must be an integer, not a string",
            "1 to 65535",
        )

    def test_portBoolean(self) -> None:
        self.fails(
            edit(HOME, ("[home]\n", "[home]\nport = true\n")),
            "home.port",
            "must be an integer, not a boolean",
        )

    def test_portRange(self) -> None:
        for bad in ("0", "65536", "-1"):
            self.fails(
                edit(HOME, ("[home]\n", f"[home]\nport = {bad}\n")),
                "home.port",
                f"{bad} is out of range",
            )

    def test_maxLifetime(self) -> None:
        for bad in ("0", "65536"):
            self.fails(
                edit(HOME, ("[home]\n", f"[home]\nmax_lifetime = {bad}\n")),
                "home.max_lifetime",
                "out of range",
                "1 to 65535",
            )
        self.fails(
            edit(HOME, ("[home]\n", "[home]\nmax_lifetime = 600.5\n")),
            "home.max_lifetime",
            "must be an integer, not a float",
        )
        self.fails(
            edit(HOME, ("spi = 1001", 'spi = 1001\nmax_lifetime = "600"')),
            "mobile_node[1].max_lifetime",
            "must be an integer, not a string",
        )

    def test_replayWindow(self) -> None:
        for bad in ("0", "-1", "3600.5", "inf"):
            self.fails(
                edit(HOME, ("[home]\n", f"[home]\nreplay_window = {bad}\n")),
                "home.replay_window",
                "greater than 0 and at most 3600",
            )
        self.fails(
            edit(HOME, ("[home]\n", "[home]\nreplay_window = nan\n")),
            "home.replay_window",
            "finite",
        )
        self.fails(
            edit(HOME, ("[home]\n", '[home]\nreplay_window = "7"\n')),
            "home.replay_window",
            "must be a number, not a string",
        )

    def test_simultaneousBindings(self) -> None:
        for bad in ("0", "17"):
            self.fails(
                edit(HOME, ("spi = 1001", f"spi = 1001\nsimultaneous_bindings = {bad}")),
                "mobile_node[1].simultaneous_bindings",
                "1 to 16",
            )

    # Paths

    def test_stateDbMissing(self) -> None:
        self.fails(
            edit(HOME, ('state_db = "state/home.sqlite"\n', "")),
            "home.state_db",
            "required key is missing",
        )

    def test_stateDbNotString(self) -> None:
        self.fails(edit(HOME, ('"state/home.sqlite"', "1")), "home.state_db", "must be a string")
        self.fails(edit(HOME, ('"state/home.sqlite"', '""')), "home.state_db", "not a usable path")

    # Manhole

    def test_manholeNotLoopback(self) -> None:
        for bad in ("0.0.0.0", "192.0.2.1", "::"):
            self.fails(
                HOME + MANHOLE + f'listen = "{bad}"\n',
                "manhole.listen",
                "is not a loopback address",
                "127.0.0.1",
            )

    def test_manholeListenGarbage(self) -> None:
        self.fails(
            HOME + MANHOLE + 'listen = "localhost"\n',
            "manhole.listen",
            "'localhost' is not an IP address",
        )

    def test_manholeAuthorizedKeysMissing(self) -> None:
        self.fails(
            HOME + "\n[manhole]\nport = 2222\n",
            "manhole.authorized_keys",
            "required key is missing",
        )

    def test_manholePort(self) -> None:
        self.fails(HOME + MANHOLE + "port = 99999\n", "manhole.port", "out of range")

    def test_manholeNotTable(self) -> None:
        self.fails(HOME + "manhole = true\n", "mobile_node[1].manhole", "unknown key")
        self.fails("manhole = true\n" + HOME, "manhole", "must be a table, not a boolean")


class AuthTests(ConfigTestCase):
    """Security associations: spi, key, key_file, algorithm."""

    def fails(self, text: str, key: str, *fragments: str) -> ConfigError:
        return self.assertError(load_home, text, key, *fragments)

    def node(self, text: str) -> tuple[HomeConfig, AuthKey]:
        c = load_home(self.write(text))
        return c, c.mobile_nodes[0].auth

    def test_keyFileRelative(self) -> None:
        """key_file is resolved against the config file's directory, not the cwd."""
        sub = self.dir / "sub"
        sub.mkdir()
        path = sub / "home.toml"
        path.write_text(HOME.replace('"keys/node.key"', '"../keys/node.key"'))
        c = load_home(path)
        self.assertEqual(c.mobile_nodes[0].auth.key, bytes.fromhex(KEY_HEX))

    def test_keyFileAbsolute(self) -> None:
        _, auth = self.node(edit(HOME, ('"keys/node.key"\n\n', f'"{self.keyFile.absolute()}"\n\n')))
        self.assertEqual(auth.key, bytes.fromhex(KEY_HEX))

    def test_keyFileWhitespace(self) -> None:
        """Whitespace in a key file is ignored; upper case hex is fine."""
        self.writeKey("node.key", "  0011 2233 4455 6677\n8899AABB\tCCDDEEFF\n\n")
        _, auth = self.node(HOME)
        self.assertEqual(auth.key, bytes.fromhex(KEY_HEX))

    def test_inlineKey(self) -> None:
        """An inline key works but gives a warning without the key."""
        c, auth = self.node(
            edit(HOME, ('key_file = "keys/node.key"\n\n', f'key = "{INLINE_HEX}"\n\n'))
        )
        self.assertEqual(auth.key, bytes.fromhex(INLINE_HEX))
        (warning,) = c.warnings
        self.assertTrue(warning.startswith(f"{self.dir / 'test.toml'}: mobile_node[0].key: "))
        self.assertIn("inline", warning)
        self.assertNotIn("group or other", warning)
        self.assertClean(warning)
        self.assertClean(repr(c))

    def test_inlineKeyLooseConfig(self) -> None:
        """The inline warning says when the config file itself is readable by others."""
        text = edit(HOME, ('key_file = "keys/node.key"\n\n', f'key = "{INLINE_HEX}"\n\n'))
        c = load_home(self.write(text, mode=0o644))
        (warning,) = c.warnings
        self.assertIn("group or other", warning)
        self.assertClean(warning)

    def test_looseKeyFile(self) -> None:
        """A key file readable by group or other works but gives a warning."""
        for mode in (0o644, 0o640, 0o604, 0o660):
            self.keyFile.chmod(mode)
            c, auth = self.node(HOME)
            self.assertEqual(auth.key, bytes.fromhex(KEY_HEX))
            # Both nodes use the file: one warning each.
            self.assertEqual(len(c.warnings), 2)
            warning = c.warnings[0]
            self.assertIn("mobile_node[0].key_file", warning)
            self.assertIn(str(self.keyFile.absolute()), warning)
            self.assertIn(f"mode {mode:04o}", warning)
            self.assertClean(warning)

    def test_tightKeyFile(self) -> None:
        for mode in (0o600, 0o400):
            self.keyFile.chmod(mode)
            c, _ = self.node(HOME)
            self.assertEqual(c.warnings, ())

    def test_bothKeyAndKeyFile(self) -> None:
        self.fails(
            edit(HOME, ("spi = 1000", f'spi = 1000\nkey = "{INLINE_HEX}"')),
            "mobile_node[0].key",
            "both key and key_file",
            "exactly one of",
        )

    def test_neitherKeyNorKeyFile(self) -> None:
        self.fails(
            edit(HOME, ('key_file = "keys/node.key"\n\n', "\n")),
            "mobile_node[0].key",
            "neither key nor key_file",
            "exactly one of",
        )

    def test_missingKeyFile(self) -> None:
        e = self.fails(
            edit(HOME, ('"keys/node.key"\n\n', '"keys/gone.key"\n\n')),
            "mobile_node[0].key_file",
            "cannot read key file",
            str(self.dir.absolute() / "keys" / "gone.key"),
        )
        self.assertIn("No such file", str(e))

    def test_keyFileDirectory(self) -> None:
        self.fails(
            edit(HOME, ('"keys/node.key"\n\n', '"keys"\n\n')),
            "mobile_node[0].key_file",
            "not a regular file",
        )

    def test_keyFileBadHex(self) -> None:
        """Bad hex is refused and the content is not echoed."""
        self.writeKey("node.key", INLINE_HEX[:-2] + "zz\n")
        e = self.fails(
            HOME, "mobile_node[0].key_file", "is not valid hex", str(self.keyFile.absolute())
        )
        self.assertNotIn(INLINE_HEX[:-2], str(e))

    def test_keyFileOddDigits(self) -> None:
        self.writeKey("node.key", KEY_HEX + "f")
        self.fails(HOME, "mobile_node[0].key_file", "is not valid hex")

    def test_keyFileBinary(self) -> None:
        self.writeKey("node.key", bytes.fromhex(KEY_HEX) + b"\xff")
        self.fails(HOME, "mobile_node[0].key_file", "is not valid hex")

    def test_keyFileEmpty(self) -> None:
        self.writeKey("node.key", "\n")
        self.fails(HOME, "mobile_node[0].key_file", "is not valid hex")

    def test_keyFileHuge(self) -> None:
        self.writeKey("node.key", "0" * 5000)
        self.fails(HOME, "mobile_node[0].key_file", "larger than")

    def test_keyTooShort(self) -> None:
        self.writeKey("node.key", KEY_HEX[:16])
        self.fails(HOME, "mobile_node[0].key_file", "is 8 bytes long", "16 to 64 bytes")

    def test_keyTooLong(self) -> None:
        self.writeKey("node.key", "ab" * 65)
        self.fails(HOME, "mobile_node[0].key_file", "is 65 bytes long")

    def test_keyLengthLimits(self) -> None:
        for n in (16, 64):
            self.writeKey("node.key", "cd" * n)
            _, auth = self.node(HOME)
            self.assertEqual(len(auth.key), n)

    def test_inlineBadHex(self) -> None:
        secret = "s3cr3t-passphrase-not-hex"
        e = self.fails(
            edit(HOME, ('key_file = "keys/node.key"\n\n', f'key = "{secret}"\n\n')),
            "mobile_node[0].key",
            "the key is not valid hex",
        )
        self.assertNotIn(secret, str(e))

    def test_inlineKeyNotString(self) -> None:
        self.fails(
            edit(HOME, ('key_file = "keys/node.key"\n\n', "key = 1234\n\n")),
            "mobile_node[0].key",
            "must be a string, not an integer",
        )

    def test_inlineKeyTooShort(self) -> None:
        self.fails(
            edit(HOME, ('key_file = "keys/node.key"\n\n', 'key = "abcd"\n\n')),
            "mobile_node[0].key",
            "is 2 bytes long",
        )

    def test_algorithm(self) -> None:
        _, auth = self.node(edit(HOME, ("spi = 1000", 'spi = 1000\nalgorithm = "hmac-sha256"')))
        self.assertEqual(auth.algorithm, "hmac-sha256")

    def test_badAlgorithm(self) -> None:
        e = self.fails(
            edit(HOME, ("spi = 1000", f'spi = 1000\nalgorithm = "{INLINE_HEX}"')),
            "mobile_node[0].algorithm",
            "not a known choice",
            '"hmac-md5"',
            '"hmac-sha256"',
        )
        self.assertNotIn(INLINE_HEX, str(e))

    def test_reprHidesKey(self) -> None:
        """Neither C{repr} nor C{str} of an AuthKey or a config show the key."""
        auth = AuthKey(spi=1000, key=bytes.fromhex(KEY_HEX), algorithm="hmac-md5")
        for text in (repr(auth), str(auth)):
            self.assertIn("1000", text)
            self.assertIn("hmac-md5", text)
            self.assertClean(text)
            self.assertNotIn(repr(bytes.fromhex(KEY_HEX)), text)
        c, _ = self.node(HOME)
        self.assertClean(repr(c))
        self.assertNotIn(repr(bytes.fromhex(KEY_HEX)), repr(c))

    def test_authKeyEquality(self) -> None:
        a = AuthKey(1000, bytes.fromhex(KEY_HEX))
        self.assertEqual(a, AuthKey(1000, bytes.fromhex(KEY_HEX), "hmac-md5"))
        self.assertEqual(hash(a), hash(AuthKey(1000, bytes.fromhex(KEY_HEX))))
        self.assertNotEqual(a, AuthKey(1000, bytes.fromhex(INLINE_HEX)))
        self.assertNotEqual(a, AuthKey(1001, bytes.fromhex(KEY_HEX)))
        self.assertNotEqual(a, AuthKey(1000, bytes.fromhex(KEY_HEX), "hmac-sha256"))
        self.assertNotEqual(a, "AuthKey")


class ClientTests(ConfigTestCase):
    """L{load_client}."""

    def load(self, text: str) -> ClientConfig:
        return load_client(self.write(text))

    def fails(self, text: str, key: str, *fragments: str) -> ConfigError:
        return self.assertError(load_client, text, key, *fragments)

    def with_(self, line: str) -> str:
        return CLIENT + line + "\n"

    def test_defaults(self) -> None:
        c = self.load(CLIENT)
        expected: dict[str, Any] = {
            "name": "laptop",
            "home_address": IPv4Address("10.10.0.10"),
            "home_agent": IPv4Address("192.0.2.1"),
            "home_agent_port": 434,
            "auth": AuthKey(1000, bytes.fromhex(KEY_HEX)),
            "lifetime": 600,
            "care_of_address": None,
            "local_address": "0.0.0.0",
            "local_port": 0,
            "retransmit_initial": 1.0,
            "retransmit_max": 32.0,
            "max_attempts": 0,
            "reregister_margin": 0.8,
            "udp_tunnel": "auto",
            "nai": None,
            "status_file": None,
            "warnings": (),
        }
        for name, value in expected.items():
            self.assertEqual(getattr(c, name), value, name)

    def test_everyKey(self) -> None:
        c = self.load(
            CLIENT
            + "\n".join(
                [
                    "home_agent_port = 4434",
                    "lifetime = 30",
                    'care_of_address = "192.0.2.77"',
                    'local_address = "192.0.2.77"',
                    "local_port = 4000",
                    "retransmit_initial = 0.5",
                    "retransmit_max = 4",
                    "max_attempts = 3",
                    "reregister_margin = 0.5",
                    'udp_tunnel = "force"',
                    'nai = "laptop@example.org"',
                    'status_file = "st.json"',
                    'algorithm = "hmac-sha256"',
                ]
            )
            + "\n"
        )
        self.assertEqual(c.home_agent_port, 4434)
        self.assertEqual(c.lifetime, 30)
        self.assertEqual(c.care_of_address, IPv4Address("192.0.2.77"))
        self.assertEqual((c.local_address, c.local_port), ("192.0.2.77", 4000))
        self.assertEqual((c.retransmit_initial, c.retransmit_max), (0.5, 4.0))
        self.assertEqual((c.max_attempts, c.reregister_margin), (3, 0.5))
        self.assertEqual((c.udp_tunnel, c.nai), ("force", "laptop@example.org"))
        self.assertEqual(c.status_file, self.dir.absolute() / "st.json")
        self.assertEqual(c.auth.algorithm, "hmac-sha256")

    def test_udpTunnel(self) -> None:
        for value in ("auto", "force", "off"):
            self.assertEqual(self.load(self.with_(f'udp_tunnel = "{value}"')).udp_tunnel, value)
        self.fails(
            self.with_('udp_tunnel = "yes"'),
            "client.udp_tunnel",
            "'yes' is not a known choice",
            '"auto", "force", "off"',
        )
        self.fails(
            self.with_("udp_tunnel = true"), "client.udp_tunnel", "must be a string, not a boolean"
        )

    def test_missingSection(self) -> None:
        self.fails("", "client", "required section is missing", "[client]")

    def test_unknownKey(self) -> None:
        self.fails(
            self.with_("lifetme = 5"),
            "client.lifetme",
            "did you mean 'lifetime'",
            "reregister_margin",
        )

    def test_requiredKeys(self) -> None:
        for line in (
            'name = "laptop"\n',
            'home_address = "10.10.0.10"\n',
            'home_agent = "192.0.2.1"\n',
            "spi = 1000\n",
        ):
            key = "client." + line.split(" ")[0]
            self.fails(edit(CLIENT, (line, "")), key, "required key is missing")

    def test_badHomeAgent(self) -> None:
        self.fails(
            edit(CLIENT, ('"192.0.2.1"', '"ha.example.org"')),
            "client.home_agent",
            "'ha.example.org' is not an IPv4 address",
        )

    def test_homeAgentIsHomeAddress(self) -> None:
        self.fails(
            edit(CLIENT, ('"192.0.2.1"', '"10.10.0.10"')),
            "client.home_agent",
            "also client.home_address",
        )

    def test_careOfAddress(self) -> None:
        self.fails(
            self.with_('care_of_address = "automatic"'),
            "client.care_of_address",
            "'automatic' is not an IPv4 address",
            '"auto"',
        )
        self.fails(self.with_("care_of_address = 1"), "client.care_of_address", "must be a string")

    def test_lifetime(self) -> None:
        self.fails(
            self.with_('lifetime = "600"'), "client.lifetime", "must be an integer, not a string"
        )
        self.fails(self.with_("lifetime = 0"), "client.lifetime", "out of range")
        self.fails(self.with_("lifetime = 65536"), "client.lifetime", "out of range")

    def test_localPort(self) -> None:
        self.fails(self.with_("local_port = -1"), "client.local_port", "0 (any port) to 65535")
        self.fails(self.with_("local_port = 65536"), "client.local_port", "out of range")
        self.fails(self.with_("home_agent_port = 0"), "client.home_agent_port", "1 to 65535")

    def test_localAddress(self) -> None:
        self.fails(self.with_('local_address = "any"'), "client.local_address", "'any'")

    def test_retransmit(self) -> None:
        self.fails(
            self.with_("retransmit_initial = 0"), "client.retransmit_initial", "greater than 0"
        )
        self.fails(
            self.with_("retransmit_initial = 10.0\nretransmit_max = 5"),
            "client.retransmit_max",
            "less than client.retransmit_initial",
        )
        self.fails(self.with_("retransmit_max = nan"), "client.retransmit_max", "finite")
        c = self.load(self.with_("retransmit_initial = 2\nretransmit_max = 2"))
        self.assertEqual((c.retransmit_initial, c.retransmit_max), (2.0, 2.0))

    def test_maxAttempts(self) -> None:
        self.fails(self.with_("max_attempts = -1"), "client.max_attempts", "0 (retry forever)")
        self.fails(self.with_("max_attempts = 1.0"), "client.max_attempts", "not a float")

    def test_reregisterMargin(self) -> None:
        for bad in ("0", "1", "1.5", "-0.1"):
            self.fails(
                self.with_(f"reregister_margin = {bad}"),
                "client.reregister_margin",
                "between 0 and 1",
            )

    def test_nai(self) -> None:
        self.fails(self.with_('nai = "@example.org"'), "client.nai", "not a valid NAI")

    def test_keyWarning(self) -> None:
        c = self.load(edit(CLIENT, ('key_file = "keys/node.key"', f'key = "{INLINE_HEX}"')))
        (warning,) = c.warnings
        self.assertIn("client.key", warning)
        self.assertClean(warning)

    def test_missingKeyFile(self) -> None:
        self.fails(
            edit(CLIENT, ("keys/node.key", "keys/other.key")),
            "client.key_file",
            str(self.dir.absolute() / "keys" / "other.key"),
        )


class RelayTests(ConfigTestCase):
    """L{load_relay}."""

    def load(self, text: str) -> RelayConfig:
        return load_relay(self.write(text))

    def fails(self, text: str, key: str, *fragments: str) -> ConfigError:
        return self.assertError(load_relay, text, key, *fragments)

    def test_defaults(self) -> None:
        c = self.load(RELAY)
        self.assertEqual((c.listen, c.port), ("0.0.0.0", 434))
        self.assertEqual(c.address, IPv4Address("198.51.100.1"))
        self.assertEqual(
            c.home_agents, ((IPv4Address("192.0.2.1"), AuthKey(2000, bytes.fromhex(KEY_HEX))),)
        )
        self.assertEqual(c.visitors, ())
        self.assertEqual((c.max_lifetime, c.pending_timeout), (600, 7.0))
        self.assertEqual((c.mode, c.esp_port), ("forward", 4500))
        self.assertEqual(c.warnings, ())

    def test_visitors(self) -> None:
        c = self.load(
            RELAY + VISITOR + edit(VISITOR, ("laptop@home.example", "phone"), ("3000", "3001"))
        )
        self.assertEqual([v.name for v in c.visitors], ["laptop@home.example", "phone"])
        self.assertEqual([v.auth.spi if v.auth else None for v in c.visitors], [3000, 3001])
        self.assertEqual([v.home_address for v in c.visitors], [None, None])
        self.assertIsInstance(c.visitors[0], VisitorConfig)

    def test_visitorHomeAddress(self) -> None:
        """A visitor may be known by its home address; unique, not the relay's or a HA's."""
        c = self.load(RELAY + VISITOR + 'home_address = "10.77.0.10"\n')
        self.assertEqual(c.visitors[0].home_address, IPv4Address("10.77.0.10"))
        self.fails(
            RELAY + VISITOR + 'home_address = "laptop"\n',
            "visitor[0].home_address",
            "'laptop' is not an IPv4 address",
            "the client's home address",
        )
        self.fails(
            RELAY + VISITOR + "home_address = 10\n",
            "visitor[0].home_address",
            "must be a string, not an integer",
        )
        self.fails(
            RELAY + VISITOR + 'home_address = "10.77.0.10"\n'
            + edit(VISITOR, ("laptop@home.example", "phone"), ("3000", "3001"))
            + 'home_address = "10.77.0.10"\n',
            "visitor[1].home_address",
            "10.77.0.10 is already used by visitor[0]",
            "unique",
        )
        self.fails(
            RELAY + VISITOR + 'home_address = "198.51.100.1"\n',
            "visitor[0].home_address",
            "198.51.100.1 is also the address of relay.address",
        )
        self.fails(
            RELAY + VISITOR + 'home_address = "192.0.2.1"\n',
            "visitor[0].home_address",
            "192.0.2.1 is also the address of home_agent[0]",
        )

    def test_mode(self) -> None:
        """mode: "forward" (default) or "terminate"."""
        c = self.load(edit(RELAY, ("[relay]\n", '[relay]\nmode = "forward"\n')))
        self.assertEqual((c.mode, c.ike), ("forward", None))
        self.fails(
            edit(RELAY, ("[relay]\n", '[relay]\nmode = "nat"\n')),
            "relay.mode",
            "'nat' is not a known choice",
            '"forward", "terminate"',
        )
        self.fails(
            edit(RELAY, ("[relay]\n", "[relay]\nmode = 1\n")),
            "relay.mode",
            "must be a string, not an integer",
        )

    def test_espPort(self) -> None:
        """esp_port: where clients send ESP and IKE, not the registration port."""
        c = self.load(edit(RELAY, ("[relay]\n", "[relay]\nesp_port = 14500\n")))
        self.assertEqual(c.esp_port, 14500)
        self.fails(
            edit(RELAY, ("[relay]\n", "[relay]\nesp_port = 0\n")),
            "relay.esp_port",
            "0 is out of range",
            "1 to 65535",
        )
        self.fails(
            edit(RELAY, ("[relay]\n", '[relay]\nesp_port = "4500"\n')),
            "relay.esp_port",
            "must be an integer, not a string",
        )
        self.fails(
            edit(RELAY, ("[relay]\n", "[relay]\nport = 4500\n")),
            "relay.esp_port",
            "4500 is also relay.port",
            "different from the registration port",
        )

    def test_missingHomeAgent(self) -> None:
        self.fails(
            RELAY.split("[[home_agent]]")[0],
            "home_agent",
            "required section is missing",
            "at least 1 [[home_agent]] table",
        )

    def test_missingAddress(self) -> None:
        self.fails(
            edit(RELAY, ('address = "198.51.100.1"\n', "")),
            "relay.address",
            "required key is missing",
            "care-of address",
        )

    def test_duplicateHomeAgent(self) -> None:
        second = RELAY.split("\n\n", 1)[1].replace("2000", "2001")
        self.fails(
            RELAY + "\n" + second,
            "home_agent[1].address",
            "192.0.2.1 is already used by home_agent[0]",
        )

    def test_duplicateHomeAgentSPI(self) -> None:
        second = RELAY.split("\n\n", 1)[1].replace("192.0.2.1", "192.0.2.2")
        self.fails(RELAY + "\n" + second, "home_agent[1].spi", "SPI 2000 is already used")

    def test_duplicateVisitor(self) -> None:
        self.fails(
            RELAY + VISITOR + VISITOR.replace("3000", "3001"),
            "visitor[1].name",
            "already used by visitor[0]",
        )
        self.fails(
            RELAY + VISITOR + VISITOR.replace("laptop", "phone"),
            "visitor[1].spi",
            "SPI 3000 is already used by visitor[0]",
        )

    def test_badVisitorName(self) -> None:
        self.fails(
            RELAY + VISITOR.replace("laptop@home.example", "two words"),
            "visitor[0].name",
            "neither a name nor an NAI",
        )

    def test_unknownVisitorKey(self) -> None:
        self.fails(
            RELAY + VISITOR + "addr = '1.2.3.4'\n",
            "visitor[0].addr",
            "unknown key",
            "algorithm, home_address, ike_identity, key, key_file, name, psk, psk_file, spi",
        )

    def test_visitorKeyMissing(self) -> None:
        self.fails(
            RELAY + VISITOR.replace('key_file = "keys/node.key"\n', ""),
            "visitor[0].key",
            "neither key nor key_file",
        )

    def test_pendingTimeout(self) -> None:
        self.fails(
            edit(RELAY, ("[relay]\n", "[relay]\npending_timeout = 0\n")),
            "relay.pending_timeout",
            "greater than 0",
        )

    def test_port(self) -> None:
        self.fails(
            edit(RELAY, ("[relay]\n", '[relay]\nport = "4434"\n')),
            "relay.port",
            "must be an integer, not a string",
        )

    def test_badHomeAgentAddress(self) -> None:
        self.fails(
            edit(RELAY, ('"192.0.2.1"', '"192.0.2"')),
            "home_agent[0].address",
            "'192.0.2' is not an IPv4 address",
        )


class MuxTests(ConfigTestCase):
    """L{load_mux}."""

    def load(self, text: str) -> MuxConfig:
        return load_mux(self.write(text))

    def fails(self, text: str, key: str, *fragments: str) -> ConfigError:
        return self.assertError(load_mux, text, key, *fragments)

    def test_defaults(self) -> None:
        c = self.load(
            edit(MUX, ("tls = false\n", "tls = true\ntls_cert = 'c.pem'\ntls_key = 'k.pem'\n"))
        )
        self.assertEqual((c.listen, c.port, c.tls), ("0.0.0.0", 8443, True))
        self.assertEqual(c.tls_cert, self.dir.absolute() / "c.pem")
        self.assertEqual(c.tls_key, self.dir.absolute() / "k.pem")
        self.assertEqual((c.home_agent, c.home_agent_port), (IPv4Address("192.0.2.1"), 434))
        self.assertEqual((c.socks_listen, c.socks_port), ("127.0.0.1", 1080))
        self.assertEqual(c.state_db, self.dir.absolute() / "mux.sqlite")
        self.assertEqual(c.warnings, ())

    def test_tlsDefaultTrue(self) -> None:
        """TLS is on by default, so a certificate and key are required."""
        self.fails(
            edit(MUX, ("tls = false\n", "")),
            "mux.tls_cert",
            "required key is missing (mux.tls is true)",
        )
        self.fails(
            edit(MUX, ("tls = false\n", "tls_cert = 'c.pem'\n")),
            "mux.tls_key",
            "required key is missing",
        )

    def test_tlsOffIgnoresCert(self) -> None:
        c = self.load(MUX + "tls_cert = 'c.pem'\n")
        (warning,) = c.warnings
        self.assertIn("mux.tls_cert", warning)
        self.assertIn("ignored", warning)

    def test_tlsNotBoolean(self) -> None:
        self.fails(
            edit(MUX, ("tls = false", 'tls = "no"')),
            "mux.tls",
            "must be a boolean, not a string",
            "true or false",
        )

    def test_ipv6Listen(self) -> None:
        c = self.load(MUX + 'listen = "::"\nsocks_listen = "::1"\n')
        self.assertEqual((c.listen, c.socks_listen), ("::", "::1"))

    def test_portClash(self) -> None:
        self.fails(MUX + "port = 1080\n", "mux.socks_port", "also mux.port")
        c = self.load(MUX + 'port = 1080\nlisten = "192.0.2.5"\n')
        self.assertEqual(c.port, c.socks_port)

    def test_missingHomeAgent(self) -> None:
        self.fails(
            edit(MUX, ('home_agent = "192.0.2.1"\n', "")),
            "mux.home_agent",
            "required key is missing",
        )

    def test_missingStateDb(self) -> None:
        self.fails(
            edit(MUX, ('state_db = "mux.sqlite"\n', "")), "mux.state_db", "required key is missing"
        )

    def test_unknownKey(self) -> None:
        self.fails(MUX + "sock_port = 1\n", "mux.sock_port", "did you mean 'socks_port'")

    def test_badSocksPort(self) -> None:
        self.fails(MUX + "socks_port = 0\n", "mux.socks_port", "out of range")

    def test_missingSection(self) -> None:
        self.fails("[muxx]\n", "muxx", "unknown key", "mux")


class ModeTests(ConfigTestCase):
    """Warnings are returned, not printed, and keep their order."""

    def test_orderAndNoOutput(self) -> None:
        self.keyFile.chmod(0o644)
        text = edit(HOME, ('key_file = "keys/node.key"\n\n', f'key = "{INLINE_HEX}"\n\n'))
        c = load_home(self.write(text))
        self.assertEqual(len(c.warnings), 2)
        self.assertIn("mobile_node[0].key:", c.warnings[0])
        self.assertIn("mobile_node[1].key_file:", c.warnings[1])
        for warning in c.warnings:
            self.assertClean(warning)
        self.assertEqual(os.stat(self.keyFile).st_mode & 0o777, 0o644)


HOME_TUNNEL = "\n[tunnel]\ndevice = \"smob-ha0\"\n"
NODE_IKE = """
[mobile_node.ike]
identity = "laptop.example"
psk_file = "keys/psk"
"""
CLIENT_TUNNEL = '\n[tunnel]\nhome_network = "10.10.0.0/24"\n'
CLIENT_IKE = """
[ike]
identity = "laptop.example"
psk_file = "keys/psk"
"""
ONE_NODE = HOME.split("[[mobile_node]]\nname = \"n2\"")[0]


class IKETests(ConfigTestCase):
    """The [ike] tables of the home agent and the client."""

    def setUp(self) -> None:
        super().setUp()
        self.writeKey("psk", "a-long-enough-shared-secret\n")

    def test_homeNodeIKE(self) -> None:
        """A node keyed by IKE: identity, PSK, defaults of the home agent's [ike]."""
        c = load_home(self.write(ONE_NODE + NODE_IKE + HOME_TUNNEL))
        node = c.mobile_nodes[0]
        assert node.ike is not None and c.ike is not None
        self.assertEqual((node.ike.identity, node.ike.identity_kind), ("laptop.example", "fqdn"))
        self.assertEqual(node.ike.psk, b"a-long-enough-shared-secret")
        self.assertNotIn("secret", repr(node))
        self.assertIsNone(node.esp)
        self.assertEqual((c.ike.identity, c.ike.identity_kind), ("192.0.2.1", "ipv4"))
        self.assertEqual(c.ike.params.proposals[0], "aes128gcm16-prfsha256-ecp256")
        self.assertEqual(c.ike.ca_db, c.state_db)

    def test_homeIKETable(self) -> None:
        """The home agent's [ike] table: identity kinds, proposals, lifetimes."""
        text = ONE_NODE + NODE_IKE + HOME_TUNNEL + (
            '\n[ike]\nidentity = "ha@example.org"\nproposals = ["aes128-sha256-modp2048"]\n'
            "lifetime = 0\nliveness = 10\nport = 0\n"
        )
        c = load_home(self.write(text))
        assert c.ike is not None
        self.assertEqual(c.ike.identity_kind, "rfc822")
        self.assertEqual(c.ike.params.proposals, ("aes128-sha256-modp2048",))
        self.assertEqual((c.ike.params.lifetime, c.ike.params.liveness, c.ike.port), (0, 10, 0))

    def test_homeIKEDNS(self) -> None:
        """DNS servers for the configuration payload reach every node's peer settings."""
        from smobility.services.ike_service import home_ike_config

        text = ONE_NODE + NODE_IKE + HOME_TUNNEL + '\n[ike]\ndns = ["10.77.0.1", "10.77.0.53"]\n'
        c = load_home(self.write(text))
        assert c.ike is not None
        self.assertEqual(c.ike.dns, (IPv4Address("10.77.0.1"), IPv4Address("10.77.0.53")))
        config, _ = home_ike_config(
            c.ike, c.mobile_nodes, listen="0.0.0.0", nat_t_port=4500, trust_anchors=()
        )
        self.assertEqual(config.peers[0].dns, c.ike.dns)
        self.assertError(
            load_home, ONE_NODE + NODE_IKE + HOME_TUNNEL + '\n[ike]\ndns = ["nope"]\n',
            "ike.dns[0]", "is not an IPv4 address",
        )

    def test_homeErrors(self) -> None:
        """Clear errors: both or neither of esp/ike, bad proposals, short secrets."""
        base = ONE_NODE + HOME_TUNNEL
        self.assertError(load_home, base, "mobile_node[0].esp", "required section is missing",
                         "[mobile_node[0].ike]")  # fmt: skip
        esp = (
            "\n[mobile_node.esp]\nspi_to_home = 4097\nspi_to_client = 8193\n"
            f'key_to_home = "{"00" * 20}"\nkey_to_client = "{"11" * 20}"\n'
        )
        self.assertError(load_home, ONE_NODE + NODE_IKE + esp + HOME_TUNNEL,
                         "mobile_node[0].ike", "both [esp]")  # fmt: skip
        self.assertError(load_home, base + NODE_IKE + '\n[ike]\nproposals = ["aes-foo"]\n',
                         "ike.proposals[0]", "not a supported IKE proposal")  # fmt: skip
        self.assertError(load_home, base + NODE_IKE + '\n[ike]\nesp_proposals = []\n',
                         "ike.esp_proposals", "non-empty")  # fmt: skip
        self.writeKey("psk", "short\n")
        self.assertError(load_home, base + NODE_IKE, "mobile_node[0].ike.psk",
                         "5 characters long")  # fmt: skip
        pubkey = NODE_IKE.replace('psk_file = "keys/psk"', 'auth = "pubkey"')
        self.assertError(load_home, base + pubkey, "mobile_node[0].ike.auth",
                         "own certificate")  # fmt: skip
        bad_id = NODE_IKE.replace("laptop.example", "not a name!")
        self.assertError(load_home, base + bad_id, "mobile_node[0].ike.identity",
                         "not a valid identity")  # fmt: skip

    def test_client(self) -> None:
        """The client's [ike]: PSK, the home agent's identity defaults to its address."""
        c = load_client(self.write(CLIENT + CLIENT_TUNNEL + CLIENT_IKE))
        assert c.ike is not None
        self.assertIsNone(c.esp)
        self.assertEqual(c.ike.home_agent_identity, "192.0.2.1")
        self.assertEqual(c.ike.psk, b"a-long-enough-shared-secret")
        self.assertNotIn("secret", repr(c.ike))

    def test_clientErrors(self) -> None:
        """Neither esp nor ike with a tunnel; pubkey without its files."""
        self.assertError(load_client, CLIENT + CLIENT_TUNNEL, "esp", "[ike] table")
        pubkey = CLIENT_IKE.replace('psk_file = "keys/psk"', 'auth = "pubkey"')
        self.assertError(load_client, CLIENT + CLIENT_TUNNEL + pubkey, "ike.cert",
                         'auth is "pubkey"')  # fmt: skip
        dn = CLIENT_IKE + 'home_agent_identity = "CN=ha, O=Example"\n'
        c = load_client(self.write(CLIENT + CLIENT_TUNNEL + dn))
        assert c.ike is not None
        self.assertEqual(c.ike.home_agent_identity_kind, "dn")


HOME_RELAY = """
[[relay]]
address = "198.51.100.1"
spi = 2000
key_file = "keys/node.key"
"""


class HomeRelayTests(ConfigTestCase):
    """The home agent's optional [[relay]] tables (Foreign-Home associations)."""

    def load(self, text: str) -> HomeConfig:
        return load_home(self.write(text))

    def fails(self, text: str, key: str, *fragments: str) -> ConfigError:
        return self.assertError(load_home, text, key, *fragments)

    def test_none(self) -> None:
        """Without [[relay]] the home agent knows no relay."""
        self.assertEqual(self.load(HOME).relays, ())

    def test_relays(self) -> None:
        """Each [[relay]]: its address and the FA-HA association."""
        second = edit(HOME_RELAY, ("198.51.100.1", "198.51.100.2"), ("2000", "2001")) + (
            'algorithm = "hmac-sha256"\n'
        )
        c = self.load(HOME + HOME_RELAY + second)
        self.assertEqual(
            c.relays,
            (
                RelayPeerConfig(IPv4Address("198.51.100.1"), AuthKey(2000, bytes.fromhex(KEY_HEX))),
                RelayPeerConfig(
                    IPv4Address("198.51.100.2"),
                    AuthKey(2001, bytes.fromhex(KEY_HEX), "hmac-sha256"),
                ),
            ),
        )
        self.assertNotIn(KEY_HEX, repr(c.relays))

    def test_inlineKeyWarns(self) -> None:
        inline = edit(HOME_RELAY, ('key_file = "keys/node.key"', f'key = "{INLINE_HEX}"'))
        c = self.load(HOME + inline)
        (warning,) = c.warnings
        self.assertIn("relay[0].key", warning)
        self.assertClean(warning)

    def test_badAddress(self) -> None:
        self.fails(
            HOME + HOME_RELAY.replace("198.51.100.1", "relay.example"),
            "relay[0].address",
            "'relay.example' is not an IPv4 address",
            "the relay's IPv4 address",
        )
        self.fails(
            HOME + HOME_RELAY.replace('address = "198.51.100.1"\n', ""),
            "relay[0].address",
            "required key is missing",
        )

    def test_addressOfTheHomeAgent(self) -> None:
        self.fails(
            HOME + HOME_RELAY.replace("198.51.100.1", "192.0.2.1"),
            "relay[0].address",
            "192.0.2.1 is one of home.addresses",
            "not of the home agent",
        )

    def test_duplicates(self) -> None:
        self.fails(
            HOME + HOME_RELAY + HOME_RELAY.replace("2000", "2001"),
            "relay[1].address",
            "198.51.100.1 is already used by relay[0]",
        )
        self.fails(
            HOME + HOME_RELAY + HOME_RELAY.replace("198.51.100.1", "198.51.100.2"),
            "relay[1].spi",
            "SPI 2000 is already used by relay[0]",
        )

    def test_keys(self) -> None:
        """The association's keys are checked as everywhere else."""
        self.fails(
            HOME + HOME_RELAY.replace('key_file = "keys/node.key"\n', ""),
            "relay[0].key",
            "neither key nor key_file",
        )
        self.fails(
            HOME + HOME_RELAY.replace("2000", "255"), "relay[0].spi", "255 is out of range"
        )
        self.fails(
            HOME + HOME_RELAY + 'algorithm = "sha1"\n',
            "relay[0].algorithm",
            "the value is not a known choice",
            '"hmac-md5", "hmac-sha256"',
        )
        self.fails(
            HOME + HOME_RELAY + "port = 434\n",
            "relay[0].port",
            "unknown key",
            "address, algorithm, gateway, ike_auth, ike_identity, key, key_file, psk, "
            "psk_file, spi",
        )

    def test_singleTable(self) -> None:
        self.fails(
            HOME + HOME_RELAY.replace("[[relay]]", "[relay]"),
            "relay",
            "is a single table written as [relay]",
            "[[relay]]",
        )


RELAY_TRANSPORT = """
[[transport]]
kind = "relay"
relay = "198.51.100.1"
spi = 3000
key_file = "keys/node.key"
"""

GATEWAY_TRANSPORT = """
[[transport]]
kind = "gateway"
gateway = "198.51.100.5"
inside_home_agent = "10.10.0.1"
identity = "laptop.example"
psk_file = "keys/psk"
"""


class TransportTests(ConfigTestCase):
    """The client's [[transport]] tables of kind "relay" and "gateway"."""

    def setUp(self) -> None:
        super().setUp()
        self.writeKey("psk", "a-long-enough-shared-secret\n")

    def load(self, text: str) -> ClientConfig:
        return load_client(self.write(text))

    def fails(self, text: str, key: str, *fragments: str) -> ConfigError:
        return self.assertError(load_client, text, key, *fragments)

    def transport(self, text: str) -> TransportConfig:
        (t,) = self.load(CLIENT + text).transports
        return t

    def test_kinds(self) -> None:
        """kind is one of four; a udp transport takes no other key."""
        t = self.transport('\n[[transport]]\nkind = "udp"\nfallback_after = 2\n')
        self.assertEqual((t.kind, t.fallback_after, t.label()), ("udp", 2.0, "udp"))
        self.fails(
            CLIENT + '\n[[transport]]\nkind = "vpn"\n',
            "transport[0].kind",
            "'vpn' is not a known choice",
            '"udp", "http", "relay", "gateway"',
        )
        self.fails(
            CLIENT + '\n[[transport]]\nkind = "udp"\nmux_host = "10.77.0.2"\n',
            "transport[0].mux_host",
            'only HTTP transports take this key (this one is kind = "udp")',
            'kind = "http"',
        )
        self.fails(
            CLIENT + '\n[[transport]]\nkind = "udp"\nrelay = "198.51.100.1"\n',
            "transport[0].relay",
            "only relay transports take this key",
            'kind = "relay"',
        )
        self.fails(
            CLIENT + '\n[[transport]]\nkind = "udp"\nport = 434\n',
            "transport[0].port",
            "only relay and gateway transports take this key",
            'kind = "relay" or kind = "gateway"',
        )
        self.fails(
            CLIENT + '\n[[transport]]\nrelay_host = "x"\n',
            "transport[0].relay_host",
            "unknown key",
            "inside_home_agent",
        )

    # -- relay --------------------------------------------------------------------

    def test_relayDefaults(self) -> None:
        t = self.transport(RELAY_TRANSPORT)
        self.assertEqual(t.kind, "relay")
        self.assertEqual(t.label(), "relay")
        self.assertEqual(t.relay, IPv4Address("198.51.100.1"))
        self.assertEqual((t.port, t.esp_port, t.fallback_after), (434, 4500, 4.0))
        self.assertEqual(t.auth, AuthKey(3000, bytes.fromhex(KEY_HEX)))
        self.assertIsNone(t.gateway)
        self.assertIsNone(t.ike)
        self.assertNotIn(KEY_HEX, repr(t))
        self.assertIn("198.51.100.1:434", repr(t))

    def test_relayEveryKey(self) -> None:
        t = self.transport(
            RELAY_TRANSPORT
            + 'port = 4434\nesp_port = 14500\nalgorithm = "hmac-sha256"\nfallback_after = 2.5\n'
        )
        self.assertEqual((t.port, t.esp_port, t.fallback_after), (4434, 14500, 2.5))
        assert t.auth is not None
        self.assertEqual(t.auth.algorithm, "hmac-sha256")

    def test_relayInlineKey(self) -> None:
        c = self.load(
            CLIENT + edit(RELAY_TRANSPORT, ('key_file = "keys/node.key"', f'key = "{INLINE_HEX}"'))
        )
        (warning,) = c.warnings
        self.assertIn("transport[0].key", warning)
        self.assertClean(warning)
        assert c.transports[0].auth is not None
        self.assertEqual(c.transports[0].auth.key, bytes.fromhex(INLINE_HEX))

    def test_relayErrors(self) -> None:
        self.fails(
            CLIENT + RELAY_TRANSPORT.replace('relay = "198.51.100.1"\n', ""),
            "transport[0].relay",
            "required key is missing",
            "the relay's IPv4 address",
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT.replace("198.51.100.1", "relay.example"),
            "transport[0].relay",
            "'relay.example' is not an IPv4 address",
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT.replace("198.51.100.1", "192.0.2.1"),
            "transport[0].relay",
            "192.0.2.1 is also client.home_agent",
            "different from the home agent's",
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT + "port = 0\n", "transport[0].port", "0 is out of range"
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT + "esp_port = 65536\n",
            "transport[0].esp_port",
            "65536 is out of range",
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT + "esp_port = 434\n",
            "transport[0].esp_port",
            "434 is also transport[0].port",
            "different from its registration port",
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT.replace("spi = 3000\n", ""),
            "transport[0].spi",
            "required key is missing",
            "256 to 4294967295",
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT.replace('key_file = "keys/node.key"\n', ""),
            "transport[0].key",
            "neither key nor key_file is given",
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT + f'key = "{INLINE_HEX}"\n',
            "transport[0].key",
            "both key and key_file are given",
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT + 'algorithm = "md5"\n',
            "transport[0].algorithm",
            "is not a known choice",
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT + 'identity = "laptop.example"\n',
            "transport[0].identity",
            'only gateway transports take this key (this one is kind = "relay")',
            'kind = "gateway"',
        )
        self.fails(
            CLIENT + RELAY_TRANSPORT + "tls = false\n",
            "transport[0].tls",
            "only HTTP transports take this key",
        )

    # -- gateway ------------------------------------------------------------------

    def test_gatewayPSK(self) -> None:
        t = self.transport(GATEWAY_TRANSPORT)
        self.assertEqual((t.kind, t.label()), ("gateway", "gateway"))
        self.assertEqual(t.gateway, IPv4Address("198.51.100.5"))
        self.assertEqual((t.port, t.fallback_after), (4500, 4.0))
        self.assertEqual(t.inside_home_agent, IPv4Address("10.10.0.1"))
        self.assertIsNone(t.relay)
        self.assertIsNone(t.auth)
        assert t.ike is not None
        self.assertEqual((t.ike.identity, t.ike.identity_kind), ("laptop.example", "fqdn"))
        self.assertEqual((t.ike.auth, t.ike.psk), ("psk", b"a-long-enough-shared-secret"))
        # The gateway's identity defaults to its address.
        self.assertEqual(
            (t.ike.home_agent_identity, t.ike.home_agent_identity_kind), ("198.51.100.5", "ipv4")
        )
        self.assertEqual(t.ike.params.proposals[0], "aes128gcm16-prfsha256-ecp256")
        self.assertIsNone(t.ike.cert)
        self.assertNotIn("secret", repr(t))

    def test_gatewayEveryKey(self) -> None:
        t = self.transport(
            GATEWAY_TRANSPORT.replace('psk_file = "keys/psk"\n', "")
            + 'port = 14500\nauth = "pubkey"\ngateway_identity = "CN=gw, O=Home"\n'
            'cert = "laptop.pem"\nkey = "laptop.key"\nca_file = "ca.pem"\nfallback_after = 6\n'
        )
        assert t.ike is not None
        self.assertEqual((t.port, t.fallback_after, t.ike.auth), (14500, 6.0, "pubkey"))
        self.assertEqual(
            (t.ike.home_agent_identity, t.ike.home_agent_identity_kind), ("CN=gw, O=Home", "dn")
        )
        self.assertEqual(
            (t.ike.cert, t.ike.key, t.ike.ca_file),
            (self.dir.absolute() / "laptop.pem", self.dir.absolute() / "laptop.key",
             self.dir.absolute() / "ca.pem"),
        )  # fmt: skip
        self.assertEqual(t.ike.psk, b"")

    def test_gatewayIdentities(self) -> None:
        for identity, kind in (
            ("laptop@home.example", "rfc822"),
            ("192.0.2.77", "ipv4"),
            ("CN=laptop", "dn"),
        ):
            t = self.transport(GATEWAY_TRANSPORT.replace("laptop.example", identity))
            assert t.ike is not None
            self.assertEqual(t.ike.identity_kind, kind)
        t = self.transport(GATEWAY_TRANSPORT + 'gateway_identity = "gw.home.example"\n')
        assert t.ike is not None
        self.assertEqual(t.ike.home_agent_identity, "gw.home.example")

    def test_gatewayWarnings(self) -> None:
        """Keys of the other authentication method are ignored with a warning."""
        c = self.load(CLIENT + GATEWAY_TRANSPORT + 'cert = "c.pem"\n')
        (warning,) = c.warnings
        self.assertIn("transport[0].cert", warning)
        self.assertIn('ignored because auth is "psk"', warning)
        c = self.load(
            CLIENT + GATEWAY_TRANSPORT
            + 'auth = "pubkey"\ncert = "c.pem"\nkey = "k.pem"\nca_file = "ca.pem"\n'
        )  # fmt: skip
        (warning,) = c.warnings
        self.assertIn("transport[0].psk", warning)
        assert c.transports[0].ike is not None
        self.assertEqual(c.transports[0].ike.psk, b"")

    def test_gatewayErrors(self) -> None:
        for line, key in (
            ('gateway = "198.51.100.5"\n', "gateway"),
            ('inside_home_agent = "10.10.0.1"\n', "inside_home_agent"),
            ('identity = "laptop.example"\n', "identity"),
        ):
            self.fails(
                CLIENT + GATEWAY_TRANSPORT.replace(line, ""),
                f"transport[0].{key}",
                "required key is missing",
            )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT.replace('"198.51.100.5"', '"gw.example"'),
            "transport[0].gateway",
            "'gw.example' is not an IPv4 address",
            "the VPN gateway's IPv4 address",
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT.replace('"10.10.0.1"', '"home"'),
            "transport[0].inside_home_agent",
            "'home' is not an IPv4 address",
            "inside the home network",
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT.replace('"10.10.0.1"', '"198.51.100.5"'),
            "transport[0].inside_home_agent",
            "198.51.100.5 is also transport[0].gateway",
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT + "port = 70000\n",
            "transport[0].port",
            "70000 is out of range",
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT.replace("laptop.example", "not an id!"),
            "transport[0].identity",
            "'not an id!' is not a valid identity",
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT + 'gateway_identity = "CN="\n',
            "transport[0].gateway_identity",
            "is not a valid distinguished name",
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT + 'auth = "eap"\n',
            "transport[0].auth",
            "'eap' is not a known choice",
            '"psk", "pubkey"',
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT.replace('psk_file = "keys/psk"\n', ""),
            "transport[0].psk",
            'neither psk nor psk_file is given (auth is "psk")',
        )
        self.writeKey("short", "tiny\n")
        self.fails(
            CLIENT + GATEWAY_TRANSPORT.replace("keys/psk", "keys/short"),
            "transport[0].psk",
            "the secret is 4 characters long",
            "at least 16 characters",
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT.replace("keys/psk", "keys/none"),
            "transport[0].psk_file",
            "cannot read",
        )
        pubkey = GATEWAY_TRANSPORT.replace('psk_file = "keys/psk"\n', 'auth = "pubkey"\n')
        self.fails(
            CLIENT + pubkey + 'key = "k.pem"\nca_file = "ca.pem"\n',
            "transport[0].cert",
            'required key is missing (auth is "pubkey")',
            "a PEM file path",
        )
        self.fails(
            CLIENT + pubkey + 'cert = "c.pem"\nca_file = "ca.pem"\n',
            "transport[0].key",
            'required key is missing (auth is "pubkey")',
        )
        self.fails(
            CLIENT + pubkey + 'cert = "c.pem"\nkey = "k.pem"\n',
            "transport[0].ca_file",
            'required key is missing (auth is "pubkey")',
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT + "spi = 3000\n",
            "transport[0].spi",
            'only relay transports take this key (this one is kind = "gateway")',
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT + "esp_port = 4500\n",
            "transport[0].esp_port",
            "only relay transports take this key",
        )
        self.fails(
            CLIENT + GATEWAY_TRANSPORT + 'token = "aa"\n',
            "transport[0].token",
            "only HTTP transports take this key",
        )

    def test_order(self) -> None:
        """Every kind together, in the order given."""
        c = self.load(
            CLIENT + '\n[[transport]]\nkind = "udp"\n' + RELAY_TRANSPORT + GATEWAY_TRANSPORT
        )
        self.assertEqual([t.label() for t in c.transports], ["udp", "relay", "gateway"])


TERMINATE = edit(RELAY, ("[relay]\n", '[relay]\nmode = "terminate"\n')) + """psk_file = "keys/psk"

[ike]
identity = "relay.example"
"""
TERMINATE_VISITOR = """
[[visitor]]
name = "laptop"
home_address = "10.10.0.10"
spi = 3000
key_file = "keys/node.key"
ike_identity = "laptop.example"
psk_file = "keys/psk"
"""


class RelayTerminateConfigTests(ConfigTestCase):
    """A relay in "terminate" mode: its [ike] table and the IKE keys of its peers."""

    def setUp(self) -> None:
        super().setUp()
        self.writeKey("psk", "a-long-enough-shared-secret\n")

    def load(self, text: str) -> RelayConfig:
        return load_relay(self.write(text))

    def fails(self, text: str, key: str, *fragments: str) -> ConfigError:
        return self.assertError(load_relay, text, key, *fragments)

    def test_terminate(self) -> None:
        """The relay's identity, each home agent's and each visitor's, with their secrets."""
        c = self.load(TERMINATE + TERMINATE_VISITOR)
        self.assertEqual(c.mode, "terminate")
        assert c.ike is not None
        self.assertEqual((c.ike.identity, c.ike.identity_kind, c.ike.auth),
                         ("relay.example", "fqdn", "psk"))  # fmt: skip
        (ha,) = c.home_agent_ike
        # The home agent's identity defaults to its address.
        self.assertEqual((ha.ike_identity, ha.ike_identity_kind), ("192.0.2.1", "ipv4"))
        self.assertEqual(ha.psk, b"a-long-enough-shared-secret")
        (v,) = c.visitors
        self.assertEqual(
            (v.ike_identity, v.psk), ("laptop.example", b"a-long-enough-shared-secret")
        )
        self.assertNotIn("a-long-enough", repr(c))

    def test_ike_required(self) -> None:
        self.fails(
            edit(RELAY, ("[relay]\n", '[relay]\nmode = "terminate"\n')),
            "ike", "required section is missing", "[ike]",
        )

    def test_ike_refused_in_forward_mode(self) -> None:
        self.fails(RELAY + '\n[ike]\nidentity = "relay.example"\n', "ike", 'mode = "terminate"')

    def test_visitor_needs_identity_and_home_address(self) -> None:
        self.fails(
            TERMINATE + TERMINATE_VISITOR.replace('ike_identity = "laptop.example"\n', ""),
            "visitor[0].ike_identity", "required",
        )
        self.fails(
            TERMINATE + TERMINATE_VISITOR.replace('home_address = "10.10.0.10"\n', ""),
            "visitor[0].home_address", "required key is missing", "traffic selector",
        )

    def test_psk_required_and_checked(self) -> None:
        self.fails(
            TERMINATE.replace('psk_file = "keys/psk"\n', "") + TERMINATE_VISITOR,
            "home_agent[0].psk", "neither psk nor psk_file",
        )
        self.fails(
            TERMINATE + TERMINATE_VISITOR.replace('psk_file = "keys/psk"', 'psk = "short"'),
            "visitor[0].psk", "5 characters long",
        )

    def test_pubkey_needs_credentials(self) -> None:
        text = TERMINATE.replace('identity = "relay.example"', 'identity = "relay.example"\n'
                                 'auth = "pubkey"')  # fmt: skip
        self.fails(text + TERMINATE_VISITOR, "ike.cert", "required key is missing")

    def test_ike_keys_warned_in_forward_mode(self) -> None:
        c = self.load(RELAY + 'ike_identity = "ha.example"\n')
        (warning,) = c.warnings
        self.assertIn("home_agent[0].ike_identity", warning)
        self.assertIn("ignored", warning)


class HomeRelayIKEConfigTests(ConfigTestCase):
    """[[relay]] ike_identity: the home agent accepts the relay's IKE for its visitors."""

    def setUp(self) -> None:
        super().setUp()
        self.writeKey("psk", "a-long-enough-shared-secret\n")

    def test_ike_identity(self) -> None:
        c = load_home(self.write(HOME + HOME_RELAY + 'ike_identity = "relay.example"\n'
                                 'psk_file = "keys/psk"\n'))  # fmt: skip
        (r,) = c.relays
        self.assertEqual((r.ike_identity, r.ike_auth, r.psk),
                         ("relay.example", "psk", b"a-long-enough-shared-secret"))  # fmt: skip
        self.assertNotIn("a-long-enough", repr(r))

    def test_without_ike_identity_no_ike_keys(self) -> None:
        self.assertError(
            load_home, HOME + HOME_RELAY + 'psk_file = "keys/psk"\n', "relay[0].psk_file",
            "only read with ike_identity",
        )

    def test_psk_required(self) -> None:
        self.assertError(
            load_home, HOME + HOME_RELAY + 'ike_identity = "relay.example"\n', "relay[0].psk",
            "neither psk nor psk_file",
        )


class RelayTransportTerminateTests(ConfigTestCase):
    """A relay transport with mode = "terminate" and its [transport.ike]."""

    def setUp(self) -> None:
        super().setUp()
        self.writeKey("psk", "a-long-enough-shared-secret\n")

    def test_terminate(self) -> None:
        c = load_client(self.write(CLIENT + RELAY_TRANSPORT + 'mode = "terminate"\n\n'
                                   '[transport.ike]\nidentity = "laptop.example"\n'
                                   'psk_file = "keys/psk"\nrelay_identity = "relay.example"\n'))
        (t,) = c.transports
        self.assertEqual(t.mode, "terminate")
        assert t.ike is not None
        self.assertEqual((t.ike.identity, t.ike.home_agent_identity),
                         ("laptop.example", "relay.example"))  # fmt: skip
        self.assertNotIn("a-long-enough", repr(t))
        # The relay's identity defaults to its address.
        c = load_client(self.write(CLIENT + RELAY_TRANSPORT + 'mode = "terminate"\n\n'
                                   '[transport.ike]\nidentity = "laptop.example"\n'
                                   'psk_file = "keys/psk"\n'))
        assert c.transports[0].ike is not None
        self.assertEqual(c.transports[0].ike.home_agent_identity, "198.51.100.1")

    def test_ike_required_with_terminate(self) -> None:
        self.assertError(
            load_client, CLIENT + RELAY_TRANSPORT + 'mode = "terminate"\n', "transport[0].ike",
            "required section is missing",
        )

    def test_ike_refused_with_forward(self) -> None:
        self.assertError(
            load_client,
            CLIENT + RELAY_TRANSPORT + '\n[transport.ike]\nidentity = "laptop.example"\n'
            'psk_file = "keys/psk"\n',
            "transport[0].ike", 'mode = "terminate"',
        )


GATEWAY_RELAY = edit(RELAY, ("[relay]\n", '[relay]\nmode = "gateway"\n')) + (
    'inside_address = "10.10.0.1"\n\n[ike]\nidentity = "relay.example"\npool = "10.79.0.0/24"\n'
)
GATEWAY_VISITOR = """
[[visitor]]
name = "laptop"
ike_identity = "laptop.example"
psk_file = "keys/psk"
"""


def gateway_visitor(name: str) -> str:
    """Another [[visitor]] of a relay in "gateway" mode."""
    return edit(GATEWAY_VISITOR, ('"laptop"', f'"{name}"'), ("laptop.example", f"{name}.example"))


class RelayGatewayConfigTests(ConfigTestCase):
    """A relay in "gateway" mode: [ike] pool, [[home_agent]] inside_address, lean visitors."""

    def setUp(self) -> None:
        super().setUp()
        self.writeKey("psk", "a-long-enough-shared-secret\n")

    def load(self, text: str) -> RelayConfig:
        return load_relay(self.write(text))

    def fails(self, text: str, key: str, *fragments: str) -> ConfigError:
        return self.assertError(load_relay, text, key, *fragments)

    def test_gateway(self) -> None:
        """The pool, each home agent's inside address, a visitor without MN-FA keys."""
        c = self.load(GATEWAY_RELAY + GATEWAY_VISITOR)
        self.assertEqual(c.mode, "gateway")
        self.assertEqual(c.warnings, ())
        assert c.ike is not None
        self.assertEqual(c.ike.pool, IPv4Network("10.79.0.0/24"))
        self.assertEqual((c.ike.identity, c.ike.auth), ("relay.example", "psk"))
        (ha,) = c.home_agent_ike
        self.assertEqual((ha.address, ha.inside_address),
                         (IPv4Address("192.0.2.1"), IPv4Address("10.10.0.1")))  # fmt: skip
        # No IKE with home in this mode: no identity or secret read for it.
        self.assertEqual(ha.psk, b"")
        key = AuthKey(2000, bytes.fromhex(KEY_HEX))
        self.assertEqual(c.home_agents, ((IPv4Address("192.0.2.1"), key),))
        (v,) = c.visitors
        self.assertEqual(
            (v.name, v.home_address, v.auth, v.ike_identity, v.psk),
            ("laptop", None, None, "laptop.example", b"a-long-enough-shared-secret"),
        )
        self.assertNotIn("a-long-enough", repr(c))

    def test_visitor_mnfa_keys_still_read(self) -> None:
        """A visitor may still have its MN-FA keys in gateway mode."""
        c = self.load(GATEWAY_RELAY + GATEWAY_VISITOR + 'spi = 3000\nkey_file = "keys/node.key"\n')
        (v,) = c.visitors
        self.assertEqual(v.auth, AuthKey(3000, bytes.fromhex(KEY_HEX)))
        self.fails(
            GATEWAY_RELAY + GATEWAY_VISITOR + "spi = 3000\n",
            "visitor[0].key", "neither key nor key_file",
        )

    def test_visitor_needs_ike_identity_and_psk(self) -> None:
        self.fails(
            GATEWAY_RELAY + GATEWAY_VISITOR.replace('ike_identity = "laptop.example"\n', ""),
            "visitor[0].ike_identity", "required key is missing",
        )
        self.fails(
            GATEWAY_RELAY + GATEWAY_VISITOR.replace('psk_file = "keys/psk"\n', ""),
            "visitor[0].psk", "neither psk nor psk_file",
        )

    def test_ike_required(self) -> None:
        self.fails(
            GATEWAY_RELAY.split("[ike]")[0] + GATEWAY_VISITOR, "ike", "required section is missing"
        )

    def test_pool_required(self) -> None:
        self.fails(
            GATEWAY_RELAY.replace('pool = "10.79.0.0/24"\n', "") + GATEWAY_VISITOR,
            "ike.pool", "required key is missing", "CIDR",
        )

    def test_bad_pool(self) -> None:
        for pool, fragment in (
            ('"10.79.0.1/24"', "is not a valid IPv4 network"),  # host bits set
            ('"nonsense"', "is not a valid IPv4 network"),
            ('"2001:db8::/64"', "is not a valid IPv4 network"),
            ('"10.79.0.0/33"', "is not a valid IPv4 network"),
            ("24", "must be a string"),
            ('"10.79.0.0/31"', "holds no address for a client"),
            ('"10.79.0.7/32"', "holds no address for a client"),
        ):
            self.fails(
                GATEWAY_RELAY.replace('"10.79.0.0/24"', pool) + GATEWAY_VISITOR,
                "ike.pool", fragment,
            )

    def test_pool_too_small_for_the_visitors(self) -> None:
        """A /30 has two host addresses: two visitors fit, three do not."""
        small = GATEWAY_RELAY.replace("10.79.0.0/24", "10.79.0.0/30")
        c = self.load(small + GATEWAY_VISITOR + gateway_visitor("phone"))
        self.assertEqual(len(c.visitors), 2)
        self.fails(
            small + GATEWAY_VISITOR + gateway_visitor("phone") + gateway_visitor("tablet"),
            "ike", "2 host addresses for 3 visitors", "a host address for every [[visitor]]",
        )

    def test_inside_address_required(self) -> None:
        self.fails(
            GATEWAY_RELAY.replace('inside_address = "10.10.0.1"\n', "") + GATEWAY_VISITOR,
            "home_agent[0].inside_address", "required key is missing",
        )
        self.fails(
            GATEWAY_RELAY.replace('"10.10.0.1"', '"inside"') + GATEWAY_VISITOR,
            "home_agent[0].inside_address", "is not an IPv4 address",
        )

    def test_home_agent_ike_keys_ignored(self) -> None:
        """ike_identity and psk of a [[home_agent]] mean nothing here: warned, not read."""
        c = self.load(
            GATEWAY_RELAY.replace(
                'inside_address = "10.10.0.1"\n',
                'inside_address = "10.10.0.1"\nike_identity = "ha.example"\n'
                'psk_file = "keys/psk"\n',
            )
            + GATEWAY_VISITOR
        )
        self.assertEqual(len(c.warnings), 2, c.warnings)
        for key, warning in zip(("ike_identity", "psk_file"), c.warnings, strict=True):
            self.assertIn(f"home_agent[0].{key}", warning)
            self.assertIn('ignored because relay.mode is "gateway"', warning)
        (ha,) = c.home_agent_ike
        self.assertEqual((ha.ike_identity, ha.psk), ("192.0.2.1", b""))

    def test_pool_warned_in_terminate_mode(self) -> None:
        c = self.load(TERMINATE + 'pool = "10.79.0.0/24"\n' + TERMINATE_VISITOR)
        (warning,) = c.warnings
        self.assertIn("ike.pool", warning)
        self.assertIn('ignored because relay.mode is not "gateway"', warning)
        assert c.ike is not None
        self.assertIsNone(c.ike.pool)

    def test_inside_address_warned_in_terminate_mode(self) -> None:
        c = self.load(
            TERMINATE.replace("[ike]", 'inside_address = "10.10.0.1"\n\n[ike]') + TERMINATE_VISITOR
        )
        (warning,) = c.warnings
        self.assertIn("home_agent[0].inside_address", warning)
        (ha,) = c.home_agent_ike
        self.assertIsNone(ha.inside_address)

    def test_pool_in_forward_mode_refused(self) -> None:
        """Forward mode has no [ike] at all, pool or not."""
        self.fails(
            RELAY + '\n[ike]\nidentity = "relay.example"\npool = "10.79.0.0/24"\n',
            "ike", 'mode = "terminate" or "gateway"',
        )


class HomeRelayGatewayConfigTests(ConfigTestCase):
    """[[relay]] gateway = true: the relay may be its clients' VPN gateway."""

    def test_default_false(self) -> None:
        (r,) = load_home(self.write(HOME + HOME_RELAY)).relays
        self.assertFalse(r.gateway)

    def test_true(self) -> None:
        (r,) = load_home(self.write(HOME + HOME_RELAY + "gateway = true\n")).relays
        self.assertTrue(r.gateway)
        self.assertEqual(r.address, IPv4Address("198.51.100.1"))
        (r,) = load_home(self.write(HOME + HOME_RELAY + "gateway = false\n")).relays
        self.assertFalse(r.gateway)

    def test_with_ike_identity(self) -> None:
        self.writeKey("psk", "a-long-enough-shared-secret\n")
        (r,) = load_home(self.write(HOME + HOME_RELAY + 'ike_identity = "relay.example"\n'
                                    'psk_file = "keys/psk"\ngateway = true\n')).relays  # fmt: skip
        self.assertTrue(r.gateway)
        self.assertEqual(r.ike_identity, "relay.example")

    def test_not_a_boolean(self) -> None:
        for value, fragment in (('"yes"', "a string"), ("1", "an integer"), ('"true"', "a string")):
            self.assertError(
                load_home, HOME + HOME_RELAY + f"gateway = {value}\n", "relay[0].gateway",
                fragment, "true or false",
            )
