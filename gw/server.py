"""The gateway daemon, ``gw serve -c gateway.toml``: the asyncio shell around the cores.

Theory of operation
-------------------
One event loop (uvloop when installed) moves bytes; the cores decide. At start the journal is
recovered (``journal.recovery``) and the NAT restored lazily, so flows that were alive before a crash
go on within milliseconds; ``GatewayStarted`` is journaled and the journal writer runs in its own
thread. Tunnels are accepted by ``gw.transport.endpoint``; ``gw.sessions`` decides each one and
journals the decision. A batch of packets from a session goes, packet by packet, through the router:
to another session (forwarded as it came, vnet header and all, so a super-packet stays whole), to the
gateway itself (ICMP echo of its VPN address answered here), or to the NAT. The way from the NAT to
the internet is the external gateway, the next step (issue 12): until it exists, packets for the
internet are translated, journaled and counted as ``no_external``, not sent. A timer runs ``expire``
within its budget, drains the NAT's events to the writer and takes a snapshot every
``[journal] snapshot_every_s``. SIGTERM or SIGINT: sessions closed, ``GatewayStopped`` journaled.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time

from gw import __version__, inet
from gw import packet as P
from gw import vnet as V
from gw.config import GatewayConfig
from gw.identity import load_identity
from gw.nat import Nat
from gw.offload import finish_checksum, translate_partial
from gw.router import Router
from gw.sessions import SessionDirectory
from gw.transport import wire
from gw.transport.endpoint import GatewayConnection, TunnelServer
from gw.verdict import Route
from journal import recovery
from journal.events import GatewayStarted, GatewayStopped
from journal.writer import JournalWriter

log = logging.getLogger("gw.server")
TICK_S = 0.05  # the timer's period: expire within its budget, drain events, keepalives are their own


class Gateway:
    """The daemon's state: cores, journal, tunnels. ``await run(stop)`` serves until ``stop`` is set."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.identity = load_identity(config.tunnel.certificate, config.tunnel.key)
        self.counts = {"no_external": 0, "gso_to_plain": 0, "echo_replies": 0}
        self.nat: Nat | None = None
        self.port = 0
        self.sessions: set[GatewayConnection] = set()

    def _now(self) -> int:
        return time.monotonic_ns()

    async def run(self, stop: asyncio.Event, ready: asyncio.Future | None = None) -> None:
        cfg = self.config
        now = self._now()
        wall_offset = time.time_ns() - now
        rec = recovery.load(cfg.journal.directory)
        gc.disable()  # a restore makes a million objects; the lazy one spreads them over seconds
        nat = self.nat = Nat.restore(cfg.nat, rec.snapshot, rec.events, vpn=cfg.vpn, wall_offset=wall_offset,
                                     lazy=True)  # fmt: skip
        if rec.last_seq:
            nat.resume(now, rec.down_since_ns or now + wall_offset)
        writer = self.writer = JournalWriter(
            cfg.journal.directory, fsync=cfg.journal.fsync, on_error=self._journal_error
        )
        writer.start()
        nat.record_event(GatewayStarted, now, version=__version__, ext_addrs=list(nat.ext_addrs),
                         recovered=rec.last_seq > 0, unclean=rec.last_seq > 0 and not rec.clean)  # fmt: skip
        self.router = Router(cfg.vpn)
        self.directory = SessionDirectory(cfg, nat)
        self._gateway_addr = inet.aton(cfg.vpn.gateway_address)
        server = TunnelServer(self.identity, self._authorize, self._opened, self._closed)
        host, _, port = cfg.tunnel.listen.rpartition(":")
        self.port = await server.start(host, int(port))
        log.info("gw %s listening on %s:%d (journal %s)", __version__, host, self.port, cfg.journal.directory)
        if ready is not None:
            ready.set_result(self.port)
        timer = asyncio.create_task(self._timer(stop))
        try:
            await stop.wait()
        finally:
            timer.cancel()
            await server.stop()
            for conn in list(self.sessions):
                conn.close(wire.Close.SHUTDOWN, "gateway stopping")
            for _ in range(20):  # their SessionClosed before GatewayStopped
                if not self.sessions:
                    break
                await asyncio.sleep(0.05)
            nat.record_event(GatewayStopped, self._now(), reason="shutdown")
            self._drain()
            writer.close()
            gc.enable()

    # -- sessions
    def _authorize(self, proof, peer) -> wire.Welcome | wire.Refusal:
        answer = self.directory.authorize(proof.fingerprint, peer, self._now())
        self._drain()
        return answer

    def _opened(self, conn: GatewayConnection) -> None:
        addr = inet.aton(conn.welcome.vpn_addr)
        old = self.router.session_for(addr)
        if old is not None and old is not conn:
            old.close(wire.Close.SHUTDOWN, "replaced by a newer session")
        conn.vpn_int = addr
        self.sessions.add(conn)
        self.router.attach(addr, conn)
        conn.on_packets = lambda packets, vnet, conn=conn: self._from_client(conn, packets, vnet)

    def _closed(self, conn: GatewayConnection) -> None:
        self.sessions.discard(conn)
        if self.router.session_for(conn.vpn_int) is conn:
            self.router.detach(conn.vpn_int)
        code, reason = conn.closed.result()
        self.nat.close_session(
            self._now(), conn.welcome.session, code.name.lower(), packets_in=conn.packets_in,
            bytes_in=conn.bytes_in, packets_out=conn.packets_out, bytes_out=conn.bytes_out,
        )  # fmt: skip
        self._drain()

    # -- packets
    def _from_client(self, conn: GatewayConnection, packets: list[memoryview], vnet: bool) -> None:
        """One batch from a session: routed packet by packet, sent on per destination once."""
        out: dict[GatewayConnection, list] = {}
        now = self._now()
        hdr = V.VNET_HDR_LEN if vnet else 0
        for pkt in packets:
            ip = pkt[hdr:]
            verdict, dest = self.router.route_from_client(ip, conn.vpn_int)
            if verdict == Route.CLIENT:
                if dest.vnet == vnet:
                    out.setdefault(dest, []).append(pkt)
                else:
                    converted = _convert(pkt, vnet)
                    if converted is None:
                        self.counts["gso_to_plain"] += 1
                    else:
                        out.setdefault(dest, []).append(converted)
            elif verdict == Route.LOCAL:
                reply = self._local(ip)
                if reply is not None:
                    out.setdefault(conn, []).append(V.NO_OFFLOAD + reply if conn.vnet else reply)
            elif verdict == Route.NAT:
                partial = vnet and V.read_header(pkt)[0] & V.VNET_F_NEEDS_CSUM
                nat_verdict = (translate_partial(self.nat.translate_outbound, ip, now) if partial
                               else self.nat.translate_outbound(ip, now))  # fmt: skip
                if nat_verdict == 0:
                    self.counts["no_external"] += 1  # the external gateway is the next step (issue 12)
        for dest, batch in out.items():
            for i in range(0, len(batch), wire.MAX_PACKETS_PER_FRAME):
                dest.send_packets(batch[i : i + wire.MAX_PACKETS_PER_FRAME], dest.vnet)

    def _local(self, ip: memoryview) -> bytearray | None:
        """The gateway's own address: ICMP echo answered; the DNS proxy comes with its own step."""
        if len(ip) < 28 or ip[P.IP_PROTO] != P.PROTO_ICMP:
            return None
        l4 = (ip[0] & 15) * 4
        total = P.get_u16(ip, P.IP_TOTAL_LEN)[0]
        if ip[l4] != P.ICMP_ECHO_REQUEST or total < l4 + 8 or total > len(ip):
            return None
        ident, seq = P.get_2u16(ip, l4 + 4)
        self.counts["echo_replies"] += 1
        src = P.get_u32(ip, P.IP_SRC)[0]
        return P.build_icmp_echo(self._gateway_addr, src, ident, seq, bytes(ip[l4 + 8 : total]), reply=True)

    # -- time
    async def _timer(self, stop: asyncio.Event) -> None:
        last_snapshot = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(TICK_S)
            now = self._now()
            self.nat.expire(now)
            self._drain()
            if (
                not self.nat.restoring
                and time.monotonic() - last_snapshot >= self.config.journal.snapshot_every_s
            ):
                self.writer.submit_snapshot(self.nat.snapshot_view(now))
                last_snapshot = time.monotonic()
            if not self.nat.restoring and not gc.isenabled():
                gc.enable()

    def _drain(self) -> None:
        nat = self.nat
        if nat is not None and nat.events:
            events, nat.events = nat.events, []
            self.writer.submit(events)

    def _journal_error(self, exc: Exception) -> None:
        log.error("journal: %s", exc)


def _convert(pkt: memoryview, vnet: bool) -> bytes | bytearray | None:
    """A packet between a session with offloads and one without: the vnet header added, or taken off
    with the checksum finished. None for a super-packet to a session without offloads: segmenting it
    in user space is not done (yet); such a pair of clients should both run with offloads."""
    if not vnet:
        return V.NO_OFFLOAD + bytes(pkt)
    flags, gso_type, _hdr_len, _gso_size, csum_start, csum_offset = V.read_header(pkt)
    if gso_type & ~V.VNET_GSO_ECN != V.VNET_GSO_NONE:
        return None
    ip = bytearray(pkt[V.VNET_HDR_LEN :])
    if flags & V.VNET_F_NEEDS_CSUM and len(ip) >= 20:
        finish_checksum(ip, csum_start, csum_offset)
    return ip


def serve(config: GatewayConfig) -> int:
    """``gw serve``: run until SIGTERM or SIGINT; 0 after a clean stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gw: %(message)s")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(config).run(stop)

    runner(main())
    return 0
