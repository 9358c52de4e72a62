"""The tap modules: options, configuration errors, services that start and stop."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address
from pathlib import Path

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.python import usage
from twisted.trial.unittest import TestCase

from smobility.config import load_client, load_home
from smobility.engines.mobilenode import State
from smobility.services import client_tap, home_tap, mux_tap, relay_tap
from tests.procs import ROOT, env, twistd, write_client, write_home
from tests.util import free_udp_port


class OptionsTests(TestCase):
    """Bad options and bad configurations give one sentence, not a traceback."""

    def test_config_required(self) -> None:
        for tap, example in [
            (home_tap, "etc/home.toml"),
            (client_tap, "etc/client.toml"),
            (relay_tap, "etc/relay.toml"),
            (mux_tap, "etc/mux.toml"),
        ]:
            e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, [])
            self.assertIn("--config FILE is required", str(e))
            self.assertIn(example, str(e))

    def test_missing_file(self) -> None:
        e = self.assertRaises(
            usage.UsageError, home_tap.Options().parseOptions, ["--config", "/nonexistent.toml"]
        )
        self.assertIn("/nonexistent.toml", str(e))

    def test_bad_value_names_file_and_key(self) -> None:
        d = Path(self.mktemp()).resolve()
        d.mkdir()
        path = write_home(d, 1434)
        path.write_text(
            path.read_text().replace('home_network = "10.77.0.0/24"', 'home_network = "nonsense"')
        )
        e = self.assertRaises(usage.UsageError, home_tap.Options().parseOptions, ["-c", str(path)])
        self.assertIn(str(path), str(e))
        self.assertIn("home_network", str(e))

    def test_unwritable_state_db(self) -> None:
        d = Path(self.mktemp()).resolve()
        d.mkdir()
        blocker = d / "file"
        blocker.write_text("")
        path = write_home(d, 1434)
        path.write_text(path.read_text().replace(str(d / "home.sqlite"), str(blocker / "x" / "db")))
        e = self.assertRaises(usage.UsageError, home_tap.Options().parseOptions, ["-c", str(path)])
        self.assertIn("state_db", str(e))

    def test_relay_terminate_without_ike_refused_with_reason(self) -> None:
        """mode = "terminate" needs the relay's own IKE settings: one sentence names [ike]."""
        d = Path(self.mktemp()).resolve()
        d.mkdir()
        cfg = d / "relay.toml"
        cfg.write_text(
            (ROOT / "etc" / "relay.toml").read_text().replace(
                'mode = "forward"', 'mode = "terminate"'
            )
        )
        self.assertIn('mode = "terminate"', cfg.read_text())
        e = self.assertRaises(usage.UsageError, relay_tap.Options().parseOptions, ["-c", str(cfg)])
        self.assertIn(str(cfg), str(e))
        self.assertIn("ike", str(e))
        self.assertIn("required section is missing", str(e))

    def test_twistd_prints_sentence_not_traceback(self) -> None:
        """The real twistd command: exit status non-zero, the sentence, no traceback."""
        d = Path(self.mktemp()).resolve()
        d.mkdir()
        bad = d / "bad.toml"
        bad.write_text("[home]\nport = 'x'\n")
        for args, needle in [
            (["smobility-home", "--config", str(bad)], str(bad)),
            # Outside the lab the relay's address is not ours: one sentence.
            (["smobility-relay", "--config", str(ROOT / "etc/relay.toml")], "IP-in-IP"),
            (["smobility-client"], "--config FILE is required"),
        ]:
            r = subprocess.run(
                [twistd(), "-n", "--pidfile=", *args],
                capture_output=True,
                env=env(),
                timeout=60,
                cwd=str(ROOT),
            )
            out = (r.stdout + r.stderr).decode()
            self.assertNotEqual(r.returncode, 0, out)
            self.assertIn(needle, out)
            self.assertNotIn("Traceback", out)

    def test_example_configs_parse(self) -> None:
        """etc/home.toml and etc/client.toml are accepted by the taps."""
        o = home_tap.Options()
        # The example's state_db lives under /var/lib; parse without opening it.
        o.load(str(ROOT / "etc/home.toml"))
        c = client_tap.Options()
        c.parseOptions(["--config", str(ROOT / "etc/client.toml")])
        self.assertEqual(c.config.home_agent, IPv4Address("172.31.0.2"))
        loop = client_tap.Options()
        loop.parseOptions(["--config", str(ROOT / "etc/loopback/client.toml")])
        self.assertEqual(loop.config.home_agent, IPv4Address("127.0.0.1"))


class ServiceTests(TestCase):
    """The home agent and client services in this process, on the real reactor."""

    timeout = 30

    @inlineCallbacks
    def test_register_and_deregister(self):  # type: ignore[no-untyped-def]
        d = Path(self.mktemp()).resolve()
        d.mkdir()
        port = free_udp_port()
        home = home_tap.HomeAgentService(load_home(write_home(d, port)), reactor=reactor)
        home.startService()
        self.addCleanup(home.stopService)
        client = client_tap.ClientService(load_client(write_client(d, port)), reactor=reactor)
        client.startService()
        self.addCleanup(lambda: client.running and client.stopService())
        for _ in range(100):
            if client.engine.state is State.REGISTERED:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertIs(client.engine.state, State.REGISTERED)
        assert home.engine is not None
        [binding] = home.engine.bindings["laptop"]
        self.assertEqual(binding.care_of_address, IPv4Address("127.0.0.1"))
        self.assertTrue((d / "laptop.json").exists())
        yield client.stopService()
        self.assertEqual(home.engine.bindings, {})
        self.assertIs(client.engine.state, State.UNREGISTERED)

    @inlineCallbacks
    def test_stop_without_home_agent_is_bounded(self):  # type: ignore[no-untyped-def]
        """A client whose home agent is gone still stops (deregistration times out)."""
        d = Path(self.mktemp()).resolve()
        d.mkdir()
        client = client_tap.ClientService(
            load_client(write_client(d, free_udp_port())), reactor=reactor
        )
        client.startService()
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertIs(client.engine.state, State.REGISTERING)
        yield client.stopService()
        self.assertIsNone(client.port)
