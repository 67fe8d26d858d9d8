"""Every terminated connection of the gateway: found by client flow, bounded per client and in total,
timed by one heap. Sans-I/O: the shell owns the kernel sockets and calls in with segments and time.

Limits: each connection holds a kernel socket (a descriptor, and its buffers: the back-pressure of
``gw.tcp_term.conn``), so connections are bounded per client (one client cannot take the gateway's
descriptors) and in total (the process's). A SYN over a limit is refused (the client gets a RST) and
counted. Memory in user space is one ``TcpConn`` per connection; the bytes stay in the kernel.
"""

from __future__ import annotations

import heapq
import random

from gw.tcp_term.conn import TcpConn
from gw.tcp_term.segment import Segment

MAX_CONNECTIONS = 16384  # in total: a kernel socket each, well under a default 65536-descriptor limit
MAX_PER_CLIENT = 1024  # a browser opens tens; a client at this bound is a scan or a flood

FlowKey = tuple[int, int, int, int]  # client address, client port, remote address, remote port


def flow_key(seg: Segment) -> FlowKey:
    """A client segment's connection: (client address, client port, remote address, remote port)."""
    return seg.src, seg.sport, seg.dst, seg.dport


class Terminations:
    """The connections, their limits and their deadlines (see the module docstring)."""

    def __init__(
        self, *, mss_limit: int, gso_segments: int = 1, offload: bool = False, max_total: int = MAX_CONNECTIONS,
        max_per_client: int = MAX_PER_CLIENT, rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        self.mss_limit, self.gso_segments, self.offload = mss_limit, gso_segments, offload  # for TcpConn
        self.max_total, self.max_per_client = max_total, max_per_client
        self.conns: dict[FlowKey, TcpConn] = {}
        self.per_client: dict[int, int] = {}
        self.counts = {"opened": 0, "refused_total": 0, "refused_client": 0, "closed": 0}
        self._rng = rng or random.SystemRandom()
        self._heap: list[tuple[int, int, FlowKey]] = []
        self._armed: dict[FlowKey, int] = {}  # the deadline each connection has in the heap
        self._order = 0

    def open(self, seg: Segment, now: int) -> TcpConn | str:
        """A new connection for a client's SYN, or why not ("limit_total", "limit_client")."""
        if len(self.conns) >= self.max_total:
            self.counts["refused_total"] += 1
            return "limit_total"
        if self.per_client.get(seg.src, 0) >= self.max_per_client:
            self.counts["refused_client"] += 1
            return "limit_client"
        conn = TcpConn(seg, now, self._rng.getrandbits(32), mss_limit=self.mss_limit,
                       gso_segments=self.gso_segments, offload=self.offload)  # fmt: skip
        self.conns[flow_key(seg)] = conn
        self.per_client[seg.src] = self.per_client.get(seg.src, 0) + 1
        self.counts["opened"] += 1
        return conn

    def find(self, seg: Segment) -> TcpConn | None:
        return self.conns.get(flow_key(seg))

    def touch(self, conn: TcpConn) -> None:
        """After any call into ``conn``: its deadline into the heap if it moved (old entries go stale)."""
        key = (*conn.client, *conn.remote)
        deadline = conn.deadline()
        if deadline is not None and self._armed.get(key) != deadline:
            self._armed[key] = deadline
            self._order += 1
            heapq.heappush(self._heap, (deadline, self._order, key))

    def due(self, now: int) -> list[TcpConn]:
        """Run the timers that have come; the connections they ran on (the shell drains their output)."""
        ran = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            conn = self.conns.get(key)
            if conn is None or self._armed.get(key) != deadline:
                continue  # ended, or re-armed since
            del self._armed[key]
            conn.on_timer(now)
            self.touch(conn)
            ran.append(conn)
        return ran

    def remove(self, conn: TcpConn) -> None:
        """A connection the shell is done with (closed, its socket closed)."""
        key = (*conn.client, *conn.remote)
        if self.conns.pop(key, None) is not None:
            self._armed.pop(key, None)
            left = self.per_client[key[0]] - 1
            if left:
                self.per_client[key[0]] = left
            else:
                del self.per_client[key[0]]
            self.counts["closed"] += 1

    def next_deadline(self) -> int | None:
        """When ``due`` has work next (a stale entry may make it early, never late)."""
        return self._heap[0][0] if self._heap else None
