"""The DNS proxy's sockets: the shell around ``gw.dnsproxy``.

Queries come in two ways. Over UDP, the router hands the daemon a client's datagram to the gateway's
port 53 and the daemon calls ``query_udp``; the answer goes back as a datagram built by the daemon
(``reply(client, port, payload)``), so UDP DNS never touches the host's kernel. Over TCP (RFC 7766),
the client's connection reaches the host's kernel through the host TUN, and a listener bound to the
gateway's VPN address takes it here; it answers VPN addresses only, never anyone else (not an open
resolver), and bounds each connection's idle time and message size. A client on TCP came for the
whole answer: when the upstream's UDP answer is truncated (TC), the query is asked again over TCP, of
each upstream in turn (RFC 7766 5), and the client gets that answer or SERVFAIL.

Upstreams are reached from the gateway host's own network, one connected UDP socket each (the kernel
picks a random source port per socket; the core picks a random ID per query, RFC 5452).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import socket
import struct
import time
from collections.abc import Callable

from gw import inet
from gw.config import GatewayConfig, parse_endpoint
from gw.dnsproxy import Count, DnsProxy, is_answer_to, servfail_for, truncated
from gw.rearm import rearm

log = logging.getLogger("gw.dns")
UPSTREAM_BATCH = 64  # datagrams read per readiness callback
TCP_IDLE_S = 10.0  # RFC 7766 6.2.3: servers may close idle connections; a few seconds is usual
MAX_TCP_CONNECTIONS = 256  # bound the proxy's TCP side: past it, new connections are closed at once
MAX_TCP_UPSTREAM = 32  # TCP retries of truncated answers at once; past it the client gets the TC answer
_LEN = struct.Struct("!H")


def resolv_conf_upstreams(path: str = "/etc/resolv.conf") -> list[str]:
    """The IPv4 nameservers of the host's resolv.conf (the default upstreams)."""
    found = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        inet.aton(parts[1])
                    except ValueError:
                        continue  # IPv6: not for this proxy
                    found.append(parts[1])
    except OSError:
        pass
    return found


class DnsEndpoint:
    """Upstream sockets, the TCP listener and the core, for one daemon."""

    def __init__(self, config: GatewayConfig, upstreams: list[str], reply: Callable[[int, int, bytes], None]) -> None:
        d = config.dns
        self.config = config
        self.upstreams = [parse_endpoint(u, 53) for u in upstreams]
        self.proxy = DnsProxy(len(self.upstreams), rng=random.SystemRandom(), timeout_ns=int(d.timeout_s * 1e9),
                              attempts=d.attempts, max_in_flight=d.max_in_flight,
                              max_in_flight_per_client=d.max_in_flight_per_client)  # fmt: skip
        self._reply = reply
        self._socks: list[socket.socket] = []
        self._tcp: asyncio.AbstractServer | None = None
        self._conns: dict[int, asyncio.StreamWriter] = {}
        self._conn_ids = itertools.count(1)
        self._tcp_queries: dict[tuple[int, int], bytes] = {}  # (conn id, query ID) -> the query, while pending
        self._tcp_upstream = 0  # TCP retries under way
        self._net, self._prefix_len = inet.parse_prefix(config.vpn.subnet)
        self.send_errors = 0  # upstream sends the kernel refused (no route, full buffer)
        self.tcp_refused = 0  # TCP connections from outside the VPN, or over MAX_TCP_CONNECTIONS

    async def start(self, tcp: bool) -> None:
        """Open the upstream sockets and, with ``tcp`` (the host TUN is up), the TCP listener."""
        loop = asyncio.get_running_loop()
        for i, (host, port) in enumerate(self.upstreams):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            try:
                s.connect((host, port))
            except OSError as e:
                log.warning("DNS upstream %s:%d: %s (queries to it will time out)", host, port, e.strerror)
            self._socks.append(s)
            loop.add_reader(s.fileno(), self._from_upstream, i)
        if tcp:
            self._tcp = await asyncio.start_server(self._tcp_client, self.config.vpn.gateway_address, 53)

    def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for s in self._socks:
            loop.remove_reader(s.fileno())
            s.close()
        self._socks = []
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._conns.values()):
            writer.close()

    # -- UDP from clients
    def query_udp(self, client: int, port: int, payload: memoryview, now: int) -> None:
        """A client's query over UDP (from the router); answered through ``reply`` now or later."""
        self._dispatch((client, port), self.proxy.query((client, port), payload, now))

    def _dispatch(self, client: tuple, decision: tuple[int, bytes] | bytes | None) -> None:
        if decision is None:
            return
        if isinstance(decision, tuple):
            self._send_upstream(*decision)
        else:
            self._deliver(client, decision)

    def _send_upstream(self, upstream: int, data: bytes) -> None:
        try:
            self._socks[upstream].send(data)
        except OSError:
            self.send_errors += 1  # the query times out and moves to the next upstream

    def _deliver(self, client: tuple, data: bytes) -> None:
        if len(client) == 2:
            self._reply(client[0], client[1], data)
            return
        query = self._tcp_queries.pop((client[2], _LEN.unpack_from(data)[0]), None)
        if query is not None and truncated(data) and self._tcp_upstream < MAX_TCP_UPSTREAM:
            self._tcp_upstream += 1
            asyncio.get_running_loop().create_task(self._over_tcp(client, query))
            return
        self._write_tcp(client, data)

    def _write_tcp(self, client: tuple, data: bytes) -> None:
        writer = self._conns.get(client[2])
        if writer is not None and not writer.is_closing():
            writer.write(_LEN.pack(len(data)) + data)

    async def _over_tcp(self, client: tuple, query: bytes) -> None:
        """Ask ``query`` of the upstreams over TCP, in turn; the client gets the first answer or SERVFAIL."""
        timeout = self.config.dns.timeout_s
        try:
            for host, port in self.upstreams[: self.config.dns.attempts]:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                except (OSError, TimeoutError):
                    continue
                try:
                    writer.write(_LEN.pack(len(query)) + query)
                    (n,) = _LEN.unpack(await asyncio.wait_for(reader.readexactly(2), timeout))
                    reply = await asyncio.wait_for(reader.readexactly(n), timeout)
                except (OSError, TimeoutError, asyncio.IncompleteReadError):
                    continue
                finally:
                    writer.close()
                if is_answer_to(query, reply):
                    self._write_tcp(client, reply)
                    return
            self._write_tcp(client, servfail_for(query))
        finally:
            self._tcp_upstream -= 1

    def _from_upstream(self, upstream: int) -> None:
        sock, now = self._socks[upstream], time.monotonic_ns()
        failed = False
        for _ in range(UPSTREAM_BATCH):
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                break
            except OSError:  # ICMP port unreachable from the upstream: the query times out
                failed = True
                continue
            answered = self.proxy.answer(upstream, data, now)
            if answered is not None:
                self._deliver(*answered)
        if failed:  # the upstream may come back: keep listening (gw.rearm)
            rearm(sock.fileno(), self._from_upstream, upstream)

    def tick(self, now: int) -> None:
        """Retries and SERVFAILs for queries whose time is up."""
        deadline = self.proxy.next_deadline()
        if deadline is None or deadline > now:
            return
        retries, failures = self.proxy.expire(now)
        for upstream, data in retries:
            self._send_upstream(upstream, data)
        for client, data in failures:
            self._deliver(client, data)

    # -- TCP from clients (through the host TUN)
    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr, port = writer.get_extra_info("peername")[:2]
        client_addr = inet.aton(addr)
        if not inet.in_prefix(client_addr, self._net, self._prefix_len) or len(self._conns) >= MAX_TCP_CONNECTIONS:
            self.tcp_refused += 1
            writer.close()
            return
        conn_id = next(self._conn_ids)
        self._conns[conn_id] = writer
        client = (client_addr, "tcp", conn_id)
        try:
            while True:
                (n,) = _LEN.unpack(await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_S))
                message = await asyncio.wait_for(reader.readexactly(n), TCP_IDLE_S)
                decision = self.proxy.query(client, message, time.monotonic_ns())
                if isinstance(decision, tuple) and len(self._tcp_queries) < self.proxy.max_in_flight:
                    self._tcp_queries[(conn_id, _LEN.unpack_from(message)[0])] = bytes(message)
                self._dispatch(client, decision)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        finally:
            del self._conns[conn_id]
            self.proxy.forget_client(client)
            for key in [k for k in self._tcp_queries if k[0] == conn_id]:
                del self._tcp_queries[key]
            writer.close()

    def status(self) -> dict:
        counts = self.proxy.counts
        return {
            "enabled": True,
            "upstreams": [f"{h}:{p}" for h, p in self.upstreams],
            "in_flight": self.proxy.in_flight,
            "queries": counts[Count.QUERIES],
            "answers": counts[Count.ANSWERS],
            "retries": counts[Count.RETRIES],
            "timeouts": counts[Count.TIMEOUTS],
            "over_limit": counts[Count.OVER_LIMIT],
            "malformed": counts[Count.MALFORMED] + counts[Count.NOT_IMPLEMENTED] + counts[Count.DROPPED],
            "mismatched": counts[Count.MISMATCHED] + counts[Count.UNSOLICITED] + counts[Count.BAD_ANSWER],
            "refused": counts[Count.REFUSED],
            "send_errors": self.send_errors,
            "tcp_connections": len(self._conns),
            "tcp_refused": self.tcp_refused,
        }
