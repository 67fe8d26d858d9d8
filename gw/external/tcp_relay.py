"""Socket mode's TCP: each client connection ended in user space (``gw.tcp_term``) and carried on through
a kernel TCP socket from the public address.

Theory of operation
-------------------
The relay sits behind the NAT, as socket mode's UDP sockets do: a client's SYN makes a mapping whose
external port is the port a kernel TCP socket was bound to (``SocketGateway.new_mapping``, journaled as
``MappingCreated``; in strict audit the SYN waits until it is durable, so the SYN-ACK does too). The
NAT translates the client's segments (source = the public endpoint) and hands them here; the
endpoint's answers are built from the remote to the public endpoint and go back through
``Nat.translate_inbound`` like any packet from the internet, so the NAT's TCP tracking, timeouts,
filtering and counters apply unchanged, and ``gw-audit who`` answers for these ports as for others.

- A SYN starts a non-blocking ``connect()``; connected: the SYN-ACK; refused, unreachable or timed out:
  a RST to the client (``connect_failed``).
- Client to remote: the in-order payload is written to the socket; what it took is acknowledged, the
  window advertised is what its send buffer surely takes (``_space``: payload bytes and the kernel's
  memory accounting both), and a full buffer is watched for room (a window update follows).
- Remote to client: bytes are peeked (``MSG_PEEK`` with ``SO_PEEK_OFF``) and consumed only when the
  client acknowledges them, so retransmissions read them again from the kernel (a fast retransmission
  peeks at offset 0 and puts the offset back). The socket is watched for reading only while nothing
  is in flight (then readable means new bytes or the remote's FIN); with bytes in flight, each batch
  of acknowledgements reads on (a level-triggered loop would otherwise wake on the bytes already
  peeked).
- Closing: the client's FIN is ``shutdown(SHUT_WR)``; the remote's FIN (a peek of nothing) is a FIN
  to the client; a client RST closes the socket with a RST (``SO_LINGER`` 0); a remote RST is a RST
  to the client.
- Offloads: a client's TSO super-packet (its TUN's, up to 64 KB) is one segment here, written to the
  socket in one call; toward the client, ``TcpConn`` makes super-packets of up to 64 KB with a
  virtio-net header (``offload``), which the daemon hands on whole to a session with offloads (its TUN
  cuts them) and cuts with ``gw.offload.segment`` for one without. Counted: ``tcp_super_packets_in``,
  ``tcp_super_packets_out``.
- Limits: connections per client and in total (``gw.tcp_term.table``), and descriptors (the socket
  gateway's ``max_sockets``, which counts these sockets too), each refusal a RST to the client,
  counted. Buffer bytes: user space holds none of either stream; the kernel holds it, in fixed
  buffers (``set_buffers``: no autotuning), so a connection holds at most ``SOCKET_BUFFER`` of the
  client's stream and about twice ``RECEIVE_BUFFER`` of the remote's (the kernel doubles the size
  set, for its bookkeeping, and counts big segments' payload nearly whole against it), and a client
  at most its connection limit times that. The receive window the remote sees is also clamped to
  ``SOCKET_BUFFER`` (``TCP_WINDOW_CLAMP``), but a clamp alone bounds nothing here: the window counts
  from the last byte received, not the last byte consumed, and the peeked bytes wait in the buffer
  until the client acknowledges them, so under autotuning one download held 32 MiB in its socket in
  the lab. ``RECEIVE_BUFFER`` covers what is in flight to the client (2 MiB held downloads about 12%
  lower in the lab). The fixed send buffer makes the window the client sees (its free room) a true
  one: an autotuned buffer starts at 16 KB and grows only with the remote path, which held the
  client at a few hundred Mbit/s in the lab.
- Batching: what a batch of client segments asks for is done once the loop's callback ends
  (``_flush``): the acknowledged bytes dropped from each socket in one call, one peek per connection
  for all the room the batch made, and the packets written to the tunnels together, in writes of up
  to ``TUNNEL_CHUNK`` bytes. A client acknowledges each 64 KB super-packet; a system call and a pass
  through here per acknowledgement was what held the downloads back.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import socket
import struct

from gw import inet
from gw import packet as P
from gw import vnet as V
from gw.external.base import set_buffers
from gw.tcp_term import segment as S
from gw.tcp_term.conn import TcpConn
from gw.tcp_term.table import Terminations

log = logging.getLogger("gw.external")
SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)  # asm-generic/socket.h
SIOCOUTQ = 0x5411  # linux/sockios.h (TIOCOUTQ): bytes not yet acknowledged by the remote
SOCKET_BUFFER = 2 << 20  # each relayed socket's send buffer and receive window clamp (see Limits above)
RECEIVE_BUFFER = 4 << 20  # and its receive buffer: the window clamp does not bound it (see Limits above)
PEEK_MAX = 1 << 18  # bytes peeked per read
# bytes of packets written to the tunnels at once: a window's worth (megabytes) in one write went through
# TLS and its buffers out of the cache, and ran about 9% slower in the lab (a quiet host) than these
TUNNEL_CHUNK = 1 << 18
GSO_SEGMENTS = 64  # per super-packet to the client: as many as one IPv4 packet holds (TcpConn caps it)
_INT = struct.Struct("i")
SO_MEMINFO = 55  # asm-generic/socket.h: the socket's memory counters (linux/sock_diag.h SK_MEMINFO_*)
_MEMINFO = struct.Struct("9I")
SK_MEMINFO_SNDBUF, SK_MEMINFO_WMEM_QUEUED = 3, 5
_LINGER_RST = struct.pack("ii", 1, 0)


class TcpRelay:
    """The relay's sockets and connections (see the module docstring). ``on_packet`` takes packets from
    the remote to the public endpoint, for the NAT."""

    def __init__(self, on_packet, mss_limit: int, now, counts: dict) -> None:
        """``counts``: the external gateway's, which the relay's counters join."""
        self.table = Terminations(mss_limit=mss_limit, gso_segments=GSO_SEGMENTS, offload=True)
        self.counts = counts
        for name in ("tcp_connect_failed", "tcp_reset_sent", "tcp_remote_reset", "tcp_no_connection",
                     "tcp_super_packets_in", "tcp_super_packets_out", "tcp_short_writes", "tcp_out_of_order"):
            counts.setdefault(name, 0)
        self._on_packet, self._now = on_packet, now
        self._socks: dict[int, socket.socket] = {}  # id(conn) -> its socket
        self._by_port: dict[int, TcpConn] = {}  # external port -> connection
        self._reading: set[int] = set()  # ids of connections whose socket is watched for reading
        # one buffer for every peek (a fresh 256 KB bytes per read costs an mmap and its page faults)
        self._peeked = bytearray(PEEK_MAX)
        self._peeked_view = memoryview(self._peeked)
        self._outbox: list[bytearray] = []  # packets for the clients, sent once the loop's callback ends
        self._outbox_bytes = 0
        self._pumps: dict[int, TcpConn] = {}  # connections to read on once the loop's callback ends
        self._acked: dict[int, int] = {}  # bytes the client acknowledged, still to drop from the socket
        self._flush_due = False

    # ------------------------------------------------------------------ from the NAT
    def segment(self, ip: memoryview, sock: socket.socket | None, now: int) -> None:
        """A client segment, translated (source = the public endpoint). ``sock``: the mapping's bound,
        unconnected socket when the NAT just made it for this SYN."""
        seg = S.parse(ip, checked=False)  # the client's checksum may be partial (offloads)
        if seg is None:
            return
        conn = self.table.find(seg)
        if conn is None:
            if seg.flags & (P.TCP_SYN | P.TCP_ACK_FLAG | P.TCP_RST) == P.TCP_SYN and sock is not None:
                self._open(seg, sock, now)
            elif not seg.flags & P.TCP_RST:
                self.counts["tcp_no_connection"] += 1  # after a restart, or a connection that ended
                self._send([bytearray(V.NO_OFFLOAD) + S.reset_for(seg)])
            return
        if seg.payload:
            if len(seg.payload) > conn.mss:
                self.counts["tcp_super_packets_in"] += 1  # the client's TSO: one pass for up to 64 KB
            if 0 < (seg.seq - conn.rcv_nxt) & 0xFFFFFFFF < 0x80000000:
                self.counts["tcp_out_of_order"] += 1  # dropped: the client sends it again
        payload = conn.on_segment(seg, now)
        if payload is not None:
            self._write(conn, payload, now)
        self._after(conn, now)

    def mapping_ended(self, ext_port: int) -> None:
        """The NAT ended the mapping: the connection goes, without a word (its packets could not pass)."""
        conn = self._by_port.get(ext_port)
        if conn is not None:
            self._drop(conn)

    def tick(self, now: int) -> None:
        for conn in self.table.due(now):
            self._after(conn, now)

    def stop(self) -> None:
        for conn in list(self._by_port.values()):
            self._drop(conn)

    # ------------------------------------------------------------------ connecting
    def _open(self, seg: S.Segment, sock: socket.socket, now: int) -> None:
        made = self.table.open(seg, now)
        if isinstance(made, str):
            self.counts["tcp_connect_failed"] += 1
            self._send([bytearray(V.NO_OFFLOAD) + S.reset_for(seg)])
            sock.close()
            return
        conn = made
        self._socks[id(conn)], self._by_port[seg.sport] = sock, conn
        set_buffers(sock, RECEIVE_BUFFER, SOCKET_BUFFER)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, SOCKET_BUFFER)
        err = sock.connect_ex((inet.ntoa(seg.dst), seg.dport))
        if err not in (0, errno.EINPROGRESS):
            self._connected(conn, err)
            return
        asyncio.get_running_loop().add_writer(sock.fileno(), self._on_connect, conn)

    def _on_connect(self, conn: TcpConn) -> None:
        sock = self._socks[id(conn)]
        asyncio.get_running_loop().remove_writer(sock.fileno())
        self._connected(conn, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def _connected(self, conn: TcpConn, err: int) -> None:
        now = self._now()
        if err:
            self.counts["tcp_connect_failed"] += 1
            conn.refuse()
        else:
            sock = self._socks[id(conn)]
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            conn.accept(now, self._space(sock))
        self._after(conn, now)

    # ------------------------------------------------------------------ bytes both ways
    def _write(self, conn: TcpConn, payload: memoryview, now: int) -> None:
        sock = self._socks[id(conn)]
        sent = 0
        if payload:
            try:
                sent = sock.send(payload)
            except BlockingIOError:
                pass
            except OSError:
                self._remote_reset(conn)
                return
        if sent < len(payload):
            self.counts["tcp_short_writes"] += 1  # the rest is not acknowledged: the client sends it again
        space = self._space(sock)
        conn.delivered(sent, space, now)
        if space < conn.mss or sent < len(payload):
            asyncio.get_running_loop().add_writer(sock.fileno(), self._writable, conn)

    def _writable(self, conn: TcpConn) -> None:
        sock = self._socks.get(id(conn))
        if sock is None:
            return
        space = self._space(sock)
        if space >= conn.mss:
            asyncio.get_running_loop().remove_writer(sock.fileno())
            conn.window_update(space)
            self._after(conn, self._now())

    def _pump(self, conn: TcpConn, now: int) -> None:
        """The remote's bytes, peeked as far as the client's windows allow."""
        sock = self._socks.get(id(conn))
        while sock is not None and conn.fin_seq is None:
            room = conn.room()
            if room <= 0:
                break
            try:
                n = sock.recv_into(self._peeked, min(room, PEEK_MAX), socket.MSG_PEEK)
            except BlockingIOError:
                break
            except OSError:
                self._remote_reset(conn)
                return
            if not n:
                conn.remote_eof(now)
                break
            conn.send(self._peeked_view[:n], now)  # copied into its segments at once: the buffer is free again
            self._take_out(conn)
        self._watch(conn, sock)

    def _watch(self, conn: TcpConn, sock: socket.socket | None) -> None:
        """Read-watch the socket only while nothing is in flight (see the module docstring)."""
        want = (sock is not None and conn.state == "open" and conn.fin_seq is None
                and conn.snd_max == conn.snd_una)  # fmt: skip
        key = id(conn)
        if want and key not in self._reading:
            self._reading.add(key)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, conn)
        elif not want and key in self._reading:
            self._reading.discard(key)
            if sock is not None:
                asyncio.get_running_loop().remove_reader(sock.fileno())

    def _readable(self, conn: TcpConn) -> None:
        now = self._now()
        self._pump(conn, now)
        self._after(conn, now)

    # ------------------------------------------------------------------ events and endings
    def _after(self, conn: TcpConn, now: int) -> None:
        """Everything a call into ``conn`` asked for: its events, then its segments to the client."""
        sock = self._socks.get(id(conn))
        while conn.events and sock is not None:
            events, conn.events = conn.events, []
            pump = False
            for event in events:
                kind = event[0]
                if kind == "acked":  # dropped from the socket after the batch, with the batch's others
                    self._acked[id(conn)] = self._acked.get(id(conn), 0) + event[1]
                    pump = True
                elif kind == "rewind":
                    self._consume(conn, sock)
                    sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
                    pump = True
                elif kind == "resend":  # the first unacknowledged bytes again, then back to the peek offset
                    self._consume(conn, sock)
                    self._resend(conn, sock, event[1], now)
                elif kind == "open":
                    pump = True
                elif kind == "fin":
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                elif kind in ("reset", "timeout"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)  # close() sends a RST
                    self.counts["tcp_reset_sent"] += 1
            if pump and not conn.closed:
                self._pumps[id(conn)] = conn  # after the batch: one peek for all its acknowledgements
                self._schedule()
        self._take_out(conn)
        if conn.closed:
            self._drop(conn)
        else:
            self.table.touch(conn)

    def _consume(self, conn: TcpConn, sock: socket.socket) -> None:
        """Drop the bytes the client acknowledged from the socket, not copied (TCP's ``MSG_TRUNC``); the
        kernel moves the peek offset back with them."""
        n = self._acked.pop(id(conn), 0)
        try:
            while n > 0:
                n -= sock.recv_into(self._peeked, min(n, len(self._peeked)), socket.MSG_TRUNC) or n
        except OSError:
            pass  # the remote reset: its next read says so

    @staticmethod
    def _resend(conn: TcpConn, sock: socket.socket, n: int, now: int) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            data = sock.recv(n, socket.MSG_PEEK)
            sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, (conn.snd_nxt - conn.snd_una) & 0xFFFFFFFF)
        except OSError:
            return  # the remote reset: its next read says so
        conn.resend(data, now)

    def _take_out(self, conn: TcpConn) -> None:
        if conn.out:
            out, conn.out = conn.out, []
            self.counts["tcp_super_packets_out"] += sum(1 for pkt in out if pkt[1])  # gso_type: not NONE
            self._send(out)

    def _send(self, packets: list[bytearray]) -> None:
        """Packets for the clients, gathered until the callback that made them ends, or until they make
        ``TUNNEL_CHUNK`` bytes: a batch of client segments (or of timers) costs one write to each
        tunnel, not one per segment, and a large one is written while its bytes are still in the cache."""
        self._outbox += packets
        self._outbox_bytes += sum(map(len, packets))
        if self._outbox_bytes >= TUNNEL_CHUNK:
            self._write_out()
        else:
            self._schedule()

    def _write_out(self) -> None:
        out, self._outbox, self._outbox_bytes = self._outbox, [], 0
        if out:
            self._on_packet(out, True)

    def _schedule(self) -> None:
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """The end of a callback's batch: the connections whose client acknowledged bytes (or opened, or
        timed out) read on once each, with all the room the batch made (a client acknowledges each
        64 KB super-packet: a peek per acknowledgement would cost a system call and a pass through the
        endpoint per 64 KB); then the packets for the clients not yet written (``_send``)."""
        self._flush_due = False
        now = self._now()
        while self._pumps:
            conns, self._pumps = self._pumps, {}
            for key, conn in conns.items():
                if key in self._socks and not conn.closed:
                    self._consume(conn, self._socks[key])
                    self._pump(conn, now)
                    self._after(conn, now)
        self._write_out()

    def _remote_reset(self, conn: TcpConn) -> None:
        self.counts["tcp_remote_reset"] += 1
        conn.abort()

    def _drop(self, conn: TcpConn) -> None:
        sock = self._socks.pop(id(conn), None)
        self._by_port.pop(conn.client[1], None)
        self._reading.discard(id(conn))
        self._acked.pop(id(conn), None)
        self.table.remove(conn)
        if sock is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(sock.fileno())
            loop.remove_writer(sock.fileno())
            sock.close()

    @staticmethod
    def _space(sock: socket.socket) -> int:
        """The window the client may fill: bytes the socket's send buffer surely takes. The kernel
        limits it by memory (``sk_wmem_queued``, payload plus its own overhead, against the doubled
        ``SO_SNDBUF``), not by payload bytes, so "buffer minus unacknowledged bytes" over-promises
        near a full buffer: a short write then drops every segment the client has in flight behind
        it, and the client recovers by its retransmission timer (stalls of seconds, seen in the lab).
        So: at most ``SOCKET_BUFFER`` payload bytes queued (half the memory limit), and never more
        than half the memory still free."""
        queued = _INT.unpack(fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]
        mem = _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))
        free = mem[SK_MEMINFO_SNDBUF] - mem[SK_MEMINFO_WMEM_QUEUED]
        return max(0, min(SOCKET_BUFFER - queued, free // 2))
