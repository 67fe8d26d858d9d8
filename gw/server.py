"""The gateway daemon, ``gw serve -c gateway.toml``: the asyncio shell around the cores.

Theory of operation
-------------------
One event loop (uvloop when installed) moves bytes; the cores decide. At start the journal is
recovered (``journal.recovery``) and the NAT restored lazily, so flows that were alive before a crash
go on within milliseconds; ``GatewayStarted`` is journaled and the journal writer runs in its own
thread. Tunnels are accepted by ``gw.transport.endpoint``; ``gw.sessions`` decides each one and
journals the decision.

A batch of packets from a session goes, packet by packet, through the router:

- to another session, forwarded as it came (vnet header and all, so a super-packet stays whole; cut
  into plain packets by ``gw.offload.segment`` for a session without offloads);
- to the gateway's VPN address: ICMP echo is answered here, UDP to port 53 goes to the DNS proxy
  (``gw.dns_endpoint``), everything else to the host's own TUN (``[vpn] host_device``), where the
  host's kernel answers it as for any interface: ssh, and DNS over TCP, which the proxy takes on a
  kernel socket bound to the gateway address;
- to the NAT, then out through the external gateway (``gw.external``; ``[external] mode``), or back
  inside when the NAT hairpins it to another client's public endpoint. With mode "none", packets for
  the internet are translated, journaled and counted as ``no_external``, not sent. Packets from the
  internet come back through the external gateway, the NAT inbound and the router to their session.

What the host's kernel sends into its TUN goes to the session holding the destination. A timer runs
``expire`` within its budget, drains the NAT's events to the writer, takes a snapshot every
``[journal] snapshot_every_s`` and publishes the status document (``gw.status``). SIGTERM or SIGINT:
sessions closed, ``GatewayStopped`` journaled, the TUN removed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time

from gw import __version__, inet
from gw import packet as P
from gw import vnet as V
from gw.config import GatewayConfig
from gw.dns_endpoint import DnsEndpoint, resolv_conf_upstreams
from gw.errors import GwError
from gw.external.raw import RawGateway
from gw.external.socket import SocketGateway
from gw.identity import load_identity
from gw.nat import Nat
from gw.offload import header_fits, segment, translate_partial
from gw.router import Router
from gw.sessions import SessionDirectory
from gw.status import Metrics, StatusServer, nat_figures
from gw.strict import Hold, public_key
from gw.transport import wire
from gw.transport.endpoint import GatewayConnection, TunnelServer
from gw.tun import TunDevice, TunError
from gw.verdict import Drop, Route, Verdict, name
from journal import recovery
from journal.errors import JournalError
from journal.events import GatewayStarted, GatewayStopped, MappingCreated, MappingExpired
from journal.writer import JournalBackpressureError, JournalWriter

log = logging.getLogger("gw.server")
TICK_S = 0.05  # the timer's period: expire within its budget, drain events, keepalives are their own
STATUS_EVERY_S = 1.0  # how often the metrics endpoint's document is refreshed
HOST_BATCH = 64  # packets read from the host TUN per readiness callback


class Gateway:
    """The daemon's state: cores, journal, tunnels. ``await run(stop)`` serves until ``stop`` is set."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.identity = load_identity(config.tunnel.certificate, config.tunnel.key)
        self.counts = {
            "no_external": 0,  # translated for the internet, not sent: [external] mode = "none"
            "tcp_refused": 0,  # TCP for the internet in socket mode (answered with an RST)
            "segmented": 0,  # super-packets cut for a session without offloads
            "unsegmentable": 0,  # super-packets no session without offloads could take (malformed)
            "echo_replies": 0,  # ICMP echo of the gateway address answered
            "to_host": 0,  # packets written to the host's TUN
            "from_host": 0,  # packets the host's kernel sent to clients
            "host_dropped": 0,  # for the host, but no host TUN (or its queue was full)
            "from_host_no_route": 0,  # from the host to a VPN address nobody holds
            "from_host_not_local": 0,  # from the host's TUN with a source other than the gateway address
            "refused_no_journal": 0,  # new flows refused while the journal cannot write (strict; fast past a bound)
            "bad_vnet_header": 0,  # a client's virtio-net header that does not describe its packet
            "held_orphaned": 0,  # strict: packets whose mapping ended while they waited (not sent)
            "journal_refused": 0,  # batches of events the writer refused (back-pressure): kept, submitted again
            "timer_errors": 0,  # exceptions in the timer's work (logged; the timer goes on)
        }
        self.nat: Nat | None = None
        self.port = 0
        self.sessions: set[GatewayConnection] = set()
        self.host_tun: TunDevice | None = None
        self.dns: DnsEndpoint | None = None
        self.metrics: Metrics | None = None
        self.tunnel: TunnelServer | None = None
        self.status_server: StatusServer | None = None
        self.writer: JournalWriter | None = None
        self.external: SocketGateway | RawGateway | None = None
        self.started = time.time()
        self.journal_error = ""
        self.hold: Hold | None = Hold() if config.journal.audit == "strict" else None
        self._refuse_new = False  # the journal cannot write (strict), or fast mode's unwritten events hit their bound
        self._stopping = False  # set before the external gateway stops: nothing more is sent

    def _now(self) -> int:
        return time.monotonic_ns()

    async def run(self, stop: asyncio.Event, ready: asyncio.Future | None = None) -> None:
        """Serve until ``stop`` is set. Raises GwError (after undoing what it made) when it cannot start."""
        timer = None
        reason = "start failed"
        try:
            await self._start()
            if ready is not None:
                ready.set_result(self.port)
            timer = asyncio.create_task(self._timer(stop))
            reason = "shutdown"
            await stop.wait()
        finally:
            if timer is not None:
                timer.cancel()
            await self._shutdown(reason)

    async def _start(self) -> None:
        cfg = self.config
        now = self._now()
        wall_offset = time.time_ns() - now
        rec = recovery.load(cfg.journal.directory)
        gc.disable()  # a restore makes a million objects; the lazy one spreads them over seconds
        socket_mode = cfg.external.mode == "socket"
        nat = self.nat = Nat.restore(cfg.nat, rec.snapshot, rec.events, vpn=cfg.vpn, wall_offset=wall_offset,
                                     lazy=True, caller_ports=socket_mode)  # fmt: skip
        if rec.last_seq:
            nat.resume(now, rec.down_since_ns or now + wall_offset)
        self.router = Router(cfg.vpn)
        self._gateway_addr = inet.aton(cfg.vpn.gateway_address)
        ext = cfg.external
        if socket_mode:
            self.external = SocketGateway(nat, ext.max_sockets, tunnel_mtu=cfg.tunnel.mtu)
        elif ext.mode == "raw":
            self.external = RawGateway(nat, ext.interface, ext.next_hop, ext.mac, tunnel_mtu=cfg.tunnel.mtu)
        if self.external is not None:
            self.external.start(self._from_internet)
        self._open_host_tun()
        strict = self.hold is not None
        loop = asyncio.get_running_loop()
        self.writer = JournalWriter(
            cfg.journal.directory, fsync="always" if strict else cfg.journal.fsync, on_error=self._journal_error,
            on_durable=(lambda seq: loop.call_soon_threadsafe(self._durable, seq)) if strict else None,
        )  # fmt: skip
        self.writer.start()
        nat.record_event(GatewayStarted, now, version=__version__, ext_addrs=list(nat.ext_addrs),
                         recovered=rec.last_seq > 0, unclean=rec.last_seq > 0 and not rec.clean)  # fmt: skip
        self._drain()
        upstreams = cfg.dns.upstreams or resolv_conf_upstreams()
        dns_addrs = []
        if cfg.dns.enabled and upstreams:
            self.dns = DnsEndpoint(cfg, upstreams, self._dns_reply)
            try:
                await self.dns.start(tcp=self.host_tun is not None)
            except OSError as e:
                raise GwError(f"[dns]: cannot listen on {cfg.vpn.gateway_address}:53 for DNS over TCP: "
                              f"{_reason(e)}") from None  # fmt: skip
            dns_addrs = [cfg.vpn.gateway_address]
        elif cfg.dns.enabled:
            log.warning("DNS proxy off: [dns] upstreams is empty and /etc/resolv.conf names no nameserver")
        self.directory = SessionDirectory(cfg, nat, dns=dns_addrs)
        self.tunnel = TunnelServer(self.identity, self._authorize, self._opened, self._closed)
        host, _, port = cfg.tunnel.listen.rpartition(":")
        try:
            self.port = await self.tunnel.start(host, int(port))
        except OSError as e:
            raise GwError(f'[tunnel] listen = "{cfg.tunnel.listen}": {_reason(e)} '
                          "(is another gw serve running? pick another address or port)") from None  # fmt: skip
        self.status_server = StatusServer(cfg.status.socket, self.status)
        await self.status_server.start()
        if cfg.metrics.listen:
            self.metrics = Metrics(cfg.metrics.listen)
            self.metrics.publish(self.status())
            self.metrics.start()
        log.info("gw %s listening on %s:%d (journal %s, status %s)", __version__, host, self.port,
                 cfg.journal.directory, cfg.status.socket)  # fmt: skip

    async def _shutdown(self, reason: str) -> None:
        """Undo what ``_start`` made, whatever it got to; ``GatewayStopped`` journaled if it journaled a start."""
        if self.tunnel is not None:
            await self.tunnel.stop()
        if self.status_server is not None:
            await self.status_server.stop()
        for conn in list(self.sessions):
            conn.close(wire.Close.SHUTDOWN, "gateway stopping")
        for _ in range(20):  # their SessionClosed before GatewayStopped
            if not self.sessions:
                break
            await asyncio.sleep(0.05)
        if self.dns is not None:
            self.dns.stop()
        self._stopping = True  # the writer's last fsync must not release held packets into a closed gateway
        if self.external is not None:
            self.external.stop()
        self._close_host_tun()
        if self.writer is not None:
            self.nat.record_event(GatewayStopped, self._now(), reason=reason)
            self._drain()
            self.writer.close()
        gc.enable()

    # -- the host's TUN
    def _open_host_tun(self) -> None:
        cfg = self.config
        if not cfg.vpn.host_device:
            return
        try:
            tun = TunDevice.open(cfg.vpn.host_device)
            tun.configure(cfg.vpn.gateway_address, self.router.prefix_len, cfg.tunnel.mtu)
        except TunError as e:
            raise TunError(f"{e} ([vpn] host_device; set it to \"\" to run without the host's port)") from None
        self.host_tun = tun
        asyncio.get_running_loop().add_reader(tun.fileno(), self._from_host)

    def _close_host_tun(self) -> None:
        if self.host_tun is not None:
            asyncio.get_running_loop().remove_reader(self.host_tun.fileno())
            self.host_tun.close()
            self.host_tun = None

    def _from_host(self) -> None:
        """Packets the host's kernel sends to VPN addresses (answers of its services): to their session.

        Only packets from the gateway address: the TUN is the host's own port on the VPN, not a way into
        it, so a packet the host would forward from elsewhere (ip_forward on) never reaches a client."""
        out: dict[GatewayConnection, list] = {}
        gateway = self._gateway_addr
        for pkt in self.host_tun.read_batch(HOST_BATCH):
            ip = pkt[V.VNET_HDR_LEN :]
            if len(ip) < 20 or P.get_u32(ip, P.IP_SRC)[0] != gateway:
                self.counts["from_host_not_local"] += 1
                continue
            verdict, dest = self.router.route_to_client(ip)
            if verdict != Route.CLIENT:
                self.counts["from_host_no_route"] += 1
                continue
            self.counts["from_host"] += 1
            self._queue(out, dest, pkt, True)
        self._send(out)

    def _to_host(self, pkt: memoryview, vnet: bool) -> None:
        if self.host_tun is None:
            self.counts["host_dropped"] += 1
            return
        try:
            self.host_tun.write(pkt if vnet else V.NO_OFFLOAD + bytes(pkt))
            self.counts["to_host"] += 1
        except (BlockingIOError, TunError):
            self.counts["host_dropped"] += 1  # a full queue, or a packet the kernel refused

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
        conn.client_name = self.directory.name_of(conn.proof.fingerprint)
        conn.opened_at = time.time()
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
        route = self.router.route_from_client
        self._check_journal()
        for pkt in packets:
            if vnet and not header_fits(pkt):
                self.counts["bad_vnet_header"] += 1
                continue
            ip = pkt[hdr:]
            verdict, dest = route(ip, conn.vpn_int)
            if verdict == Route.CLIENT:
                self._queue(out, dest, pkt, vnet)
            elif verdict == Route.LOCAL:
                self._local(conn, pkt, ip, vnet, now, out)
            elif verdict == Route.NAT:
                self._outbound(conn, pkt, ip, vnet, now, out)
        self._released(out, now)
        self._send(out)
        if self.hold is not None and self.nat.events:
            self._drain()  # strict: the held packets' mappings to the writer now, not at the next tick

    def _outbound(self, conn: GatewayConnection, pkt: memoryview, ip: memoryview, vnet: bool, now: int,
                  out: dict) -> None:  # fmt: skip
        """A packet for the internet: the NAT, then the external gateway (or back inside, hairpinned)."""
        ext = self.external
        if ext is not None and not ext.carries_tcp and ip[P.IP_PROTO] == P.PROTO_TCP:
            self._refuse_tcp(conn, ip, out)
            return
        nat = self.nat
        if self._refuse_new and not self._known_flow(ip):
            self.counts["refused_no_journal"] += 1
            return
        partial = vnet and V.read_header(pkt)[0] & V.VNET_F_NEEDS_CSUM
        made = nat.last_mapping_seq
        verdict = translate_partial(nat.translate_outbound, ip, now) if partial else nat.translate_outbound(ip, now)
        if verdict == Verdict.NEEDS_MAPPING and ext is not None:
            verdict = ext.new_mapping(ip, now)
        hold = self.hold
        if hold is not None and nat.last_mapping_seq != made:
            self._note_created(made)  # whatever the verdict: a hairpin or a drop may have made one too
        if verdict == Verdict.FORWARD:
            if ext is None:
                self.counts["no_external"] += 1  # translated and journaled, not sent: [external] mode = "none"
            elif hold is not None and hold.pending:
                self._send_when_durable(pkt, ip, vnet, now)
            else:
                ext.send_outbound(pkt, now, vnet)
        elif verdict == Verdict.HAIRPIN:
            dest_verdict, dest = self.router.route_to_client(ip)
            if dest_verdict == Route.CLIENT:
                self._queue(out, dest, pkt, vnet)
        elif verdict == Drop.TTL_EXCEEDED:
            answer = self.router.time_exceeded_to_client(ip, now)
            if answer is not None:
                self._queue(out, conn, answer, False)

    def _note_created(self, made: int) -> None:
        """Strict audit: the mappings made since seq ``made``, by their public endpoints, wait for the disk."""
        for ev in reversed(self.nat.events):
            if ev.seq <= made:
                break
            if type(ev) is MappingCreated:
                self.hold.created(ev.proto << 48 | ev.ext_addr << 16 | ev.ext_port, ev.seq)

    def _send_when_durable(self, pkt: memoryview, ip: memoryview, vnet: bool, now: int) -> None:
        """Strict audit: a packet of a flow whose mapping is not durable yet waits for it (``gw.strict``)."""
        key = public_key(ip)
        seq = self.hold.seq_for(key)
        if seq is None:
            self.external.send_outbound(pkt, now, vnet)
        else:
            self.hold.hold(seq, now, (bytes(pkt), vnet, key), len(pkt))

    def _durable(self, seq: int) -> None:
        """The journal writer made events up to ``seq`` durable (strict mode): what waited for them leaves,
        unless its mapping ended meanwhile (its session closed, say): then it is dropped, counted."""
        if self.external is None or self._stopping:
            return
        now, lookup = self._now(), self.nat.lookup_external
        for pkt, vnet, key in self.hold.release(seq):
            if lookup(key >> 48, key >> 16 & 0xFFFFFFFF, key & 0xFFFF) is None:
                self.counts["held_orphaned"] += 1
            else:
                self.external.send_outbound(pkt, now, vnet)

    def _known_flow(self, ip: memoryview) -> bool:
        """Whether an outbound packet belongs to a flow that has its mapping (or cannot start one)."""
        if len(ip) < 20 or P.get_u16(ip, P.IP_FRAG)[0] & P.IP_OFFSET_MASK:
            return True  # a later fragment: the NAT finds its flow from the first one, or drops it
        proto, l4 = ip[P.IP_PROTO], (ip[0] & 15) * 4
        if proto not in (P.PROTO_UDP, P.PROTO_TCP, P.PROTO_ICMP) or len(ip) < l4 + 8:
            return True  # the NAT drops it, counted
        if proto == P.PROTO_ICMP and ip[l4] != P.ICMP_ECHO_REQUEST:
            return True  # an ICMP error about an existing flow: no mapping of its own
        port = P.get_u16(ip, l4 + 4 if proto == P.PROTO_ICMP else l4)[0]
        return self.nat.lookup_internal(proto, P.get_u32(ip, P.IP_SRC)[0], port) is not None

    def _refuse_tcp(self, conn: GatewayConnection, ip: memoryview, out: dict) -> None:
        """TCP in socket mode (user-space TCP is a later step): a SYN gets an RST at once, so it fails fast."""
        self.counts["tcp_refused"] += 1
        l4 = (ip[0] & 15) * 4
        if len(ip) < l4 + 20 or ip[l4 + 13] & (P.TCP_RST | P.TCP_SYN) != P.TCP_SYN:
            return
        src, dst = P.get_u32(ip, P.IP_SRC)[0], P.get_u32(ip, P.IP_DST)[0]
        sport, dport = P.get_2u16(ip, l4)
        seq = P.get_u32(ip, l4 + 4)[0]
        rst = P.build_tcp(dst, src, dport, sport, flags=P.TCP_RST | P.TCP_ACK_FLAG, ack=(seq + 1) & 0xFFFFFFFF)
        self._queue(out, conn, rst, False)

    def _from_internet(self, packets: list[bytearray], vnet: bool | None = None) -> None:
        """Packets from the internet (the external gateway): the NAT inbound, then their session. They
        start with a virtio-net header when the gateway has them (raw: super-packets, partial checksums),
        or when ``vnet`` says so (socket mode's TCP relay)."""
        out: dict[GatewayConnection, list] = {}
        now = self._now()
        nat, route = self.nat, self.router.route_to_client
        if vnet is None:
            vnet = self.external.vnet
        for pkt in packets:
            ip = memoryview(pkt)[V.VNET_HDR_LEN :] if vnet else pkt
            if vnet and pkt[0] & V.VNET_F_NEEDS_CSUM:
                verdict = translate_partial(nat.translate_inbound, ip, now)
            else:
                verdict = nat.translate_inbound(ip, now)
            if verdict != Verdict.FORWARD:
                continue
            verdict, dest = route(ip)
            if verdict == Route.CLIENT:
                self._queue(out, dest, pkt, vnet)
        self._released(out, now)
        self._send(out)

    def _released(self, out: dict, now: int) -> None:
        """Fragments the NAT held until their first fragment came, released now, translated: to the
        internet, or queued for their client (a hairpinned datagram's too)."""
        nat = self.nat
        if nat.released_outbound:
            pkts, nat.released_outbound = nat.released_outbound, []
            if self.external is None or self._stopping:
                self.counts["no_external"] += len(pkts)
            else:
                for pkt in pkts:
                    self.external.send_outbound(pkt, now, False)
        if nat.released_inbound:
            pkts, nat.released_inbound = nat.released_inbound, []
            for pkt in pkts:
                verdict, dest = self.router.route_to_client(pkt)
                if verdict == Route.CLIENT:
                    self._queue(out, dest, pkt, False)

    def _queue(self, out: dict, dest: GatewayConnection, pkt: memoryview | bytes, vnet: bool) -> None:
        """Queue a packet for a session, converted to its offload setting."""
        if dest.vnet == vnet:
            out.setdefault(dest, []).append(pkt)
        elif dest.vnet:
            out.setdefault(dest, []).append(V.NO_OFFLOAD + bytes(pkt))
        else:
            plain = segment(pkt)
            if plain is None:
                self.counts["unsegmentable"] += 1
                return
            if len(plain) > 1:
                self.counts["segmented"] += 1
            out.setdefault(dest, []).extend(plain)

    @staticmethod
    def _send(out: dict) -> None:
        for dest, batch in out.items():
            dest.send_packets(batch, dest.vnet)

    def _local(self, conn: GatewayConnection, pkt: memoryview, ip: memoryview, vnet: bool, now: int,
               out: dict) -> None:  # fmt: skip
        """The gateway's own address: ICMP echo answered, UDP DNS to the proxy, the rest to the host."""
        proto = ip[P.IP_PROTO]
        l4 = (ip[0] & 15) * 4
        total = P.get_u16(ip, P.IP_TOTAL_LEN)[0]
        fragment = P.get_u16(ip, P.IP_FRAG)[0] & P.IP_FRAG_MASK
        if proto == P.PROTO_ICMP and not fragment and total >= l4 + 8 and ip[l4] == P.ICMP_ECHO_REQUEST:
            ident, seq = P.get_2u16(ip, l4 + 4)
            self.counts["echo_replies"] += 1
            src = P.get_u32(ip, P.IP_SRC)[0]
            reply = P.build_icmp_echo(self._gateway_addr, src, ident, seq, bytes(ip[l4 + 8 : total]), reply=True)
            self._queue(out, conn, reply, False)
            return
        if (proto == P.PROTO_UDP and self.dns is not None and not fragment and total >= l4 + 8
                and P.get_u16(ip, l4 + P.UDP_DPORT)[0] == 53):  # fmt: skip
            src, sport = P.get_u32(ip, P.IP_SRC)[0], P.get_u16(ip, l4)[0]
            self.dns.query_udp(src, sport, ip[l4 + 8 : total], now)
            return
        self._to_host(pkt, vnet)

    def _dns_reply(self, client: int, port: int, payload: bytes) -> None:
        """A DNS answer for a client's UDP query: a datagram from the gateway's port 53, fragmented to
        the tunnel MTU if the answer is larger (EDNS answers may be)."""
        conn = self.router.session_for(client)
        if conn is None:
            return
        pkt = P.build_udp(self._gateway_addr, client, 53, port, payload)
        mtu = self.config.tunnel.mtu
        out: dict[GatewayConnection, list] = {}
        for piece in [pkt] if len(pkt) <= mtu else P.fragment(pkt, mtu):
            self._queue(out, conn, piece, False)
        self._send(out)

    # -- time
    async def _timer(self, stop: asyncio.Event) -> None:
        last = [time.monotonic()] * 2  # the last snapshot, the last status published
        while not stop.is_set():
            await asyncio.sleep(TICK_S)
            try:
                self._tick(last)
            except Exception:  # a bug: logged and counted; expiry and the journal must go on
                self.counts["timer_errors"] += 1
                log.exception("timer")

    def _tick(self, last: list[float]) -> None:
        """The timer's work: expire within budget, the journal's health and drain, snapshot, status."""
        now = self._now()
        self.nat.expire(now)
        if self.external is not None:
            self.external.tick(now)
        if self.hold is not None:
            self.hold.expire(now)
        self._check_journal()
        if self.dns is not None:
            self.dns.tick(now)
        self._drain()
        mono = time.monotonic()
        if not self.nat.restoring and mono - last[0] >= self.config.journal.snapshot_every_s:
            self.writer.submit_snapshot(self.nat.snapshot_view(now))
            last[0] = mono
        if self.metrics is not None and mono - last[1] >= STATUS_EVERY_S:
            self.metrics.publish(self.status())
            last[1] = mono
        if not self.nat.restoring and not gc.isenabled():
            gc.enable()

    def _drain(self) -> None:
        nat = self.nat
        if nat is not None and nat.events:
            events, nat.events = nat.events, []
            if self.external is not None:
                for ev in events:
                    if type(ev) is MappingExpired:
                        self.external.mapping_ended(ev.proto, ev.ext_addr, ev.ext_port)
            try:
                self.writer.submit(events)
            except JournalBackpressureError:  # the writer is full (a full disk): keep them, in order
                nat.events[:0] = events
                self.counts["journal_refused"] += 1
                self._check_journal()
            except JournalError as e:  # the writer thread died: nothing more can be journaled
                nat.events[:0] = events
                self._check_journal()
                if not self.journal_error:
                    self._journal_error(e)

    def _check_journal(self) -> None:
        """Whether new flows are refused, per batch: in strict mode while the journal cannot write; in fast
        mode once the events it could not take fill ``max_unwritten_events`` (memory stays bounded, and the
        journal never gets a gap: a flow that cannot be journaled is not made)."""
        if self.hold is not None:
            writer = self.writer
            refuse = not writer.alive or writer.backlogged or writer.failing
        else:
            refuse = len(self.nat.events) + self.writer.backlog_events >= self.config.journal.max_unwritten_events
        if refuse and not self._refuse_new:
            log.warning("journal: cannot write; refusing new flows until it does (%s audit)",
                        self.config.journal.audit)  # fmt: skip
        elif self._refuse_new and not refuse:
            log.warning("journal: writing again; new flows accepted")
        self._refuse_new = refuse

    def _journal_error(self, exc: Exception) -> None:
        self.journal_error = str(exc)
        log.error("journal: %s", exc)

    # -- status
    def status(self) -> dict:
        """The status document ``gw status`` and the metrics show (plain data, see ``gw.status``)."""
        cfg, nat, now = self.config, self.nat, time.time()
        drops: dict[str, int] = {}
        for counts in (self.router.counts, nat.drops):
            for verdict, count in enumerate(counts):
                if count and verdict < Route.NAT and verdict != Drop.HELD:  # held: a fragment waiting, not dropped
                    drops[name(verdict)] = drops.get(name(verdict), 0) + count
        sessions = [
            {"client": c.client_name, "vpn_addr": c.welcome.vpn_addr, "session": c.welcome.session,
             "peer": f"{c.peer[0]}:{c.peer[1]}", "up_s": round(now - c.opened_at, 1), "offloads": c.vnet,
             "packets_in": c.packets_in, "bytes_in": c.bytes_in, "packets_out": c.packets_out,
             "bytes_out": c.bytes_out, "dropped": c.dropped}
            for c in sorted(self.sessions, key=lambda c: c.vpn_int)
        ]  # fmt: skip
        writer = self.writer
        last_seq = nat.next_seq - 1
        return {
            "gateway": {"version": __version__, "uptime_s": round(now - self.started, 1),
                        "listen": f"{cfg.tunnel.listen.rpartition(':')[0]}:{self.port}",
                        "subnet": cfg.vpn.subnet, "address": cfg.vpn.gateway_address,
                        "host_device": self.host_tun.name if self.host_tun else ""},  # fmt: skip
            "sessions": sessions,
            "tunnel": {"handshaking": self.tunnel.handshaking, "refused_at_accept": self.tunnel.refused_at_accept,
                       "accept_errors": self.tunnel.accept_errors},
            "nat": nat_figures(nat),
            "audit": {"mode": cfg.journal.audit, "refusing_new_flows": self._refuse_new,
                      **({"waiting": len(self.hold), **self.hold.counts} if self.hold is not None else {})},
            "drops": drops,
            "routes": {name(r): self.router.counts[r] for r in Route},
            "counts": dict(self.counts),
            "external": {"mode": cfg.external.mode, **(self.external.describe() if self.external else {}),
                         **(self.external.counts if self.external else {})},
            "dns": self.dns.status() if self.dns is not None else {"enabled": False},
            "journal": {"directory": cfg.journal.directory, "last_seq": last_seq,
                        "durable_seq": writer.durable_seq, "lag_events": max(0, last_seq - writer.durable_seq),
                        "error": self.journal_error if not writer.alive or writer.backlogged or writer.failing
                        else ""},  # fmt: skip
        }


def _reason(e: OSError) -> str:
    """An OSError's reason alone (uvloop's messages repeat the address)."""
    return os.strerror(e.errno).lower() if e.errno else str(e)


def serve(config: GatewayConfig) -> int:
    """``gw serve``: run until SIGTERM or SIGINT; 0 after a clean stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gw: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(config).run(stop)

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
    return 0
