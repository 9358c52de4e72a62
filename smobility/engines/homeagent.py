# -*- test-case-name: tests.test_homeagent -*-
"""The home agent's registration engine (RFC 5944 section 3.8), sans I/O.

:meth:`HomeAgent.handle_request` takes the bytes of one UDP datagram and the
address it came from and returns the bytes of the reply to send back to that
same address (or ``None`` when the datagram must be dropped silently).  Time
comes from an injected ``IReactorTime``; binding expiry is a timer on it.

Order of the checks, so that nothing changes before the sender is proven:

1. decode (a datagram too short for the fixed part is dropped and counted);
2. find the mobile node by home address (or NAI) and its MN-HA extension;
   check the SPI and the authenticator in constant time (131 on failure);
   a request that came from a known foreign agent, or that carries an FA-HA
   extension, must carry exactly one valid FA-HA extension (132 on failure);
3. refuse unrecognised non-skippable extensions (RFC 5944 section 1.9) and
   malformed extensions (134);
4. check the home agent address (136), then the timestamp (133, the reply
   carrying the home agent's time in its high 32 bits and the request's low
   32 bits) and that the identification is newer than the last accepted one;
5. apply the registration, commit it to the store, and only then reply.

Every refusal leaves the bindings, the store and the last identification as
they were.  A reply to a request relayed by a foreign agent whose FA-HA
extension verified carries an FA-HA extension of its own, after the MN-HA
extension (RFC 5944 section 3.8.3), so that the foreign agent can relay it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from smobility.engines.bindings import Binding, BindingStore
from smobility.wire import WireError, mip
from smobility.wire.ntp import ntp_diff, ntp_seconds, to_ntp

#: Lifetime value meaning "infinite" (RFC 5944 section 3.3); never granted.
INFINITE_LIFETIME = 0xFFFF


@dataclass(frozen=True)
class MobileNodeEntry:
    """What the home agent knows of one mobile node it serves."""

    name: str
    home_address: IPv4Address
    spi: int
    key: bytes
    algorithm: str = "hmac-md5"
    max_lifetime: int = 1800
    simultaneous_bindings: int = 1
    nai: str | None = None

    def __repr__(self) -> str:
        return (
            f"MobileNodeEntry(name={self.name!r}, home_address={self.home_address}, "
            f"spi={self.spi}, algorithm={self.algorithm!r})"
        )


@dataclass(frozen=True)
class ForeignAgentEntry:
    """A relay (foreign agent) allowed to relay registrations, with its FA-HA key.

    ``gateway``: the relay may also be its clients' IPsec VPN gateway, passing
    on their co-located registrations address-translated and without FA-HA.
    """

    address: IPv4Address
    spi: int
    key: bytes
    algorithm: str = "hmac-md5"
    gateway: bool = False

    def __repr__(self) -> str:
        return f"ForeignAgentEntry(address={self.address}, spi={self.spi})"


BindingListener = Callable[[str, list[Binding]], None]


class HomeAgent:
    """Registration processing and the binding table of one home agent."""

    log = Logger()

    def __init__(
        self,
        *,
        addresses: Sequence[IPv4Address],
        home_network: IPv4Network,
        nodes: Iterable[MobileNodeEntry],
        store: BindingStore,
        clock: IReactorTime,
        replay_window: float = 7.0,
        max_bindings: int = 100_000,
        keepalive_interval: int = 20,
        foreign_agents: Iterable[ForeignAgentEntry] = (),
    ) -> None:
        if not addresses:
            raise ValueError("a home agent needs at least one address")
        self.addresses = tuple(addresses)
        self.home_network = home_network
        self.clock = clock
        self.store = store
        self.replay_window = replay_window
        self.max_bindings = max_bindings
        self.keepalive_interval = keepalive_interval
        self.nodes: dict[str, MobileNodeEntry] = {}
        self._by_address: dict[IPv4Address, MobileNodeEntry] = {}
        self._by_nai: dict[bytes, MobileNodeEntry] = {}
        for node in nodes:
            self.nodes[node.name] = node
            self._by_address[node.home_address] = node
            if node.nai:
                self._by_nai[node.nai.encode()] = node
        self.foreign_agents = {fa.address: fa for fa in foreign_agents}
        self.counters: Counter[str] = Counter()
        self.bindings: dict[str, list[Binding]] = {}
        self._listeners: list[BindingListener] = []
        self._timer: IDelayedCall | None = None
        self._load()

    # -- state ------------------------------------------------------------

    def _load(self) -> None:
        """Reload unexpired bindings from the store; drop expired ones."""
        now = self.clock.seconds()
        loaded: dict[str, list[Binding]] = {}
        dropped: dict[str, int] = {}
        for b in self.store.load_bindings():
            if b.node not in self.nodes or b.expires <= now:
                dropped[b.node] = dropped.get(b.node, 0) + 1
                continue
            loaded.setdefault(b.node, []).append(b)
        for node in dropped:
            self.store.replace_bindings(node, loaded.get(node, []))
            self.log.info(
                "dropped {count} expired or unknown binding(s) of {node} at start-up",
                count=dropped[node],
                node=node,
            )
        self.bindings = loaded
        for node, bs in loaded.items():
            for b in bs:
                self.log.info(
                    "restored binding node={node} coa={coa} expires in {left:.0f} s",
                    node=node,
                    coa=b.care_of_address,
                    left=b.remaining(now),
                )
        self._arm()

    def add_listener(self, listener: BindingListener) -> None:
        """Call ``listener(node, bindings)`` whenever a node's bindings change."""
        self._listeners.append(listener)

    def _set(self, node: str, bindings: list[Binding]) -> None:
        if bindings:
            self.bindings[node] = bindings
        else:
            self.bindings.pop(node, None)
        for listener in self._listeners:
            listener(node, list(bindings))
        self._arm()

    def binding_count(self) -> int:
        """The number of bindings held for all nodes."""
        return sum(len(bs) for bs in self.bindings.values())

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        expiries = [b.expires for bs in self.bindings.values() for b in bs]
        if expiries:
            delay = max(0.0, min(expiries) - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        for node, bs in list(self.bindings.items()):
            keep = [b for b in bs if b.expires > now]
            if len(keep) != len(bs):
                for b in bs:
                    if b.expires <= now:
                        self.counters["bindings_expired"] += 1
                        self.log.info(
                            "binding expired node={node} coa={coa}",
                            node=node,
                            coa=b.care_of_address,
                        )
                self.store.replace_bindings(node, keep)
                self._set(node, keep)
        self._arm()

    def stop(self) -> None:
        """Cancel timers (the bindings stay in the store)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- registration -----------------------------------------------------

    def handle_request(self, data: bytes, source: tuple[str, int]) -> bytes | None:
        """Process one datagram received on the registration port.

        Returns the reply to send to ``source`` from the same socket, or
        ``None`` to drop the datagram.
        """
        self.counters["requests_received"] += 1
        if len(data) < 24 or data[0] != mip.TYPE_REQUEST:
            self.counters["dropped_malformed"] += 1
            self.log.warn(
                "dropped a datagram from {host}:{port} that is not a registration request"
                " ({size} bytes)",
                host=source[0],
                port=source[1],
                size=len(data),
            )
            return None
        try:
            req = mip.decode(data)
        except WireError as e:
            return self._poorly_formed(data, source, str(e))
        assert isinstance(req, mip.RegistrationRequest)
        return self._process(req, source)

    def _poorly_formed(self, data: bytes, source: tuple[str, int], why: str) -> bytes | None:
        """Reply 134 to a request whose fixed part is readable but the rest is not."""
        self.counters["dropped_malformed"] += 1
        try:
            fixed = mip.decode(data[:24])
        except WireError:
            return None
        assert isinstance(fixed, mip.RegistrationRequest)
        self.log.warn(
            "poorly formed registration request from {host}:{port} for {hoa}: {why}",
            host=source[0],
            port=source[1],
            hoa=fixed.home_address,
            why=why,
        )
        node = self._by_address.get(fixed.home_address)
        return self._reply(fixed, node, mip.CODE_HA_POORLY_FORMED, source, authenticate=False)

    def _identify(self, req: mip.RegistrationRequest) -> MobileNodeEntry | None:
        node = self._by_address.get(req.home_address)
        if node is None and req.home_address == IPv4Address(0):
            nai = mip.find_extension(req.extensions, mip.NAIExtension)
            if nai is not None:
                ext = req.extensions[nai]
                assert isinstance(ext, mip.NAIExtension)
                node = self._by_nai.get(ext.nai)
        return node

    def _relay_check(
        self, req: mip.RegistrationRequest, source: tuple[str, int]
    ) -> tuple[ForeignAgentEntry | None, str]:
        """The foreign agent that relayed ``req`` if its FA-HA verified, and why not.

        Returns ``(entry, "")`` for a verified relay, ``(None, "")`` for a
        request that did not come through a foreign agent (a co-located
        registration without FA-HA from a relay that is also a VPN gateway is
        one: the relay is then the client's gateway, not its foreign agent), and
        ``(None, why)`` for one that must be refused with 132.
        """
        fa = self.foreign_agents.get(IPv4Address(source[0]))
        faha = mip.auth_indices(req.extensions, mip.EXT_FA_HA)
        if not faha and fa is None:
            return None, ""
        if (
            not faha
            and fa is not None
            and fa.gateway
            and req.flags & mip.FLAG_D
            and req.care_of_address != fa.address
        ):
            # A co-located care-of address claims no foreign-agent service: the
            # relay, as the client's VPN gateway, passed it on address-
            # translated (RFC 3519 then sees the NAT). MN-HA still decides.
            return None, ""
        if fa is None:
            return None, "FA-HA extension from an address with no FA-HA security association"
        if len(faha) != 1:
            return None, f"{len(faha)} FA-HA extensions, expected one"
        ext = req.extensions[faha[0]]
        assert isinstance(ext, mip.AuthExtension)
        if ext.spi != fa.spi:
            return None, f"unknown FA-HA SPI {ext.spi}"
        if not mip.verify_authenticator(req, faha[0], fa.key, fa.algorithm):
            return None, "bad FA-HA authenticator"
        return fa, ""

    def _process(self, req: mip.RegistrationRequest, source: tuple[str, int]) -> bytes | None:
        node = self._identify(req)
        mnha = mip.find_auth(req.extensions, mip.EXT_MN_HA)
        # Checking FA-HA changes nothing; knowing the result first lets every
        # reply to a verified relay carry FA-HA, 131 included, so the foreign
        # agent relays our answer instead of reporting 68 to the node.
        fa, fa_problem = self._relay_check(req, source)
        # 1. Authenticate before anything else.
        if node is None:
            return self._deny(
                req, None, mip.CODE_HA_MN_AUTH_FAILED, source, "unknown home address", fa
            )
        if mnha is None:
            return self._deny(
                req, node, mip.CODE_HA_MN_AUTH_FAILED, source, "no MN-HA extension", fa
            )
        ext = req.extensions[mnha]
        assert isinstance(ext, mip.AuthExtension)
        if ext.spi != node.spi:
            return self._deny(
                req, node, mip.CODE_HA_MN_AUTH_FAILED, source, f"unknown SPI {ext.spi}", fa
            )
        if not mip.verify_authenticator(req, mnha, node.key, node.algorithm):
            return self._deny(
                req, node, mip.CODE_HA_MN_AUTH_FAILED, source, "bad authenticator", fa
            )
        # A relayed request must also carry a valid FA-HA extension.
        if fa_problem:
            return self._deny(req, node, mip.CODE_HA_FA_AUTH_FAILED, source, fa_problem)
        # 2. Form: non-skippable extensions we do not know; protected order.
        unknown = mip.unknown_nonskippable(req.extensions)
        if unknown is not None:
            return self._deny(
                req,
                node,
                mip.CODE_HA_POORLY_FORMED,
                source,
                f"unrecognised extension type {unknown}",
                fa=fa,
            )
        for later in req.extensions[mnha + 1 :]:
            if isinstance(later, mip.AuthExtension) and later.type == mip.EXT_MN_HA:
                return self._deny(
                    req, node, mip.CODE_HA_POORLY_FORMED, source, "two MN-HA extensions", fa=fa
                )
        if req.flags & (mip.FLAG_M | mip.FLAG_G):
            return self._deny(
                req,
                node,
                mip.CODE_HA_UNSPECIFIED,
                source,
                "requested encapsulation (minimal or GRE) unavailable",
                fa=fa,
            )
        # 3. Addressing and replay protection.
        if req.home_agent not in self.addresses:
            return self._deny(
                req,
                node,
                mip.CODE_HA_UNKNOWN_HA,
                source,
                f"not our address: {req.home_agent}",
                fa=fa,
            )
        now = self.clock.seconds()
        skew = ntp_diff(req.identification, to_ntp(now))
        if abs(skew) > self.replay_window:
            return self._deny(
                req,
                node,
                mip.CODE_HA_ID_MISMATCH,
                source,
                f"timestamp off by {skew:+.1f} s (window {self.replay_window:g} s)",
                fa=fa,
            )
        last = self.store.last_identification(node.name)
        if last is not None and ntp_diff(req.identification, last) <= 0:
            return self._deny(
                req,
                node,
                mip.CODE_HA_ID_MISMATCH,
                source,
                "identification not newer (replay)",
                fa=fa,
            )
        # 4. Apply.
        return self._apply(req, node, source, now, fa)

    def _apply(
        self,
        req: mip.RegistrationRequest,
        node: MobileNodeEntry,
        source: tuple[str, int],
        now: float,
        fa: ForeignAgentEntry | None = None,
    ) -> bytes | None:
        current = list(self.bindings.get(node.name, []))
        utrq_i = mip.find_extension(req.extensions, mip.UDPTunnelRequest)
        reply_exts: list[mip.Extension] = []
        deregister = req.lifetime == 0 or req.care_of_address == req.home_address
        code = mip.CODE_ACCEPTED
        if deregister:
            if req.care_of_address == req.home_address:
                new: list[Binding] = []
            else:
                new = [b for b in current if b.care_of_address != req.care_of_address]
            granted = 0
        else:
            granted = min(req.lifetime, node.max_lifetime, INFINITE_LIFETIME - 1)
            nat = False
            keepalive = 0
            if utrq_i is not None:
                utrq = req.extensions[utrq_i]
                assert isinstance(utrq, mip.UDPTunnelRequest)
                behind_nat = IPv4Address(source[0]) != req.care_of_address
                if utrq.encapsulation != 4:
                    reply_exts.append(mip.UDPTunnelReply(code=1))
                elif behind_nat or utrq.force:
                    nat = True
                    keepalive = self.keepalive_interval
                    reply_exts.append(
                        mip.UDPTunnelReply(code=0, force=utrq.force, keepalive=keepalive)
                    )
            binding = Binding(
                node=node.name,
                home_address=node.home_address,
                care_of_address=req.care_of_address,
                lifetime=granted,
                registered=now,
                expires=now + granted,
                identification=req.identification,
                source_host=source[0],
                source_port=source[1],
                flags=req.flags,
                nat=nat,
                keepalive=keepalive,
                path="relay" if fa is not None else "direct",
            )
            others = [b for b in current if b.care_of_address != req.care_of_address]
            if req.flag(mip.FLAG_S) and node.simultaneous_bindings > 1:
                if len(others) + 1 > node.simultaneous_bindings:
                    return self._deny(
                        req,
                        node,
                        mip.CODE_HA_TOO_MANY_BINDINGS,
                        source,
                        f"already {len(others)} binding(s), at most "
                        f"{node.simultaneous_bindings} allowed",
                        fa=fa,
                    )
                new = others + [binding]
            else:
                if req.flag(mip.FLAG_S):
                    code = mip.CODE_ACCEPTED_NO_SIMULTANEOUS
                new = [binding]
            if self.binding_count() - len(current) + len(new) > self.max_bindings:
                return self._deny(
                    req,
                    node,
                    mip.CODE_HA_RESOURCES,
                    source,
                    f"binding table full ({self.max_bindings})",
                    fa=fa,
                )
        # Commit before replying.
        self.store.commit_registration(node.name, new, req.identification)
        self._set(node.name, new)
        self.counters["accepted"] += 1
        self.counters["deregistrations" if deregister else "registrations"] += 1
        self.log.info(
            "{what} node={node} coa={coa} from={host}:{port} lifetime={lifetime}"
            " code={code} ({meaning}){nat}",
            what="deregistration" if deregister else "registration",
            node=node.name,
            coa=req.care_of_address,
            host=source[0],
            port=source[1],
            lifetime=granted,
            code=code,
            meaning=mip.REPLY_CODE_NAMES[code],
            nat=" nat=yes"
            if any(b.nat for b in new if b.care_of_address == req.care_of_address)
            else "",
        )
        return self._reply(req, node, code, source, lifetime=granted, extensions=reply_exts, fa=fa)

    def _deny(
        self,
        req: mip.RegistrationRequest,
        node: MobileNodeEntry | None,
        code: int,
        source: tuple[str, int],
        why: str,
        fa: ForeignAgentEntry | None = None,
    ) -> bytes | None:
        self.counters[f"denied_{code}"] += 1
        self.log.warn(
            "registration refused node={node} hoa={hoa} coa={coa} from={host}:{port}"
            " code={code} ({meaning}): {why}",
            node=node.name if node else "?",
            hoa=req.home_address,
            coa=req.care_of_address,
            host=source[0],
            port=source[1],
            code=code,
            meaning=mip.REPLY_CODE_NAMES.get(code, "?"),
            why=why,
        )
        # A request that failed authentication gets an unsigned reply: signing
        # whatever an unauthenticated sender chose would hand out authentic
        # refusals that an attacker could aim at a node's pending request.
        return self._reply(
            req, node, code, source, authenticate=code != mip.CODE_HA_MN_AUTH_FAILED, fa=fa
        )

    def _reply(
        self,
        req: mip.RegistrationRequest,
        node: MobileNodeEntry | None,
        code: int,
        source: tuple[str, int],
        *,
        lifetime: int = 0,
        extensions: Sequence[mip.Extension] = (),
        authenticate: bool = True,
        fa: ForeignAgentEntry | None = None,
    ) -> bytes:
        """The reply to ``req``: MN-HA if ``authenticate``, then FA-HA for ``fa``."""
        ident = req.identification
        if code == mip.CODE_HA_ID_MISMATCH:
            # RFC 5944 section 5.7.1: our time in the high 32 bits, the
            # request's low 32 bits echoed so the node can match the reply.
            ident = (ntp_seconds(to_ntp(self.clock.seconds())) << 32) | (ident & 0xFFFFFFFF)
        home_agent = req.home_agent if req.home_agent in self.addresses else self.addresses[0]
        exts: list[mip.Extension] = list(extensions)
        nai_i = mip.find_extension(req.extensions, mip.NAIExtension)
        if nai_i is not None:
            exts.insert(0, req.extensions[nai_i])
        reply = mip.RegistrationReply(
            code=code,
            lifetime=lifetime,
            home_address=req.home_address,
            home_agent=home_agent,
            identification=ident,
            extensions=tuple(exts),
        )
        data = mip.encode(reply)
        if node is not None and authenticate:
            data = mip.append_authenticator(data, mip.EXT_MN_HA, node.spi, node.key, node.algorithm)
        if fa is not None:
            # RFC 5944 section 3.8.3: after the MN-HA extension, so the
            # foreign agent can check it and strip it before relaying.
            data = mip.append_authenticator(data, mip.EXT_FA_HA, fa.spi, fa.key, fa.algorithm)
        self.counters["replies_sent"] += 1
        return data
