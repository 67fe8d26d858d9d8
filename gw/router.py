"""The packet router: where a packet from a client (or from the NAT) goes. Sans-I/O, no packet changes.

Theory of operation
-------------------
A packet from a client session is checked, in this order:

1. It is a sound IPv4 packet (``packet.check_ipv4``, the bounded reader) — else a ``Drop``.
2. Anti-spoofing (RFC 2827 ingress filtering, RFC 3704): its source is the address assigned to that
   session — else ``Drop.SPOOFED``. A client cannot speak for another client or hide behind the gateway.
3. Inside the VPN subnet: the gateway's VPN address -> ``Route.LOCAL`` (its services: DNS proxy,
   ICMP echo, the host's TUN port); the subnet's network and broadcast addresses -> ``Drop.DENIED``;
   another VPN address -> ``Route.CLIENT`` with the session holding it, or ``Drop.NO_ROUTE`` when
   nobody does.
4. Outside it: the deny list (by default the RFC 6890 ranges a client must never reach through the
   gateway: 0.0.0.0/8, loopback, link-local where cloud metadata lives, multicast, limited
   broadcast) -> ``Drop.DENIED``; anything else -> ``Route.NAT``. The deny list applies to the way
   out only, so an operator may deny all of 10.0.0.0/8 without cutting the VPN off from itself.

Packets coming back from the NAT (inbound, or hairpinned) go to the session holding their destination.

``route_*`` return a ``(verdict, session)`` pair: the session handle is the opaque object the shell
registered with ``attach``, and ``None`` unless the verdict is ``Route.CLIENT``. Counters per verdict
are kept in ``counts``. Nothing raises for any input bytes.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from gw import inet
from gw.config import VpnConfig
from gw.packet import DROP_COUNT, Drop, check_ipv4, get_u32

__all__ = ["Route", "Router"]


class Route(IntEnum):
    """Where a packet goes; values above the ``Drop`` reasons so one counter list holds both."""

    NAT = 64  # to the internet through the NAT
    CLIENT = 65  # to another client's session
    LOCAL = 66  # to the gateway itself (its VPN address)


_COUNTS = max(DROP_COUNT, max(Route) + 1)


class Router:
    """Routing and policy for one VPN subnet."""

    def __init__(self, config: VpnConfig) -> None:
        self.network, self.prefix_len = inet.parse_prefix(config.subnet)
        self.mask = inet.prefix_mask(self.prefix_len)
        self.broadcast = self.network | (~self.mask & 0xFFFFFFFF)
        self.gateway_addr = inet.aton(config.gateway_address)
        self._deny = [(net, inet.prefix_mask(length)) for net, length in map(inet.parse_prefix, config.deny)]
        self._sessions: dict[int, Any] = {}  # VPN address -> session handle
        self.counts = [0] * _COUNTS
        self._to_nat = (Route.NAT, None)
        self._to_local = (Route.LOCAL, None)

    # ------------------------------------------------------------------ sessions

    def attach(self, vpn_addr: int, session: Any) -> None:
        """Deliver packets for ``vpn_addr`` to ``session`` from now on."""
        self._sessions[vpn_addr] = session

    def detach(self, vpn_addr: int) -> None:
        """Stop delivering to ``vpn_addr``."""
        self._sessions.pop(vpn_addr, None)

    def session_for(self, vpn_addr: int) -> Any:
        return self._sessions.get(vpn_addr)

    # ------------------------------------------------------------------ decisions

    def route_from_client(self, pkt: bytes | bytearray, client_addr: int) -> tuple[int, Any]:
        """Decide a packet a client sent. Returns (Route or Drop, session or None). Raises nothing."""
        bad = check_ipv4(pkt)
        if bad:
            return self._count(bad)
        if get_u32(pkt, 12)[0] != client_addr:
            return self._count(Drop.SPOOFED)
        return self._by_destination(get_u32(pkt, 16)[0])

    def route_to_client(self, pkt: bytes | bytearray) -> tuple[int, Any]:
        """Decide a packet the NAT translated inbound (or hairpinned): the session holding its destination."""
        if len(pkt) < 20:
            return self._count(Drop.TRUNCATED)
        session = self._sessions.get(get_u32(pkt, 16)[0])
        if session is None:
            return self._count(Drop.NO_ROUTE)
        self.counts[Route.CLIENT] += 1
        return Route.CLIENT, session

    def _by_destination(self, dst: int) -> tuple[int, Any]:
        if dst & self.mask != self.network:  # to the internet, unless the deny list says no
            for net, mask in self._deny:
                if dst & mask == net:
                    return self._count(Drop.DENIED)
            self.counts[Route.NAT] += 1
            return self._to_nat
        if dst == self.gateway_addr:
            self.counts[Route.LOCAL] += 1
            return self._to_local
        if dst == self.broadcast or dst == self.network:
            return self._count(Drop.DENIED)
        session = self._sessions.get(dst)
        if session is None:
            return self._count(Drop.NO_ROUTE)
        self.counts[Route.CLIENT] += 1
        return Route.CLIENT, session

    def _count(self, verdict: int) -> tuple[int, None]:
        self.counts[verdict] += 1
        return verdict, None
