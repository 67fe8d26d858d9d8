"""The packet router: where a packet from a client (or from the NAT) goes, and the router hop's ICMP.

Theory of operation
-------------------
A packet from a client session is checked, in this order:

1. Its header reads as IPv4 (version, header and total length within the buffer) — else a ``Drop``.
2. Anti-spoofing (RFC 2827 ingress filtering, RFC 3704): its source is the address assigned to that
   session — else ``Drop.SPOOFED``. A client cannot speak for another client or hide behind the gateway.
3. Outside the VPN subnet: the deny list (by default the RFC 6890 ranges a client must never reach
   through the gateway: 0.0.0.0/8, loopback, link-local where cloud metadata lives, multicast, limited
   broadcast) -> ``Drop.DENIED``; anything else -> ``Route.NAT``. The NAT reads the same header again
   with its own fused checks (header checksum, TTL), so the router does not checksum what it hands
   on: one header read per packet, not two. The deny list applies to the way out only, so an operator
   may deny all of 10.0.0.0/8 without cutting the VPN off from itself.
4. Inside it, where nothing else looks at the packet: the header checksum, then the gateway's VPN
   address -> ``Route.LOCAL`` (its services: DNS proxy, ICMP echo, the host's TUN port); the subnet's
   network and broadcast addresses -> ``Drop.DENIED``; another VPN address -> ``Route.CLIENT`` with the
   session holding it (``Drop.NO_ROUTE`` when nobody does), its TTL decremented in place as any router
   hop does (RFC 1812 5.3.1), or ``Drop.TTL_EXCEEDED`` when it would leave with TTL 0.

Packets coming back from the NAT (inbound, or hairpinned) go to the session holding their destination.

A packet dropped for its TTL — here, or by the NAT either way — is answered with an ICMP Time Exceeded
(``time_exceeded_to_client``, ``time_exceeded_to_internet``) from the gateway's VPN address to a client,
or from the public address it was sent to toward the internet, so that traceroute and mtr show the
gateway as a hop. Each direction has its own token bucket (``[vpn] icmp_errors_per_s``), and, as RFC 1812
4.3.2.7 says, no error answers an ICMP error, a non-first fragment, or a source that is not one host.

``route_*`` return a ``(verdict, session)`` pair: the session handle is the opaque object the shell
registered with ``attach``, and ``None`` unless the verdict is ``Route.CLIENT``. Counters per verdict
are kept in ``counts``. Packets are ``bytearray`` or writable ``memoryview`` (a TTL changes in place).
Nothing raises for any input bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from gw import inet
from gw import packet as P
from gw.config import VpnConfig
from gw.rewrite import decrement_ttl
from gw.verdict import VERDICT_COUNT, Drop, Route

__all__ = ["Route", "Router", "TokenBucket"]

_HEADER = struct.Struct("!BxH4xB3xII").unpack_from  # version/IHL, total length, TTL, source, destination
_NS = 1_000_000_000


class TokenBucket:
    """``rate`` events per second on average, ``burst`` at once; time in ns from the caller."""

    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: int, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = float(burst)
        self._at: int | None = None

    def take(self, now: int) -> bool:
        """Spend one token if there is one (never, at rate 0)."""
        if not self.rate:
            return False
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate / _NS)
        if self._at is None or now > self._at:
            self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class Router:
    """Routing and policy for one VPN subnet."""

    def __init__(self, config: VpnConfig) -> None:
        self.network, self.prefix_len = inet.parse_prefix(config.subnet)
        self.mask = inet.prefix_mask(self.prefix_len)
        self.broadcast = self.network | (~self.mask & 0xFFFFFFFF)
        self.gateway_addr = inet.aton(config.gateway_address)
        self._deny = [(net, inet.prefix_mask(length)) for net, length in map(inet.parse_prefix, config.deny)]
        self._sessions: dict[int, Any] = {}  # VPN address -> session handle
        self.counts = [0] * VERDICT_COUNT
        self._to_nat = (Route.NAT, None)
        self._to_local = (Route.LOCAL, None)
        self._icmp_to_clients = TokenBucket(config.icmp_errors_per_s, config.icmp_error_burst)
        self._icmp_to_internet = TokenBucket(config.icmp_errors_per_s, config.icmp_error_burst)
        self.icmp_sent = 0  # Time Exceeded messages built
        self.icmp_limited = 0  # ... not built: over the rate
        self.icmp_not_answered = 0  # ... not built: RFC 1812 4.3.2.7 forbids an error about that packet

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

    def route_from_client(self, pkt: bytearray | memoryview, client_addr: int) -> tuple[int, Any]:
        """Decide a packet a client sent. Returns (Route or Drop, session or None). Raises nothing."""
        n = len(pkt)
        if n < 20:
            return self._count(Drop.TRUNCATED)
        vihl, total, ttl, src, dst = _HEADER(pkt)
        hlen = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or hlen < 20:
            return self._count(Drop.BAD_VERSION)
        if hlen > n:
            return self._count(Drop.TRUNCATED)
        if total < hlen or total > n:
            return self._count(Drop.BAD_LENGTH)
        if src != client_addr:
            return self._count(Drop.SPOOFED)
        if dst & self.mask != self.network:  # to the internet, unless the deny list says no
            for net, mask in self._deny:
                if dst & mask == net:
                    return self._count(Drop.DENIED)
            self.counts[Route.NAT] += 1
            return self._to_nat
        if P.checksum(pkt, 0, hlen):
            return self._count(Drop.BAD_CHECKSUM)
        if dst == self.gateway_addr:
            self.counts[Route.LOCAL] += 1
            return self._to_local
        if dst == self.broadcast or dst == self.network:
            return self._count(Drop.DENIED)
        session = self._sessions.get(dst)
        if session is None:
            return self._count(Drop.NO_ROUTE)
        if ttl <= 1:
            return self._count(Drop.TTL_EXCEEDED)
        decrement_ttl(pkt)
        self.counts[Route.CLIENT] += 1
        return Route.CLIENT, session

    def route_to_client(self, pkt: bytes | bytearray | memoryview) -> tuple[int, Any]:
        """Decide a packet the NAT translated inbound (or hairpinned): the session holding its destination."""
        if len(pkt) < 20:
            return self._count(Drop.TRUNCATED)
        session = self._sessions.get(P.get_u32(pkt, P.IP_DST)[0])
        if session is None:
            return self._count(Drop.NO_ROUTE)
        self.counts[Route.CLIENT] += 1
        return Route.CLIENT, session

    def _count(self, verdict: int) -> tuple[int, None]:
        self.counts[verdict] += 1
        return verdict, None

    # ------------------------------------------------------------------ the router hop's ICMP

    def time_exceeded_to_client(self, pkt: bytes | bytearray | memoryview, now: int) -> bytearray | None:
        """The ICMP Time Exceeded for a client's packet dropped with ``Drop.TTL_EXCEEDED`` (by this router
        or the NAT), from the gateway's VPN address; None when the rate or RFC 1812 says no answer."""
        return self._time_exceeded(pkt, now, self.gateway_addr, self._icmp_to_clients)

    def time_exceeded_to_internet(self, pkt: bytes | bytearray | memoryview, now: int) -> bytearray | None:
        """The same for a packet from the internet the NAT dropped with ``Drop.TTL_EXCEEDED``, from the
        public address it was sent to; the shell sends it out through the external gateway."""
        if len(pkt) < 20:
            return None
        return self._time_exceeded(pkt, now, P.get_u32(pkt, P.IP_DST)[0], self._icmp_to_internet)

    def _time_exceeded(
        self, pkt: bytes | bytearray | memoryview, now: int, source: int, bucket: TokenBucket
    ) -> bytearray | None:
        if not _may_answer(pkt):
            self.icmp_not_answered += 1
            return None
        if not bucket.take(now):
            self.icmp_limited += 1
            return None
        self.icmp_sent += 1
        total = P.get_u16(pkt, P.IP_TOTAL_LEN)[0]
        quote = bytes(pkt[: min(total, P.ICMP_QUOTE_MAX)])  # RFC 1812 4.3.2.3: as much as fits in 576
        return P.build_icmp_error(source, P.get_u32(pkt, P.IP_SRC)[0], P.ICMP_TIME_EXCEEDED, 0, quote)


def _may_answer(pkt: bytes | bytearray | memoryview) -> bool:
    """Whether an ICMP error may be sent about ``pkt`` (RFC 1812 4.3.2.7): a sound header from one host,
    not a non-first fragment, not itself an ICMP error, not sent to a broadcast or multicast address."""
    if P.check_ipv4(pkt):
        return False
    hlen = (pkt[0] & 0x0F) * 4
    src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
    if src >> 24 in (0, 127) or src >= 0xE000_0000 or dst >= 0xE000_0000:
        return False
    if P.get_u16(pkt, P.IP_FRAG)[0] & P.IP_OFFSET_MASK:
        return False
    if pkt[P.IP_PROTO] == P.PROTO_ICMP:
        total = P.get_u16(pkt, P.IP_TOTAL_LEN)[0]
        return hlen < total and pkt[hlen] not in P.ICMP_ERROR_TYPES
    return True
