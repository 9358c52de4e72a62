"""The roaming demo: a client moves across the lab's networks with TCP streams running.

Builds the namespace lab, starts the home agent, the multiplexer (with its
SOCKS5 ingress), Squid in V3, the relay (public side of the home firewall),
a strongSwan VPN gateway and the client as real processes, starts two TCP
streams through the tunnel (the correspondent host to the client's permanent
address, i.e. inbound, and the client to the correspondent), moves the
client V1, V2 (behind NAT), home, V1, V4 (home agent blocked: the relay),
V5 (only IPsec to the gateway), V3 (only an HTTP proxy: HTTPS to the
multiplexer), V2 while they run, checks after each move that a new inbound
connection to the permanent address works, and prints a timeline (per move:
link change, new address, transports tried, registration sent, reply, first
packet on the new path, gap) and, last, one JSON line.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smobility.lab import Lab

ROOT = Path(__file__).resolve().parent.parent.parent
MOVES = ("v1", "v2", "home", "v1", "v4", "v5", "v3", "v2")
DWELL = 5.0
HOA = "10.77.0.10"
CN = "10.77.0.100"
HA = "172.31.0.2"
NETS = {
    "home": "10.77.0.0/24",
    "v1": "192.168.101.0/24",
    "v2": "192.168.102.0/24",
    "v3": "192.168.103.0/24",
    "v4": "192.168.104.0/24",
    "v5": "192.168.105.0/24",
}
NETWORK_KIND = {
    "home": "home LAN",
    "v1": "routed",
    "v2": "behind NAT",
    "v3": "strict firewall, HTTP proxy only",
    "v4": "home agent blocked, relay reachable",
    "v5": "only IPsec to the home VPN gateway",
}
MUX_ADDR = "10.77.0.2"
HA_LAN = "10.77.0.1"
MUX_PORT = 8443
MUX_NAME = "mux.home.example"
SOCKS_PORT = 1080
PROXY_ADDR = "192.168.103.3"
RELAY = "172.31.4.2"
RELAY_ID = "relay.lab.example"
RELAY_POOL = "10.79.0.0/24"
GW_PUBLIC = "172.31.5.2"
GW_ID = "gw.home.example"
CLIENT_ID = "laptop.home.example"
VPN_POOL = "10.78.0.0/24"


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass
class Demo:
    """One run of the roaming demo."""

    lab: Lab
    work: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    squid: Any = None
    mux: subprocess.Popen[bytes] | None = None
    relay: subprocess.Popen[bytes] | None = None
    gateway: Any = None
    swan_dir: Path | None = None
    proxy_kind: str = "squid"

    # -- the HTTP path: Squid in V3, the multiplexer and its SOCKS5 ingress at home --

    def ctl(self, *args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "smobility.ctl", *args],
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
        if r.returncode != 0:
            raise SystemExit(f"demo: smobility-ctl {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    def setup_http(self) -> str:
        """Certificates, credentials, Squid and the mux config; the client's transports."""
        keys = self.work / "keys"
        home_db = str(self.work / "home.sqlite")
        mux_db = str(self.work / "mux.sqlite")
        self.ctl("pki", "init", "--db", home_db)
        self.ctl("pki", "issue", "mux", "--san", f"dns:{MUX_NAME}", "--server",
                 "--out-dir", str(keys / "mux"), "--db", home_db)  # fmt: skip
        token = self.ctl("tokens", "issue", "laptop", "--db", mux_db).split()[0]
        (keys / "mux-token").write_text(token + "\n")
        (keys / "mux-token").chmod(0o600)
        socks_pw = keys / "socks-password"
        socks_pw.write_text(secrets.token_hex(12) + "\n")
        socks_pw.chmod(0o600)
        self.ctl("socks-users", "add", "laptop", "--password-file", str(socks_pw), "--db", mux_db)
        proxy_pw = secrets.token_hex(8)
        (keys / "proxy-password").write_text(proxy_pw + "\n")
        (keys / "proxy-password").chmod(0o600)
        (self.work / "mux.toml").write_text(
            f"""
[mux]
listen = "{MUX_ADDR}"
port = {MUX_PORT}
tls = true
tls_cert = "{keys / "mux" / "mux.crt"}"
tls_key = "{keys / "mux" / "mux.key"}"
tls_name = "{MUX_NAME}"
# The home agent as the multiplexer reaches it: over the home LAN.
home_agent = "{HA_LAN}"
socks_listen = "{MUX_ADDR}"
socks_port = {SOCKS_PORT}
state_db = "{mux_db}"
keepalive = 5
"""
        )
        from smobility.lab.proxies import Squid, Tinyproxy

        kind = Squid if self.proxy_kind == "squid" else Tinyproxy
        self.squid = kind(self.lab, role="proxy", address=PROXY_ADDR, port=3128,
                          user="guest", password=proxy_pw)  # fmt: skip
        return f"""
[[transport]]
kind = "udp"
fallback_after = 2.5

[[transport]]
kind = "http"
fallback_after = 6
mux_host = "{MUX_ADDR}"
mux_port = {MUX_PORT}
tls = true
tls_name = "{MUX_NAME}"
ca_file = "{keys / "mux" / "ca.crt"}"
token_file = "{keys / "mux-token"}"

[transport.proxy]
kind = "socks5"
host = "{HA}"
port = {SOCKS_PORT}
username = "laptop"
password_file = "{socks_pw}"

[transport.outer_proxy]
kind = "http-connect"
host = "{PROXY_ADDR}"
port = 3128
username = "guest"
password_file = "{keys / "proxy-password"}"
"""

    # -- the relay path: a relay on the public side of the home firewall --

    def setup_relay(self, home: Path, mode: str = "forward") -> str:
        """Keys and the relay's config; adds the relay to ``home``; the client's transport.

        ``mode`` "terminate": the relay ends the client's ESP (IKEv2 with the
        client, shared keys) and keys the way home with its own IKEv2 on the
        client's behalf (the home agent gets an [ike] table for it);
        "terminate-pubkey": the same with certificates from the home CA.
        """
        pubkey = mode == "terminate-pubkey"
        mode = "terminate" if pubkey else mode
        if mode == "gateway":
            return self._setup_relay_gateway(home)
        keys = self.work / "keys"
        for name in ("faha", "mnfa"):
            f = keys / name
            f.write_text(secrets.token_hex(16) + "\n")
            f.chmod(0o600)
        terminate = mode == "terminate"
        for name in ("relay-home-psk", "laptop-relay-psk") if terminate and not pubkey else ():
            f = keys / name
            f.write_text(secrets.token_hex(16) + "\n")
            f.chmod(0o600)
        relay_ike = home_ike = ha_ike = visitor_ike = client_ike = ""
        if pubkey:
            db = str(self.work / "home.sqlite")
            self.ctl("pki", "init", "--db", db)
            for name, san, usage in (
                ("ha", f"ip:{HA}", "--server"), ("relay", f"dns:{RELAY_ID}", None),
                ("laptop", "dns:laptop.example", "--client"),
            ):
                extra = [usage] if usage else []
                self.ctl("pki", "issue", name, "--san", san, *extra, "--out-dir",
                         str(keys / name), "--db", db)  # fmt: skip
            home_ike = f"""ike_identity = "{RELAY_ID}"
ike_auth = "pubkey"

[ike]
cert = "{keys / "ha" / "ha.crt"}"
key = "{keys / "ha" / "ha.key"}"
liveness = 10
"""
            relay_ike = f"""
[ike]
identity = "{RELAY_ID}"
auth = "pubkey"
cert = "{keys / "relay" / "relay.crt"}"
key = "{keys / "relay" / "relay.key"}"
ca_file = "{keys / "relay" / "ca.crt"}"
liveness = 10
"""
            visitor_ike = 'ike_identity = "laptop.example"\n'
            client_ike = f"""mode = "terminate"

[transport.ike]
identity = "laptop.example"
auth = "pubkey"
cert = "{keys / "laptop" / "laptop.crt"}"
key = "{keys / "laptop" / "laptop.key"}"
ca_file = "{keys / "laptop" / "ca.crt"}"
relay_identity = "{RELAY_ID}"
liveness = 10
"""
        elif terminate:
            home_ike = f"""ike_identity = "{RELAY_ID}"
psk_file = "{keys / "relay-home-psk"}"

[ike]
liveness = 10
"""
            relay_ike = f'\n[ike]\nidentity = "{RELAY_ID}"\nliveness = 10\n'
            ha_ike = f'psk_file = "{keys / "relay-home-psk"}"\n'
            visitor_ike = (
                f'ike_identity = "laptop.example"\npsk_file = "{keys / "laptop-relay-psk"}"\n'
            )
            client_ike = f"""mode = "terminate"

[transport.ike]
identity = "laptop.example"
psk_file = "{keys / "laptop-relay-psk"}"
relay_identity = "{RELAY_ID}"
liveness = 10
"""
        with home.open("a") as out:
            out.write(
                f"""
[[relay]]
address = "{RELAY}"
spi = 2000
key_file = "{keys / "faha"}"
{home_ike}"""
            )
        (self.work / "relay.toml").write_text(
            f"""
[relay]
address = "{RELAY}"
mode = "{mode}"
max_lifetime = 60
{relay_ike}
[[home_agent]]
address = "{HA}"
spi = 2000
key_file = "{keys / "faha"}"
{ha_ike}
[[visitor]]
name = "laptop"
home_address = "{HOA}"
spi = 3000
key_file = "{keys / "mnfa"}"
{visitor_ike}"""
        )
        return f"""
[[transport]]
kind = "relay"
relay = "{RELAY}"
spi = 3000
key_file = "{keys / "mnfa"}"
fallback_after = 2.5
{client_ike}"""

    def _setup_relay_gateway(self, home: Path) -> str:
        """The relay as the client's IPsec VPN gateway (figure 7, shared keys)."""
        keys = self.work / "keys"
        for name in ("faha", "laptop-relay-psk"):
            f = keys / name
            f.write_text(secrets.token_hex(16) + "\n")
            f.chmod(0o600)
        with home.open("a") as out:
            out.write(
                f"""
[[relay]]
address = "{RELAY}"
spi = 2000
key_file = "{keys / "faha"}"
gateway = true
"""
            )
        (self.work / "relay.toml").write_text(
            f"""
[relay]
address = "{RELAY}"
mode = "gateway"

[ike]
identity = "{RELAY_ID}"
pool = "{RELAY_POOL}"

[[home_agent]]
address = "{HA}"
spi = 2000
key_file = "{keys / "faha"}"
inside_address = "{HA_LAN}"

[[visitor]]
name = "laptop"
ike_identity = "laptop.example"
psk_file = "{keys / "laptop-relay-psk"}"
"""
        )
        return f"""
[[transport]]
kind = "gateway"
gateway = "{RELAY}"
inside_home_agent = "{HA_LAN}"
identity = "laptop.example"
psk_file = "{keys / "laptop-relay-psk"}"
gateway_identity = "{RELAY_ID}"
fallback_after = 4
"""

    def start_relay(self) -> subprocess.Popen[bytes]:
        """Start the relay (namespace rl)."""
        self.relay = self.twistd("rl", "smobility-relay", self.work / "relay.toml", "relay.log")
        return self.relay

    # -- the gateway path: a strongSwan VPN gateway at the home perimeter --

    def setup_gateway(self, auth: str = "psk") -> str:
        """The gateway's swanctl.conf and credentials (PSK, or our CA's certificates).

        Returns the client's transport; start the gateway with :meth:`start_gateway`.
        """
        from smobility.lab import strongswan as swan

        keys = self.work / "keys"
        # Not under /run (the demo's work directory may be there): charon
        # runs with its own directory's run/ mounted over /run.
        swan_dir = Path(tempfile.mkdtemp(prefix="smob-swan-", dir="/var/tmp"))
        self.swan_dir = swan_dir
        extra = ""
        if auth == "psk":
            psk = secrets.token_urlsafe(24)
            (keys / "gateway-psk").write_text(psk + "\n")
            (keys / "gateway-psk").chmod(0o600)
            conf = swan.gateway_swanctl(
                lan=NETS["home"], local_id=GW_ID, psk=psk, remote_id=CLIENT_ID, pool=VPN_POOL,
            )  # fmt: skip
            extra = f'psk_file = "{keys / "gateway-psk"}"\n'
            creds = None
        else:
            from smobility.store.pki import PKIStore

            store = PKIStore(self.work / "home.sqlite")
            try:
                if not store.has_ca():
                    store.init_ca("smobility home CA")
                creds = swan.our_pki(
                    keys / "gateway-pki",
                    [swan.Credential("gateway", GW_ID, "server"),
                     swan.Credential("laptop", CLIENT_ID, "client")],
                    store=store,
                )  # fmt: skip
            finally:
                store.close()
            conf = swan.gateway_swanctl(
                lan=NETS["home"], local_id=GW_ID, auth="pubkey", remote_id=CLIENT_ID,
                pool=VPN_POOL,
            )  # fmt: skip
            extra = (
                f'auth = "pubkey"\ncert = "{creds["laptop.crt"]}"\n'
                f'key = "{creds["laptop.key"]}"\nca_file = "{creds["ca"]}"\n'
            )
        self.gateway = swan.Charon(self.lab.ns("gw"), swan_dir, conf)
        if creds is not None:
            swan.install_credentials(swan_dir, creds, "gateway", "private")
        return f"""
[[transport]]
kind = "gateway"
gateway = "{GW_PUBLIC}"
inside_home_agent = "{HA_LAN}"
identity = "{CLIENT_ID}"
gateway_identity = "{GW_ID}"
fallback_after = 4
{extra}"""

    def start_gateway(self) -> None:
        """Start charon (kernel-libipsec) in namespace gw."""
        assert self.gateway is not None
        self.gateway.start()

    def start_http_side(self) -> None:
        """Start Squid (V3's proxy host) and the multiplexer (home LAN)."""
        assert self.squid is not None
        self.squid.start()
        self.mux = self.twistd("mux", "smobility-mux", self.work / "mux.toml", "mux.log")

    # -- set-up -------------------------------------------------------------

    def write_configs(
        self, http: bool = False, relay: bool | str = False, gateway: str | None = None
    ) -> tuple[Path, Path]:
        """The home agent's and the client's configs (and those of the paths asked for).

        The client's transports, in order: UDP, the relay, the VPN gateway
        (``gateway``: "psk" or "pubkey"), then HTTP(S).
        """
        keys = self.work / "keys"
        keys.mkdir(mode=0o700)
        http_transports = self.setup_http() if http else ""
        for name, size in (("mnha", 16), ("to_home", 20), ("to_client", 20)):
            f = keys / name
            f.write_text(secrets.token_hex(size) + "\n")
            f.chmod(0o600)
        home = self.work / "home.toml"
        home.write_text(
            f"""
[home]
addresses = ["{HA}"]
listen = "0.0.0.0"
home_network = "10.77.0.0/24"
port = 434
state_db = "{self.work / "home.sqlite"}"
max_lifetime = 60

[tunnel]
device = "smob-ha0"
lan_interface = "lan0"
keepalive = 10

[[mobile_node]]
name = "laptop"
home_address = "{HOA}"
spi = 1000
key_file = "{keys / "mnha"}"

[mobile_node.esp]
spi_to_home = 4097
spi_to_client = 8193
key_to_home_file = "{keys / "to_home"}"
key_to_client_file = "{keys / "to_client"}"
"""
        )
        mode = relay if isinstance(relay, str) else "forward"
        middle = self.setup_relay(home, mode) if relay else ""
        if gateway is not None:
            middle += self.setup_gateway(gateway)
        if not middle:
            transports = http_transports
        elif not http:
            transports = '\n[[transport]]\nkind = "udp"\nfallback_after = 2.5\n' + middle
        else:
            head, tail = http_transports.split('[[transport]]\nkind = "http"', 1)
            transports = head + middle + '\n[[transport]]\nkind = "http"' + tail
        client = self.work / "client.toml"
        client.write_text(
            f"""
[client]
name = "laptop"
home_address = "{HOA}"
home_agent = "{HA}"
spi = 1000
key_file = "{keys / "mnha"}"
lifetime = 60
retransmit_initial = 0.5
retransmit_max = 4.0
status_file = "{self.work / "client.json"}"

[tunnel]
device = "smob0"
home_network = "10.77.0.0/24"

[esp]
spi_to_home = 4097
spi_to_client = 8193
key_to_home_file = "{keys / "to_home"}"
key_to_client_file = "{keys / "to_client"}"
{transports}"""
        )
        return home, client

    def start(self, role: str, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.work / log, "wb")  # noqa: SIM115 - closed at the end
        self.logs.append(out)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = self.lab.popen(role, *argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def twistd(self, role: str, plugin: str, config: Path, log: str) -> subprocess.Popen[bytes]:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        return self.start(role, [twistd, "-n", "--pidfile=", plugin, "--config", str(config)], log)

    def stream(self, role: str, *args: str, log: str) -> subprocess.Popen[bytes]:
        return self.start(role, [sys.executable, "-m", "smobility.demo.streams", *args], log)

    def status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.work / "client.json").read_text())
            return data
        except (OSError, ValueError):
            return {}

    def wait_state(self, want: str, coa: str | None, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st.get("state") == want and (coa is None or st.get("care_of_address") == coa):
                return st
            time.sleep(0.05)
        raise SystemExit(
            f"demo: the client did not reach {want} ({coa}); last status: {self.status()}"
        )

    def probe(self) -> bool:
        r = self.lab.exec(
            "cn", sys.executable, "-m", "smobility.demo.streams", "probe",
            "--connect", HOA, "--port", "5001", "--timeout", "5",
            check=False, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
        return r.returncode == 0

    def stop_all(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        if self.swan_dir is not None:
            shutil.rmtree(self.swan_dir, ignore_errors=True)
            self.swan_dir = None
        if self.squid is not None:
            self.squid.stop()
            self.squid = None
        self._stop_procs()

    def _stop_procs(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for f in self.logs:
            f.close()


def _events_since(status: dict[str, Any], t0: float) -> list[dict[str, Any]]:
    return [e for e in status.get("events", []) if e.get("t", 0) >= t0]


def run(lab: Lab, work: Path, relay_mode: str = "forward") -> dict[str, Any]:
    """The demo proper; returns the result object.

    ``relay_mode``: how the relay in V4 carries the client ("forward",
    "terminate", or "gateway": the relay as the client's VPN gateway).
    """
    demo = Demo(lab, work)
    home_cfg, client_cfg = demo.write_configs(http=True, relay=relay_mode, gateway="psk")
    result: dict[str, Any] = {}
    moves: list[dict[str, Any]] = []
    try:
        _say("starting the home agent (namespace ha) ...")
        demo.twistd("ha", "smobility-home", home_cfg, "home.log")
        _say("starting the multiplexer + SOCKS5 ingress (namespace mux) and Squid in V3 ...")
        demo.start_http_side()
        _say("starting the relay (namespace rl, public side of the home firewall) and the "
             "strongSwan VPN gateway (namespace gw) ...")  # fmt: skip
        demo.start_relay()
        demo.start_gateway()
        _say("client joins V1 ...")
        lab.move("v1")
        lab.wait_address(NETS["v1"])
        demo.twistd("mn", "smobility-client", client_cfg, "client.log")
        demo.wait_state("registered", None)
        _say("registered; starting TCP streams (inbound: cn -> permanent address; outbound: "
             "client -> cn)")  # fmt: skip
        demo.stream("mn", "server", "--bind", HOA, "--port", "5001",
                    "--stats", str(work / "in-server.json"), log="in-server.log")  # fmt: skip
        demo.stream("cn", "server", "--bind", CN, "--port", "5002",
                    "--stats", str(work / "out-server.json"), log="out-server.log")  # fmt: skip
        time.sleep(0.5)
        demo.stream("cn", "client", "--bind", CN, "--connect", HOA, "--port", "5001",
                    "--stats", str(work / "in-client.json"), log="in-client.log")  # fmt: skip
        demo.stream("mn", "client", "--bind", HOA, "--connect", CN, "--port", "5002",
                    "--stats", str(work / "out-client.json"), log="out-client.log")  # fmt: skip
        time.sleep(DWELL)
        first_net = "v1"
        for i, net in enumerate(MOVES[1:], start=2):
            t0 = time.time()
            _say(f"move {i - 1}: {first_net} -> {net}")
            link_s = lab.move(net)
            addr = lab.wait_address(NETS[net])
            got = time.time()
            if net == "home":
                st = demo.wait_state("at-home", None)
            else:
                st = demo.wait_state("registered", str(addr.ip))
            done = time.time()
            time.sleep(1.0)
            inbound = demo.probe()
            st = demo.status()
            events = _events_since(st, t0)
            transport = st.get("path") or "-"
            moves.append(
                {
                    "t0": t0,
                    "to": net,
                    "network": NETWORK_KIND[net],
                    "path": "home-lan" if net == "home" else f"{transport}/{net}",
                    "link_change_ms": round(link_s * 1000, 1),
                    "address": str(addr),
                    "address_ms": round((got - t0) * 1000, 1),
                    "registered_ms": round((done - t0) * 1000, 1),
                    "events": events,
                    "inbound_ok": inbound,
                }
            )
            first_net = net
            time.sleep(DWELL)
    finally:
        demo.stop_all()
    stats = {}
    for name in ("in-server", "out-server", "in-client", "out-client"):
        try:
            stats[name] = json.loads((work / f"{name}.json").read_text())
        except (OSError, ValueError):
            stats[name] = {}
    result["moves"] = moves
    result["streams"] = stats
    return result


_DESCRIBE = {
    "link": lambda e: f"client sees the network change ({e.get('change')})",
    "care-of": lambda e: f"new care-of address {e.get('address')}",
    "state": lambda e: f"state: {e.get('state')}",
    "request": lambda e: (
        ("deregistration sent" if e.get("lifetime") == 0 else "registration request sent")
        + f" (attempt {e.get('attempt')})"
    ),
    "reply": lambda e: (
        f"reply: code {e.get('code')}, lifetime {e.get('lifetime')} s, "
        f"round trip {e.get('rtt_ms')} ms"
    ),
    "first-packet": lambda e: "first packet from home on the new path",
    "try-path": lambda e: f"trying transport {e.get('path')} ({e.get('why')})",
    "path": lambda e: f"traffic now over {e.get('path')}",
    "gateway-up": lambda e: f"VPN gateway tunnel up, inner address {e.get('address')}",
    "foreign-agent": lambda e: (
        f"registering through the relay {e.get('address')}" if e.get("address")
        else "registering directly"
    ),
}


def _gap_after(streams: dict[str, Any], t0: float, t1: float) -> float:
    """The longest stream gap that ended between t0 and t1 (both directions)."""
    worst = 0.0
    for name in ("in-server", "out-server"):
        for end, gap in streams.get(name, {}).get("gaps_over_100ms", []):
            if t0 <= end <= t1:
                worst = max(worst, gap)
    return worst


def _timeline(result: dict[str, Any]) -> None:
    _say("\ntimeline (milliseconds after each link change):")
    moves = result["moves"]
    for i, m in enumerate(moves, start=1):
        t0 = m["t0"]
        t1 = moves[i]["t0"] if i < len(moves) else t0 + 3600
        m["gap_ms"] = _gap_after(result["streams"], t0, t1)
        _say(f"  move {i}: to {m['to']} ({m['network']}); traffic over {m['path']}")
        _say(f"    {0.0:8.1f}  link switched ({m['link_change_ms']} ms, carrier flap + DHCP renew)")
        rows = [(m["address_ms"], f"DHCP gave {m['address']}")]
        for e in m["events"]:
            describe = _DESCRIBE.get(e["event"])
            if describe is not None:
                rows.append(((e["t"] - t0) * 1000, describe(e)))
        for ms, text in sorted(rows, key=lambda r: r[0]):
            _say(f"    {ms:8.1f}  {text}")
        _say(f"              inbound connection to the permanent address: "
             f"{'OK' if m['inbound_ok'] else 'FAILED'}; longest stream gap "
             f"{m['gap_ms']:.0f} ms")  # fmt: skip


RELAY_MODES = ("forward", "terminate", "gateway")


def main(argv: list[str] | None = None) -> int:
    """Run the demo in a fresh lab; print the timeline and one JSON line."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m smobility.demo",
        description="Roam a client through the namespace lab (V1, V2 behind NAT, home, V1, "
        "V4 through the relay, V5 through the VPN gateway, V3 through HTTPS proxies, V2) "
        "with TCP streams both ways; print a timeline and one JSON line.",
    )
    parser.add_argument(
        "--relay", choices=RELAY_MODES, default="forward",
        help="how the relay carries the client in V4: forward its own ESP (figure 6, "
        "default), terminate it under the relay's own SAs (figures 1/3), or be its IPsec "
        "VPN gateway (figure 7)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        _say("not root: running the loopback demo instead (the lab needs network namespaces)")
        from smobility.demo import loopback

        return loopback.main()
    work = Path(f"/run/smob-demo-{os.getpid()}")
    work.mkdir(mode=0o700)
    lab = Lab(prefix="smob")
    _say("building the lab (namespaces smob-*) ...")
    lab.up()
    try:
        result = run(lab, work, args.relay)
    finally:
        _say("tearing the lab down ...")
        lab.down()
    _timeline(result)
    streams = result["streams"]
    gaps = [streams[s].get("max_gap_ms", 0.0) for s in ("in-server", "out-server")]
    resets = sum(streams[s].get("resets", 0) for s in streams)
    alive = all(streams[s].get("open_at_end") for s in ("in-client", "out-client"))
    summary = {
        "handovers": len(result["moves"]),
        "gaps_ms": [m.get("gap_ms", 0.0) for m in result["moves"]],
        "tcp_resets": resets,
        "streams_survived": alive,
        "inbound_ok": all(m["inbound_ok"] for m in result["moves"]),
        "max_gap_ms": max(gaps) if gaps else None,
        "paths": ["udp/v1"] + [m["path"] for m in result["moves"]],
        "bytes_inbound": streams["in-server"].get("bytes", 0),
        "bytes_outbound": streams["out-server"].get("bytes", 0),
        "work_dir": str(work),
    }
    print(json.dumps(summary), flush=True)
    ok = resets == 0 and alive and summary["inbound_ok"]
    return 0 if ok else 1
