"""The ``socket`` external gateway: one kernel socket per mapping, on a public address the kernel owns.

Theory of operation
-------------------
For a host with one public address that its kernel owns (a typical VPS), gw cannot put its own
packets on the wire with that address: the kernel would answer them (RSTs, port unreachables). So each
mapping gets a kernel socket bound to the public address, and the port the kernel picks becomes the
mapping's external port: the NAT runs with ``caller_ports`` and answers ``NEEDS_MAPPING`` for a new
flow, ``new_mapping`` binds the socket and creates the mapping (journaled like any other), and the NAT
translates the packet as usual. ``send_outbound`` then sends the translated packet's payload from its
mapping's socket to the remote endpoint; what a socket receives is rebuilt into the IPv4 packet the
remote sent (remote -> public endpoint) and handed to ``on_packet``, so inbound goes through
``Nat.translate_inbound`` like every other packet: filtering, timeouts and counters are the NAT's.

- UDP: ``SOCK_DGRAM`` sockets. A client's UDP super-packet (its TUN's USO) leaves in one ``sendmsg``
  with ``UDP_SEGMENT``, cut by the kernel into the datagrams it was made of. The client's TTL is kept
  (``IP_TTL``) so traceroute works. A datagram sent without DF goes with ``IP_PMTUDISC_DONT``, so the
  path may fragment it; one sent with DF goes with the default ``IP_PMTUDISC_WANT``: DF while it fits
  the path MTU the kernel knows, fragmented by the kernel once it learned a smaller one (the client
  got that path's fragmentation needed, rebuilt from ``IP_RECVERR``, and adapts).
- ICMP echo: ICMP datagram sockets (``SOCK_DGRAM``/``IPPROTO_ICMP``): the kernel picks the echo
  identifier as it picks a port, and hands back the replies to it. They need the daemon's group in
  ``net.ipv4.ping_group_range``; without it, ping is refused (counted, logged once with the fix).
- After a restart the restored mappings have no sockets: the first packet of such a flow binds its
  mapping's port again (it is free: the old process is gone), so the flow goes on with the same
  external port.
- File descriptors are bounded: the soft limit is raised to the hard one at start, and past
  ``max_sockets`` a new flow is refused and counted (``sockets_full``).
- ICMP errors about a mapping's datagrams (port or host unreachable, fragmentation needed, time
  exceeded...) reach the client: with ``IP_RECVERR`` the kernel queues each on the socket's error queue,
  and ``gw.external.icmp_errors`` rebuilds the error the offender sent (offender -> public endpoint,
  quoting the datagram) for ``on_packet``, so the NAT translates it like any ICMP error from the
  internet (counted: ``icmp_errors``). So a client's connected UDP socket is refused, its path MTU
  discovery and traceroute work. The kernel's own errors (EMSGSIZE...) are only counted
  (``local_errors``), as is an entry that is no IPv4 ICMP error (``other_errors``). One side effect of
  ``IP_RECVERR`` (udp(7)): the send after an ICMP error fails with that error and sends nothing, so a
  failed send is tried once more.
- Fragments cannot be sent through a socket one by one; a fragmented datagram is dropped and counted
  (``fragments``).
- TCP: each client connection is ended here and carried on through a kernel TCP socket bound to the
  mapping's port (``gw.external.tcp_relay``). Such a connection cannot outlive the process that holds
  its socket: after a restart its segments get a RST, and the client connects again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import struct
import time

from gw import inet
from gw import packet as P
from gw import vnet as V
from gw.external import icmp_errors as E
from gw.external.base import OnPacket
from gw.external.tcp_relay import TcpRelay
from gw.nat import Nat
from gw.rearm import rearm
from gw.verdict import Drop

log = logging.getLogger("gw.external")
RECV_BATCH = 64  # datagrams (and error-queue entries) read per readiness callback of one socket
ERRQUEUE_BYTES = 2048  # of an error-queue entry's quote: offenders quote 576 bytes (RFC 1812), or a few more
ERRQUEUE_ANC_BYTES = socket.CMSG_SPACE(E.EXTENDED_ERR_LEN)  # the one IP_RECVERR control message
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)  # linux/in.h (the socket module has it from Python 3.12)
FD_RESERVE = 256  # descriptors kept for everything else: tunnels, journal, listeners
DEFAULT_TTL = 64
IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_WANT = 10, 0, 1  # linux/in.h
SOL_UDP, UDP_SEGMENT = 17, 103  # linux/udp.h: send one buffer as datagrams of this size (GSO)
_U16 = struct.Struct("=H")
_UDP_HEAD = struct.Struct("!HH")  # sport, dport at the L4 offset


class SocketGateway:
    """Kernel sockets per mapping (see the module docstring)."""

    name = "socket"
    carries_tcp = True
    vnet = False  # what it hands to on_packet is plain IPv4

    def __init__(self, nat: Nat, max_sockets: int = 0, tunnel_mtu: int = 1420) -> None:
        self.nat = nat
        self.mss_limit = tunnel_mtu - P.IP_MIN_HLEN - P.TCP_MIN_HLEN
        self.relay: TcpRelay | None = None
        self._fresh_tcp: dict[int, socket.socket] = {}  # ext port -> a bound TCP socket its SYN will connect
        self.counts = {"sockets": 0, "sockets_full": 0, "bind_failed": 0, "send_failed": 0, "fragments": 0,
                       "no_socket": 0, "received": 0, "ping_refused": 0, "icmp_errors": 0, "local_errors": 0,
                       "other_errors": 0, "udp_segmented": 0, "segmented_by_hand": 0}  # fmt: skip
        self.max_sockets = max_sockets or _raise_fd_limit() - FD_RESERVE
        self._socks: dict[tuple[int, int], socket.socket] = {}  # (proto, ext port) -> socket
        self._ttl: dict[tuple[int, int], int] = {}
        self._df: dict[tuple[int, int], bool] = {}  # whether the client's last datagram had DF
        self._on_packet: OnPacket | None = None
        self._ping_warned = False

    def start(self, on_packet: OnPacket) -> None:
        self._on_packet = on_packet
        self.relay = TcpRelay(on_packet, self.mss_limit, time.monotonic_ns, self.counts)

    def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.relay is not None:
            self.relay.stop()
        for s in self._fresh_tcp.values():
            s.close()
        self._fresh_tcp.clear()
        for s in self._socks.values():
            loop.remove_reader(s.fileno())
            s.close()
        self._socks.clear()

    # ------------------------------------------------------------------ outbound
    def new_mapping(self, pkt: bytearray | memoryview, now: int) -> int:
        """A new flow (the NAT said NEEDS_MAPPING): bind a socket, create the mapping on its port, and
        translate ``pkt``. Returns the NAT's verdict, or a Drop when no socket could be had."""
        if P.get_u16(pkt, P.IP_FRAG)[0] & P.IP_FRAG_MASK:
            self.counts["fragments"] += 1
            return Drop.FRAGMENT
        proto, src = pkt[P.IP_PROTO], P.get_u32(pkt, P.IP_SRC)[0]
        l4 = (pkt[0] & 15) * 4
        port = P.get_u16(pkt, l4 + 4)[0] if proto == P.PROTO_ICMP else P.get_u16(pkt, l4)[0]
        if self._sockets_in_use() >= self.max_sockets:
            self.counts["sockets_full"] += 1
            return Drop.PORTS_EXHAUSTED
        ext_addr = self.nat.paired_address(src)
        sock = self._bind(proto, ext_addr, 0)
        if sock is None:
            return Drop.PORTS_EXHAUSTED
        ext_port = sock.getsockname()[1]
        made = self.nat.create_mapping(proto, src, port, ext_port, now)
        if isinstance(made, int):
            sock.close()
            return made
        if proto == P.PROTO_TCP:
            self._fresh_tcp[ext_port] = sock  # connected by the relay when the SYN comes through
        else:
            self._register(proto, ext_addr, ext_port, sock)
        return self.nat.translate_outbound(pkt, now)

    def _sockets_in_use(self) -> int:
        relay = len(self.relay.table.conns) if self.relay is not None else 0
        return len(self._socks) + len(self._fresh_tcp) + relay

    def send_outbound(self, pkt: bytearray | memoryview, now: int, vnet: bool = False) -> None:
        """Send a translated UDP datagram or ICMP echo (after its virtio-net header when ``vnet``) from its
        mapping's socket."""
        segment = 0
        if vnet:
            gso_type, gso_size = pkt[1] & ~V.VNET_GSO_ECN, V.read_header(pkt)[3]
            segment = gso_size if gso_type == V.VNET_GSO_UDP_L4 else 0  # a UDP super-packet: sent as one
            pkt = memoryview(pkt)[V.VNET_HDR_LEN :]
        if P.get_u16(pkt, P.IP_FRAG)[0] & P.IP_FRAG_MASK:
            self.counts["fragments"] += 1
            return
        proto, l4 = pkt[P.IP_PROTO], (pkt[0] & 15) * 4
        total = P.get_u16(pkt, P.IP_TOTAL_LEN)[0]
        if proto == P.PROTO_TCP and self.relay is not None:
            fresh = self._fresh_tcp.pop(P.get_u16(pkt, l4)[0], None) if len(pkt) > l4 + 1 else None
            self.relay.segment(memoryview(pkt)[:total], fresh, now)
            return
        dst = inet.ntoa(P.get_u32(pkt, P.IP_DST)[0])
        if proto == P.PROTO_UDP:
            sport, dport = _UDP_HEAD.unpack_from(pkt, l4)
            key, payload, where = (proto, sport), pkt[l4 + 8 : total], (dst, dport)
        elif proto == P.PROTO_ICMP:
            key, payload, where = (proto, P.get_u16(pkt, l4 + 4)[0]), pkt[l4:total], (dst, 0)
        else:
            return
        sock = self._socks.get(key) or self._rebind(*key, P.get_u32(pkt, P.IP_SRC)[0])
        if sock is None:
            self.counts["no_socket"] += 1
            return
        ttl = pkt[P.IP_TTL]
        if self._ttl.get(key, DEFAULT_TTL) != ttl:  # traceroute: the client's TTL goes out as it is
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            self._ttl[key] = ttl
        df = bool(P.get_u16(pkt, P.IP_FRAG)[0] & P.IP_DF)
        if self._df.get(key, True) != df:  # a datagram the client let be fragmented may be fragmented
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_WANT if df else IP_PMTUDISC_DONT)
            self._df[key] = df
        gso = [(SOL_UDP, UDP_SEGMENT, _U16.pack(segment))] if segment and proto == P.PROTO_UDP else []
        try:
            sock.sendmsg([payload], gso, 0, where)
        except BlockingIOError:
            self.counts["send_failed"] += 1
            return
        except OSError as e:  # maybe an earlier datagram's ICMP error (IP_RECVERR), reported once and cleared
            try:
                sock.sendmsg([payload], gso, 0, where)
            except OSError:
                if gso and e.errno in (errno.EINVAL, errno.EMSGSIZE):
                    self._send_segments(sock, payload, segment, where)  # the path or the kernel refused GSO
                else:
                    self.counts["send_failed"] += 1
                return
        if gso:
            self.counts["udp_segmented"] += 1

    def _send_segments(self, sock: socket.socket, payload, segment: int, where: tuple[str, int]) -> None:
        """A UDP super-packet the kernel would not segment (a segment over the path MTU, too many of
        them): its datagrams one by one, so the flow goes on (and learns the path MTU the usual way)."""
        self.counts["segmented_by_hand"] += 1
        for start in range(0, len(payload), segment):
            try:
                sock.sendto(payload[start : start + segment], where)
            except OSError:
                self.counts["send_failed"] += 1

    def tick(self, now: int) -> None:
        """The relay's TCP timers (each socket is read when it is readable)."""
        if self.relay is not None:
            self.relay.tick(now)
            self.counts["tcp_connections"] = len(self.relay.table.conns)

    def describe(self) -> dict:
        return {"max_sockets": self.max_sockets}

    def mapping_ended(self, proto: int, ext_addr: int, ext_port: int) -> None:
        if proto == P.PROTO_TCP:
            fresh = self._fresh_tcp.pop(ext_port, None)
            if fresh is not None:
                fresh.close()
            if self.relay is not None:
                self.relay.mapping_ended(ext_port)
            return
        sock = self._socks.pop((proto, ext_port), None)
        self._ttl.pop((proto, ext_port), None)
        self._df.pop((proto, ext_port), None)
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            self.counts["sockets"] = len(self._socks)

    # ------------------------------------------------------------------ sockets
    def _bind(self, proto: int, ext_addr: int, port: int) -> socket.socket | None:
        kind = socket.IPPROTO_ICMP if proto == P.PROTO_ICMP else 0
        stream = proto == P.PROTO_TCP
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM, kind)
        except PermissionError:
            self.counts["ping_refused"] += 1
            if not self._ping_warned:
                self._ping_warned = True
                log.error("ping through the socket gateway needs ICMP sockets: sysctl -w "
                          "net.ipv4.ping_group_range='0 2147483647' (or the daemon's group)")  # fmt: skip
            return None
        except OSError:
            self.counts["sockets_full"] += 1
            return None
        try:
            sock.setblocking(False)
            if not stream:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)  # ICMP errors queued, for the client
            sock.bind((inet.ntoa(ext_addr), port))
        except OSError as e:
            sock.close()
            self.counts["bind_failed"] += 1
            if e.errno == errno.EADDRNOTAVAIL:
                log.error("socket gateway: %s is not an address of this host ([nat] external_addresses)",
                          inet.ntoa(ext_addr))  # fmt: skip
            return None
        return sock

    def _rebind(self, proto: int, ext_port: int, ext_addr: int) -> socket.socket | None:
        """A mapping restored after a restart: its port again (free: the old process is gone). Only while
        the NAT holds the mapping: a packet that outlived its mapping must not bind a port nobody ends."""
        if self.nat.lookup_external(proto, ext_addr, ext_port) is None:
            return None
        sock = self._bind(proto, ext_addr, ext_port)
        if sock is not None:
            self._register(proto, ext_addr, ext_port, sock)
        return sock

    def _register(self, proto: int, ext_addr: int, ext_port: int, sock: socket.socket) -> None:
        self._socks[(proto, ext_port)] = sock
        self.counts["sockets"] = len(self._socks)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, proto, ext_addr, ext_port, sock)

    def _readable(self, proto: int, ext: int, ext_port: int, sock: socket.socket) -> None:
        """Datagrams for one mapping, and ICMP errors about its own: rebuilt as the packets the remote (or
        the offender) sent, for the NAT (one batch)."""
        batch = []
        failed = False
        for _ in range(RECV_BATCH):
            try:
                data, (raddr, rport) = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError:  # an ICMP error's errno, reported once; the error waits on the error queue
                failed = True
                continue
            remote = inet.aton(raddr)
            if proto == P.PROTO_UDP:
                batch.append(P.build_udp(remote, ext, rport, ext_port, data))
            else:  # the kernel hands over the ICMP message; its identifier is already the socket's
                batch.append(P.build_ipv4(remote, ext, P.PROTO_ICMP, data))
        if batch:
            self.counts["received"] += len(batch)
        # The error queue: after recvfrom reported an error, or when a wakeup had nothing to read. That is
        # EPOLLERR, level-triggered while the queue holds an entry whose errno a send took or that set none
        # (the kernel's own errors): left there, it would wake the loop again and again.
        if failed or not batch:
            self._read_errors(proto, ext, ext_port, sock, batch)
            rearm(sock.fileno(), self._readable, proto, ext, ext_port, sock)  # after an error (gw.rearm)
        if batch:
            self._on_packet(batch)

    def _read_errors(self, proto: int, ext: int, ext_port: int, sock: socket.socket, batch: list) -> None:
        """Empty the socket's error queue (a bounded batch): each ICMP error, as its offender sent it."""
        counts, recvmsg = self.counts, sock.recvmsg
        for _ in range(RECV_BATCH):
            try:
                quoted, anc, _flags, remote = recvmsg(ERRQUEUE_BYTES, ERRQUEUE_ANC_BYTES, socket.MSG_ERRQUEUE)
            except OSError:  # BlockingIOError: the queue is empty
                break
            err = None
            for level, kind, data in anc:
                if level == socket.IPPROTO_IP and kind == IP_RECVERR:
                    err = E.decode_extended_err(data)
            if err is not None and err.origin == E.SO_EE_ORIGIN_LOCAL:
                counts["local_errors"] += 1
                continue
            pkt = None
            if err is not None and isinstance(remote, tuple):
                raddr, rport = remote
                pkt = E.build_offender_error(proto, ext, ext_port, inet.aton(raddr), rport, quoted, err)
            if pkt is None:
                counts["other_errors"] += 1
            else:
                counts["icmp_errors"] += 1
                batch.append(pkt)


def _raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft

