"""The user-space NAT: sans-I/O, one table, every change an event.

Theory of operation
-------------------
A *mapping* (``gw.mapping``) binds an internal endpoint (protocol, ``int_addr``, ``int_port``: the
client's VPN address and source port, or ICMP echo identifier) to an external endpoint (``ext_addr``,
``ext_port``) on one of the public addresses. Outbound means client to internet, inbound internet to
client; the internet peer is the *remote* endpoint. The modules around this one each own one part:
``gw.ports`` which external ports are free, held or resting; ``gw.clients`` each client's limits and
the sessions; ``gw.frag`` fragments; ``gw.tcp_track`` TCP states; ``gw.snapshot`` snapshots;
``gw.rewrite`` the general path's field rewrites.

- Endpoint-independent mapping (RFC 4787 REQ-1, RFC 5382 REQ-1): the key is the internal endpoint
  alone, so one mapping serves every remote.
- Filtering (RFC 4787 REQ-8), per ``[nat] filtering``: endpoint-independent (any remote may send to a
  mapping), address-dependent (only addresses the client sent to), address-and-port-dependent (only
  address:port pairs it sent to; the default). One mechanism serves all three: a remote is remembered
  as ``addr << 16 | port`` masked by the mode (mask 0 remembers nothing and matches everything). A
  client's remembered remotes are bounded per mapping and per client; past that, new remotes are not
  admitted (``remotes_refused``).
- Paired pooling (RFC 4787 REQ-2): a client's mappings all use one public address, chosen as the least
  loaded when the client has none.
- Ports (RFC 4787 REQ-3, RFC 6056): random within ``port_range``; a source port below 1024 maps below
  1024 within the client's share (``low_ports_per_client``), then into ``port_range``. An external
  endpoint is never held twice, and one that was freed rests ``port_reuse_delay_s`` first.
- Quota (RFC 6888 REQ-4): a client holds at most ``max_mappings_per_client`` mappings. A new flow past
  it is refused (nothing is evicted) and ``QuotaHit`` is journaled once until the client drops below.
- Timeouts: UDP 300 s (RFC 4787 REQ-5), TCP established 7440 s and transitory 240 s (RFC 5382 REQ-5,
  see ``tcp_track``), ICMP 60 s (RFC 5508 REQ-1). Only outbound packets and TCP state changes refresh a
  mapping (RFC 4787 REQ-6 lets the NAT choose; this way a remote alone cannot keep a client's port held).
  An inbound RST moves a connection's state only when it lies in the client's receive window (RFC 5961
  3.2); a blind one is forwarded to the client, whose TCP judges it, and changes nothing here.
- ICMP (RFC 5508): echo uses the identifier as the port; errors in both directions are translated with
  the quoted header rewritten and every checksum fixed, filtered like the flow they quote, and never
  refresh or end a mapping.
- Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8): a packet to a public endpoint of this NAT is translated
  outbound, then inbound, and comes back as ``HAIRPIN`` with the sender's public endpoint as source.
- A router hop (RFC 1812 5.3.1): the TTL of everything forwarded drops by one (incrementally, inside the
  fast paths' one write); a packet that arrives with TTL <= 1 is returned untouched as
  ``Drop.TTL_EXCEEDED`` for the router to answer (``Router.time_exceeded_to_client`` and ``_to_internet``);
  inbound, only when it would have been delivered (a TTL=1 scan learns nothing). Inbound packets from sources the
  internet cannot have (our public addresses, the VPN subnet, 0/8, 127/8, 224/3 and broadcast) are
  ``Drop.MARTIAN`` (RFC 1812 5.3.7, RFC 2827/3704).
- TCP MSS is clamped on SYNs both ways to ``tcp_mss`` (RFC 6691).

Packets are ``bytearray`` or writable ``memoryview`` buffers, rewritten in place; a packet is its first
IPv4-total-length bytes, and bytes after it (link padding) are left alone. Fragments held earlier and
released by their first fragment are appended, translated, to ``released_outbound`` (to the internet)
and ``released_inbound`` (to clients); the caller drains them.

Clocks: ``now`` is the shell's monotonic clock in ns: every deadline lives on it, so a wall-clock step
expires nothing. Events carry wall-clock time, ``now + wall_offset``; the shell keeps ``wall_offset``
current, and ``apply`` converts an event's time back, so live and replay agree.

Every state change goes through ``apply(event)``: commands build an event, ``apply`` it and append it
to ``self.events`` for the journal. Recovery folds the journal through the same ``apply``, so the table
after a crash is the table before it; ``resume(now, down_since)`` then ends what idled out during the
outage. The NAT also numbers the journal (``next_seq``) because it is the core whose state the journal
rebuilds; other facts (gateway started, session refused) go through ``record_event`` to share it.

Per-packet state (last seen, counters, TCP state, remembered remotes) is not journaled: it lives in the
table and in snapshots. Expiry is lazy: a timer wheel of one-second buckets holds each mapping's key at
its earliest possible deadline; when a bucket comes due the real deadline is recomputed and the key
either expires or moves to a later bucket. ``expire`` does at most ``EXPIRE_BUDGET`` units of work per
call and says whether more is due; the shell calls it again on its next turn.

Bad input (short, malformed, lying lengths, unknown protocols) is a ``Drop`` verdict counted in
``drops``; ``translate_*`` raise nothing else.

The two fast paths (``translate_outbound``/``translate_inbound``) have a compiled twin in
``gw/_fastpath.pyx``, used when it was built (``COMPILED``); these Python methods are its specification,
and a property test holds the two to identical bytes, verdicts, counters and events.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Iterable
from types import MethodType
from typing import Any

from gw import inet
from gw import packet as P
from gw import rewrite as R
from gw.clients import Client, Sessions
from gw.config import NatConfig, VpnConfig, check_nat
from gw.frag import FragmentTable, datagram_key
from gw.mapping import (
    BYTES_MASK,
    COUNT_SHIFT,
    NO_ACK,
    NO_REMOTE,
    ONE_PACKET,
    Mapping,
    TcpMapping,
    flow_key,
)
from gw.pending import REST_COLUMNS, PendingRows
from gw.ports import HELD, RESTING, PortPool, rest_until
from gw.snapshot import TableView
from gw.tcp_track import NEXT_STATE, SEG_KINDS, TcpState, classify
from gw.verdict import Drop, Verdict
from journal.events import (
    HEARTBEAT_INTERVAL_S,
    Heartbeat,
    JournalEvent,
    MappingCreated,
    MappingExpired,
    QuotaHit,
    SessionClosed,
    SessionOpened,
    Snapshot,
)

__all__ = ["COMPILED", "fast_path", "FORWARD", "HAIRPIN", "NEEDS_MAPPING", "Mapping", "Nat", "Verdict"]

FORWARD = Verdict.FORWARD
HAIRPIN = Verdict.HAIRPIN
NEEDS_MAPPING = Verdict.NEEDS_MAPPING

NS = 1_000_000_000
MAX_REMOTES = 4096  # remotes remembered per mapping for filtering; past it new remotes are not admitted
EXPIRE_BUDGET = 2_000  # keys, rests and fragments looked at per expire() call: under 10 ms here (bench.nat)
RESTORE_SLICE = 5_000  # pending rows a lazy restore loads per expire() call: about 10 ms here (bench.journal)
RESUME_SPREAD_NS = 60 * NS
HEARTBEAT_NS = (
    HEARTBEAT_INTERVAL_S * NS
)  # restored flows that share a deadline come due over a minute, not at once

_SYN_OUT, _NONE = int(TcpState.SYN_OUT), int(TcpState.NONE)  # plain ints: enum lookups cost per new flow
_TCP_STATE_FLAGS = P.TCP_SYN | P.TCP_FIN | P.TCP_RST  # segments the tracker must see
_SYN_RST_ACK = P.TCP_SYN | P.TCP_RST | P.TCP_ACK_FLAG
_SYN_ACK = P.TCP_SYN | P.TCP_ACK_FLAG
_FILTER_MASK = {
    "endpoint-independent": 0,
    "address-dependent": 0xFFFF_FFFF_0000,
    "address-and-port-dependent": 0xFFFF_FFFF_FFFF,
}
TCP_OPT_WSCALE, TCP_MAX_WSCALE = P.TCP_OPT_WSCALE, P.TCP_MAX_WSCALE


class Nat:
    """The NAT table and its translations. See the module docstring."""

    def __init__(
        self,
        config: NatConfig,
        rng: random.Random | None = None,
        compiled: bool = True,
        *,
        vpn: VpnConfig | None = None,
        wall_offset: int = 0,
        caller_ports: bool = False,
    ) -> None:
        """A NAT for a checked ``config``; ``vpn`` names the internal subnet (martian sources).

        ``compiled=False`` keeps the pure-Python fast paths even when ``gw._fastpath`` is built.
        ``caller_ports``: new flows are not given ports here; ``translate_outbound`` answers
        ``NEEDS_MAPPING`` and the caller (the socket-mode external gateway, whose kernel picks the port)
        calls ``create_mapping`` with the port, then translates the packet again.
        Raises: ConfigError for a config that fails ``config.check_nat``.
        """
        check_nat(config, "NatConfig")
        vpn = vpn or VpnConfig()
        self.config = config
        self._rng = rng or random.SystemRandom()
        self.wall_offset = wall_offset  # wall clock minus the monotonic ``now``, ns; the shell refreshes it
        self.ext_addrs = config.external_ints()
        self._ext_set = frozenset(self.ext_addrs)
        self._vpn_net, vpn_len = inet.parse_prefix(vpn.subnet)
        self._vpn_mask = inet.prefix_mask(vpn_len)
        port_lo, port_hi = config.port_bounds()
        self._rmask = _FILTER_MASK[config.filtering]
        self._quota = config.max_mappings_per_client
        self._low_share = config.low_ports_per_client
        self._client_remotes = config.max_remotes_per_client
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
        self._caller_ports = caller_ports
        frag = {
            "timeout_ns": config.fragment_timeout_s * NS,
            "max_datagrams": config.fragment_max_datagrams,
            "max_bytes": config.fragment_max_bytes,
            "max_bytes_per_source": config.fragment_max_bytes_per_source,
            "max_datagrams_per_source": config.fragment_max_datagrams_per_source,
        }
        self._frags_out = FragmentTable(**frag)
        self._frags_in = FragmentTable(**frag)
        self._ip_ids = {a: self._rng.randrange(0x10000) for a in self.ext_addrs}  # next IP ID per address

        self.by_int: dict[int, Mapping] = {}  # flow_key(proto, int_addr, int_port) -> mapping
        self.by_ext: dict[int, Mapping] = {}  # flow_key(proto, ext_addr, ext_port) -> mapping
        self.clients: dict[int, Client] = {}  # int_addr -> its per-client state
        self._ext_clients = dict.fromkeys(self.ext_addrs, 0)  # ext_addr -> clients paired with it
        self.ports = PortPool(self.ext_addrs, port_lo, port_hi, config.port_reuse_delay_s * NS, self._rng)
        self.sessions = Sessions()
        self._wheel: dict[int, list[int]] = {}  # deadline second -> internal keys due then (lazy)
        self._wheel_due: list[int] = []  # heap of the wheel's seconds
        self._views: list[TableView] = []  # snapshot views being built: they learn of removals

        self.next_seq = 1
        self.events: list[JournalEvent] = []  # drained by the shell after each batch
        self.last_mapping_seq = 0  # seq of the newest MappingCreated (strict audit waits for it)
        self.released_outbound: list[bytearray] = []  # held fragments released, translated, to the internet
        self.released_inbound: list[bytearray] = []  # ... and to clients (hairpinned ones too)
        self.drops = [0] * P.DROP_COUNT
        self.remotes_refused = 0  # remotes not admitted: a mapping's or a client's budget was full
        self.remotes_learned = 0  # restored mappings that took their first inbound remote (see _learn_restored_remote)
        self.rsts_ignored = 0  # inbound RSTs outside the client's window: forwarded, state unchanged
        self._pending: PendingRows | None = None  # a lazy restore's rows not loaded yet (gw.pending)
        self.pending_by_proto: dict[int, int] = {}  # ... counted by protocol, for ``gw status``
        self._resumed: tuple[int, int] | None = None  # (now, crash) of ``resume``, for rows loaded later
        self._restore_now = 0  # the latest ``now`` seen while rows are pending
        self.stale_at_recovery = 0  # mappings ended as stale_at_recovery (resume's, and lazy rows')
        self._next_heartbeat = 0  # when expire() next journals a Heartbeat (while the table holds mappings)
        if compiled and _fastpath is not None:  # the same fast paths, compiled (gw/_fastpath.pyx)
            self.translate_outbound = MethodType(_fastpath.translate_outbound, self)
            self.translate_inbound = MethodType(_fastpath.translate_inbound, self)
            self.translate_outbound_batch = MethodType(_fastpath.translate_outbound_batch, self)
            self.translate_inbound_batch = MethodType(_fastpath.translate_inbound_batch, self)
            self._create = MethodType(_fastpath.create, self)
            self._load_rows = MethodType(_fastpath.load_rows, self)
        # what a lazy restore swaps out and back (the compiled ones if bound above)
        self._fast = {name: getattr(self, name) for name in _RESTORING_METHODS}

    # ------------------------------------------------------------------ fast paths

    def translate_outbound(self, pkt: bytearray | memoryview, now: int) -> int:
        """Translate a client's packet in place: ``FORWARD``, ``HAIRPIN`` or a ``Drop`` reason. Raises nothing.

        Inline here: UDP and TCP with a 20-byte header, unfragmented, TTL above 1, not hairpinned. The
        rest (new ports chosen by the caller, ICMP, options, fragments) takes ``_outbound``, the plainly
        written general path.

        Checksum arithmetic is done modulo 0xFFFF, where ones'-complement sums live (2**16 == 1):
        RFC 1624 eqn. 3 becomes HC' = HC + m - m' (mod 0xFFFF), and ``0xFFFE - (m' - m - 1 - HC) % 0xFFFF``
        gives the same 16-bit result as the folded form in one big-int operation. A header is sound
        when its words sum to 0 (mod 0xFFFF); reading it as five 32-bit words gives the same sum. The
        TTL decrement is the TTL/protocol word falling by 0x100, folded into the same expression.
        """
        n = len(pkt)
        if n < 28:
            return self._outbound(pkt, now)
        proto = pkt[9]
        if proto == 17:
            w0, w1, w2, src, dst, sport, dport, ulen, l4csum = _read_udp(pkt)
            least = 28
        elif proto == 6 and n >= 40:
            w0, w1, w2, src, dst, sport, dport, ack, flags, l4csum = _read_tcp(pkt)
            least = 40
        else:
            return self._outbound(pkt, now)
        total = w0 & 0xFFFF
        # version 4 + IHL 5, total length inside the buffer (padding after it is left alone), not a
        # fragment, TTL above 1, not to one of our public addresses
        if (
            w0 >> 24 != 0x45
            or not least <= total <= n
            or w1 & 0x3FFF
            or w2 < 0x0200_0000
            or dst in self._ext_set
        ):
            return self._outbound(pkt, now)
        if (w0 + w1 + w2 + src + dst) % 0xFFFF:  # RFC 1071: a sound header sums to (negative) zero
            return self._drop(Drop.BAD_CHECKSUM)
        m = self.by_int.get(proto << 48 | src << 16 | sport)
        r = (dst << 16 | dport) & self._rmask
        if m is None:
            if proto == 6 and flags & _SYN_RST_ACK != P.TCP_SYN:
                return self._drop(Drop.NO_MAPPING)  # RFC 5382: only a SYN opens a TCP mapping
            if self._caller_ports:
                return self._outbound(pkt, now)
            m = self._create(proto, src, sport, dst, dport, now)
            if m.__class__ is Drop:
                return self._drop(m)
        elif r != m.remote and (m.remotes is None or r not in m.remotes):
            self._admit_remote(m, r)
        if proto == 6:
            if flags & P.TCP_ACK_FLAG:
                m.ack = ack  # the left edge of the client's receive window (RST check)
            if flags & _TCP_STATE_FLAGS:
                self._track_tcp(m, flags, True, now, pkt)
                if flags & P.TCP_SYN and self._mss:
                    R.clamp_mss(pkt, 20, self._mss)
                    l4csum = P.get_u16(pkt, P.V4_TCP_CSUM)[0]
        ext = m.ext_key
        ea = ext >> 16 & 0xFFFFFFFF
        ep = ext & 0xFFFF
        ipcsum = 0xFFFE - (ea - src - 0x101 - (w2 & 0xFFFF)) % 0xFFFF  # RFC 1624, address and TTL
        if proto == 17:
            if l4csum:  # a UDP checksum of 0 means none and stays 0 (RFC 768); a computed 0 is sent as 0xFFFF
                l4csum = 0xFFFE - (ea - src + ep - sport - 1 - l4csum) % 0xFFFF or 0xFFFF
            _put_v4_udp(pkt, P.IP_TTL, (w2 >> 16) - 0x100, ipcsum, ea, dst, ep, dport, ulen, l4csum)
        else:
            _put_v4_ports(pkt, P.IP_TTL, (w2 >> 16) - 0x100, ipcsum, ea, dst, ep, dport)
            _put_u16(pkt, P.V4_TCP_CSUM, 0xFFFE - (ea - src + ep - sport - 1 - l4csum) % 0xFFFF)
        m.last_seen = now
        m.out += ONE_PACKET + total
        return FORWARD

    def translate_inbound(self, pkt: bytearray | memoryview, now: int) -> int:
        """Translate a packet from the internet in place: ``FORWARD`` to its client, or a ``Drop``. Raises nothing.

        Inline here: UDP and TCP with a 20-byte header, unfragmented, TTL above 1, from a source that is
        not martian; the rest takes ``_inbound``. The checksum arithmetic is ``translate_outbound``'s.
        """
        n = len(pkt)
        if n < 28:
            return self._inbound(pkt, now)
        proto = pkt[9]
        if proto == 17:
            w0, w1, w2, src, dst, sport, dport, ulen, l4csum = _read_udp(pkt)
            flags = 0
            least = 28
        elif proto == 6 and n >= 40:
            w0, w1, w2, src, dst, sport, dport, _ack, flags, l4csum = _read_tcp(pkt)
            least = 40
        else:
            return self._inbound(pkt, now)
        total = w0 & 0xFFFF
        if (
            w0 >> 24 != 0x45
            or not least <= total <= n
            or w1 & 0x3FFF
            or w2 < 0x0200_0000
            or src >= 0xE000_0000  # multicast, reserved, broadcast: martians, and checked there
            or src & self._vpn_mask == self._vpn_net
            or src in self._ext_set
            or src >> 24 in _MARTIAN_FIRST_OCTETS
        ):
            return self._inbound(pkt, now)
        if (w0 + w1 + w2 + src + dst) % 0xFFFF:
            return self._drop(Drop.BAD_CHECKSUM)
        m = self.by_ext.get(proto << 48 | dst << 16 | dport)
        if m is None:
            return self._drop(Drop.NO_MAPPING)
        r = (src << 16 | sport) & self._rmask
        if r != m.remote and (m.remotes is None or r not in m.remotes):
            if m.remote == NO_REMOTE:  # restored without its remote: the general path decides
                return self._inbound(pkt, now)
            return self._drop(Drop.FILTERED)
        if flags & _TCP_STATE_FLAGS or m.state == _SYN_OUT:
            self._track_tcp(m, flags, False, now, pkt)
            if flags & P.TCP_SYN and self._mss:
                R.clamp_mss(pkt, 20, self._mss)
                l4csum = P.get_u16(pkt, P.V4_TCP_CSUM)[0]
        key = m.key
        ia = key >> 16 & 0xFFFFFFFF
        ip = key & 0xFFFF
        ipcsum = 0xFFFE - (ia - dst - 0x101 - (w2 & 0xFFFF)) % 0xFFFF
        if proto == 17:
            if l4csum:
                l4csum = 0xFFFE - (ia - dst + ip - dport - 1 - l4csum) % 0xFFFF or 0xFFFF
            _put_v4_udp(pkt, P.IP_TTL, (w2 >> 16) - 0x100, ipcsum, src, ia, sport, ip, ulen, l4csum)
        else:
            _put_v4_ports(pkt, P.IP_TTL, (w2 >> 16) - 0x100, ipcsum, src, ia, sport, ip)
            _put_u16(pkt, P.V4_TCP_CSUM, 0xFFFE - (ia - dst + ip - dport - 1 - l4csum) % 0xFFFF)
        m.inb += ONE_PACKET + total
        return FORWARD

    def translate_outbound_batch(self, pkts: Iterable[bytearray | memoryview], now: int) -> list[int]:
        """``translate_outbound`` for each packet of a batch, in order; the verdicts."""
        translate = self.translate_outbound
        return [translate(p, now) for p in pkts]

    def translate_inbound_batch(self, pkts: Iterable[bytearray | memoryview], now: int) -> list[int]:
        """``translate_inbound`` for each packet of a batch, in order; the verdicts."""
        translate = self.translate_inbound
        return [translate(p, now) for p in pkts]

    # ------------------------------------------------------------------ general paths

    def _drop(self, reason: int) -> int:
        self.drops[reason] += 1
        return reason

    def _outbound(self, pkt: bytearray | memoryview, now: int) -> int:
        """Every outbound packet the fast path does not take: new flows, flags, fragments, ICMP, options."""
        bad = P.check_ipv4(pkt)
        if bad:
            return self._drop(bad)
        total = P.get_u16(pkt, P.IP_TOTAL_LEN)[0]
        if len(pkt) > total:
            pkt = memoryview(pkt)[:total]  # link padding: left in the buffer, out of the packet
        if pkt[P.IP_TTL] <= 1:
            return self._drop(Drop.TTL_EXCEEDED)
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
            return verdict if verdict == NEEDS_MAPPING else self._drop(verdict)
        if P.get_u32(pkt, P.IP_DST)[0] in self._ext_set:
            verdict, peer = self._inbound_translate(pkt, now)
            if verdict:
                return self._drop(verdict)
            R.decrement_ttl(pkt)  # one hop, though it went out and in
            if frag & P.IP_MF and m is not None:
                self._first_fragment(pkt, m, now, outbound=True, peer=peer)
            return HAIRPIN
        R.decrement_ttl(pkt)
        if frag & P.IP_MF and m is not None:
            self._first_fragment(pkt, m, now, outbound=True)
        return FORWARD

    def _inbound(self, pkt: bytearray | memoryview, now: int) -> int:
        """Every inbound packet the fast path does not take."""
        bad = P.check_ipv4(pkt)
        if bad:
            return self._drop(bad)
        total = P.get_u16(pkt, P.IP_TOTAL_LEN)[0]
        if len(pkt) > total:
            pkt = memoryview(pkt)[:total]
        if self._is_martian(P.get_u32(pkt, P.IP_SRC)[0]):
            return self._drop(Drop.MARTIAN)
        frag = P.get_u16(pkt, P.IP_FRAG)[0]
        if pkt[P.IP_TTL] <= 1:
            return self._expired_inbound(pkt, now, frag)
        if frag & P.IP_OFFSET_MASK:
            return self._later_fragment(pkt, now, outbound=False)
        verdict, m = self._inbound_translate(pkt, now)
        if verdict:
            return self._drop(verdict)
        R.decrement_ttl(pkt)
        if frag & P.IP_MF and m is not None:
            self._first_fragment(pkt, m, now, outbound=False)
        return FORWARD

    def _expired_inbound(self, pkt: bytearray | memoryview, now: int, frag: int) -> int:
        """A packet from the internet that cannot go another hop: ``TTL_EXCEEDED`` (the router answers it)
        only if it would have been delivered, else the drop it gets anyway, so a scan with TTL 1 learns no
        more than any other scan. As in Linux, whose conntrack runs before the forwarding TTL check, the
        mapping sees it; the translation is done on a copy, so the caller keeps the bytes the answer quotes.
        """
        if frag & P.IP_OFFSET_MASK:
            return self._drop(Drop.TTL_EXCEEDED)  # nothing to match it by; no error answers it either
        verdict, _ = self._inbound_translate(bytearray(pkt), now)
        return self._drop(verdict or Drop.TTL_EXCEEDED)

    def _is_martian(self, src: int) -> bool:
        """A source no packet from the internet can have (RFC 1812 5.3.7, RFC 2827/3704)."""
        return (
            src >= 0xE000_0000
            or src >> 24 in _MARTIAN_FIRST_OCTETS
            or src & self._vpn_mask == self._vpn_net
            or src in self._ext_set
        )

    def _inbound_translate(self, pkt: bytearray | memoryview, now: int) -> tuple[int, Mapping | None]:
        """The inbound rewrite of a whole packet or first fragment: (0 or a Drop reason, its mapping)."""
        ihl = P.ip_header_len(pkt)
        proto = pkt[P.IP_PROTO]
        if proto == P.PROTO_UDP or proto == P.PROTO_TCP:
            return self._inbound_ports(pkt, now, ihl, proto)
        if proto == P.PROTO_ICMP:
            return self._inbound_icmp(pkt, now, ihl)
        return Drop.UNSUPPORTED, None

    def _outbound_ports(
        self, pkt: bytearray | memoryview, now: int, ihl: int, proto: int
    ) -> tuple[int, Mapping | None]:
        total = len(pkt)
        l4 = ihl
        need = P.TCP_MIN_HLEN if proto == P.PROTO_TCP else P.UDP_HLEN
        if total < l4 + need:
            return Drop.TRUNCATED, None
        src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        sport, dport = P.get_2u16(pkt, l4)
        m = self._find_int(flow_key(proto, src, sport))
        flags = 0
        if proto == P.PROTO_TCP:
            flags = pkt[l4 + P.TCP_FLAGS]
            if m is None and not (flags & P.TCP_SYN and not flags & (P.TCP_RST | P.TCP_ACK_FLAG)):
                return Drop.NO_MAPPING, None  # RFC 5382: only a SYN opens a TCP mapping
        if m is None:
            if self._caller_ports:
                return NEEDS_MAPPING, None
            m = self._create(proto, src, sport, dst, dport, now)
            if type(m) is Drop:
                return m, None
        self._admit_remote(m, (dst << 16 | dport) & self._rmask)
        if proto == P.PROTO_TCP:
            if flags & P.TCP_ACK_FLAG:
                m.ack = P.get_u32(pkt, l4 + P.TCP_ACK)[0]
            self._track_tcp(m, flags, True, now, pkt, l4)
            if flags & P.TCP_SYN and self._mss:
                R.clamp_mss(pkt, l4, self._mss)
        ea, ep = m.ext_key >> 16 & 0xFFFFFFFF, m.ext_key & 0xFFFF
        R.rewrite_addr(pkt, P.IP_SRC, ea)
        R.rewrite_port(pkt, l4, proto, P.TCP_SPORT, src, ea, sport, ep)
        m.last_seen = now
        m.out += ONE_PACKET + total
        return 0, m

    def _inbound_ports(
        self, pkt: bytearray | memoryview, now: int, ihl: int, proto: int
    ) -> tuple[int, Mapping | None]:
        total = len(pkt)
        l4 = ihl
        need = P.TCP_MIN_HLEN if proto == P.PROTO_TCP else P.UDP_HLEN
        if total < l4 + need:
            return Drop.TRUNCATED, None
        src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        sport, dport = P.get_2u16(pkt, l4)
        m = self._find_ext(flow_key(proto, dst, dport))
        if m is None:
            return Drop.NO_MAPPING, None
        r = (src << 16 | sport) & self._rmask
        if not self._admits(m, r):
            syn = proto == P.PROTO_TCP and pkt[l4 + P.TCP_FLAGS] & (P.TCP_SYN | P.TCP_ACK_FLAG) == P.TCP_SYN
            if syn or not self._learn_restored_remote(m, r):
                return Drop.FILTERED, None
        if proto == P.PROTO_TCP:
            flags = pkt[l4 + P.TCP_FLAGS]
            self._track_tcp(m, flags, False, now, pkt, l4)
            if flags & P.TCP_SYN and self._mss:
                R.clamp_mss(pkt, l4, self._mss)
        ia, ip = m.key >> 16 & 0xFFFFFFFF, m.key & 0xFFFF
        R.rewrite_addr(pkt, P.IP_DST, ia)
        R.rewrite_port(pkt, l4, proto, P.TCP_DPORT, dst, ia, dport, ip)
        m.inb += ONE_PACKET + total
        return 0, m

    def _outbound_icmp(self, pkt: bytearray | memoryview, now: int, ihl: int) -> tuple[int, Mapping | None]:
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
        m = self._find_int(flow_key(P.PROTO_ICMP, src, ident))
        if m is None:
            if self._caller_ports:
                return NEEDS_MAPPING, None
            m = self._create(P.PROTO_ICMP, src, ident, dst, 0, now)
            if type(m) is Drop:
                return m, None
        self._admit_remote(m, (dst << 16) & self._rmask)
        ea, ep = m.ext_key >> 16 & 0xFFFFFFFF, m.ext_key & 0xFFFF
        R.rewrite_addr(pkt, P.IP_SRC, ea)
        R.rewrite_icmp_id(pkt, l4, ident, ep)
        m.last_seen = now
        m.out += ONE_PACKET + total
        return 0, m

    def _inbound_icmp(self, pkt: bytearray | memoryview, now: int, ihl: int) -> tuple[int, Mapping | None]:
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
        m = self._find_ext(flow_key(P.PROTO_ICMP, dst, ident))
        if m is None:
            return Drop.NO_MAPPING, None
        r = (src << 16) & self._rmask
        if not self._admits(m, r) and not self._learn_restored_remote(m, r):
            return Drop.FILTERED, None
        ia, ip = m.key >> 16 & 0xFFFFFFFF, m.key & 0xFFFF
        R.rewrite_addr(pkt, P.IP_DST, ia)
        R.rewrite_icmp_id(pkt, l4, ident, ip)
        m.inb += ONE_PACKET + total
        return 0, m

    def _icmp_error(self, pkt: bytearray | memoryview, l4: int, outbound: bool) -> int:
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
            m = self._find_int(flow_key(q_proto, q_dst, q_dport))
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
            m = self._find_ext(flow_key(q_proto, q_src, q_sport))
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
        R.rewrite_addr(pkt, outer_field, new_addr)
        # the quoted header: address and its header checksum, then port/identifier and the quoted L4 checksum
        old_q_csum = P.get_u16(pkt, q + P.IP_CSUM)[0]
        delta = P.addr_delta(old_addr, new_addr)
        P.put_u32(pkt, q + q_field, new_addr)
        P.put_u16(pkt, q + P.IP_CSUM, P.csum_adjust(old_q_csum, delta))
        if q_proto == P.PROTO_ICMP:
            R.rewrite_icmp_id(pkt, ql4, old_port, new_port, limit=total)
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

    def _first_fragment(
        self, pkt: bytearray | memoryview, m: Mapping, now: int, outbound: bool, peer: Mapping | None = None
    ) -> None:
        """Remember which mapping this datagram uses and release its early fragments, translated.

        Outbound datagrams leave with a new IP identification from their public address's counter.
        """
        table = self._frags_out if outbound else self._frags_in
        src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        ident = P.get_u16(pkt, P.IP_ID)[0]
        if outbound:  # the key as arriving fragments carry it: the first one was already rewritten
            src = m.key >> 16 & 0xFFFFFFFF
        else:
            dst = m.ext_key >> 16 & 0xFFFFFFFF
        if peer is not None:  # hairpinned: the destination was rewritten to the peer's client
            dst = peer.ext_key >> 16 & 0xFFFFFFFF
        new_id = -1
        if outbound:
            ea = m.ext_key >> 16 & 0xFFFFFFFF
            new_id = self._ip_ids.get(ea, 0)
            self._ip_ids[ea] = new_id + 1 & 0xFFFF
        dropped = table.dropped
        entry, released = table.resolve(
            datagram_key(src, dst, pkt[P.IP_PROTO], ident), m, now, pkt, peer, new_id
        )
        self.drops[Drop.FRAGMENT] += table.dropped - dropped  # a full table evicted its oldest datagram
        if entry is None:
            self.drops[Drop.FRAGMENT] += 1  # its source holds its share: the rest of it will not follow
        if outbound:
            R.rewrite_ip_id(pkt, new_id)
        for held in released:
            verdict = self._later_fragment(held, now, outbound)
            if verdict == FORWARD and outbound:
                self.released_outbound.append(held)
            elif verdict == FORWARD or verdict == HAIRPIN:
                self.released_inbound.append(held)

    def _later_fragment(self, pkt: bytearray | memoryview, now: int, outbound: bool) -> int:
        """A fragment without the L4 header: rewrite it like its first fragment, or hold it until that comes."""
        proto = pkt[P.IP_PROTO]
        if proto != P.PROTO_UDP and proto != P.PROTO_TCP and proto != P.PROTO_ICMP:
            return self._drop(Drop.UNSUPPORTED)
        src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
        if not outbound and dst not in self._ext_set:
            return self._drop(Drop.NO_MAPPING)  # no port to check, but the address must be ours
        key = datagram_key(src, dst, proto, P.get_u16(pkt, P.IP_ID)[0])
        table = self._frags_out if outbound else self._frags_in
        d = table.resolved(key)
        if d is None:
            dropped = table.dropped
            held = table.hold(key, pkt, now)
            # this fragment if refused, and any the table evicted or aged out to make room
            self.drops[Drop.FRAGMENT] += table.dropped - dropped
            if held:
                self.drops[Drop.HELD] += 1
                return Drop.HELD
            return Drop.FRAGMENT
        m = d.mapping
        if self.by_ext.get(m.ext_key) is not m:  # the mapping ended since the first fragment: its
            return self._drop(Drop.FRAGMENT)  # address may belong to someone else by now
        n = len(pkt)
        table.passed(key, pkt)  # forgets the datagram once all of it went through
        if not outbound:
            R.rewrite_addr(pkt, P.IP_DST, m.key >> 16 & 0xFFFFFFFF)
            R.decrement_ttl(pkt)
            m.inb += ONE_PACKET + n
            return FORWARD
        peer = d.peer
        if peer is not None and self.by_ext.get(peer.ext_key) is not peer:
            return self._drop(Drop.FRAGMENT)
        R.rewrite_addr(pkt, P.IP_SRC, m.ext_key >> 16 & 0xFFFFFFFF)
        R.rewrite_ip_id(pkt, d.new_id)
        R.decrement_ttl(pkt)
        m.out += ONE_PACKET + n
        if peer is None:
            return FORWARD
        R.rewrite_addr(pkt, P.IP_DST, peer.key >> 16 & 0xFFFFFFFF)
        peer.inb += ONE_PACKET + n
        return HAIRPIN

    # ------------------------------------------------------------------ state helpers

    def _admits(self, m: Mapping, r: int) -> bool:
        return r == m.remote or (m.remotes is not None and r in m.remotes)

    def _learn_restored_remote(self, m: Mapping, r: int) -> bool:
        """A mapping restored from a journal without destinations (``log_destination`` off) does not know
        whom its client talked to; the first remote that reaches it is taken as that one (counted in
        ``remotes_learned``), so a flow the remote drives, a download whose client only answers, goes on
        after a restart instead of waiting, filtered, for its client to speak. Only one is learned: the
        mapping then filters as before. A TCP SYN is never taken (the callers check): it opens a new
        connection, not one that was alive. Returns whether ``r`` was admitted."""
        if m.remote != NO_REMOTE:
            return False
        self._admit_remote(m, r)
        if m.remote != r:
            return False  # the client's remote budget was full
        self.remotes_learned += 1
        return True

    def _admit_remote(self, m: Mapping, r: int) -> None:
        """Remember a remote the client sent to, for filtering (bounded per mapping and per client)."""
        if r == m.remote or m.remotes is not None and r in m.remotes:
            return
        client = self.clients[m.key >> 16 & 0xFFFFFFFF]
        if client.remotes >= self._client_remotes:
            self.remotes_refused += 1
            return
        if m.remote == NO_REMOTE:
            m.remote = r
        elif m.remotes is None:
            m.remotes = {r}
        elif len(m.remotes) < MAX_REMOTES:
            m.remotes.add(r)
        else:
            self.remotes_refused += 1
            return
        client.remotes += 1

    def _track_tcp(
        self, m: Mapping, flags: int, outbound: bool, now: int, pkt: bytearray | memoryview, l4: int = 20
    ) -> None:
        """Move the mapping's TCP state; a change restarts its idle timer under the new state's timeout."""
        if flags & P.TCP_RST and not outbound and not self._rst_in_window(m, flags, pkt, l4):
            self.rsts_ignored += 1
            return
        if outbound and flags & _SYN_RST_ACK == P.TCP_SYN:
            _learn_syn(m, pkt, l4)
        elif not outbound and flags & _SYN_RST_ACK == _SYN_ACK and m.state == _SYN_OUT:
            seq, ack = _get_seq_ack(pkt, l4 + P.TCP_SEQ)
            if ack == m.ack:  # it answers our SYN: the client's receive window now starts after it
                m.ack = (seq + 1) & 0xFFFFFFFF
        old = m.state
        new = m.state = NEXT_STATE[old * SEG_KINDS + classify(flags, outbound)]
        if new != old:
            m.last_seen = now
            if old == TcpState.ESTABLISHED:
                self._schedule(m.key, now + self._timeout(m))  # the shorter timeout applies from now

    def _rst_in_window(self, m: Mapping, flags: int, pkt: bytearray | memoryview, l4: int) -> bool:
        """Whether an inbound RST may change state (RFC 5961 3.2, RFC 9293 3.10.7.3), as Linux conntrack."""
        if m.ack == NO_ACK:
            return False  # restored, or not yet seen: no window to check against
        seq, ack = _get_seq_ack(pkt, l4 + P.TCP_SEQ)
        if m.state == _SYN_OUT:  # answering our SYN: it must acknowledge it
            return bool(flags & P.TCP_ACK_FLAG) and ack == m.ack
        return (seq - m.ack) & 0xFFFFFFFF < m.max_window

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
        """Allocate an external endpoint, journal and apply ``MappingCreated``; a Drop reason when refused.

        This runs once per new flow, so the common case is written out: one random draw that finds a
        free port (``PortPool.pick`` is the whole rule, and what a miss falls back to), the event built
        positionally (MappingCreated's field order), and ``_insert`` with its port already held.
        """
        client = self.clients.get(src)
        if client is None:
            ext_addr = min(self.ext_addrs, key=self._ext_clients.__getitem__)
            low = sport < 1024 and proto != 1 and self._low_share > 0
        else:
            if client.count >= self._quota:
                self._quota_hit(client, proto, src, sport, now)
                return Drop.QUOTA
            ext_addr = client.ext_addr
            low = sport < 1024 and proto != 1 and client.low_ports < self._low_share
        ports = self.ports
        port = -1
        if not low:  # RFC 6056 algorithm 1: one uniform draw in port_range
            words = ports.words
            state = ports.state.get(proto << 32 | ext_addr)
            if words and state is not None:
                port = ports.lo + words.pop() % ports.span
                if state[port]:
                    port = -1
                else:
                    state[port] = HELD
                    ports.free[proto << 32 | ext_addr][1] -= 1
        if port < 0:
            port = ports.pick(proto, ext_addr, low)
            if port < 0 and low:  # the low range is full: into port_range like any other
                port = ports.pick(proto, ext_addr, False)
            if port < 0:
                ports.sweep(now, EXPIRE_BUDGET)  # rests that ended since the last expire()
                port = ports.pick(proto, ext_addr, False)
                if port < 0:
                    return Drop.PORTS_EXHAUSTED
        return self._created(proto, src, sport, ext_addr, port, dst, dport, now)

    def _created(
        self, proto: int, src: int, sport: int, ext_addr: int, port: int, dst: int, dport: int, now: int
    ) -> Mapping:
        """Journal and apply the ``MappingCreated`` of a port already held in the pool."""
        session, name = self.sessions.holder.get(src, _NO_SESSION)
        seq = self.next_seq
        at = now + self.wall_offset
        if self._log_dest:
            event = MappingCreated(seq, at, proto, src, sport, ext_addr, port, name, session, dst, dport)
        else:
            event = MappingCreated(seq, at, proto, src, sport, ext_addr, port, name, session)
        # _record(event), unrolled on the one path that runs per new flow: _insert is apply's step for
        # MappingCreated, so the table changes exactly as a replay of this event changes it
        m = self._insert(event, now, held=True)
        self.next_seq = seq + 1
        self.last_mapping_seq = seq
        self.events.append(event)
        if self._rmask:  # the first remote, for filtering (nothing to remember: endpoint-independent)
            if m.remote == NO_REMOTE:  # not journaled (no log_destination), so not counted by _insert
                self.clients[src].remotes += 1
            m.remote = (dst << 16 | dport) & self._rmask
        return m

    def _quota_hit(self, client: Client, proto: int, src: int, sport: int, now: int) -> None:
        if client.quota_flagged:
            return
        session, name = self.sessions.holder.get(src, _NO_SESSION)
        self._record(
            QuotaHit(
                seq=self.next_seq,
                at_ns=now + self.wall_offset,
                proto=proto,
                int_addr=src,
                int_port=sport,
                quota=self._quota,
                client=name,
                session=session,
            )
        )

    def create_mapping(
        self,
        proto: int,
        int_addr: int,
        int_port: int,
        ext_port: int,
        now: int,
        *,
        remote: tuple[int, int] = (0, 0),
    ) -> Mapping | int:
        """Make a mapping on an external port the caller chose (the kernel's, in socket mode).

        The public address is the client's paired one (the least loaded for a new client). Returns the
        mapping, or a ``Drop`` reason: QUOTA, or PORTS_EXHAUSTED when that port is held or resting here.
        An existing mapping for the internal endpoint is returned as it is.
        """
        m = self._find_int(flow_key(proto, int_addr, int_port))
        if m is not None:
            return m
        if self._pending is not None:
            return Drop.RESTORING
        client = self.clients.get(int_addr)
        if client is None:
            ext_addr = min(self.ext_addrs, key=self._ext_clients.__getitem__)
        elif client.count >= self._quota:
            self._quota_hit(client, proto, int_addr, int_port, now)
            return Drop.QUOTA
        else:
            ext_addr = client.ext_addr
        if not self.ports.hold(proto, ext_addr, ext_port):
            return Drop.PORTS_EXHAUSTED
        return self._created(proto, int_addr, int_port, ext_addr, ext_port, remote[0], remote[1], now)

    def paired_address(self, int_addr: int) -> int:
        """The public address a client's next mapping will use (socket mode binds its socket there)."""
        client = self.clients.get(int_addr)
        if client is not None:
            return client.ext_addr
        return min(self.ext_addrs, key=self._ext_clients.__getitem__)

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
                created = self._insert(event, event.at_ns - self.wall_offset)
            case MappingExpired():
                self._remove(
                    flow_key(event.proto, event.ext_addr, event.ext_port), event.at_ns - self.wall_offset
                )
            case QuotaHit():
                client = self.clients.get(event.int_addr)
                if client is not None:
                    client.quota_flagged = True
                if self._pending is not None:  # for the client as its pending rows load
                    self._pending.quota_flagged.add(event.int_addr)
            case SessionOpened():
                self.sessions.open(event)
            case SessionClosed():
                self.sessions.close(event)
        self.next_seq = event.seq + 1
        return created

    def _insert(self, ev: MappingCreated, at: int, held: bool = False) -> Mapping:
        """Apply a ``MappingCreated`` at monotonic time ``at``; ``held``: its port is already held in the pool."""
        proto = ev.proto
        key = proto << 48 | ev.int_addr << 16 | ev.int_port  # flow_key, inline: this runs per new flow
        ext_key = proto << 48 | ev.ext_addr << 16 | ev.ext_port
        if not held:
            old = self._find_int(key)
            if old is not None:  # not in a valid journal; keep the table consistent anyway
                self._remove(old.ext_key, at)
            old = self._find_ext(ext_key)
            if old is not None:
                self._remove(ext_key, at)
            self.ports.hold(proto, ev.ext_addr, ev.ext_port, force=True)
        if self._rmask == 0:
            remote = 0
        elif ev.remote_addr:
            remote = (ev.remote_addr << 16 | ev.remote_port) & self._rmask
        else:
            remote = NO_REMOTE
        if proto == 6:
            m = TcpMapping(key, ext_key, ev.session, remote, at, at, _SYN_OUT)
        else:
            m = Mapping(key, ext_key, ev.session, remote, at, at, _NONE)
        self.by_int[key] = m
        self.by_ext[ext_key] = m
        client = self.clients.get(ev.int_addr)
        if client is None:  # the client's first mapping pairs it with this public address (REQ-2)
            client = self.clients[ev.int_addr] = Client(ev.ext_addr)
            self._ext_clients[ev.ext_addr] = self._ext_clients.get(ev.ext_addr, 0) + 1
            if self._pending is not None:  # rows of it may be pending, and the snapshot flagged it
                client.quota_flagged = ev.int_addr in self._pending.quota_flagged
        client.count += 1
        client.mappings.append(m)
        if remote > 0:
            client.remotes += 1
        if ev.ext_port < 1024:
            client.low_ports += 1
        second = (at + self._first_timeout[proto]) // NS + 1  # _schedule, inline: once per new flow
        keys = self._wheel.get(second)
        if keys is None:
            self._wheel[second] = [key]
            heapq.heappush(self._wheel_due, second)
        else:
            keys.append(key)
        return m

    def _remove(self, ext_key: int, at: int) -> Mapping | None:
        if self._pending is not None:
            self._find_ext(ext_key)
        m = self.by_ext.pop(ext_key, None)
        if m is None:
            return None
        if self.by_int.get(m.key) is m:
            del self.by_int[m.key]
        for view in self._views:
            view.removed_after.add(m)
        int_addr = m.key >> 16 & 0xFFFFFFFF
        client = self.clients[int_addr]
        client.count -= 1
        client.quota_flagged = False
        if self._pending is not None:  # a client whose rows load later is not flagged either
            self._pending.quota_flagged.discard(int_addr)
        client.remotes -= m.remote_count()
        if ext_key & 0xFFFF < 1024:
            client.low_ports -= 1
        if client.count == 0:
            del self.clients[int_addr]
            self._ext_clients[client.ext_addr] -= 1
        else:
            client.compact(self.by_ext)
        self.ports.release(ext_key, rest_until(at, self.ports.reuse_ns))
        return m

    def _expire_mapping(self, m: Mapping, now: int, reason: str) -> None:
        self._record(
            MappingExpired(
                seq=self.next_seq,
                at_ns=now + self.wall_offset,
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

    def expire(self, now: int, budget: int = EXPIRE_BUDGET) -> bool:
        """End idle mappings, free rested ports, age fragments, within ``budget``; True if more is due now.

        Emits MappingExpired. The shell calls it again (next loop turn) while it returns True. While a lazy
        restore has rows pending, each call first loads ``RESTORE_SLICE`` of them (about 10 ms here).
        """
        pending = self._pending
        if pending is not None:
            self._restore_now = max(self._restore_now, now)
            self._load_range(pending.cursor, pending.cursor + RESTORE_SLICE, now)
        if now >= self._next_heartbeat and len(self):
            self._heartbeat(now)
        if self._views:
            self._views = [v for v in self._views if not v.done]
        due, wheel, by_int = self._wheel_due, self._wheel, self.by_int
        now_s = now // NS
        left = budget
        while due and due[0] <= now_s and left > 0:
            keys = wheel[due[0]]
            while keys and left > 0:
                key = keys.pop()
                left -= 1
                m = by_int.get(key)
                if m is None:
                    continue
                deadline = m.last_seen + self._timeout(m)
                if deadline <= now:
                    closed = m.key >> 48 == P.PROTO_TCP and m.state >= TcpState.TIME_WAIT
                    self._expire_mapping(m, now, "tcp_closed" if closed else "idle")
                else:
                    self._schedule(key, deadline)
            if not keys:
                del wheel[heapq.heappop(due)]
        left -= self.ports.sweep(now, left)
        for table in (self._frags_out, self._frags_in):
            before = len(table)
            self.drops[Drop.FRAGMENT] += table.expire(now, max(left, 0))
            left -= before - len(table)
        return left <= 0 or self._pending is not None

    def _heartbeat(self, now: int) -> None:
        """Journal that the gateway is running, every HEARTBEAT_INTERVAL_S while it holds mappings: after a
        crash, ``resume`` then counts the outage from at most that long before it, not from the last
        mapping change (a quiet journal would otherwise end flows that were busy until the crash)."""
        self._next_heartbeat = now + HEARTBEAT_NS
        self._record(Heartbeat(seq=self.next_seq, at_ns=now + self.wall_offset, mappings_count=len(self)))

    def resume(self, now: int, down_since: int) -> int:
        """After ``restore``: end every mapping that idled out while the gateway was down; returns how many.

        ``down_since`` is the wall-clock time (ns) of the last journaled event. What happened after it is
        unknown, so each mapping counts as seen then at the latest: a flow alive at the crash goes on with
        the same external port (its timer restarts from the crash, and a TCP connection the journal knew
        only by its SYN is picked up as established by the remote's next segment), while one idle past
        its timeout by ``now`` ends as ``MappingExpired(reason="stale_at_recovery")`` at ``now``. Its port
        then rests ``port_reuse_delay_s`` from the restart, not from the unknown moment of the crash: an
        audit of the outage window never finds two holders. The survivors' deadlines are spread over
        ``RESUME_SPREAD_NS`` so that they do not all come due in one second.

        Rows of a lazy restore still pending get the same treatment as they load (their stale ones are
        counted in ``stale_at_recovery`` then, not in what this returns).
        """
        down = down_since - self.wall_offset
        self._resumed = (now, down)
        self._restore_now = max(self._restore_now, now)
        stale = []
        self._wheel.clear()
        self._wheel_due.clear()
        for m in self.by_int.values():
            seen = max(m.last_seen, down)
            deadline = seen + self._timeout(m)
            if deadline <= now:
                stale.append(m)
            else:
                m.last_seen = seen
                self._schedule(m.key, deadline + m.key * 0x9E3779B1 % RESUME_SPREAD_NS)
        for m in stale:
            self._expire_mapping(m, now, "stale_at_recovery")
        self.stale_at_recovery += len(stale)
        return len(stale)

    def next_deadline(self) -> int | None:
        """When ``expire`` next has work (ns), for the shell's one timer; None when nothing is scheduled.

        0 (at once) while a lazy restore has rows pending: ``expire`` loads them."""
        if self._pending is not None:
            return 0
        deadlines = [
            self._frags_out.next_deadline(),
            self._frags_in.next_deadline(),
            self.ports.next_rest_end(),
        ]
        if self.by_ext:
            deadlines.append(self._next_heartbeat)
        if self._wheel_due:
            deadlines.append(self._wheel_due[0] * NS)
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
                at_ns=now + self.wall_offset,
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
        address that no open session owns ends with reason "session_closed". Costs that client's mappings
        (``Client.mappings``), not the table.
        """
        opened = self.sessions.opened.get(session)
        if opened is None:
            return
        if self._pending is not None:  # the session's pending mappings end too
            self._restore_now = max(self._restore_now, now)
            self._whole()
        addr = opened.vpn_addr
        holder = self.sessions.holder.get(addr)
        client = self.clients.get(addr)
        if client is not None and (holder is None or holder[0] == session or holder[1] != opened.client):
            open_sessions = self.sessions.opened
            ending = [
                m for m in client.live(self.by_ext) if m.session == session or m.session not in open_sessions
            ]
            for m in ending:
                self._expire_mapping(m, now, "session_closed")
        self._record(
            SessionClosed(
                seq=self.next_seq,
                at_ns=now + self.wall_offset,
                session=session,
                client=opened.client,
                reason=reason,
                **counters,
            )
        )

    def record_event(self, event_type: type, now: int, **fields: Any) -> JournalEvent:
        """Journal a fact that changes no NAT state (gateway started, session refused...) in the one sequence."""
        event = event_type(seq=self.next_seq, at_ns=now + self.wall_offset, **fields)
        self._record(event)
        return event

    def snapshot_view(self, now: int) -> TableView:
        """The table now, in O(clients); call ``.build()`` on it off the packet path (the journal writer does)."""
        self._restore_now = max(self._restore_now, now)
        self._whole()  # a snapshot of a table still loading would miss its pending rows
        view = TableView(self, now)
        self._views = [*(v for v in self._views if not v.done), view]
        return view

    # ------------------------------------------------------------------ recovery

    @classmethod
    def restore(
        cls,
        config: NatConfig,
        snapshot: Snapshot | None,
        events: Iterable[JournalEvent],
        rng: random.Random | None = None,
        *,
        vpn: VpnConfig | None = None,
        wall_offset: int = 0,
        compiled: bool = True,
        lazy: bool = False,
        caller_ports: bool = False,
    ) -> Nat:
        """The table as the journal left it: a snapshot, then every later event through ``apply``.

        ``wall_offset`` is the restoring process's (wall clock minus its monotonic clock): journal times
        are turned into its monotonic time. Call ``resume(now, down_since)`` next. ``lazy``: the
        snapshot's rows stay pending (``gw.pending``) and load as packets, events and ``expire`` calls
        reach them, so the first packet is forwarded in milliseconds; new flows are refused
        (``Drop.RESTORING``) until ``restoring`` is False. The caller may pause the cyclic garbage
        collector around this (a million new objects); the core leaves it alone.
        Raises: ValueError for a snapshot gw did not write (columns of unequal length or width, times out
        of range).
        """
        nat = cls(config, rng, compiled, vpn=vpn, wall_offset=wall_offset, caller_ports=caller_ports)
        if snapshot is not None:
            nat._load_snapshot(snapshot, compiled)
        for event in events:
            nat.apply(event)
        if not lazy:
            nat.finish_restore(0)
        return nat

    @property
    def restoring(self) -> bool:
        """True while snapshot rows are still pending (new flows are refused until then)."""
        return self._pending is not None

    def finish_restore(self, now: int) -> None:
        """Load every pending row now (``expire`` does it in slices); ``now`` times any stale expiries."""
        pending = self._pending
        if pending is not None:
            self._load_range(0, pending.n, now)

    def _load_snapshot(self, s: Snapshot, compiled: bool) -> None:
        """Everything but the rows: rests, sessions, the sequence; the rows go pending (``gw.pending``)."""
        off = self.wall_offset
        pending = self._pending = PendingRows(s, off, compiled)
        if compiled and _fastpath is not None and not self.by_int:
            self.by_int, self.by_ext = _fastpath.new_table(pending.n), _fastpath.new_table(pending.n)
        resting = zip(*(pending.rests[name] for name in REST_COLUMNS), strict=True)
        for proto, addr, port, until in sorted(resting, key=lambda r: r[3]):
            self.ports.rest(flow_key(proto, addr, port), until - off)
        for opened in s.sessions:
            self.sessions.open(opened)
        self.next_seq = s.upto_seq + 1
        protos = pending.columns["proto"].tobytes()  # one byte per row: counted at C speed
        self.pending_by_proto = {p: protos.count(p) for p in (P.PROTO_UDP, P.PROTO_TCP, P.PROTO_ICMP)}
        if pending.n:  # serve the pending rows' packets; refuse new flows until every row is in
            restoring = (
                self._translate_outbound_restoring, self._translate_inbound_restoring,
                self._translate_outbound_batch_restoring, self._translate_inbound_batch_restoring,
                self._create_restoring,
            )  # fmt: skip
            for name, method in zip(_RESTORING_METHODS, restoring, strict=True):
                setattr(self, name, method)
        else:
            self._pending = None

    # while rows are pending: the packet's own row is loaded first, then the usual path runs

    def _translate_outbound_restoring(self, pkt: bytearray | memoryview, now: int) -> int:
        self._restore_now = now
        key = _packet_key(pkt, P.IP_SRC, 0)
        if key >= 0 and key not in self.by_int:
            self._load_pending(self._pending.find_int(key))
        return self._fast["translate_outbound"](pkt, now)

    def _translate_inbound_restoring(self, pkt: bytearray | memoryview, now: int) -> int:
        self._restore_now = now
        key = _packet_key(pkt, P.IP_DST, 2)
        if key >= 0 and key not in self.by_ext:
            self._load_pending(self._pending.find_ext(key))
        return self._fast["translate_inbound"](pkt, now)

    def _translate_outbound_batch_restoring(
        self, pkts: Iterable[bytearray | memoryview], now: int
    ) -> list[int]:
        return [self.translate_outbound(pkt, now) for pkt in pkts]

    def _translate_inbound_batch_restoring(
        self, pkts: Iterable[bytearray | memoryview], now: int
    ) -> list[int]:
        return [self.translate_inbound(pkt, now) for pkt in pkts]

    def _create_restoring(self, proto: int, src: int, sport: int, dst: int, dport: int, now: int) -> int:
        """A new flow while rows are pending: its port and its client's quota must see every row first."""
        return Drop.RESTORING

    def _load_pending(self, row: int) -> None:
        if row >= 0:
            self._load_range(row, row + 1, self._restore_now)

    def _find_int(self, key: int) -> Mapping | None:
        """``by_int.get(key)``, loading a pending row first: every lookup off the fast paths uses it."""
        m = self.by_int.get(key)
        if m is None and self._pending is not None:
            self._load_pending(self._pending.find_int(key))
            m = self.by_int.get(key)
        return m

    def _find_ext(self, key: int) -> Mapping | None:
        """``by_ext.get(key)``, loading a pending row first."""
        m = self.by_ext.get(key)
        if m is None and self._pending is not None:
            self._load_pending(self._pending.find_ext(key))
            m = self.by_ext.get(key)
        return m

    def _whole(self) -> None:
        """Load every pending row: for the readers and commands that need the whole table."""
        if self._pending is not None:
            self.finish_restore(self._restore_now)

    def _load_range(self, start: int, stop: int, now: int) -> None:
        """Load the pending rows in [start, stop) that are not loaded yet; end those stale since resume."""
        pending = self._pending
        self._unpend(pending, max(start, pending.cursor), min(stop, pending.n))
        stale = self._load_rows(pending, start, min(stop, pending.n), self._resumed)
        while pending.cursor < pending.n and pending.loaded[pending.cursor]:
            pending.cursor += 1
        if not pending.left:
            self._pending = None
            for name, method in self._fast.items():
                setattr(self, name, method)
        for m in stale:
            self._expire_mapping(m, now, "stale_at_recovery")
        self.stale_at_recovery += len(stale)

    def _unpend(self, pending: PendingRows, start: int, stop: int) -> None:
        """Take the rows in [start, stop) that are about to load off ``pending_by_proto``.

        The loaders (Python and compiled) do not report what they loaded, so the count is taken here. A
        slice is counted at C speed, then the rows in it that were already loaded (by a packet or an
        event) are added back one by one; there are at most as many of those as such loads happened.
        """
        protos, loaded, left = pending.columns["proto"], pending.loaded, self.pending_by_proto
        if stop - start == 1:  # one row, for a packet or an event
            p = protos[start]
            if not loaded[start] and p in left:
                left[p] -= 1
            return
        if start >= stop:
            return
        raw = protos[start:stop].tobytes()
        for p in left:
            left[p] -= raw.count(p)
        i = loaded.find(1, start, stop)
        while i >= 0:
            p = protos[i]
            if p in left:
                left[p] += 1
            i = loaded.find(1, i + 1, stop)

    def _load_rows(
        self, pending: PendingRows, start: int, stop: int, resumed: tuple[int, int] | None
    ) -> list[Mapping]:
        """The per-row part of a restore: rows [start, stop) not loaded yet into both tables, their
        clients, the port pool and the wheel. Returns the loaded mappings that idled out before
        ``resumed`` = (resume's now, the crash in monotonic ns), which the caller ends.

        ``gw._fastpath.load_rows`` is its compiled twin (one C loop), used when built. After ``resume``
        a row gets resume's treatment as it loads: seen at the crash at the latest, its deadline spread.
        """
        c = pending.columns
        proto, int_addr, int_port, ext_addr, ext_port = (c[k] for k in PENDING_KEY_COLUMNS)
        loaded, flagged, off, rmask = pending.loaded, pending.quota_flagged, pending.offset, self._rmask
        by_int, by_ext, clients, ext_clients = self.by_int, self.by_ext, self.clients, self._ext_clients
        state_of, resting, touched = self.ports.state, self.ports.resting, set()
        udp, icmp, established, transitory = self._udp_ns, self._icmp_ns, self._tcp_est_ns, self._tcp_trans_ns
        stale = []
        for i in range(start, stop):
            if loaded[i]:
                continue
            loaded[i] = 1
            pending.left -= 1
            p, a, ea, q = proto[i], int_addr[i], ext_addr[i], ext_port[i]
            key = p << 48 | a << 16 | int_port[i]
            ext_key = p << 48 | ea << 16 | q
            ra = c["remote_addr"][i]
            remote = (ra << 16 | c["remote_port"][i]) & rmask if ra or not rmask else NO_REMOTE
            seen, state = c["last_seen_ns"][i] - off, c["tcp_state"][i]
            row = (
                key, ext_key, c["session"][i], remote, c["created_ns"][i] - off, seen, state,
                c["packets_out"][i] << COUNT_SHIFT | c["bytes_out"][i],
                c["packets_in"][i] << COUNT_SHIFT | c["bytes_in"][i],
            )  # fmt: skip
            if p == 6:
                m = TcpMapping(*row)
                timeout = established if state == TcpState.ESTABLISHED else transitory
            else:
                m = Mapping(*row)
                timeout = udp if p == 17 else icmp
            by_int[key] = m
            by_ext[ext_key] = m
            client = clients.get(a)
            if client is None:  # the client's first row pairs it with this public address (REQ-2)
                client = clients[a] = Client(ea)
                ext_clients[ea] = ext_clients.get(ea, 0) + 1
                client.quota_flagged = a in flagged
            client.count += 1
            client.mappings.append(m)
            if remote > 0:
                client.remotes += 1
            if q < 1024:
                client.low_ports += 1
            k = p << 32 | ea
            ports = state_of.get(k)
            if ports is None:  # an address not in the pool (a journal written under another config)
                ports = self.ports.state_array(p, ea)
            if ports[q] == RESTING:
                del resting[ext_key]
            ports[q] = HELD
            touched.add(k)
            if resumed is None:
                self._schedule(key, seen + timeout)
            else:  # resume's rule (see ``resume``), row by row
                seen = max(seen, resumed[1])
                if seen + timeout <= resumed[0]:
                    stale.append(m)
                else:
                    m.last_seen = seen
                    self._schedule(key, seen + timeout + key * 0x9E3779B1 % RESUME_SPREAD_NS)
        self.ports.recount(touched)
        return stale

    # ------------------------------------------------------------------ reading the table

    def __len__(self) -> int:
        """Live mappings, pending rows of a lazy restore included."""
        return len(self.by_ext) + (self._pending.left if self._pending is not None else 0)

    def mappings(self) -> Iterable[Mapping]:
        """Live mappings (a view: don't change the table while iterating). Loads any pending rows."""
        self._whole()
        return self.by_ext.values()

    def lookup_internal(self, proto: int, int_addr: int, int_port: int) -> Mapping | None:
        return self._find_int(flow_key(proto, int_addr, int_port))

    def lookup_external(self, proto: int, ext_addr: int, ext_port: int) -> Mapping | None:
        return self._find_ext(flow_key(proto, ext_addr, ext_port))

    def client_mapping_count(self, int_addr: int) -> int:
        self._whole()
        client = self.clients.get(int_addr)
        return 0 if client is None else client.count

    def is_resting(self, proto: int, ext_addr: int, ext_port: int, now: int) -> bool:
        return self.ports.is_resting(flow_key(proto, ext_addr, ext_port), now)

    def table_state(self, now: int | None = None) -> tuple:
        """What the journal determines: mappings (identity, owner, birth), resting ports, sessions, sequence.

        Two tables with equal ``table_state`` are the same table; the fold property compares this. With
        ``now``, ports whose rest is over by then are left out: they are free whether or not ``expire``
        has swept them yet, and a fold never runs ``expire``, so only this form compares a live table
        with its fold after a rest lapsed.
        """
        self._whole()
        return (
            sorted((m.key, m.ext_key, m.session, m.created) for m in self.by_ext.values()),
            sorted((k, u) for k, u in self.ports.resting.items() if now is None or u > now),
            sorted(self.sessions.holder.items()),
            sorted((a, (c.ext_addr, c.count, c.quota_flagged)) for a, c in self.clients.items()),
            self.next_seq,
        )


_NO_SESSION = (0, "")


def _packet_key(pkt: bytearray | memoryview, addr_at: int, port_at: int) -> int:
    """The flow key a UDP or TCP packet looks up on the fast path (address and port at the given
    offsets), or -1 for anything else: those take the slow path, whose lookups load pending rows."""
    if len(pkt) < 24 or pkt[P.IP_PROTO] not in (P.PROTO_UDP, P.PROTO_TCP):
        return -1
    l4 = (pkt[0] & 15) * 4
    if len(pkt) < l4 + 4:
        return -1
    addr, port = P.get_u32(pkt, addr_at)[0], P.get_u16(pkt, l4 + port_at)[0]
    return pkt[P.IP_PROTO] << 48 | addr << 16 | port


_MARTIAN_FIRST_OCTETS = frozenset({0, 127})  # "this network" and loopback (RFC 1122 3.2.1.3, RFC 1812 5.3.7)

# what a lazy restore replaces while rows are pending (``Nat._load_snapshot``), and puts back after
_RESTORING_METHODS = (
    "translate_outbound", "translate_inbound", "translate_outbound_batch", "translate_inbound_batch", "_create",
)  # fmt: skip
PENDING_KEY_COLUMNS = ("proto", "int_addr", "int_port", "ext_addr", "ext_port")

# Fast-path reads and writes, bound at module level (one global lookup each).
# IHL=5 + UDP: the header as five 32-bit words (ver/ihl/tos/total, id/frag, ttl/proto/checksum, src, dst),
# then sport, dport, UDP length, UDP checksum
_read_udp = struct.Struct("!5I HHHH").unpack_from
# IHL=5 + TCP: the five header words, sport, dport, acknowledgement number, TCP flags, TCP checksum
_read_tcp = struct.Struct("!5I HH 4x I x B 2x H").unpack_from
# from the TTL/protocol word (offset 8) to the UDP checksum: the UDP fast paths' single write
_put_v4_udp = struct.Struct("!HH II HHHH").pack_into
# TTL/protocol, IP checksum, src, dst, sport, dport (offsets 8-23): the TCP write before the TCP checksum
_put_v4_ports = struct.Struct("!HH II HH").pack_into
_put_u16 = P.put_u16
_get_seq_ack = struct.Struct("!II").unpack_from


def _learn_syn(m: Mapping, pkt: bytearray | memoryview, l4: int) -> None:
    """From a client's SYN: the acknowledgement a RST must carry, and the largest window it can advertise."""
    m.ack = (P.get_u32(pkt, l4 + P.TCP_SEQ)[0] + 1) & 0xFFFFFFFF
    shift = 0
    for kind, at, length in P.tcp_options(pkt, l4):
        if kind == TCP_OPT_WSCALE and length == 3:
            shift = min(pkt[at + 2], TCP_MAX_WSCALE)
    m.max_window = 0xFFFF << shift


# The readable fast paths stay reachable under these names when an instance uses the compiled ones.
Nat.translate_outbound_py = Nat.translate_outbound
Nat.translate_inbound_py = Nat.translate_inbound

# Optional compiled fast paths (STYLE section 3): same semantics, property-tested against the methods above.
try:
    from gw import _fastpath
except ImportError:  # not built (no compiler at install time): the pure-Python fast paths serve
    _fastpath = None
COMPILED = _fastpath is not None


def fast_path() -> str:
    """Which NAT fast path this install runs, for the start of every command that moves packets."""
    if COMPILED:
        return "compiled (gw._fastpath)"
    return "pure Python, 4-5x slower: gw._fastpath was not built (install gcc and Cython, then reinstall gw)"
