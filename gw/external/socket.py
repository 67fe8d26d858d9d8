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

- UDP: ``SOCK_DGRAM`` sockets. The client's TTL is kept (``IP_TTL``) so traceroute works.
- ICMP echo: ICMP datagram sockets (``SOCK_DGRAM``/``IPPROTO_ICMP``): the kernel picks the echo
  identifier as it picks a port, and hands back the replies to it. They need the daemon's group in
  ``net.ipv4.ping_group_range``; without it, ping is refused (counted, logged once with the fix).
- After a restart the restored mappings have no sockets: the first packet of such a flow binds its
  mapping's port again (it is free: the old process is gone), so the flow goes on with the same
  external port.
- File descriptors are bounded: the soft limit is raised to the hard one at start, and past
  ``max_sockets`` a new flow is refused and counted (``sockets_full``).
- Fragments cannot be sent through a socket one by one; a fragmented datagram is dropped and counted
  (``fragments``). TCP is not carried (see the package docstring).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import struct

from gw import inet
from gw import packet as P
from gw.external.base import OnPacket
from gw.nat import Nat
from gw.verdict import Drop

log = logging.getLogger("gw.external")
RECV_BATCH = 64  # datagrams read per readiness callback of one socket
FD_RESERVE = 256  # descriptors kept for everything else: tunnels, journal, listeners
DEFAULT_TTL = 64
_UDP_HEAD = struct.Struct("!HH")  # sport, dport at the L4 offset


class SocketGateway:
    """Kernel sockets per mapping (see the module docstring)."""

    name = "socket"
    carries_tcp = False

    def __init__(self, nat: Nat, max_sockets: int = 0) -> None:
        self.nat = nat
        self.counts = {"sockets": 0, "sockets_full": 0, "bind_failed": 0, "send_failed": 0, "fragments": 0,
                       "no_socket": 0, "received": 0, "ping_refused": 0}  # fmt: skip
        self.max_sockets = max_sockets or _raise_fd_limit() - FD_RESERVE
        self._socks: dict[tuple[int, int], socket.socket] = {}  # (proto, ext port) -> socket
        self._ttl: dict[tuple[int, int], int] = {}
        self._on_packet: OnPacket | None = None
        self._ping_warned = False

    def start(self, on_packet: OnPacket) -> None:
        self._on_packet = on_packet

    def stop(self) -> None:
        loop = asyncio.get_running_loop()
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
        if len(self._socks) >= self.max_sockets:
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
        self._register(proto, ext_addr, ext_port, sock)
        return self.nat.translate_outbound(pkt, now)

    def send_outbound(self, pkt: bytearray | memoryview, now: int) -> None:
        """Send a translated UDP datagram or ICMP echo from its mapping's socket."""
        if P.get_u16(pkt, P.IP_FRAG)[0] & P.IP_FRAG_MASK:
            self.counts["fragments"] += 1
            return
        proto, l4 = pkt[P.IP_PROTO], (pkt[0] & 15) * 4
        total = P.get_u16(pkt, P.IP_TOTAL_LEN)[0]
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
        try:
            sock.sendto(payload, where)
        except OSError:
            self.counts["send_failed"] += 1

    def mapping_ended(self, proto: int, ext_addr: int, ext_port: int) -> None:
        sock = self._socks.pop((proto, ext_port), None)
        self._ttl.pop((proto, ext_port), None)
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
            self.counts["sockets"] = len(self._socks)

    # ------------------------------------------------------------------ sockets
    def _bind(self, proto: int, ext_addr: int, port: int) -> socket.socket | None:
        kind = socket.IPPROTO_ICMP if proto == P.PROTO_ICMP else 0
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, kind)
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
        """A mapping restored after a restart: its port again (free: the old process is gone)."""
        sock = self._bind(proto, ext_addr, ext_port)
        if sock is not None:
            self._register(proto, ext_addr, ext_port, sock)
        return sock

    def _register(self, proto: int, ext_addr: int, ext_port: int, sock: socket.socket) -> None:
        self._socks[(proto, ext_port)] = sock
        self.counts["sockets"] = len(self._socks)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, proto, ext_addr, ext_port, sock)

    def _readable(self, proto: int, ext: int, ext_port: int, sock: socket.socket) -> None:
        """Datagrams for one mapping: rebuilt as the packets the remote sent, for the NAT (one batch)."""
        batch = []
        for _ in range(RECV_BATCH):
            try:
                data, (raddr, rport) = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError:  # an ICMP error the kernel reports on the socket (port unreachable...)
                continue
            remote = inet.aton(raddr)
            if proto == P.PROTO_UDP:
                batch.append(P.build_udp(remote, ext, rport, ext_port, data))
            else:  # the kernel hands over the ICMP message; its identifier is already the socket's
                batch.append(P.build_ipv4(remote, ext, P.PROTO_ICMP, data))
        if batch:
            self.counts["received"] += len(batch)
            self._on_packet(batch)


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

