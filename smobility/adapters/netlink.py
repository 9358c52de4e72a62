# -*- test-case-name: tests.test_netlink -*-
"""
Links, addresses, routes, proxy neighbours and sysctls, through netlink.

L{Netlink} is a thin synchronous wrapper over C{pyroute2.IPRoute}: each call
is one short netlink exchange, so the services call it from the reactor
thread. Every failure comes out as one L{NetlinkError} whose message names
the operation, the device and the kernel's error. The C{add_*} and C{del_*}
calls are idempotent: adding what exists or deleting what is gone succeeds.

L{LinkWatcher} tells the reactor when links, IPv4 addresses or IPv4 routes
change (a plain C{NETLINK_ROUTE} socket subscribed to the multicast groups,
read by the reactor), once per kind and wake-up; callers debounce and then
look at the new state with L{Netlink}.

pyroute2's synchronous API runs a private asyncio loop per call, so it must
not be called from inside a running asyncio loop (Twisted's asyncioreactor).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any, cast

from pyroute2.netlink.exceptions import NetlinkError as _PyrouteNetlinkError
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from smobility.adapters.reader import default_reactor

# Multicast groups of NETLINK_ROUTE (linux/rtnetlink.h).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40

NTF_PROXY = 0x08
"""Neighbour flag: a proxy entry (C{ip neigh add proxy ...})."""

RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
"""In a delete: match a route of any scope (as C{ip route del} does)."""
RT_TABLE_MAIN = 254

# Netlink message types (linux/rtnetlink.h) and what LinkWatcher reports them as.
_KINDS = {
    16: "link",  # RTM_NEWLINK
    17: "link",  # RTM_DELLINK
    20: "address",  # RTM_NEWADDR
    21: "address",  # RTM_DELADDR
    24: "route",  # RTM_NEWROUTE
    25: "route",  # RTM_DELROUTE
}
_NLMSG_HDR = struct.Struct("=IHHII")  # host order: netlink is not a wire format
_NLMSG_OVERRUN = 4


class NetlinkError(Exception):
    """
    A netlink operation failed; the message names the operation, device and kernel error.

    C{code} is the errno (0 when the failure is ours, e.g. an unknown device name).
    """

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


def _errno_of(e: BaseException) -> int:
    code = getattr(e, "code", None)
    if isinstance(code, int):
        return code
    code = getattr(e, "errno", None)
    return code if isinstance(code, int) else 0


def _describe(operation: str, dev: str | None, code: int, detail: str) -> str:
    where = f" on {dev}" if dev else ""
    reason = os.strerror(code) if code else detail
    return f"{operation}{where} failed: {reason}" + (f" (errno {code})" if code else "")


def _new_iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


def _route_dst(dst: IPv4Network | str) -> str:
    """C{"default"}, an address or a network, as the C{a.b.c.d/n} pyroute2 takes."""
    if isinstance(dst, str) and dst == "default":
        return "0.0.0.0/0"
    return str(IPv4Network(dst))


class Netlink:
    """
    Synchronous netlink operations for the current network namespace.

    C{ipr} is injectable (a C{pyroute2.IPRoute}, or a test double with the
    same methods); by default one is opened here and closed by L{close}.
    """

    log = Logger()

    def __init__(self, ipr: Any = None) -> None:
        self._ipr: Any = ipr if ipr is not None else _new_iproute()

    @contextmanager
    def _op(self, operation: str, dev: str | None, ok: tuple[int, ...] = ()) -> Iterator[None]:
        """Map pyroute2 and OS errors to L{NetlinkError}; swallow errnos in C{ok}."""
        try:
            yield
        except NetlinkError:
            raise
        except Exception as e:
            if not isinstance(e, (OSError, _PyrouteNetlinkError)):
                raise  # a bug, not a kernel answer
            code = _errno_of(e)
            if code and code in ok:
                return
            raise NetlinkError(_describe(operation, dev, code, str(e)), code) from e

    # -- links

    def _index(self, operation: str, name: str) -> int:
        with self._op(operation, name):
            found = self._ipr.link_lookup(ifname=name)
        if not found:
            raise NetlinkError(
                f"{operation} on {name} failed: no such network device", errno.ENODEV
            )
        return int(found[0])

    def _maybe_index(self, operation: str, name: str | None) -> int | None:
        """The index of C{name}, or C{None} when it is gone (for idempotent deletes)."""
        if name is None:
            return None
        try:
            return self._index(operation, name)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise

    def link_index(self, name: str) -> int:
        """The interface index of C{name}."""
        return self._index("link_index", name)

    def _name(self, index: int) -> str | None:
        with self._op("link name lookup", f"index {index}", ok=(errno.ENODEV,)):
            for link in self._ipr.get_links(index):
                return cast(str, link.get_attr("IFLA_IFNAME"))
        return None

    def _names(self) -> dict[int, str]:
        with self._op("link dump", None):
            return {
                int(link["index"]): cast(str, link.get_attr("IFLA_IFNAME"))
                for link in self._ipr.get_links()
            }

    def link_up(self, name: str, *, mtu: int | None = None) -> None:
        """Set C{name} up (and its MTU first, if given)."""
        index = self._index("link_up", name)
        args: dict[str, Any] = {"index": index, "state": "up"}
        if mtu is not None:
            args["mtu"] = mtu
        with self._op("link_up", name):
            self._ipr.link("set", **args)

    def link_down(self, name: str) -> None:
        """Set C{name} down (a missing device is already down)."""
        index = self._maybe_index("link_down", name)
        if index is None:
            return
        with self._op("link_down", name, ok=(errno.ENODEV,)):
            self._ipr.link("set", index=index, state="down")

    def set_mtu(self, name: str, mtu: int) -> None:
        """Set the MTU of C{name}."""
        index = self._index("set_mtu", name)
        with self._op(f"set_mtu {mtu}", name):
            self._ipr.link("set", index=index, mtu=mtu)

    def link_mac(self, name: str) -> str:
        """The link-layer address of C{name} (C{"aa:bb:..."}); L{NetlinkError} if it has none."""
        index = self._index("link_mac", name)
        with self._op("link_mac", name):
            links = list(self._ipr.get_links(index))
        mac = links[0].get_attr("IFLA_ADDRESS") if links else None
        if not mac:
            raise NetlinkError(f"link_mac on {name} failed: the device has no link-layer address")
        return cast(str, mac)

    def link_exists(self, name: str) -> bool:
        """Whether a device called C{name} exists."""
        return self._maybe_index("link_exists", name) is not None

    # -- addresses

    def add_address(self, name: str, iface: IPv4Interface | str) -> None:
        """Add C{iface} (address/prefix) to C{name}; present already is fine."""
        iface = IPv4Interface(iface)
        index = self._index(f"add_address {iface}", name)
        with self._op(f"add_address {iface}", name, ok=(errno.EEXIST,)):
            self._ipr.addr(
                "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
            )

    def del_address(self, name: str, iface: IPv4Interface | str) -> None:
        """Remove C{iface} from C{name}; absent (or no such device) is fine."""
        iface = IPv4Interface(iface)
        index = self._maybe_index(f"del_address {iface}", name)
        if index is None:
            return
        with self._op(
            f"del_address {iface}", name, ok=(errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT)
        ):
            self._ipr.addr(
                "del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
            )

    def addresses(self, name: str | None = None) -> list[tuple[str, IPv4Interface]]:
        """The IPv4 addresses as C{(device, address/prefix)}, of C{name} or of every device."""
        if name is not None:
            index = self._index("addresses", name)
            names = {index: name}
            with self._op("addresses", name):
                msgs = list(self._ipr.get_addr(family=socket.AF_INET, index=index))
        else:
            names = self._names()
            with self._op("addresses", None):
                msgs = list(self._ipr.get_addr(family=socket.AF_INET))
        result = []
        for msg in msgs:
            local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            dev = names.get(int(msg["index"]))
            if local is None or dev is None:
                continue
            result.append((dev, IPv4Interface(f"{local}/{msg['prefixlen']}")))
        return result

    # -- routes

    def add_route(
        self,
        dst: IPv4Network | str,
        *,
        dev: str | None = None,
        gateway: str | None = None,
        src: str | None = None,
        metric: int | None = None,
    ) -> None:
        """
        Add or replace the route to C{dst} (a network, an address or C{"default"}).

        Replace semantics, as C{ip route replace}: the route with the same
        destination and metric is overwritten. A route with only C{dev} gets
        link scope, as C{ip route} gives it.
        """
        target = _route_dst(dst)
        operation = f"add_route {target}"
        args: dict[str, Any] = {"dst": target, "table": RT_TABLE_MAIN}
        if dev is not None:
            args["oif"] = self._index(operation, dev)
        if gateway is not None:
            args["gateway"] = str(IPv4Address(gateway))
        if src is not None:
            args["prefsrc"] = str(IPv4Address(src))
        if metric is not None:
            args["priority"] = metric
        if dev is None and gateway is None:
            raise NetlinkError(f"{operation} failed: give a device or a gateway")
        args["scope"] = RT_SCOPE_LINK if gateway is None else RT_SCOPE_UNIVERSE
        with self._op(operation, dev):
            self._ipr.route("replace", **args)

    def del_route(
        self,
        dst: IPv4Network | str,
        *,
        dev: str | None = None,
        gateway: str | None = None,
        metric: int | None = None,
    ) -> None:
        """Delete the route to C{dst} (narrowed by C{dev}/C{gateway}/C{metric}); missing is fine."""
        target = _route_dst(dst)
        operation = f"del_route {target}"
        # pyroute2 sends scope 0 (universe) unless told, and the kernel then skips
        # link-scope routes: deleting a device route would "succeed" as ESRCH.
        args: dict[str, Any] = {"dst": target, "table": RT_TABLE_MAIN, "scope": RT_SCOPE_NOWHERE}
        if dev is not None:
            index = self._maybe_index(operation, dev)
            if index is None:
                return  # the kernel took the device's routes away with it
            args["oif"] = index
        if gateway is not None:
            args["gateway"] = str(IPv4Address(gateway))
        if metric is not None:
            args["priority"] = metric
        with self._op(operation, dev, ok=(errno.ESRCH, errno.ENOENT, errno.ENODEV)):
            self._ipr.route("del", **args)

    def routes(self) -> list[tuple[IPv4Network, str | None, str | None, int]]:
        """The main table's unicast IPv4 routes as C{(dst, gateway, dev, metric)}."""
        names = self._names()
        with self._op("routes", None):
            msgs = list(self._ipr.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN))
        result = []
        for msg in msgs:
            if msg.get("type", 1) != 1:  # RTN_UNICAST only
                continue
            dst = msg.get_attr("RTA_DST") or str(IPv4Address(0))  # a default route has none
            oif = msg.get_attr("RTA_OIF")
            result.append(
                (
                    IPv4Network(f"{dst}/{msg['dst_len']}"),
                    msg.get_attr("RTA_GATEWAY"),
                    names.get(oif) if oif is not None else None,
                    int(msg.get_attr("RTA_PRIORITY") or 0),
                )
            )
        return result

    def route_get(self, dst: str) -> tuple[str | None, str | None, str | None]:
        """
        C{(gateway, device, preferred source)} the kernel would use for C{dst}.

        C{(None, None, None)} when C{dst} is unreachable (no route).
        """
        target = str(IPv4Address(dst))
        try:
            with self._op(f"route_get {target}", None):
                msgs = list(self._ipr.route("get", dst=target))
        except NetlinkError as e:
            if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return (None, None, None)
            raise
        if not msgs:
            return (None, None, None)
        msg = msgs[0]
        oif = msg.get_attr("RTA_OIF")
        dev = self._name(oif) if oif is not None else None
        return (msg.get_attr("RTA_GATEWAY"), dev, msg.get_attr("RTA_PREFSRC"))

    def default_route(self) -> tuple[str | None, str | None]:
        """C{(gateway, device)} of the main table's best default route; C{(None, None)} if none."""
        defaults = [r for r in self.routes() if r[0].prefixlen == 0]
        if not defaults:
            return (None, None)
        _, gateway, dev, _ = min(defaults, key=lambda r: r[3])
        return (gateway, dev)

    # -- proxy neighbours

    def add_proxy_neighbour(self, addr: str, dev: str) -> None:
        """C{ip neigh replace proxy ADDR dev DEV}: answer ARP for C{addr} on C{dev}.

        The kernel answers only while forwarding is on for C{dev}
        (C{net.ipv4.conf.DEV.forwarding} or C{net.ipv4.ip_forward}) and its
        route to C{addr} leaves through another device (e.g. the TUN);
        C{proxy_arp} itself is not needed. Replies wait a random part of
        C{net.ipv4.neigh.DEV.proxy_delay} (0.8 s by default) unless it is 0.
        """
        target = str(IPv4Address(addr))
        index = self._index(f"add_proxy_neighbour {target}", dev)
        with self._op(f"add_proxy_neighbour {target}", dev):
            self._ipr.neigh(
                "replace", dst=target, ifindex=index, flags=NTF_PROXY, family=socket.AF_INET
            )

    def del_proxy_neighbour(self, addr: str, dev: str) -> None:
        """C{ip neigh del proxy ADDR dev DEV}; absent (or no such device) is fine."""
        target = str(IPv4Address(addr))
        index = self._maybe_index(f"del_proxy_neighbour {target}", dev)
        if index is None:
            return
        with self._op(f"del_proxy_neighbour {target}", dev, ok=(errno.ENOENT, errno.ENODEV)):
            self._ipr.neigh(
                "del", dst=target, ifindex=index, flags=NTF_PROXY, family=socket.AF_INET
            )

    def proxy_neighbours(self, dev: str | None = None) -> list[str]:
        """The IPv4 proxy neighbour addresses (of C{dev}, or of every device)."""
        index = self._index("proxy_neighbours", dev) if dev is not None else None
        # pyroute2 keeps dump arguments out of the request unless dump_filter is given;
        # the kernel lists proxy entries only when the request carries NTF_PROXY.
        with self._op("proxy_neighbours", dev):
            msgs = list(
                self._ipr.neigh(
                    "dump", family=socket.AF_INET, flags=NTF_PROXY, dump_filter=lambda m: True
                )
            )
        result = []
        for msg in msgs:
            if not msg["flags"] & NTF_PROXY:
                continue
            if index is not None and msg["ifindex"] != index:
                continue
            dst = msg.get_attr("NDA_DST")
            if dst is not None:
                result.append(cast(str, dst))
        return result

    # -- sysctl

    @staticmethod
    def sysctl_path(key: str) -> Path:
        """
        The C{/proc/sys} file of a C{net.} C{key}.

        As with sysctl(8), a key with C{/} separators keeps its dots (for
        device names like C{eth0.100}): C{net/ipv4/conf/eth0.100/proxy_arp}.
        """
        parts = key.split("/") if "/" in key else key.split(".")
        if parts[0] != "net" or len(parts) < 3 or any(p in ("", ".", "..") for p in parts):
            raise NetlinkError(f"set_sysctl {key} failed: only net.* keys are allowed")
        return Path("/proc/sys").joinpath(*parts)

    def set_sysctl(self, key: str, value: str) -> None:
        """Write C{value} to the C{net.*} sysctl C{key} of this network namespace."""
        path = self.sysctl_path(key)
        try:
            path.write_text(f"{value}\n")
        except OSError as e:
            code = e.errno or 0
            if code == errno.ENOENT:
                raise NetlinkError(f"set_sysctl {key} failed: no such key", code) from e
            raise NetlinkError(_describe(f"set_sysctl {key}={value}", None, code, ""), code) from e

    def sysctl(self, key: str) -> str:
        """Read the C{net.*} sysctl C{key} of this network namespace."""
        path = self.sysctl_path(key)
        try:
            return path.read_text().strip()
        except OSError as e:
            code = e.errno or 0
            raise NetlinkError(_describe(f"sysctl {key}", None, code, ""), code) from e

    def close(self) -> None:
        """Close the netlink socket."""
        self._ipr.close()


def message_kinds(data: bytes) -> set[str]:
    """The kinds (C{"link"}, C{"address"}, C{"route"}) of the netlink messages in C{data}."""
    kinds: set[str] = set()
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size:
            break
        if msg_type == _NLMSG_OVERRUN:
            kinds.update(("link", "address", "route"))
        kind = _KINDS.get(msg_type)
        if kind is not None:
            kinds.add(kind)
        offset += (length + 3) & ~3
    return kinds


@implementer(IReadDescriptor)
class LinkWatcher:
    """
    Reports link, IPv4 address and IPv4 route changes to C{on_change(kind)}.

    Each reactor wake-up drains the socket and calls C{on_change} at most once
    per kind, in the order link, address, route. If the kernel dropped events
    (the socket overran), every kind is reported: the state must be re-read.
    C{sock} is injectable for tests (anything with C{recv} and C{fileno}).
    """

    log = Logger()
    groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
    """The netlink multicast groups watched."""

    def __init__(
        self,
        on_change: Callable[[str], None],
        *,
        reactor: Any = None,
        sock: Any = None,
        max_messages: int = 256,
    ) -> None:
        self.on_change = on_change
        self.max_messages = max_messages
        self._reactor: IReactorFDSet | None = reactor
        self._given_sock = sock
        self._sock: Any = None
        self.events = 0

    @property
    def reactor(self) -> IReactorFDSet:
        """The reactor this watcher registers with (the global one unless injected)."""
        if self._reactor is None:
            self._reactor = default_reactor()
        return self._reactor

    def start(self) -> None:
        """Subscribe and start reading (idempotent)."""
        if self._sock is not None:
            return
        if self._given_sock is not None:
            sock = self._given_sock
        else:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.bind((0, self.groups))
                sock.setblocking(False)
            except OSError as e:
                sock.close()
                raise NetlinkError(
                    _describe("subscribing to netlink events", None, e.errno or 0, str(e)),
                    e.errno or 0,
                ) from e
        self._sock = sock
        self.reactor.addReader(self)

    def stop(self) -> None:
        """Stop reading and close the socket (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            self.reactor.removeReader(self)
            sock.close()

    def fileno(self) -> int:
        """The socket's descriptor, or -1 when stopped."""
        return -1 if self._sock is None else int(self._sock.fileno())

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's spelling
        """How the reactor names us in its logs."""
        return "LinkWatcher"

    def doRead(self) -> None:  # noqa: N802 - Twisted's spelling
        """Drain the queued notifications, then report each kind seen once."""
        sock = self._sock
        if sock is None:
            return
        kinds: set[str] = set()
        for _ in range(self.max_messages):
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    # The kernel dropped notifications: anything may have changed.
                    kinds.update(("link", "address", "route"))
                    continue
                raise
            if not data:
                break
            self.events += 1
            kinds |= message_kinds(data)
        for kind in ("link", "address", "route"):
            if kind in kinds:
                try:
                    self.on_change(kind)
                except Exception:
                    self.log.failure("error handling a {kind} change", kind=kind)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's spelling
        """The reactor gave up on the socket: close it."""
        self.log.warn("netlink watcher lost: {reason}", reason=reason.getErrorMessage())
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
