# -*- test-case-name: tests.test_lab -*-
"""
Build, drive and tear down the namespace lab (see L{smobility.lab.topology}).

Everything goes through C{ip} (iproute2), C{sysctl}, C{nft}, C{dnsmasq} and
busybox C{udhcpc}, run as list-argv subprocesses.  The lab keeps no state in
memory that it cannot find again: namespaces are named C{<prefix>-<role>}, and
every process it starts has a pid file in the work directory, so a new
L{Lab} object (another process, or after a crash) can drive or clean up a lab
an earlier one built.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Any

from smobility.lab import topology as topo
from smobility.lab.topology import TOPOLOGY, Topology

SCRIPT_NAME = "udhcpc-script.sh"
"""The DHCP client script shipped with this package (copied into the work directory)."""

UDHCPC = "udhcpc"
"""The name (and pid file stem) of the mobile node's DHCP client process."""

MARKER = ".smobility-lab"
"""A file in the work directory saying the directory is the lab's (and may be removed)."""

_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,11}")
_TOOL_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_READY_TIMEOUT = 10.0
_SIGNAL_TIMEOUT = 5.0
_POLL = 0.01
_INDEX_BASE = 100
_PEER_INDEX_BASE = 200


class LabError(Exception):
    """The lab could not be built, driven or inspected; the message says why."""


class LabCommandError(subprocess.CalledProcessError, LabError):
    """A command in the lab exited non-zero; C{str()} includes what it printed."""

    def __str__(self) -> str:
        """The command, its status and its output."""
        out = _text(self.stdout).strip()
        err = _text(self.stderr).strip()
        parts = [f"command {list(self.cmd)!r} exited with {self.returncode}"]
        if out:
            parts.append(f"stdout: {out}")
        if err:
            parts.append(f"stderr: {err}")
        return "; ".join(parts)


def _text(value: str | bytes | None) -> str:
    """Decode command output that may be bytes, text or absent."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def find_tool(name: str) -> str | None:
    """Return the path of the executable C{name}, also looking in the sbin directories."""
    found = shutil.which(name)
    if found is not None:
        return found
    return shutil.which(name, path=os.pathsep.join(_TOOL_DIRS))


def pid_alive(pid: int) -> bool:
    """Is process C{pid} running (present and not a zombie)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may hold spaces.
    state = stat.rpartition(")")[2].split()[:1]
    return state not in (["Z"], ["X"], [])


def _read_pid(path: Path) -> int | None:
    """The PID in pid file C{path}, or C{None} if it is missing or garbled."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class DhcpLease:
    """The mobile node's current DHCP lease, as the client script recorded it."""

    address: IPv4Interface
    router: IPv4Address | None
    server: IPv4Address | None
    seconds: int | None
    event: str


@dataclass(frozen=True)
class LabProcess:
    """A process the lab started: its name, PID (if known) and whether it runs."""

    name: str
    pid: int | None
    running: bool


class Lab:
    """
    The namespace lab: a home LAN, the internet, visited networks and a mobile node.

    Addresses are class constants; C{up()} builds it all, C{move()} carries the
    mobile node's uplink to another LAN (its address always comes from DHCP),
    C{down()} removes everything, also what an earlier crashed run left.
    """

    HA_PUBLIC = topo.HA_PUBLIC
    """The home agent's public address (on the internet side)."""
    HA_LAN = topo.HA_LAN
    """The home agent's address on the home LAN (the home LAN's router)."""
    CN = topo.CN_ADDR
    """The correspondent host on the home LAN."""
    HOME_NET = topo.HOME_NET
    """The home LAN."""
    HOA = topo.HOA
    """The mobile node's home address (its DHCP reservation on the home LAN)."""
    INET_HA = topo.INET_HA
    """The internet router's address towards the home agent."""
    INET_V1 = topo.INET_V1
    """The internet router's address towards visited network 1."""
    INET_V2 = topo.INET_V2
    """The internet router's address towards visited network 2."""
    V1_PUBLIC = topo.V1_PUBLIC
    """Visited network 1's router, internet side."""
    V1_LAN = topo.V1_LAN
    """Visited network 1's router, LAN side (its DHCP server)."""
    V1_NET = topo.V1_NET
    """Visited network 1 (routed from the internet)."""
    V2_PUBLIC = topo.V2_PUBLIC
    """Visited network 2's router, internet side: the NAT's public address."""
    V2_LAN = topo.V2_LAN
    """Visited network 2's router, LAN side (its DHCP server)."""
    V2_NET = topo.V2_NET
    """Visited network 2 (behind NAT: not routed from the internet)."""
    V3_NET = topo.V3_NET
    """Visited network 3 (strict firewall: only its proxy host gets out)."""
    V3_LAN = topo.V3_LAN
    """Visited network 3's router, LAN side."""
    PROXY = topo.PROXY_ADDR
    """The HTTP proxy host of visited network 3."""
    MUX = topo.MUX_ADDR
    """The multiplexer host on the home LAN."""
    SOCKS_PORT = topo.SOCKS_PORT
    """The SOCKS5 ingress port (forwarded from the home agent's public address)."""
    MUX_PORT = topo.MUX_PORT
    """The multiplexer's HTTP(S) port on its host."""
    V3_PUBLIC = topo.V3_PUBLIC
    """Visited network 3's router, internet side (its NAT's public address)."""
    RELAY_PUBLIC = topo.RELAY_PUBLIC
    """The relay host's address (public side of the home firewall)."""
    INET_RL = topo.INET_RL
    """The internet router's address towards the relay (the relay's default gateway)."""
    GW_PUBLIC = topo.GW_PUBLIC
    """The VPN gateway's internet-side address (where clients send IKE and ESP)."""
    INET_GW = topo.INET_GW
    """The internet router's address towards the VPN gateway."""
    GW_LAN = topo.GW_LAN
    """The VPN gateway's address on the home LAN."""
    VPN_POOL = topo.VPN_POOL
    """The VPN gateway's pool of client (virtual) addresses; ha routes it via C{GW_LAN}."""
    V4_PUBLIC = topo.V4_PUBLIC
    """Visited network 4's router, internet side: the NAT's public address."""
    V4_LAN = topo.V4_LAN
    """Visited network 4's router, LAN side (its DHCP server)."""
    V4_NET = topo.V4_NET
    """Visited network 4 (behind NAT; its firewall blocks the home agent)."""
    INET_V4 = topo.INET_V4
    """The internet router's address towards visited network 4."""
    V5_PUBLIC = topo.V5_PUBLIC
    """Visited network 5's router, internet side: the NAT's public address."""
    V5_LAN = topo.V5_LAN
    """Visited network 5's router, LAN side (its DHCP server)."""
    V5_NET = topo.V5_NET
    """Visited network 5 (behind NAT; only IKE/IPsec to the VPN gateway gets out)."""
    INET_V5 = topo.INET_V5
    """The internet router's address towards visited network 5."""
    MN_MAC = topo.MN_MAC
    """The mobile node's uplink MAC address."""
    UPLINK = topo.MN_UPLINK
    """The mobile node's interface."""
    NETWORKS = tuple(net.name for net in TOPOLOGY.networks)
    """The LANs C{move()} accepts."""

    def __init__(
        self,
        prefix: str = "smob",
        workdir: Path | None = None,
        topology: Topology = TOPOLOGY,
    ) -> None:
        """
        @param prefix: the first part of every name (1-12 lowercase letters and
            digits, starting with a letter): namespaces are C{<prefix>-<role>}.
        @param workdir: pid files, leases, logs; default C{/run/<prefix>-lab}.
        @raise ValueError: bad prefix or topology.
        """
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(
                f"lab prefix {prefix!r} must be 1-12 lowercase letters or digits, "
                "starting with a letter"
            )
        topo.check(topology)
        self.prefix = prefix
        self.workdir = Path(workdir) if workdir is not None else Path(f"/run/{prefix}-lab")
        self.topology = topology
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._spawned: list[subprocess.Popen[bytes]] = []

    # -- names and plain commands -------------------------------------------------

    def ns(self, role: str) -> str:
        """Return the namespace name of C{role} (C{"ha"} -> C{"smob-ha"})."""
        return f"{self.prefix}-{role}"

    def _tool(self, name: str) -> str:
        """The path of tool C{name}. @raise LabError: it is not installed."""
        found = find_tool(name)
        if found is None:
            raise LabError(f"the lab needs {name!r}, which is not installed")
        return found

    def _run(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 30.0,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """Run C{argv} (no shell) and capture its output as text."""
        if "stdout" not in kw and "stderr" not in kw:
            kw["capture_output"] = True
        kw.setdefault("stdin", None if "input" in kw else subprocess.DEVNULL)
        proc = subprocess.run(list(argv), text=True, timeout=timeout, check=False, **kw)
        if check and proc.returncode != 0:
            raise LabCommandError(proc.returncode, proc.args, proc.stdout, proc.stderr)
        return proc

    def _ip(self, role: str | None, *args: str, check: bool = True) -> str:
        """Run C{ip [-n NS] ARGS} and return its standard output."""
        argv = [self._tool("ip")]
        if role is not None:
            argv += ["-n", self.ns(role)]
        return self._run(argv + list(args), check=check).stdout

    def _ip_batch(self, role: str, lines: Iterable[str]) -> None:
        """Run several C{ip} commands in C{role}'s namespace in one process."""
        text = "".join(f"{line}\n" for line in lines)
        if text:
            self._run([self._tool("ip"), "-n", self.ns(role), "-batch", "-"], input=text)

    def exec(
        self,
        role: str,
        *argv: str,
        check: bool = True,
        timeout: float = 30,
        **kw: Any,
    ) -> subprocess.CompletedProcess[str]:
        """
        Run C{argv} inside C{role}'s namespace and wait for it.

        Output is captured as text unless C{stdout}/C{stderr} are given; other
        keywords go to L{subprocess.run} (C{input}, C{env}, C{cwd}, ...).

        @raise LabCommandError: it exited non-zero and C{check} is true.
        @raise subprocess.TimeoutExpired: it ran longer than C{timeout} (it is killed).
        """
        return self._run(
            [self._tool("ip"), "netns", "exec", self.ns(role), *argv],
            check=check,
            timeout=timeout,
            **kw,
        )

    def ping(self, role: str, address: str, count: int = 1, timeout: float = 2.0) -> bool:
        """
        Ping C{address} from C{role}; return whether a reply came.

        Uses iputils C{ping} when installed, else busybox's (always there:
        udhcpc comes with busybox).
        """
        ping = find_tool("ping")
        argv = [ping] if ping is not None else [self._tool("busybox"), "ping"]
        argv += ["-c", str(count), "-W", str(max(1, round(timeout))), address]
        return self.exec(role, *argv, check=False, timeout=timeout + count + 5).returncode == 0

    def popen(self, role: str, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
        """
        Start C{argv} inside C{role}'s namespace and return at once.

        The caller stops it (by its PID: C{ip netns exec} execs the command, so
        the returned object's PID is the command's own).  L{down} also ends it
        if it is still running then, like every process in the lab's namespaces.
        """
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            [self._tool("ip"), "netns", "exec", self.ns(role), *argv], **kw
        )
        self._spawned.append(proc)
        return proc

    # -- what exists ----------------------------------------------------------------

    def namespaces(self) -> list[str]:
        """The names of the existing namespaces that belong to this prefix."""
        out = self._ip(None, "netns", "list")
        pattern = re.compile(re.escape(self.prefix) + r"-[a-z0-9]+")
        names = []
        for line in out.splitlines():
            fields = line.split()
            if fields and pattern.fullmatch(fields[0]):
                names.append(fields[0])
        return sorted(names)

    def _pidfile(self, name: str) -> Path:
        """The pid file of the process the lab calls C{name}."""
        return self.workdir / f"{name}.pid"

    def _netns_inodes(self) -> set[int]:
        """The inode numbers of this prefix's namespaces (to recognise their processes)."""
        inodes = set()
        for name in self.namespaces():
            try:
                inodes.add(os.stat(f"/run/netns/{name}").st_ino)
            except OSError:
                pass
        return inodes

    def _is_ours(self, pid: int, inodes: set[int]) -> bool:
        """
        Is C{pid} (read from one of our pid files) still a process we started?

        A pid file can outlive its process (a crash) and the PID be reused, so
        a process counts as ours only if it runs in one of our namespaces or
        its command line names our work directory.
        """
        if not pid_alive(pid):
            return False
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                return True
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return f"{self.workdir}/".encode() in cmdline

    def processes(self) -> list[LabProcess]:
        """The processes the lab started (from its pid files), running or not."""
        if not (self.workdir / MARKER).is_file():
            return []
        inodes = self._netns_inodes()
        found = []
        for path in sorted(self.workdir.glob("*.pid")):
            pid = _read_pid(path)
            running = pid is not None and self._is_ours(pid, inodes)
            found.append(LabProcess(path.stem, pid, running))
        return found

    def namespace_pids(self) -> dict[str, list[int]]:
        """Every process inside each of this prefix's namespaces, by namespace."""
        result = {}
        for name in self.namespaces():
            out = self._run([self._tool("ip"), "netns", "pids", name], check=False).stdout
            result[name] = [int(p) for p in out.split() if p.isdigit()]
        return result

    # -- up -------------------------------------------------------------------------

    def up(self) -> None:
        """
        Build the whole lab and start its DHCP servers and the mobile node's client.

        Leftovers of the same prefix (an earlier run, a crash) are torn down
        first, so calling it twice is fine.  On return every DHCP server
        listens and the mobile node's DHCP client runs, with the mobile node
        attached to no network.  If anything fails, what was built is removed.

        @raise LabError: not root, a tool is missing, or a step failed.
        """
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces)")
        for tool in ("ip", "sysctl", "nft", "dnsmasq", "udhcpc", "ss"):
            self._tool(tool)
        if self.namespaces() or self.workdir.exists():
            self.down()
        try:
            self._prepare_workdir()
            self._build()
            self._start_processes()
            self._wait_ready()
        except BaseException:
            self.down()
            raise

    def _prepare_workdir(self) -> None:
        """Create the work directory, mark it as ours, copy the DHCP client script in."""
        if self.workdir.exists() and any(self.workdir.iterdir()):
            raise LabError(
                f"{self.workdir} exists and is not a lab work directory: not touching it"
            )
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.workdir / MARKER).write_text(f"smobility lab {self.prefix}\n")
        script = self.workdir / SCRIPT_NAME
        script.write_bytes(resources.files("smobility.lab").joinpath(SCRIPT_NAME).read_bytes())
        script.chmod(0o755)

    def _build(self) -> None:
        """Namespaces, sysctls, bridges, veths, addresses, routes, NAT."""
        t = self.topology
        ip = self._tool("ip")
        for role in t.roles:
            self._run([ip, "netns", "add", self.ns(role)])
        for role in t.roles:
            settings = [
                # IPv4 only: no IPv6 autoconfiguration noise on the lab's links.
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                f"net.ipv4.ip_forward={int(role in t.forwarding)}",
            ]
            self.exec(role, self._tool("sysctl"), "-q", "-e", "-w", *settings)

        create: dict[str, list[str]] = {role: ["link set dev lo up"] for role in t.roles}
        config: dict[str, list[str]] = {role: [] for role in t.roles}
        for bridge in t.all_bridges():
            # No STP and no forward delay: a port forwards as soon as it is up.
            create[topo.SW].append(f"link add {bridge} type bridge stp_state 0 forward_delay 0")
            create[topo.SW].append(f"link set dev {bridge} up")
        for number, link in enumerate(t.links):
            mac = f" address {link.mac}" if link.mac else ""
            # Interface indexes of our own, so that no veth has its peer's index:
            # the kernel delays (up to 1 s) the carrier of a veth whose index equals
            # its peer's (in another namespace), and drops what it sends meanwhile.
            create[link.role].append(
                f"link add {link.ifname} index {_INDEX_BASE + number}{mac} type veth "
                f"peer name {link.peer_ifname} index {_PEER_INDEX_BASE + number} "
                f"netns {self.ns(link.peer_role)}"
            )
            if link.address is not None:
                config[link.role].append(f"addr add {link.address} dev {link.ifname}")
            config[link.role].append(f"link set dev {link.ifname} up")
            if link.peer_address is not None:
                config[link.peer_role].append(
                    f"addr add {link.peer_address} dev {link.peer_ifname}"
                )
            if link.bridge is not None:
                config[link.peer_role].append(
                    f"link set dev {link.peer_ifname} master {link.bridge}"
                )
            # The mobile node's port stays down and on no bridge until move().
            if link.peer_ifname != topo.MN_PORT:
                config[link.peer_role].append(f"link set dev {link.peer_ifname} up")
        for route in t.routes:
            config[route.role].append(f"route add {route.destination} via {route.via}")
        for role in t.roles:
            self._ip_batch(role, create[role])
        for role in t.roles:
            self._ip_batch(role, config[role])
        for role in t.roles:
            ruleset = self._nft(role)
            if ruleset:
                self.exec(role, self._tool("nft"), "-f", "-", input=ruleset)

    def _nft(self, role: str) -> str:
        """The nftables ruleset of C{role} (one table named after the prefix), or ""."""
        t = self.topology
        nats = [n for n in t.masquerades if n.role == role]
        walls = [f.chains for f in t.firewalls if f.role == role]
        if not nats and not walls:
            return ""
        body = ""
        if nats:
            body += "  chain postrouting {\n"
            body += "    type nat hook postrouting priority srcnat; policy accept;\n"
            for nat in nats:
                body += f'    oifname "{nat.out_ifname}" ip saddr {nat.source} masquerade\n'
            body += "  }\n"
        for chains in walls:
            body += chains
        return f"table ip {self.prefix} {{\n{body}}}\n"

    def _spawn(self, name: str, role: str, argv: Sequence[str]) -> None:
        """Start a lab process in C{role}'s namespace; record its PID in its pid file."""
        with open(self.workdir / f"{name}.out", "ab") as out:
            proc: subprocess.Popen[bytes] = subprocess.Popen(
                [self._tool("ip"), "netns", "exec", self.ns(role), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for "python -m smobility.lab up"
                # must not stop the lab it leaves running.
                start_new_session=True,
            )
        self._children[name] = proc
        # ip netns exec execs the command: this is the daemon's own PID.
        self._pidfile(name).write_text(f"{proc.pid}\n")

    def _dnsmasq_argv(self, net: topo.Network) -> list[str]:
        """dnsmasq as a DHCP server only, on C{net}'s router LAN interface."""
        w = self.workdir
        argv = [
            self._tool("dnsmasq"),
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--port=0",
            f"--interface={net.router_ifname}",
            "--bind-interfaces",
            f"--dhcp-range={net.dhcp_first},{net.dhcp_last},{net.netmask},{net.lease}",
            f"--dhcp-option=option:router,{net.router_address}",
            f"--dhcp-leasefile={w}/dnsmasq-{net.name}.leases",
            # --no-daemon writes no pid file: _spawn writes this one.
            f"--pid-file={w}/dnsmasq-{net.name}.pid",
            f"--log-facility={w}/dnsmasq-{net.name}.log",
            "--log-dhcp",
            # Without it dnsmasq pings every address before offering it and
            # answers nothing for up to 3 s meanwhile: each move would wait.
            "--no-ping",
            # Answer a client that asks for an address of another LAN with a
            # NAK at once instead of ignoring it.
            "--dhcp-authoritative",
        ]
        argv += [f"--dhcp-host={r.mac},{r.address}" for r in net.reservations]
        return argv

    def _udhcpc_argv(self) -> list[str]:
        """busybox udhcpc on the mobile node's uplink, with our script only."""
        w = self.workdir
        return [
            self._tool("udhcpc"),
            "-f",  # foreground: we hold its PID; never forks (so no -b, no -n)
            "-i",
            topo.MN_UPLINK,
            "-s",
            str(w / SCRIPT_NAME),  # our script: never the default one
            "-p",
            str(self._pidfile(UDHCPC)),
            "-t",
            "0",  # discover without end ...
            "-T",
            "1",  # ... once a second until a server answers
        ]

    def _start_processes(self) -> None:
        """One dnsmasq per LAN (in its router), udhcpc in the mobile node."""
        for net in self.topology.networks:
            self._spawn(f"dnsmasq-{net.name}", net.router_role, self._dnsmasq_argv(net))
        self._spawn(UDHCPC, topo.MN, self._udhcpc_argv())

    def _wait_ready(self) -> None:
        """Wait until every dnsmasq listens on port 67 and udhcpc ran its script."""
        pending = {net.name: net for net in self.topology.networks}
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            for name, proc in self._children.items():
                if proc.poll() is not None:
                    raise LabError(
                        f"{name} exited with {proc.returncode}:\n{self._tail(name + '.out')}"
                        f"{self._tail(name + '.log')}"
                    )
            for name, net in list(pending.items()):
                out = self.exec(net.router_role, self._tool("ss"), "-H", "-uln", "sport = :67")
                if out.stdout.strip():
                    del pending[name]
            down = self._links_not_up() if not pending else ["?"]
            if not pending and not down and self._events("deconfig") >= 1:
                return
            if time.monotonic() > deadline:
                raise LabError(
                    f"lab not ready after {_READY_TIMEOUT} s: DHCP servers not listening: "
                    f"{sorted(pending)}; links not up: {down}; udhcpc output:\n"
                    f"{self._tail(UDHCPC + '.out')}"
                )
            time.sleep(0.02)

    def _links_not_up(self) -> list[str]:
        """
        The lab's links (but the mobile node's) whose operational state is not yet UP.

        The kernel attaches a device's queue only when its link watcher sees the
        carrier, up to a second after "link set up" (at once only for some
        veths): until then the device drops what it is given to send.
        """
        wanted: dict[str, set[str]] = {}
        for link in self.topology.links:
            if link.peer_ifname == topo.MN_PORT:
                continue
            wanted.setdefault(link.role, set()).add(link.ifname)
            wanted.setdefault(link.peer_role, set()).add(link.peer_ifname)
        missing = []
        for role, names in wanted.items():
            links = json.loads(self._ip(role, "-j", "link", "show"))
            state = {item["ifname"]: item.get("operstate") for item in links}
            missing += [f"{role}:{n}" for n in sorted(names) if state.get(n) != "UP"]
        return missing

    def _tail(self, filename: str, lines: int = 20) -> str:
        """The last lines of a file in the work directory (for error messages)."""
        try:
            text = (self.workdir / filename).read_text(errors="replace")
        except OSError:
            return ""
        return "".join(text.splitlines(keepends=True)[-lines:])

    # -- the mobile node ------------------------------------------------------------

    def _events(self, event: str) -> int:
        """How many times the DHCP client script has run for C{event}."""
        try:
            text = (self.workdir / "udhcpc.events").read_text()
        except OSError:
            return 0
        return sum(1 for line in text.splitlines() if line.split()[1:2] == [event])

    def _udhcpc_pid(self) -> int:
        """The PID of our udhcpc. @raise LabError: it is not running."""
        pid = _read_pid(self._pidfile(UDHCPC))
        if pid is None or not self._is_ours(pid, self._netns_inodes()):
            raise LabError(f"the mobile node's udhcpc is not running (is lab {self.prefix} up?)")
        return pid

    def _release(self) -> int:
        """
        Make udhcpc release its lease and wait until its script deconfigured the uplink.

        SIGUSR2 always ends in "deconfig", whatever the client's state.
        Returns udhcpc's PID.
        """
        pid = self._udhcpc_pid()
        before = self._events("deconfig")
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + _SIGNAL_TIMEOUT
        while self._events("deconfig") <= before:
            if time.monotonic() > deadline:
                raise LabError(
                    f"udhcpc did not deconfigure within {_SIGNAL_TIMEOUT} s:\n"
                    f"{self._tail(UDHCPC + '.out')}"
                )
            time.sleep(_POLL)
        return pid

    def move(self, net: str) -> float:
        """
        Carry the mobile node to LAN C{net} (C{"home"}, C{"v1"}, C{"v2"}, ...).

        Like a laptop changing networks: the port loses carrier, joins the new
        LAN's bridge and comes back; then the DHCP client releases its lease
        (deconfig: no address, no default route) and discovers at once.  It
        returns without waiting for the new lease: see L{wait_address}.

        @return: the seconds the link change and the DHCP restart took.
        @raise LabError: unknown network, or the lab is not up.
        """
        try:
            bridge = self.topology.network(net).bridge
        except KeyError:
            raise LabError(
                f"no network {net!r}: choose one of {', '.join(self.NETWORKS)}"
            ) from None
        started = time.monotonic()
        self._ip_batch(
            topo.SW,
            [
                f"link set dev {topo.MN_PORT} down",
                f"link set dev {topo.MN_PORT} nomaster",
                f"link set dev {topo.MN_PORT} master {bridge}",
                f"link set dev {topo.MN_PORT} up",
            ],
        )
        # Two signals in a row may be delivered lowest number first (USR1
        # before USR2): wait for the release's deconfig before asking to renew.
        pid = self._release()
        os.kill(pid, signal.SIGUSR1)
        return time.monotonic() - started

    def detach(self) -> None:
        """Take the mobile node off every network; return once its uplink has no address."""
        self._ip_batch(
            topo.SW,
            [f"link set dev {topo.MN_PORT} down", f"link set dev {topo.MN_PORT} nomaster"],
        )
        self._release()

    def attached(self) -> str | None:
        """The name of the LAN the mobile node is on, or C{None} when detached."""
        out = self._ip(topo.SW, "-j", "link", "show", "dev", topo.MN_PORT)
        links = json.loads(out)
        master = links[0].get("master") if links else None
        if master is None or "UP" not in links[0].get("flags", []):
            return None
        net = self.topology.network_of_bridge(master)
        return net.name if net is not None else master

    def uplink_address(self) -> IPv4Interface | None:
        """The IPv4 address on the mobile node's uplink, or C{None}."""
        out = self._ip(topo.MN, "-4", "-j", "addr", "show", "dev", topo.MN_UPLINK)
        for link in json.loads(out):
            for info in link.get("addr_info", []):
                if info.get("family") == "inet":
                    return IPv4Interface(f"{info['local']}/{info['prefixlen']}")
        return None

    def lease(self) -> DhcpLease | None:
        """The mobile node's current DHCP lease, or C{None} (none, or released)."""
        try:
            text = (self.workdir / "udhcpc.lease").read_text()
        except OSError:
            return None
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        try:
            return DhcpLease(
                address=IPv4Interface(f"{values['ip']}/{values.get('mask') or 24}"),
                router=IPv4Address(values["router"]) if values.get("router") else None,
                server=IPv4Address(values["serverid"]) if values.get("serverid") else None,
                seconds=int(values["lease"]) if values.get("lease", "").isdigit() else None,
                event=values.get("event", ""),
            )
        except (KeyError, ValueError):
            return None

    def wait_address(self, network: str | None = None, timeout: float = 15.0) -> IPv4Interface:
        """
        Wait until the uplink has a DHCP address (in C{network}, if given) and return it.

        Once it returns, the address and the default route are in place (the
        client script records the lease after both).  C{network} is an IPv4
        network (C{"192.168.101.0/24"}) or a LAN name (C{"v1"}).

        @raise LabError: no such address within C{timeout} seconds.
        """
        wanted: IPv4Network | None = None
        if network is not None:
            try:
                wanted = self.topology.network(network).network
            except KeyError:
                wanted = IPv4Network(network)
        deadline = time.monotonic() + timeout
        while True:
            lease = self.lease()
            if lease is not None and (wanted is None or lease.address.ip in wanted):
                current = self.uplink_address()
                if current == lease.address:
                    return current
            if time.monotonic() > deadline:
                raise LabError(
                    f"no address{f' in {wanted}' if wanted else ''} on the mobile node "
                    f"within {timeout} s (now {self.uplink_address()}, attached to "
                    f"{self.attached()}); udhcpc said:\n{self._tail(UDHCPC + '.out')}"
                )
            time.sleep(0.02)

    # -- down -----------------------------------------------------------------------

    def down(self) -> None:
        """
        Remove everything of this prefix: processes, nftables tables, namespaces, workdir.

        Works from any L{Lab} object with the same prefix and workdir, also
        after a crash: processes are found by our pid files (checked to still
        be ours) and inside our namespaces (C{ip netns pids}); nothing is
        ever killed by name.
        """
        inodes = self._netns_inodes()
        pids: set[int] = set()
        # Pid files count only in a directory the lab marked as its own.
        if (self.workdir / MARKER).is_file():
            for path in self.workdir.glob("*.pid"):
                pid = _read_pid(path)
                if pid is not None and self._is_ours(pid, inodes):
                    pids.add(pid)
        for found in self.namespace_pids().values():
            pids.update(found)
        handles = list(self._children.values()) + self._spawned
        pids.update(p.pid for p in handles if p.poll() is None)
        pids.discard(os.getpid())
        self._stop(pids, handles)
        self._children.clear()
        self._spawned.clear()

        existing = set(self.namespaces())
        for role in self.topology.roles:
            if self.ns(role) in existing and self._nft(role):
                self.exec(
                    role, self._tool("nft"), "delete", "table", "ip", self.prefix, check=False
                )
        for name in sorted(existing):
            self._run([self._tool("ip"), "netns", "delete", name], check=False)
        if (self.workdir / MARKER).exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        left = self.namespaces()
        if left:
            raise LabError(f"could not delete the namespaces {left}")

    def _stop(self, pids: set[int], handles: list[subprocess.Popen[bytes]]) -> None:
        """SIGTERM C{pids}, SIGKILL what still runs after a while; reap our children."""
        by_pid = {p.pid: p for p in handles}

        def running(pid: int) -> bool:
            proc = by_pid.get(pid)
            if proc is not None:
                return proc.poll() is None
            return pid_alive(pid)

        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            for pid in sorted(pids):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while any(running(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(_POLL)
            pids = {pid for pid in pids if running(pid)}
            if not pids:
                break
        for proc in handles:
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass

    # -- status ---------------------------------------------------------------------

    def status(self) -> str:
        """A human-readable report: namespaces, addresses, where the mobile node is, processes."""
        names = self.namespaces()
        lines = [f"lab {self.prefix!r}  (work directory {self.workdir})"]
        if not names:
            lines.append("  down: no namespaces")
            return "\n".join(lines)
        lines.append("namespaces:")
        for role in self.topology.roles:
            name = self.ns(role)
            if name not in names:
                lines.append(f"  {name:<16} MISSING")
                continue
            out = self._ip(role, "-4", "-br", "addr", "show", check=False)
            addrs = [" ".join(line.split()) for line in out.splitlines() if line.strip()]
            addrs = [a for a in addrs if not a.startswith("lo ")]
            if role == topo.SW:
                # The bridges with their ports (an address-less fabric).
                links = json.loads(self._ip(role, "-j", "link", "show", check=False) or "[]")
                ports: dict[str, list[str]] = {b: [] for b in self.topology.all_bridges()}
                for item in links:
                    if item.get("master") in ports:
                        ports[item["master"]].append(item["ifname"])
                addrs = [f"{b}: {' '.join(p) or '-'}" for b, p in ports.items()]
            lines.append(f"  {name:<16} " + ("; ".join(addrs) if addrs else "-"))
        others = sorted(set(names) - {self.ns(r) for r in self.topology.roles})
        for name in others:
            lines.append(f"  {name:<16} (not in the topology)")
        if self.ns(topo.MN) in names and self.ns(topo.SW) in names:
            where = self.attached()
            lease = self.lease()
            lines.append(
                f"mobile node: attached to {where or 'nothing (detached)'}; "
                f"uplink {self.uplink_address() or 'has no address'}"
                + (
                    f"; lease from {lease.server}, router {lease.router}, {lease.seconds} s"
                    if lease
                    else ""
                )
            )
        lines.append("processes (pid files):")
        for p in self.processes():
            state = "running" if p.running else "NOT RUNNING"
            lines.append(f"  {p.name:<16} pid {p.pid}  {state}")
        lines.append("processes in the namespaces:")
        for name, pids in self.namespace_pids().items():
            if pids:
                lines.append(f"  {name:<16} " + " ".join(self._describe(pid) for pid in pids))
        return "\n".join(lines)

    @staticmethod
    def _describe(pid: int) -> str:
        """C{PID(command)} for a status line."""
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            comm = "?"
        return f"{pid}({comm})"

    # -- context manager ------------------------------------------------------------

    def __enter__(self) -> Lab:
        """Build the lab (L{up})."""
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove the lab (L{down}), whatever happened."""
        self.down()
