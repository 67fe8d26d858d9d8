"""The user-space NAT: sans-I/O, one table, every change an event.

Theory of operation
-------------------
A *mapping* binds an internal endpoint (protocol, ``int_addr``, ``int_port``: the client's VPN address
and source port, or ICMP echo identifier) to an external endpoint (``ext_addr``, ``ext_port``) on one of
the public addresses. Outbound means client to internet, inbound internet to client; the internet peer
is the *remote* endpoint.

- Endpoint-independent mapping (RFC 4787 REQ-1, RFC 5382 REQ-1): the key is the internal endpoint
  alone, so one mapping serves every remote.
- Filtering (RFC 4787 REQ-8), per ``[nat] filtering``: endpoint-independent (any remote may send to a
  mapping), address-dependent (only addresses the client sent to), address-and-port-dependent (only
  address:port pairs it sent to; the default). One mechanism serves all three: a remote is remembered
  as ``addr << 16 | port`` masked by the mode (mask 0 remembers nothing and matches everything).
- Paired pooling (RFC 4787 REQ-2): a client's mappings all use one public address, chosen as the least
  loaded when the client has none.
- Ports (RFC 4787 REQ-3, RFC 6056): random within ``port_range``; a source port below 1024 maps below
  1024. An external endpoint is never held by two mappings, and one that was freed rests for
  ``port_reuse_delay_s`` before anyone gets it again, so an audit answer is never ambiguous.
- Quota (RFC 6888 REQ-4): a client holds at most ``max_mappings_per_client`` mappings. A new flow past
  it is refused (nothing is evicted) and ``QuotaHit`` is journaled once until the client drops below.
- Timeouts: UDP 300 s (RFC 4787 REQ-5), TCP established 7440 s and transitory 240 s (RFC 5382 REQ-5,
  see ``tcp_track``), ICMP 60 s (RFC 5508 REQ-1). Only outbound packets and TCP state changes refresh a
  mapping (RFC 4787 REQ-6 lets the NAT choose; this way a remote alone cannot keep a client's port held).
- ICMP (RFC 5508): echo uses the identifier as the port; errors in both directions are translated with
  the quoted header rewritten and every checksum fixed, filtered like the flow they quote, and never
  refresh or end a mapping.
- Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): a packet to a public endpoint of this NAT is translated
  outbound, then inbound, and comes back as ``HAIRPIN`` with the sender's public endpoint as source.
- Fragments: see ``gw.frag``. TCP MSS is clamped on SYNs both ways to ``tcp_mss``.

Every state change goes through ``apply(event)``: commands build an event, ``apply`` it and append it
to ``self.events`` for the journal (``_record``). Recovery folds the journal through the same
``apply``, so the table after a crash is the table before it; ``resume(now)`` then ends what idled out
during the outage. The NAT also numbers the journal
(``next_seq``) because it is the core whose state the journal rebuilds; other facts (gateway started,
session refused) go through ``record_event`` to share the sequence.

Per-packet state (last seen, counters, TCP state, remembered remotes) is not journaled: it lives in the
table and in snapshots. Expiry is lazy: a timer wheel of one-second buckets holds each mapping's key at
its earliest possible deadline; when a bucket comes due the real deadline is recomputed and the key
either expires or moves to a later bucket.

Bad input (short, malformed, lying lengths, unknown protocols) is a ``Drop`` verdict counted in
``drops``; ``translate_*`` raise nothing else.

The two fast paths (``translate_outbound``/``translate_inbound``) have a compiled twin in
``gw/_fastpath.pyx``, used when it was built (``COMPILED``); these Python methods are its specification,
and a property test holds the two to identical bytes, verdicts, counters and events.
"""

from __future__ import annotations

import gc
import heapq
import random
import struct
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from enum import IntEnum
from types import MethodType
from typing import Any

from gw import packet as P
from gw.config import NatConfig
from gw.frag import FragmentTable, datagram_key
from gw.packet import Drop
from gw.tcp_track import NEXT_STATE, SEG_KINDS, TcpState, classify
from journal.events import (
    JournalEvent,
    MappingCreated,
    MappingExpired,
    QuotaHit,
    SessionClosed,
    SessionOpened,
    Snapshot,
)

__all__ = ["FORWARD", "HAIRPIN", "Mapping", "Nat", "Verdict"]


class Verdict(IntEnum):
    """What to do with a translated packet; anything else returned is a ``Drop`` reason."""

    FORWARD = 0  # outbound: send to the internet; inbound: deliver to the client at the new destination
    HAIRPIN = 100  # outbound packet now addressed to another client: deliver it inside


FORWARD = Verdict.FORWARD
HAIRPIN = Verdict.HAIRPIN

NS = 1_000_000_000
# Counters pack packets and bytes in one int (packets << 48 | bytes): one add per packet, one object per
# direction. Bytes carry into packets after 256 TiB through one mapping, far beyond any real flow.
COUNT_SHIFT = 48
ONE_PACKET = 1 << COUNT_SHIFT
BYTES_MASK = ONE_PACKET - 1
NO_REMOTE = -1  # matches no remote: a mapping restored without its remotes waits for the next outbound packet
MAX_REMOTES = (
    4096  # remotes remembered per mapping for filtering; past it new remotes are not admitted inbound
)
PICK_TRIES = 64  # random port draws before a linear scan (the range is nearly full by then)
RANDOM_WORDS = 1024  # 32-bit random words fetched per block: one getrandom() per 1024 port draws
_RANDOM_BLOCK = struct.Struct(f"!{RANDOM_WORDS}I")
LOW_PORTS = (1, 1023)  # RFC 4787 REQ-3 / 6056: source ports below 1024 map below 1024

_SYN_OUT, _NONE = int(TcpState.SYN_OUT), int(TcpState.NONE)  # plain ints: enum lookups cost per new flow
_TCP_STATE_FLAGS = P.TCP_SYN | P.TCP_FIN | P.TCP_RST  # segments the tracker must see
_SYN_RST_ACK = P.TCP_SYN | P.TCP_RST | P.TCP_ACK_FLAG
_FILTER_MASK = {
    "endpoint-independent": 0,
    "address-dependent": 0xFFFF_FFFF_0000,
    "address-and-port-dependent": 0xFFFF_FFFF_FFFF,
}


def flow_key(proto: int, addr: int, port: int) -> int:
    """A (protocol, address, port) endpoint as one int, the key of both mapping tables."""
    return proto << 48 | addr << 16 | port


class Mapping:
    """One NAT mapping. ``key`` and ``ext_key`` are ``flow_key`` ints; counters are packed (see ONE_PACKET)."""

    __slots__ = (
        "key",
        "ext_key",
        "session",
        "remote",
        "remotes",
        "created",
        "last_seen",
        "state",
        "out",
        "inb",
    )

    def __init__(
        self,
        key: int,
        ext_key: int,
        session: int,
        remote: int,
        created: int,
        last_seen: int,
        state: int,
        out: int = 0,
        inb: int = 0,
    ) -> None:
        self.key = key
        self.ext_key = ext_key
        self.session = session
        self.remote = remote  # first remote (masked), NO_REMOTE, or 0 under endpoint-independent filtering
        self.remotes: set[int] | None = None  # further remotes, when there are any
        self.created = created
        self.last_seen = last_seen
        self.state = state  # TcpState; NONE for UDP and ICMP
        self.out = out  # outbound packets << 48 | bytes
        self.inb = inb  # inbound

    @property
    def proto(self) -> int:
        return self.key >> 48

    @property
    def int_addr(self) -> int:
        return self.key >> 16 & 0xFFFFFFFF

    @property
    def int_port(self) -> int:
        return self.key & 0xFFFF

    @property
    def ext_addr(self) -> int:
        return self.ext_key >> 16 & 0xFFFFFFFF

    @property
    def ext_port(self) -> int:
        return self.ext_key & 0xFFFF

    def __repr__(self) -> str:
        from gw.inet import ntoa

        return (
            f"<Mapping {self.proto} {ntoa(self.int_addr)}:{self.int_port} -> "
            f"{ntoa(self.ext_addr)}:{self.ext_port} session={self.session}>"
        )


class _TableView:
    """The table at one instant, to be turned into a ``Snapshot`` later, off the packet path."""

    def __init__(self, nat: Nat, now: int) -> None:
        self.upto_seq = nat.next_seq - 1
        self.at_ns = now
        self.mappings = list(nat._by_ext.values())
        self.resting = [(k, u) for k, u in nat._resting.items() if u > now]
        self.sessions = list(nat._session_events.values())
        self.quota_flagged = [addr for addr, client in nat._clients.items() if client[2]]
        self.log_destination = nat._log_dest

    def build(self) -> Snapshot:
        """Column-wise snapshot. A mapping removed since the view was taken is fine: its expiry comes later.

        The first remote of each mapping (its filtering state) is kept only under ``log_destination``:
        without it the operator chose not to record destinations, and a restored mapping re-learns its
        remote from the client's next packet.
        """
        ms = self.mappings
        names = {opened.session: opened.client for opened in self.sessions}
        remotes = [max(m.remote, 0) for m in ms] if self.log_destination else [0] * len(ms)
        return Snapshot(
            upto_seq=self.upto_seq,
            at_ns=self.at_ns,
            proto=[m.key >> 48 for m in ms],
            int_addr=[m.key >> 16 & 0xFFFFFFFF for m in ms],
            int_port=[m.key & 0xFFFF for m in ms],
            ext_addr=[m.ext_key >> 16 & 0xFFFFFFFF for m in ms],
            ext_port=[m.ext_key & 0xFFFF for m in ms],
            session=[m.session for m in ms],
            created_ns=[m.created for m in ms],
            last_seen_ns=[m.last_seen for m in ms],
            tcp_state=[m.state for m in ms],
            packets_out=[m.out >> COUNT_SHIFT for m in ms],
            bytes_out=[m.out & BYTES_MASK for m in ms],
            packets_in=[m.inb >> COUNT_SHIFT for m in ms],
            bytes_in=[m.inb & BYTES_MASK for m in ms],
            remote_addr=[r >> 16 for r in remotes],
            remote_port=[r & 0xFFFF for r in remotes],
            client=[names.get(m.session, "") for m in ms],
            rest_proto=[k >> 48 for k, _ in self.resting],
            rest_ext_addr=[k >> 16 & 0xFFFFFFFF for k, _ in self.resting],
            rest_ext_port=[k & 0xFFFF for k, _ in self.resting],
            rest_until_ns=[u for _, u in self.resting],
            sessions=self.sessions,
            quota_flagged=self.quota_flagged,
        )


# the Snapshot columns with one row per mapping
_SNAPSHOT_MAPPING_COLUMNS = (
    "proto", "int_addr", "int_port", "ext_addr", "ext_port", "session", "created_ns", "last_seen_ns",
    "tcp_state", "packets_out", "bytes_out", "packets_in", "bytes_in", "remote_addr", "remote_port",
)  # fmt: skip


class Nat:
    """The NAT table and its translations. See the module docstring."""

    def __init__(self, config: NatConfig, rng: random.Random | None = None, compiled: bool = True) -> None:
        """``compiled=False`` keeps the pure-Python fast paths even when ``gw._fastpath`` is built (COMPILED)."""
        self.config = config
        self._rng = rng or random.SystemRandom()
        self._random_words: list[int] = []  # drawn from _rng a block at a time (see _draw)
        self.ext_addrs = config.external_ints()
        self._ext_set = frozenset(self.ext_addrs)
        self._port_lo, self._port_hi = config.port_bounds()
        self._port_span = self._port_hi - self._port_lo + 1
        self._rmask = _FILTER_MASK[config.filtering]
        self._quota = config.max_mappings_per_client
        self._reuse_ns = config.port_reuse_delay_s * NS
        self._udp_ns = config.udp_timeout_s * NS
        self._tcp_est_ns = config.tcp_established_timeout_s * NS
        self._tcp_trans_ns = config.tcp_transitory_timeout_s * NS
        self._icmp_ns = config.icmp_timeout_s * NS
        # the timeout a new mapping starts with (TCP: SYN_OUT, transitory), by protocol
        self._first_timeout = {
            P.PROTO_UDP: self._udp_ns,
            P.PROTO_TCP: self._tcp_trans_ns,
            P.PROTO_ICMP: self._icmp_ns,
        }
        self._mss = config.tcp_mss
        self._log_dest = config.log_destination
        frag = {
            "timeout_ns": config.fragment_timeout_s * NS,
            "max_datagrams": config.fragment_max_datagrams,
            "max_bytes": config.fragment_max_bytes,
        }
        self._frags_out = FragmentTable(**frag)
        self._frags_in = FragmentTable(**frag)

        self._by_int: dict[int, Mapping] = {}  # flow_key(proto, int_addr, int_port) -> mapping
        self._by_ext: dict[int, Mapping] = {}  # flow_key(proto, ext_addr, ext_port) -> mapping
        self._clients: dict[int, list] = {}  # int_addr -> [paired ext_addr, mapping count, quota flagged]
        self._ext_clients = dict.fromkeys(self.ext_addrs, 0)  # ext_addr -> clients paired with it
        self._resting: dict[int, int] = {}  # ext flow_key -> ns until it may be handed out again
        self._resting_order: deque[tuple[int, int]] = deque()  # (until, ext key) in expiry order
        self._sessions: dict[int, tuple[int, str]] = {}  # vpn addr -> (session, client name)
        self._session_events: dict[int, SessionOpened] = {}  # session -> its SessionOpened (for snapshots)
        self._wheel: dict[int, list[int]] = {}  # deadline second -> internal keys due then (lazy)
        self._wheel_due: list[int] = []  # heap of the wheel's seconds

        self.next_seq = 1
        self.events: list[JournalEvent] = []  # drained by the shell after each batch
        # fragments freed by their first fragment, translated: (to the internet?, packet); False = to a client
        self.released: list[tuple[bool, bytearray]] = []
        self.drops = [0] * P.DROP_COUNT
        if compiled and _fastpath is not None:  # the same fast paths, compiled (gw/_fastpath.pyx)
            self.translate_outbound = MethodType(_fastpath.translate_outbound, self)
            self.translate_inbound = MethodType(_fastpath.translate_inbound, self)

    # ------------------------------------------------------------------ fast paths

    def translate_outbound(self, pkt: bytearray, now: int) -> int:
        """Translate a client's packet in place: ``FORWARD``, ``HAIRPIN`` or a ``Drop`` reason. Raises nothing.

        Inline here: UDP and TCP with a 20-byte header, unfragmented, not hairpinned. The rest (ICMP,
        options, fragments, link padding) takes ``_outbound``, the plainly written general path.

        Checksum arithmetic is done modulo 0xFFFF, where ones'-complement sums live (2**16 == 1):
        RFC 1624 eqn. 3 becomes HC' = HC + m - m' (mod 0xFFFF), and ``0xFFFE - (m' - m - 1 - HC) % 0xFFFF``
        gives the same 16-bit result as the folded form in one big-int operation. A header is sound
        when its words sum to 0 (mod 0xFFFF); reading it as five 32-bit words gives the same sum.
        """
        n = len(pkt)
        if n < 28:
            return self._outbound(pkt, now)
        proto = pkt[9]
        if proto == 17:
            w0, w1, w2, src, dst, sport, dport, ulen, l4csum = _read_udp(pkt)
            flags = 0
        elif proto == 6 and n >= 40:
            w0, w1, w2, src, dst, sport, dport, flags, l4csum = _read_tcp(pkt)
        else:
            return self._outbound(pkt, now)
        # version 4 + IHL 5, total length == buffer, not a fragment, not to one of our public addresses
        if w0 >> 24 != 0x45 or w0 & 0xFFFF != n or w1 & 0x3FFF or dst in self._ext_set:
            return self._outbound(pkt, now)
        if (w0 + w1 + w2 + src + dst) % 0xFFFF:  # RFC 1071: a sound header sums to (negative) zero
            return self._drop(Drop.BAD_CHECKSUM)
        m = self._by_int.get(proto << 48 | src << 16 | sport)
        r = (dst << 16 | dport) & self._rmask
        if m is None:
            if proto == 6 and flags & _SYN_RST_ACK != P.TCP_SYN:
                return self._drop(Drop.NO_MAPPING)  # RFC 5382: only a SYN opens a TCP mapping
            m = self._create(proto, src, sport, dst, dport, now)
            if m.__class__ is not Mapping:
                return self._drop(m)
        elif r != m.remote and (m.remotes is None or r not in m.remotes):
            self._admit_remote(m, r)
        if flags & _TCP_STATE_FLAGS:
            self._track_tcp(m, flags, True, now)
            if flags & P.TCP_SYN and self._mss:
                _clamp_mss(pkt, 20, self._mss)
                l4csum = P.get_u16(pkt, P.V4_TCP_CSUM)[0]
        ext = m.ext_key
        ea = ext >> 16 & 0xFFFFFFFF
        ep = ext & 0xFFFF
        ipcsum = 0xFFFE - (ea - src - 1 - (w2 & 0xFFFF)) % 0xFFFF  # RFC 1624, see above
        if proto == 17:
            if l4csum:  # a UDP checksum of 0 means none and stays 0 (RFC 768); a computed 0 is sent as 0xFFFF
                l4csum = 0xFFFE - (ea - src + ep - sport - 1 - l4csum) % 0xFFFF or 0xFFFF
            _put_v4_udp(pkt, P.IP_CSUM, ipcsum, ea, dst, ep, dport, ulen, l4csum)
        else:
            _put_v4_ports(pkt, P.IP_CSUM, ipcsum, ea, dst, ep, dport)
            _put_u16(pkt, P.V4_TCP_CSUM, 0xFFFE - (ea - src + ep - sport - 1 - l4csum) % 0xFFFF)
        m.last_seen = now
        m.out += ONE_PACKET + n
        return FORWARD

    def translate_inbound(self, pkt: bytearray, now: int) -> int:
        """Translate a packet from the internet in place: ``FORWARD`` to its client, or a ``Drop``. Raises nothing.

        Inline here: UDP and TCP with a 20-byte header, unfragmented; the rest takes ``_inbound``.
        The checksum arithmetic is ``translate_outbound``'s.
        """
        n = len(pkt)
        if n < 28:
            return self._inbound(pkt, now)
        proto = pkt[9]
        if proto == 17:
            w0, w1, w2, src, dst, sport, dport, ulen, l4csum = _read_udp(pkt)
            flags = 0
        elif proto == 6 and n >= 40:
            w0, w1, w2, src, dst, sport, dport, flags, l4csum = _read_tcp(pkt)
        else:
            return self._inbound(pkt, now)
        if w0 >> 24 != 0x45 or w0 & 0xFFFF != n or w1 & 0x3FFF:
            return self._inbound(pkt, now)
        if (w0 + w1 + w2 + src + dst) % 0xFFFF:
            return self._drop(Drop.BAD_CHECKSUM)
        m = self._by_ext.get(proto << 48 | dst << 16 | dport)
        if m is None:
            return self._drop(Drop.NO_MAPPING)
        r = (src << 16 | sport) & self._rmask
        if r != m.remote and (m.remotes is None or r not in m.remotes):
            return self._drop(Drop.FILTERED)
        if flags & _TCP_STATE_FLAGS or m.state == TcpState.SYN_OUT:
            self._track_tcp(m, flags, False, now)
            if flags & P.TCP_SYN and self._mss:
                _clamp_mss(pkt, 20, self._mss)
                l4csum = P.get_u16(pkt, P.V4_TCP_CSUM)[0]
        key = m.key
        ia = key >> 16 & 0xFFFFFFFF
        ip = key & 0xFFFF
        ipcsum = 0xFFFE - (ia - dst - 1 - (w2 & 0xFFFF)) % 0xFFFF
        if proto == 17:
            if l4csum:
                l4csum = 0xFFFE - (ia - dst + ip - dport - 1 - l4csum) % 0xFFFF or 0xFFFF
            _put_v4_udp(pkt, P.IP_CSUM, ipcsum, src, ia, sport, ip, ulen, l4csum)
        else:
            _put_v4_ports(pkt, P.IP_CSUM, ipcsum, src, ia, sport, ip)
            _put_u16(pkt, P.V4_TCP_CSUM, 0xFFFE - (ia - dst + ip - dport - 1 - l4csum) % 0xFFFF)
        m.inb += ONE_PACKET + n
        return FORWARD

    # ------------------------------------------------------------------ general paths

    def _drop(self, reason: int) -> int:
        self.drops[reason] += 1
        return reason

    def _outbound(self, pkt: bytearray, now: int) -> int:
        """Every outbound packet the fast path does not take: new flows, flags, fragments, ICMP, options."""
        bad = P.check_ipv4(pkt)
        if bad:
            return self._drop(bad)
        total = P.get_u16(pkt, P.IP_TOTAL_LEN)[0]
        if len(pkt) > total:
            del pkt[total:]  # link padding
        ihl = P.ip_header_len(pkt)
        proto = pkt[P.IP_PROTO]
        frag = P.get_u16(pkt, P.IP_FRAG)[0]
        if frag & P.IP_OFFSET_MASK:
            return self._later_fragment(pkt, now, outbound=True)
        if proto == P.PROTO_UDP or proto == P.PROTO_TCP:
            verdict, m = self._outbound_ports(pkt, now, ihl, proto)
        elif proto == P.PROTO_ICMP:
            verdict, m = self._outbound_icmp(pkt, now, ihl)
        else:
            return self._drop(Drop.UNSUPPORTED)
        if verdict:
            return self._drop(verdict)
        if frag & P.IP_MF and m is not None:
            self._first_fragment(pkt, m, now, outbound=True)
        if P.get_u32(pkt, P.IP_DST)[0] in self._ext_set:
            return self._hairpin(pkt, now)
        return FORWARD

    def _inbound(self, pkt: bytearray, now: int) -> int:
        """Every inbound packet the fast path does not take."""
        bad = P.check_ipv4(pkt)
        if bad:
            return self._drop(bad)
        total = P.get_u16(pkt, P.IP_TOTAL_LEN)[0]
        if len(pkt) > total:
            del pkt[total:]
        ihl = P.ip_header_len(pkt)
        proto = pkt[P.IP_PROTO]
        frag = P.get_u16(pkt, P.IP_FRAG)[0]
        if frag & P.IP_OFFSET_MASK:
            return self._later_fragment(pkt, now, outbound=False)
        if proto == P.PROTO_UDP or proto == P.PROTO_TCP:
            verdict, m = self._inbound_ports(pkt, now, ihl, proto)
        elif proto == P.PROTO_ICMP:
            verdict, m = self._inbound_icmp(pkt, now, ihl)
        else:
            return self._drop(Drop.UNSUPPORTED)
        if verdict:
            return self._drop(verdict)
        if frag & P.IP_MF and m is not None:
            self._first_fragment(pkt, m, now, outbound=False)
        return FORWARD

    def _hairpin(self, pkt: bytearray, now: int) -> int:
        """A translated outbound packet addressed to one of our public endpoints goes back in (RFC 4787 REQ-9)."""
        verdict = self._inbound(pkt, now)
        return HAIRPIN if verdict == FORWARD else verdict

    def _outbound_ports(self, pkt: bytearray, now: int, ihl: int, proto: int) -> tuple[int, Mapping | None]:
        total = len(pkt)
        l4 = ihl
        need = P.TCP_MIN_HLEN if proto == P.PROTO_TCP else P.UDP_HLEN
        if total < l4 + need:
            return Drop.TRUNCATED, None
        src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        sport, dport = P.get_2u16(pkt, l4)
        m = self._by_int.get(flow_key(proto, src, sport))
        if proto == P.PROTO_TCP:
            flags = pkt[l4 + P.TCP_FLAGS]
            if m is None and not (flags & P.TCP_SYN and not flags & (P.TCP_RST | P.TCP_ACK_FLAG)):
                return Drop.NO_MAPPING, None  # RFC 5382: only a SYN opens a TCP mapping
        if m is None:
            m = self._create(proto, src, sport, dst, dport, now)
            if type(m) is not Mapping:
                return m, None
        self._admit_remote(m, (dst << 16 | dport) & self._rmask)
        if proto == P.PROTO_TCP:
            self._track_tcp(m, flags, True, now)
            if flags & P.TCP_SYN and self._mss:
                _clamp_mss(pkt, l4, self._mss)
        ea, ep = m.ext_key >> 16 & 0xFFFFFFFF, m.ext_key & 0xFFFF
        _rewrite_addr(pkt, P.IP_SRC, ea)
        _rewrite_port(pkt, l4, proto, P.TCP_SPORT, src, ea, sport, ep)
        m.last_seen = now
        m.out += ONE_PACKET + total
        return 0, m

    def _inbound_ports(self, pkt: bytearray, now: int, ihl: int, proto: int) -> tuple[int, Mapping | None]:
        total = len(pkt)
        l4 = ihl
        need = P.TCP_MIN_HLEN if proto == P.PROTO_TCP else P.UDP_HLEN
        if total < l4 + need:
            return Drop.TRUNCATED, None
        src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        sport, dport = P.get_2u16(pkt, l4)
        m = self._by_ext.get(flow_key(proto, dst, dport))
        if m is None:
            return Drop.NO_MAPPING, None
        if not self._admits(m, (src << 16 | sport) & self._rmask):
            return Drop.FILTERED, None
        if proto == P.PROTO_TCP:
            flags = pkt[l4 + P.TCP_FLAGS]
            self._track_tcp(m, flags, False, now)
            if flags & P.TCP_SYN and self._mss:
                _clamp_mss(pkt, l4, self._mss)
        ia, ip = m.key >> 16 & 0xFFFFFFFF, m.key & 0xFFFF
        _rewrite_addr(pkt, P.IP_DST, ia)
        _rewrite_port(pkt, l4, proto, P.TCP_DPORT, dst, ia, dport, ip)
        m.inb += ONE_PACKET + total
        return 0, m

    def _outbound_icmp(self, pkt: bytearray, now: int, ihl: int) -> tuple[int, Mapping | None]:
        total = len(pkt)
        l4 = ihl
        if total < l4 + P.ICMP_HLEN:
            return Drop.TRUNCATED, None
        icmp_type = pkt[l4]
        src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        if icmp_type in P.ICMP_ERROR_TYPES:
            return self._icmp_error(pkt, l4, outbound=True), None
        if icmp_type != P.ICMP_ECHO_REQUEST:
            return Drop.UNSUPPORTED, None
        ident = P.get_u16(pkt, l4 + P.ICMP_ID)[0]
        m = self._by_int.get(flow_key(P.PROTO_ICMP, src, ident))
        if m is None:
            m = self._create(P.PROTO_ICMP, src, ident, dst, 0, now)
            if type(m) is not Mapping:
                return m, None
        self._admit_remote(m, (dst << 16) & self._rmask)
        ea, ep = m.ext_key >> 16 & 0xFFFFFFFF, m.ext_key & 0xFFFF
        _rewrite_addr(pkt, P.IP_SRC, ea)
        _rewrite_icmp_id(pkt, l4, ident, ep)
        m.last_seen = now
        m.out += ONE_PACKET + total
        return 0, m

    def _inbound_icmp(self, pkt: bytearray, now: int, ihl: int) -> tuple[int, Mapping | None]:
        total = len(pkt)
        l4 = ihl
        if total < l4 + P.ICMP_HLEN:
            return Drop.TRUNCATED, None
        icmp_type = pkt[l4]
        src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        if icmp_type in P.ICMP_ERROR_TYPES:
            return self._icmp_error(pkt, l4, outbound=False), None
        if icmp_type != P.ICMP_ECHO_REPLY:
            return Drop.UNSUPPORTED, None
        ident = P.get_u16(pkt, l4 + P.ICMP_ID)[0]
        m = self._by_ext.get(flow_key(P.PROTO_ICMP, dst, ident))
        if m is None:
            return Drop.NO_MAPPING, None
        if not self._admits(m, (src << 16) & self._rmask):
            return Drop.FILTERED, None
        ia, ip = m.key >> 16 & 0xFFFFFFFF, m.key & 0xFFFF
        _rewrite_addr(pkt, P.IP_DST, ia)
        _rewrite_icmp_id(pkt, l4, ident, ip)
        m.inb += ONE_PACKET + total
        return 0, m

    def _icmp_error(self, pkt: bytearray, l4: int, outbound: bool) -> int:
        """Translate an ICMP error and the packet it quotes (RFC 5508). Returns 0 or a Drop reason.

        Outbound, the client quotes an inbound packet (remote -> int endpoint); inbound, the remote quotes
        one of our outbound packets (ext endpoint -> remote). The quoted endpoint of ours is rewritten,
        the quoted checksums adjusted, the ICMP checksum recomputed (the message is small and rare).
        """
        total = len(pkt)
        if P.get_u16(pkt, P.IP_FRAG)[0] & P.IP_FRAG_MASK:
            return Drop.UNSUPPORTED  # a fragmented ICMP error: nobody sends these
        q = l4 + P.ICMP_HLEN
        if total < q + P.IP_MIN_HLEN or pkt[q] >> 4 != 4:
            return Drop.TRUNCATED
        q_ihl = (pkt[q] & 0x0F) * 4
        ql4 = q + q_ihl
        if q_ihl < P.IP_MIN_HLEN or total < ql4 + 8:  # RFC 792: header + 8 bytes are always quoted
            return Drop.TRUNCATED
        if P.get_u16(pkt, q + P.IP_FRAG)[0] & P.IP_OFFSET_MASK:
            return Drop.UNSUPPORTED  # quoting a later fragment: no ports to find the flow by
        q_proto = pkt[q + P.IP_PROTO]
        q_src, q_dst = P.get_u32(pkt, q + P.IP_SRC)[0], P.get_u32(pkt, q + P.IP_DST)[0]
        if q_proto == P.PROTO_UDP or q_proto == P.PROTO_TCP:
            q_sport, q_dport = P.get_2u16(pkt, ql4)
        elif q_proto == P.PROTO_ICMP and pkt[ql4] in (P.ICMP_ECHO_REQUEST, P.ICMP_ECHO_REPLY):
            q_sport = q_dport = P.get_u16(pkt, ql4 + P.ICMP_ID)[0]
        else:
            return Drop.UNSUPPORTED
        outer_src, outer_dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        if outbound:  # quoted: remote -> our client's (q_dst, q_dport)
            m = self._by_int.get(flow_key(q_proto, q_dst, q_dport))
            if m is None or q_dst != outer_src or q_src != outer_dst:  # only to the remote it is about
                return Drop.ICMP_ERROR_MISMATCH
            if q_proto == P.PROTO_ICMP:
                remote = q_src << 16
            else:
                remote = q_src << 16 | q_sport
            new_addr, new_port = m.ext_key >> 16 & 0xFFFFFFFF, m.ext_key & 0xFFFF
            outer_field, q_field, port_off, old_addr, old_port = (
                P.IP_SRC,
                P.IP_DST,
                P.TCP_DPORT,
                q_dst,
                q_dport,
            )
        else:  # quoted: our (q_src, q_sport) -> remote
            m = self._by_ext.get(flow_key(q_proto, q_src, q_sport))
            if m is None or q_src != outer_dst:
                return Drop.ICMP_ERROR_MISMATCH
            remote = q_dst << 16 if q_proto == P.PROTO_ICMP else q_dst << 16 | q_dport
            new_addr, new_port = m.key >> 16 & 0xFFFFFFFF, m.key & 0xFFFF
            outer_field, q_field, port_off, old_addr, old_port = (
                P.IP_DST,
                P.IP_SRC,
                P.TCP_SPORT,
                q_src,
                q_sport,
            )
        if not self._admits(m, remote & self._rmask):
            return Drop.FILTERED
        _rewrite_addr(pkt, outer_field, new_addr)
        # the quoted header: address and its header checksum, then port/identifier and the quoted L4 checksum
        old_q_csum = P.get_u16(pkt, q + P.IP_CSUM)[0]
        delta = P.addr_delta(old_addr, new_addr)
        P.put_u32(pkt, q + q_field, new_addr)
        P.put_u16(pkt, q + P.IP_CSUM, P.csum_adjust(old_q_csum, delta))
        if q_proto == P.PROTO_ICMP:
            _rewrite_icmp_id(pkt, ql4, old_port, new_port, limit=total)
        else:
            P.put_u16(pkt, ql4 + port_off, new_port)
            csum_at = ql4 + (P.TCP_CSUM if q_proto == P.PROTO_TCP else P.UDP_CSUM)
            if csum_at + 2 <= total:  # the quote may stop before the L4 checksum
                c = P.get_u16(pkt, csum_at)[0]
                if c or q_proto == P.PROTO_TCP:
                    c = P.csum_adjust(c, delta + (~old_port & 0xFFFF) + new_port)
                    P.put_u16(pkt, csum_at, c or 0xFFFF if q_proto == P.PROTO_UDP else c)
        P.put_u16(pkt, l4 + P.ICMP_CSUM, 0)
        P.put_u16(pkt, l4 + P.ICMP_CSUM, P.checksum(pkt, l4, total))
        # counted; an ICMP error neither refreshes nor ends the mapping it quotes (RFC 5508)
        if outbound:
            m.out += ONE_PACKET + total
        else:
            m.inb += ONE_PACKET + total
        return 0

    # ------------------------------------------------------------------ fragments

    def _first_fragment(self, pkt: bytearray, m: Mapping, now: int, outbound: bool) -> None:
        """Remember which mapping this datagram uses and release its early fragments, translated."""
        table = self._frags_out if outbound else self._frags_in
        key = self._datagram_key(pkt, outbound, m)
        dropped = table.dropped
        released = table.resolve(key, m, now, pkt)
        self.drops[Drop.FRAGMENT] += table.dropped - dropped  # a full table evicted its oldest datagram
        for held in released:
            verdict = self._later_fragment(held, now, outbound)
            if verdict == FORWARD or verdict == HAIRPIN:
                self.released.append((outbound and verdict == FORWARD, held))

    def _datagram_key(self, pkt: bytearray, outbound: bool, m: Mapping) -> int:
        """The datagram key as *arriving* fragments carry it (before translation)."""
        src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        if outbound:
            src = m.key >> 16 & 0xFFFFFFFF  # the first fragment was already rewritten
        else:
            dst = m.ext_key >> 16 & 0xFFFFFFFF
        return datagram_key(src, dst, pkt[P.IP_PROTO], P.get_u16(pkt, P.IP_ID)[0])

    def _later_fragment(self, pkt: bytearray, now: int, outbound: bool) -> int:
        """A fragment without the L4 header: rewrite it like its first fragment, or hold it until that comes."""
        proto = pkt[P.IP_PROTO]
        if proto != P.PROTO_UDP and proto != P.PROTO_TCP and proto != P.PROTO_ICMP:
            return self._drop(Drop.UNSUPPORTED)
        src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        key = datagram_key(src, dst, proto, P.get_u16(pkt, P.IP_ID)[0])
        table = self._frags_out if outbound else self._frags_in
        m = table.mapping_for(key)
        if m is None:
            dropped = table.dropped
            held = table.hold(key, pkt, now)
            # this fragment if refused, and any the table evicted or aged out to make room
            self.drops[Drop.FRAGMENT] += table.dropped - dropped
            if held:
                self.drops[Drop.HELD] += 1
                return Drop.HELD
            return Drop.FRAGMENT
        if self._by_ext.get(m.ext_key) is not m:  # the mapping ended since the first fragment: its
            return self._drop(Drop.FRAGMENT)  # address may belong to someone else by now
        n = len(pkt)
        table.passed(key, pkt)  # forgets the datagram once all of it went through
        if outbound:
            _rewrite_addr(pkt, P.IP_SRC, m.ext_key >> 16 & 0xFFFFFFFF)
            m.out += ONE_PACKET + n
            if dst in self._ext_set:
                return self._hairpin(pkt, now)
        else:
            _rewrite_addr(pkt, P.IP_DST, m.key >> 16 & 0xFFFFFFFF)
            m.inb += ONE_PACKET + n
        return FORWARD

    # ------------------------------------------------------------------ state helpers

    def _admits(self, m: Mapping, r: int) -> bool:
        return r == m.remote or (m.remotes is not None and r in m.remotes)

    def _admit_remote(self, m: Mapping, r: int) -> None:
        """Remember a remote the client sent to, for filtering (bounded by MAX_REMOTES)."""
        if r == m.remote:
            return
        if m.remote == NO_REMOTE:
            m.remote = r
        elif m.remotes is None:
            m.remotes = {r}
        elif len(m.remotes) < MAX_REMOTES:
            m.remotes.add(r)

    def _track_tcp(self, m: Mapping, flags: int, outbound: bool, now: int) -> None:
        """Move the mapping's TCP state; a change restarts its idle timer under the new state's timeout."""
        old = m.state
        new = m.state = NEXT_STATE[old * SEG_KINDS + classify(flags, outbound)]
        if new != old:
            m.last_seen = now
            if old == TcpState.ESTABLISHED:
                self._schedule(m.key, now + self._timeout(m))  # the shorter timeout applies from now

    def _timeout(self, m: Mapping) -> int:
        proto = m.key >> 48
        if proto == P.PROTO_TCP:
            return self._tcp_est_ns if m.state == TcpState.ESTABLISHED else self._tcp_trans_ns
        return self._udp_ns if proto == P.PROTO_UDP else self._icmp_ns

    def _schedule(self, key: int, deadline: int) -> None:
        second = deadline // NS + 1
        keys = self._wheel.get(second)
        if keys is None:
            self._wheel[second] = [key]
            heapq.heappush(self._wheel_due, second)
        else:
            keys.append(key)

    def _create(self, proto: int, src: int, sport: int, dst: int, dport: int, now: int) -> Mapping | int:
        """Allocate an external endpoint and record ``MappingCreated``; a Drop reason when refused."""
        client = self._clients.get(src)
        if client is None:
            ext_addr = min(self.ext_addrs, key=self._ext_clients.__getitem__)
        else:
            if client[1] >= self._quota:
                if not client[2]:
                    session, name = self._sessions.get(src, (0, ""))
                    self._record(
                        QuotaHit(
                            seq=self.next_seq,
                            at_ns=now,
                            proto=proto,
                            int_addr=src,
                            int_port=sport,
                            quota=self._quota,
                            client=name,
                            session=session,
                        )
                    )
                return Drop.QUOTA
            ext_addr = client[0]
        port = self._pick_port(proto, ext_addr, sport, now)
        if port < 0:
            return Drop.PORTS_EXHAUSTED
        session, name = self._sessions.get(src, (0, ""))
        log = self._log_dest
        event = MappingCreated(
            seq=self.next_seq,
            at_ns=now,
            proto=proto,
            int_addr=src,
            int_port=sport,
            ext_addr=ext_addr,
            ext_port=port,
            client=name,
            session=session,
            remote_addr=dst if log else 0,
            remote_port=dport if log else 0,
        )
        # _record(event), unrolled on the one path that runs per new flow: _insert is apply's step for
        # MappingCreated, so the table changes exactly as a replay of this event changes it
        m = self._insert(event)
        self.next_seq = event.seq + 1
        self.events.append(event)
        m.remote = (dst << 16 | dport) & self._rmask
        return m

    def _pick_port(self, proto: int, ext_addr: int, int_port: int, now: int) -> int:
        """A random free external port (or identifier); -1 when the range is full."""
        if int_port < 1024 and proto != P.PROTO_ICMP:
            lo, span = LOW_PORTS[0], LOW_PORTS[1] - LOW_PORTS[0] + 1
        else:
            lo, span = self._port_lo, self._port_span
        base = proto << 48 | ext_addr << 16  # flow_key(proto, ext_addr, 0)
        taken, resting = self._by_ext, self._resting
        draw = self._draw
        for _ in range(PICK_TRIES):
            k = base | lo + draw(span)
            if k not in taken and resting.get(k, 0) <= now:
                return k & 0xFFFF
        start = draw(span)
        for i in range(span):
            k = base | lo + (start + i) % span
            if k not in taken and resting.get(k, 0) <= now:
                return k & 0xFFFF
        return -1

    def _draw(self, span: int) -> int:
        """A random int in [0, span) for port choice (RFC 6056), from the injected source read in blocks.

        ``SystemRandom.randrange`` makes a system call per draw (1.8 us, a fifth of creating a mapping);
        one block serves RANDOM_WORDS draws. Modulo bias: span / 2**32, below 2e-5 for any port range.
        """
        words = self._random_words
        if not words:
            words.extend(_RANDOM_BLOCK.unpack(self._rng.randbytes(_RANDOM_BLOCK.size)))
        return words.pop() % span

    # ------------------------------------------------------------------ events: the only state changes

    def _record(self, event: JournalEvent) -> Mapping | None:
        """Apply an event to the table and queue it for the journal (the only path to a state change)."""
        created = self.apply(event)
        self.events.append(event)
        return created

    def apply(self, event: JournalEvent) -> Mapping | None:
        """Fold one journal event into the table. Used live and by recovery; must not fail on a valid journal.

        Returns the mapping a ``MappingCreated`` made (its creator goes on with it), else None.
        """
        created = None
        match event:
            case MappingCreated():
                created = self._insert(event)
            case MappingExpired():
                self._remove(flow_key(event.proto, event.ext_addr, event.ext_port), event.at_ns)
            case QuotaHit():
                client = self._clients.get(event.int_addr)
                if client is not None:
                    client[2] = True
            case SessionOpened():
                self._sessions[event.vpn_addr] = (event.session, event.client)
                self._session_events[event.session] = event
            case SessionClosed():
                opened = self._session_events.pop(event.session, None)
                if opened is not None and self._sessions.get(opened.vpn_addr, (0,))[0] == event.session:
                    del self._sessions[opened.vpn_addr]
                    # an older session still open on the address (a reconnect before the old one was found
                    # dead) holds it again: the rule a snapshot restore applies (latest open session wins)
                    for other in reversed(self._session_events.values()):
                        if other.vpn_addr == opened.vpn_addr:
                            self._sessions[other.vpn_addr] = (other.session, other.client)
                            break
        self.next_seq = event.seq + 1
        return created

    def _insert(self, ev: MappingCreated) -> Mapping:
        proto = ev.proto
        key = proto << 48 | ev.int_addr << 16 | ev.int_port  # flow_key, inline: this runs per new flow
        ext_key = proto << 48 | ev.ext_addr << 16 | ev.ext_port
        old = self._by_int.get(key)
        if old is not None:  # not in a valid journal; keep the table consistent anyway
            self._remove(old.ext_key, ev.at_ns)
        if self._rmask == 0:
            remote = 0
        elif ev.remote_addr:
            remote = (ev.remote_addr << 16 | ev.remote_port) & self._rmask
        else:
            remote = NO_REMOTE
        at = ev.at_ns
        m = Mapping(key, ext_key, ev.session, remote, at, at, _SYN_OUT if proto == P.PROTO_TCP else _NONE)
        self._by_int[key] = m
        self._by_ext[ext_key] = m
        client = self._clients.get(ev.int_addr)
        if client is None:  # the client's first mapping pairs it with this public address (REQ-2)
            self._clients[ev.int_addr] = [ev.ext_addr, 1, False]
            self._ext_clients[ev.ext_addr] = self._ext_clients.get(ev.ext_addr, 0) + 1
        else:
            client[1] += 1
        self._schedule(key, at + self._first_timeout[proto])
        return m

    def _remove(self, ext_key: int, at_ns: int) -> Mapping | None:
        m = self._by_ext.pop(ext_key, None)
        if m is None:
            return None
        if self._by_int.get(m.key) is m:
            del self._by_int[m.key]
        int_addr = m.key >> 16 & 0xFFFFFFFF
        client = self._clients[int_addr]
        client[1] -= 1
        client[2] = False
        if client[1] == 0:
            del self._clients[int_addr]
            self._ext_clients[client[0]] -= 1
        until = at_ns + self._reuse_ns
        self._resting[ext_key] = until
        self._resting_order.append((until, ext_key))
        return m

    def _expire_mapping(self, m: Mapping, now: int, reason: str) -> None:
        self._record(
            MappingExpired(
                seq=self.next_seq,
                at_ns=now,
                proto=m.key >> 48,
                ext_addr=m.ext_key >> 16 & 0xFFFFFFFF,
                ext_port=m.ext_key & 0xFFFF,
                reason=reason,
                packets_out=m.out >> COUNT_SHIFT,
                bytes_out=m.out & BYTES_MASK,
                packets_in=m.inb >> COUNT_SHIFT,
                bytes_in=m.inb & BYTES_MASK,
            )
        )

    # ------------------------------------------------------------------ commands from the shell

    def expire(self, now: int) -> None:
        """End mappings idle past their timeout, free rested ports and age fragments. Emits MappingExpired."""
        due, wheel, by_int = self._wheel_due, self._wheel, self._by_int
        now_s = now // NS
        while due and due[0] <= now_s:
            for key in wheel.pop(heapq.heappop(due)):
                m = by_int.get(key)
                if m is None:
                    continue
                deadline = m.last_seen + self._timeout(m)
                if deadline <= now:
                    closed = m.key >> 48 == P.PROTO_TCP and m.state >= TcpState.TIME_WAIT
                    self._expire_mapping(m, now, "tcp_closed" if closed else "idle")
                else:
                    self._schedule(key, deadline)
        order, resting = self._resting_order, self._resting
        while order and order[0][0] <= now:
            until, k = order.popleft()
            if resting.get(k) == until:
                del resting[k]
        dropped = self._frags_out.expire(now) + self._frags_in.expire(now)
        self.drops[Drop.FRAGMENT] += dropped

    def resume(self, now: int, down_since: int) -> int:
        """After ``restore``: end every mapping that idled out while the gateway was down; returns how many.

        ``down_since`` is the time of the last journaled event. What happened after it is unknown, so each
        mapping counts as seen then at the latest: a flow alive at the crash goes on with the same external
        port (its timer restarts from the crash, and a TCP connection the journal knew only by its SYN is
        picked up as established by the remote's next segment), while one idle past its timeout by ``now``
        ends as ``MappingExpired(reason="stale_at_recovery")`` at ``now``. Its port then rests
        ``port_reuse_delay_s`` from the restart, not from the unknown moment of the crash: an audit of the
        outage window never finds two holders.
        """
        stale = []
        for m in self._by_int.values():
            seen = max(m.last_seen, down_since)
            if seen + self._timeout(m) <= now:
                stale.append(m)
            else:
                m.last_seen = seen
        for m in stale:
            self._expire_mapping(m, now, "stale_at_recovery")
        return len(stale)

    def next_deadline(self) -> int | None:
        """When ``expire`` next has work (ns), for the shell's one timer; None when nothing is scheduled."""
        deadlines = [self._frags_out.next_deadline(), self._frags_in.next_deadline()]
        if self._wheel_due:
            deadlines.append(self._wheel_due[0] * NS)
        if self._resting_order:
            deadlines.append(self._resting_order[0][0])
        return min((d for d in deadlines if d is not None), default=None)

    def open_session(
        self,
        now: int,
        *,
        session: int,
        client: str,
        vpn_addr: int,
        fingerprint: str = "",
        remote_addr: str = "",
        remote_port: int = 0,
    ) -> None:
        """Record that ``client`` now holds ``vpn_addr``: its mappings are journaled under its name."""
        self._record(
            SessionOpened(
                seq=self.next_seq,
                at_ns=now,
                session=session,
                client=client,
                fingerprint=fingerprint,
                remote_addr=remote_addr,
                remote_port=remote_port,
                vpn_addr=vpn_addr,
            )
        )

    def close_session(self, now: int, session: int, reason: str, **counters: int) -> None:
        """End a session and the mappings of its address, so the address can go to someone else unambiguously.

        If the same client already holds the address again through a newer session (it reconnected before
        this one was found dead), its flows go on: nothing changes hands. Otherwise every mapping of the
        address that no open session owns ends with reason "session_closed" (a scan: sessions close
        rarely, and a per-session index would cost every mapping memory).
        """
        opened = self._session_events.get(session)
        if opened is None:
            return
        addr = opened.vpn_addr
        holder = self._sessions.get(addr)
        if holder is None or holder[0] == session or holder[1] != opened.client:
            open_sessions = self._session_events
            ending = [
                m
                for m in self._by_int.values()
                if m.key >> 16 & 0xFFFFFFFF == addr
                and (m.session == session or m.session not in open_sessions)
            ]
            for m in ending:
                self._expire_mapping(m, now, "session_closed")
        self._record(
            SessionClosed(
                seq=self.next_seq, at_ns=now, session=session, client=opened.client, reason=reason, **counters
            )
        )

    def record_event(self, event_type: type, now: int, **fields: Any) -> JournalEvent:
        """Journal a fact that changes no NAT state (gateway started, session refused...) in the one sequence."""
        event = event_type(seq=self.next_seq, at_ns=now, **fields)
        self._record(event)
        return event

    def snapshot_view(self, now: int) -> _TableView:
        """The table now, cheaply; call ``.build()`` on it off the packet path (the journal writer does)."""
        return _TableView(self, now)

    # ------------------------------------------------------------------ recovery

    @classmethod
    def restore(
        cls,
        config: NatConfig,
        snapshot: Snapshot | None,
        events: Iterable[JournalEvent],
        rng: random.Random | None = None,
    ) -> Nat:
        """The table as the journal left it: a snapshot, then every later event through ``apply``."""
        nat = cls(config, rng)
        if snapshot is not None:
            # A million new objects would run the cyclic GC over the growing table dozens of times (half
            # the restore time, measured). The table holds no reference cycles: nothing to collect here.
            enabled = gc.isenabled()
            gc.disable()
            try:
                nat._load_snapshot(snapshot)
            finally:
                if enabled:
                    gc.enable()
        for event in events:
            nat.apply(event)
        return nat

    def _load_snapshot(self, s: Snapshot) -> None:
        """Rebuild the table from a snapshot's columns: the one bulk path, so it works column-wise (1 M rows)."""
        if len({len(getattr(s, column)) for column in _SNAPSHOT_MAPPING_COLUMNS}) > 1:
            raise ValueError("snapshot columns of unequal length: not a snapshot gw wrote")
        rmask = self._rmask
        keys = [p << 48 | a << 16 | q for p, a, q in zip(s.proto, s.int_addr, s.int_port)]
        ext_keys = [p << 48 | a << 16 | q for p, a, q in zip(s.proto, s.ext_addr, s.ext_port)]
        if any(s.remote_addr):
            remotes = [
                (a << 16 | q) & rmask if a or not rmask else NO_REMOTE
                for a, q in zip(s.remote_addr, s.remote_port)
            ]
        else:  # remotes not recorded (no log_destination): each mapping re-learns its remote
            remotes = [NO_REMOTE if rmask else 0] * len(keys)
        outs = [p << COUNT_SHIFT | b for p, b in zip(s.packets_out, s.bytes_out)]
        ins = [p << COUNT_SHIFT | b for p, b in zip(s.packets_in, s.bytes_in)]
        ms = list(
            map(
                Mapping,
                keys,
                ext_keys,
                s.session,
                remotes,
                s.created_ns,
                s.last_seen_ns,
                s.tcp_state,
                outs,
                ins,
            )
        )
        self._by_int.update(zip(keys, ms))
        self._by_ext.update(zip(ext_keys, ms))
        paired = dict(zip(s.int_addr, s.ext_addr))  # paired pooling: one public address per client
        self._clients.update((a, [paired[a], count, False]) for a, count in Counter(s.int_addr).items())
        for ea in paired.values():
            self._ext_clients[ea] = self._ext_clients.get(ea, 0) + 1
        udp, icmp, established, transitory = self._udp_ns, self._icmp_ns, self._tcp_est_ns, self._tcp_trans_ns
        wheel: defaultdict[int, list[int]] = defaultdict(list)
        for key, proto, state, seen in zip(keys, s.proto, s.tcp_state, s.last_seen_ns):
            if proto == 17:  # UDP, the common case, first
                wheel[(seen + udp) // NS + 1].append(key)
            elif proto == 6:
                wheel[
                    (seen + (established if state == TcpState.ESTABLISHED else transitory)) // NS + 1
                ].append(key)
            else:
                wheel[(seen + icmp) // NS + 1].append(key)
        self._wheel.update(wheel)
        self._wheel_due = list(wheel)
        heapq.heapify(self._wheel_due)
        resting = zip(s.rest_proto, s.rest_ext_addr, s.rest_ext_port, s.rest_until_ns, strict=True)
        for proto, addr, port, until in resting:
            k = flow_key(proto, addr, port)
            self._resting[k] = until
            self._resting_order.append((until, k))
        for opened in s.sessions:
            self._sessions[opened.vpn_addr] = (opened.session, opened.client)
            self._session_events[opened.session] = opened
        for addr in s.quota_flagged:
            client = self._clients.get(addr)
            if client is not None:
                client[2] = True
        self.next_seq = s.upto_seq + 1

    # ------------------------------------------------------------------ reading the table

    def __len__(self) -> int:
        return len(self._by_ext)

    def mappings(self) -> Iterable[Mapping]:
        """Live mappings (a view: don't change the table while iterating)."""
        return self._by_ext.values()

    def lookup_internal(self, proto: int, int_addr: int, int_port: int) -> Mapping | None:
        return self._by_int.get(flow_key(proto, int_addr, int_port))

    def lookup_external(self, proto: int, ext_addr: int, ext_port: int) -> Mapping | None:
        return self._by_ext.get(flow_key(proto, ext_addr, ext_port))

    def client_mapping_count(self, int_addr: int) -> int:
        client = self._clients.get(int_addr)
        return 0 if client is None else client[1]

    def is_resting(self, proto: int, ext_addr: int, ext_port: int, now: int) -> bool:
        return self._resting.get(flow_key(proto, ext_addr, ext_port), 0) > now

    def table_state(self, now: int | None = None) -> tuple:
        """What the journal determines: mappings (identity, owner, birth), resting ports, sessions, sequence.

        Two tables with equal ``table_state`` are the same table; the fold property compares this. With
        ``now``, ports whose rest is over by then are left out: they are free whether or not ``expire``
        has swept them yet, and a fold never runs ``expire``, so only this form compares a live table
        with its fold after a rest lapsed.
        """
        return (
            sorted((m.key, m.ext_key, m.session, m.created) for m in self._by_ext.values()),
            sorted((k, u) for k, u in self._resting.items() if now is None or u > now),
            sorted(self._sessions.items()),
            sorted((a, tuple(c)) for a, c in self._clients.items()),
            self.next_seq,
        )


# ---------------------------------------------------------------------- rewrite helpers (general path)

# Fast-path reads and writes, bound at module level (one global lookup each).
# IHL=5 + UDP: the header as five 32-bit words (ver/ihl/tos/total, id/frag, ttl/proto/checksum, src, dst),
# then sport, dport, UDP length, UDP checksum
_read_udp = struct.Struct("!5I HHHH").unpack_from
# IHL=5 + TCP: the five header words, sport, dport, TCP flags, TCP checksum
_read_tcp = struct.Struct("!5I HH 9x B 2x H").unpack_from
# from the IP checksum (offset 10) to the UDP checksum: the UDP fast paths' single write
_put_v4_udp = struct.Struct("!H II HHHH").pack_into
# IP checksum, src, dst, sport, dport (offsets 10-23): the TCP fast paths' write before the TCP checksum
_put_v4_ports = struct.Struct("!H II HH").pack_into
_put_u16 = P.put_u16


def _rewrite_addr(pkt: bytearray, field: int, new: int) -> None:
    """Set the IPv4 source or destination and fix the header checksum (RFC 1624)."""
    old = P.get_u32(pkt, field)[0]
    csum = P.get_u16(pkt, P.IP_CSUM)[0]
    P.put_u32(pkt, field, new)
    P.put_u16(pkt, P.IP_CSUM, P.csum_adjust(csum, P.addr_delta(old, new)))


def _rewrite_port(
    pkt: bytearray,
    l4: int,
    proto: int,
    port_off: int,
    old_addr: int,
    new_addr: int,
    old_port: int,
    new_port: int,
) -> None:
    """Set a TCP/UDP port and fix the L4 checksum for it and the pseudo-header address change."""
    P.put_u16(pkt, l4 + port_off, new_port)
    at = l4 + (P.TCP_CSUM if proto == P.PROTO_TCP else P.UDP_CSUM)
    c = P.get_u16(pkt, at)[0]
    if c == 0 and proto == P.PROTO_UDP:
        return  # no checksum stays no checksum (RFC 768)
    c = P.csum_adjust(c, P.addr_delta(old_addr, new_addr) + (~old_port & 0xFFFF) + new_port)
    P.put_u16(pkt, at, c or 0xFFFF if proto == P.PROTO_UDP else c)


def _rewrite_icmp_id(pkt: bytearray, l4: int, old: int, new: int, limit: int | None = None) -> None:
    """Set an ICMP echo identifier and fix the ICMP checksum (no pseudo-header in ICMP)."""
    P.put_u16(pkt, l4 + P.ICMP_ID, new)
    if limit is None or l4 + P.ICMP_CSUM + 2 <= limit:
        c = P.get_u16(pkt, l4 + P.ICMP_CSUM)[0]
        P.put_u16(pkt, l4 + P.ICMP_CSUM, P.csum_adjust(c, (~old & 0xFFFF) + new))


def _clamp_mss(pkt: bytearray, l4: int, mss: int) -> None:
    """Lower the MSS option of a SYN to ``mss`` (RFC 6691), fixing the TCP checksum; other options untouched."""
    doff = (pkt[l4 + P.TCP_OFF] >> 4) * 4
    end = min(l4 + doff, len(pkt))
    i = l4 + P.TCP_MIN_HLEN
    while i < end:
        kind = pkt[i]
        if kind == P.TCP_OPT_END:
            return
        if kind == P.TCP_OPT_NOP:
            i += 1
            continue
        if i + 1 >= end or pkt[i + 1] < 2:
            return  # malformed options: leave them to the endpoints
        size = pkt[i + 1]
        if kind == P.TCP_OPT_MSS and size == 4 and i + 4 <= end:
            old = P.get_u16(pkt, i + 2)[0]
            if old > mss:
                P.put_u16(pkt, i + 2, mss)
                at = l4 + P.TCP_CSUM
                P.put_u16(pkt, at, P.csum_adjust(P.get_u16(pkt, at)[0], (~old & 0xFFFF) + mss))
            return
        i += size


# The readable fast paths stay reachable under these names when an instance uses the compiled ones.
Nat.translate_outbound_py = Nat.translate_outbound
Nat.translate_inbound_py = Nat.translate_inbound

# Optional compiled fast paths (STYLE section 3): same semantics, property-tested against the methods above.
try:
    from gw import _fastpath
except ImportError:  # not built (no compiler at install time): the pure-Python fast paths serve
    _fastpath = None
COMPILED = _fastpath is not None
