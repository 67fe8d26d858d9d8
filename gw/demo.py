"""``gw demo``: the cores end to end in one process — router, NAT, journal, crash recovery, audit.

Simulated clients and a simulated internet exchange real IPv4 packets (built with ``gw.packet``)
through the real ``Router`` and ``Nat``; the events go through the real ``JournalWriter`` to disk.
The clock is simulated (starting at the wall clock), so the demo covers hours of timeouts in a second.
No socket is opened: nothing leaves the process.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from gw import __version__
from gw import packet as P
from gw.config import NatConfig, VpnConfig
from gw.errors import UsageError
from gw.inet import aton, ntoa
from gw.nat import FORWARD, HAIRPIN, Nat, fast_path
from gw.router import Route, Router
from gw.verdict import name as outcome_name
from journal import recovery
from journal.events import GatewayStarted, MappingCreated, MappingExpired
from journal.holders import describe, find_holders
from journal.reader import Journal
from journal.text import format_time
from journal.writer import JournalWriter

NAMES = ["alice", "bob", "carol"]
DNS_SERVER = aton("203.0.113.10")
WEB_SERVER = aton("203.0.113.10")
ECHO_SERVER = aton("203.0.113.20")
S = 1_000_000_000
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}


class Demo:
    """The simulated world: clients, the gateway cores, and an internet that answers."""

    def __init__(self, journal_dir: Path, clients: int, quiet: bool) -> None:
        self.quiet = quiet
        self.now = time.time_ns()
        self.config = NatConfig(external_addresses=["198.51.100.1", "198.51.100.2"])
        self.nat = Nat(self.config)
        self.router = Router(VpnConfig())
        self.writer = JournalWriter(journal_dir, fsync="interval")
        self.writer.start()
        self.clients = [
            (NAMES[i] if i < len(NAMES) else f"client-{i + 1:03d}", aton("10.66.77.2") + i)
            for i in range(clients)
        ]
        self.journaled: list = []  # what went to the writer, for the summary

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text)

    def flush_events(self) -> None:
        events, self.nat.events = self.nat.events, []
        if events:
            self.journaled.extend(events)
            self.writer.submit(events)

    # -- the data path, as the daemon will run it -----------------------------------------------

    def send(self, name: str, vpn_addr: int, pkt: bytearray) -> bytearray | None:
        """A client's packet through router and NAT; returns it as it leaves for the internet, if it does."""
        before = _describe(pkt)
        route, _session = self.router.route_from_client(pkt, vpn_addr)
        if route != Route.NAT:
            self.say(f"  {name:<6} {before:<48} router: {_verdict_name(route)}")
            return None
        verdict = self.nat.translate_outbound(pkt, self.now)
        result = None
        if verdict == FORWARD:
            self.say(f"  {name:<6} {before:<48} out as {_src(pkt)}")
            result = pkt
        elif verdict == HAIRPIN:
            self.say(
                f"  {name:<6} {before:<48} hairpin to {self.router.route_to_client(pkt)[1]} as from {_src(pkt)}"
            )
        else:
            self.say(f"  {name:<6} {before:<48} {_verdict_name(verdict)}")
        for to_internet, p in self._released():
            where = "out" if to_internet else f"in to {self.router.route_to_client(p)[1]}"
            self.say(f"  {'':<6} {'(held fragment released)':<48} {where} as {_src(p)}")
        self.flush_events()
        return result

    def receive(self, pkt: bytearray) -> None:
        """A packet from the internet through NAT and router to its client."""
        before = _describe(pkt)
        verdict = self.nat.translate_inbound(pkt, self.now)
        if verdict != FORWARD:
            self.say(f"  {'inet':<6} {before:<48} {_verdict_name(verdict)}")
            return
        route, owner = self.router.route_to_client(pkt)
        self.say(f"  {'inet':<6} {before:<48} in to {owner} at {_dst(pkt)}")

    def _released(self) -> list[tuple[bool, bytearray]]:
        """Held fragments the NAT released, translated: (to the internet?, packet)."""
        out, self.nat.released_outbound = self.nat.released_outbound, []
        back, self.nat.released_inbound = self.nat.released_inbound, []
        return [(True, p) for p in out] + [(False, p) for p in back]

    # -- the scenario ------------------------------------------------------------------------------

    def run(self) -> None:
        nat = self.nat
        nat.record_event(GatewayStarted, self.now, version=__version__, ext_addrs=nat.ext_addrs)
        for session, (name, addr) in enumerate(self.clients, 1):
            nat.open_session(
                self.now,
                session=session,
                client=name,
                vpn_addr=addr,
                fingerprint=f"sha256:{session:064x}",
                remote_addr="192.0.2.1",
                remote_port=40000 + session,
            )
            self.router.attach(addr, name)
        self.flush_events()
        first, second = self.clients[0], self.clients[min(1, len(self.clients) - 1)]

        self.say("DNS, HTTP, ping and a fragmented datagram from each client:")
        for name, addr in self.clients:
            self.dns(name, addr)
            self.http(name, addr)
            self.ping(name, addr)
            self.fragmented(name, addr)
            self.now += S // 100

        self.say("\nAnti-spoofing and policy:")
        self.send(first[0], first[1], P.build_udp(first[1] + 100, DNS_SERVER, 1234, 53, b"spoofed"))
        self.send(
            first[0], first[1], P.build_tcp(first[1], aton("169.254.169.254"), 40000, 80, flags=P.TCP_SYN)
        )
        self.say("\nA stranger knocks (address-and-port-dependent filtering):")
        m = nat.lookup_internal(17, first[1], 40000)
        if m is not None:
            self.receive(P.build_udp(aton("203.0.113.66"), m.ext_addr, 4444, m.ext_port, b"knock"))
        if second is not first:
            self.hole_punch(first, second)

        self.say("\nSix minutes later, the idle mappings end:")
        self.snapshot()
        self.now += 360 * S
        nat.expire(self.now)
        self.flush_events()
        reasons = Counter(e.reason for e in self.journaled if isinstance(e, MappingExpired))
        self.say(f"  expired: {dict(reasons)}; {len(nat)} mappings left")
        self.say("\nA new round of DNS, then the gateway crashes (no clean stop):")
        for name, addr in self.clients:
            self.dns(name, addr, sport=41000)
        self.now += S

    def dns(self, name: str, addr: int, sport: int = 40000) -> None:
        q = self.send(name, addr, P.build_udp(addr, DNS_SERVER, sport, 53, b"\x12\x34\x01\x00example.test A"))
        if q is not None:
            self.receive(P.build_udp(DNS_SERVER, _src_addr(q), 53, _sport(q), b"\x12\x34\x81\x80answer"))

    def http(self, name: str, addr: int) -> None:
        syn = self.send(
            name,
            addr,
            P.build_tcp(addr, WEB_SERVER, 50000, 80, flags=P.TCP_SYN, seq=1000, options=P.mss_option(1460)),
        )
        if syn is None:
            return
        ext, port = _src_addr(syn), _sport(syn)
        self.receive(
            P.build_tcp(
                WEB_SERVER,
                ext,
                80,
                port,
                flags=P.TCP_SYN | P.TCP_ACK_FLAG,
                seq=5000,
                ack=1001,
                options=P.mss_option(1460),
            )
        )
        self.send(
            name,
            addr,
            P.build_tcp(addr, WEB_SERVER, 50000, 80, seq=1001, ack=5001, payload=b"GET / HTTP/1.1\r\n\r\n"),
        )
        self.receive(
            P.build_tcp(
                WEB_SERVER, ext, 80, port, seq=5001, ack=1019, payload=b"HTTP/1.1 200 OK\r\n\r\nhello"
            )
        )
        self.send(
            name,
            addr,
            P.build_tcp(addr, WEB_SERVER, 50000, 80, flags=P.TCP_FIN | P.TCP_ACK_FLAG, seq=1019, ack=5025),
        )
        self.receive(
            P.build_tcp(WEB_SERVER, ext, 80, port, flags=P.TCP_FIN | P.TCP_ACK_FLAG, seq=5025, ack=1020)
        )

    def ping(self, name: str, addr: int) -> None:
        req = self.send(name, addr, P.build_icmp_echo(addr, ECHO_SERVER, 0x4242, 1, b"ping"))
        if req is not None:
            ident = P.get_u16(req, 24)[0]
            self.receive(P.build_icmp_echo(ECHO_SERVER, _src_addr(req), ident, 1, b"ping", reply=True))

    def fragmented(self, name: str, addr: int) -> None:
        """3000 bytes of UDP in three fragments, sent last-first: the early ones wait for the first."""
        frags = P.fragment(P.build_udp(addr, ECHO_SERVER, 7000, 7, b"U" * 3000, ident=addr & 0xFFFF), 1400)
        for f in reversed(frags):
            self.send(name, addr, f)

    def hole_punch(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        """Two clients reach each other through their public endpoints (hairpinning, RFC 4787 REQ-9)."""
        nat = self.nat
        self.say(f"\n{a[0]} and {b[0]} punch a hole to each other through the NAT (hairpinning):")
        for name, addr in (a, b):  # each first talks to the rendezvous server, learning its public endpoint
            self.send(name, addr, P.build_udp(addr, ECHO_SERVER, 6000, 3478, b"where am I?"))
        ma, mb = nat.lookup_internal(17, a[1], 6000), nat.lookup_internal(17, b[1], 6000)
        if ma is None or mb is None:
            return
        self.send(a[0], a[1], P.build_udp(a[1], mb.ext_addr, 6000, mb.ext_port, b"hi, from a"))  # filtered
        self.send(b[0], b[1], P.build_udp(b[1], ma.ext_addr, 6000, ma.ext_port, b"hi, from b"))  # passes
        self.send(a[0], a[1], P.build_udp(a[1], mb.ext_addr, 6000, mb.ext_port, b"hi again"))  # now passes

    def snapshot(self) -> None:
        self.writer.submit_snapshot(self.nat.snapshot_view(self.now))


def run_demo(journal: str | None, clients: int, keep: bool, quiet: bool) -> int:
    if not 1 <= clients <= 200:
        raise UsageError(f"--clients {clients}: choose 1 to 200 clients")
    tmp = None
    if journal is None:
        tmp = tempfile.mkdtemp(prefix="gw-demo-")
        journal_dir = Path(tmp) / "journal"
    else:
        journal_dir = Path(journal)
        if journal_dir.exists() and any(journal_dir.iterdir()):
            raise UsageError(f"--journal {journal}: the directory is not empty; the demo needs a fresh one")
    try:
        return _run(journal_dir, clients, quiet, keep or journal is not None)
    finally:
        if tmp is not None and not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(journal_dir: Path, clients: int, quiet: bool, kept: bool) -> int:
    print(f"gw {__version__}, NAT fast path: {fast_path()}")
    demo = Demo(journal_dir, clients, quiet)
    demo.run()
    seen = demo.journaled
    nat = demo.nat
    demo.writer.flush()
    demo.writer.close()  # the files are durable; no GatewayStopped: to recovery this is a crash

    created = [e for e in seen if isinstance(e, MappingCreated)]
    print("\nSummary")
    print(
        f"  clients {clients}, events journaled {len(seen)}, mappings created {len(created)}, live {len(nat)}"
    )
    drops = {P.Drop(i).name.lower(): n for i, n in enumerate(nat.drops) if n and i}
    print(
        f"  NAT drops and holds: {drops or 'none'}; router: "
        f"{ {_verdict_name(i): n for i, n in enumerate(demo.router.counts) if n} }"
    )
    size = sum(p.stat().st_size for p in journal_dir.iterdir() if p.is_file())
    print(f"  journal: {journal_dir} ({size} bytes on disk)")

    # the gateway comes back ten minutes later, as a daemon would: fold the journal, then resume
    rec = recovery.load(journal_dir)
    restored = Nat.restore(demo.config, rec.snapshot, rec.events)
    same = restored.table_state() == nat.table_state()
    print(
        f"  recovery: snapshot at seq {rec.snapshot.upto_seq if rec.snapshot else '-'}, "
        f"{len(rec.events)} events folded, clean stop: {rec.clean}; "
        f"{len(restored)} mappings restored, same table and external ports: {'yes' if same else 'NO'}"
    )
    for note in rec.notes:
        print(f"  recovery note: {note}")
    restart = demo.now + 600 * S
    writer = JournalWriter(journal_dir, fsync="interval")
    writer.start()
    restored.record_event(
        GatewayStarted,
        restart,
        version=__version__,
        ext_addrs=restored.ext_addrs,
        recovered=True,
        unclean=not rec.clean,
    )
    down_since = rec.down_since_ns if rec.down_since_ns is not None else restart
    stale = restored.resume(restart, down_since)
    writer.submit(restored.events)
    writer.close()
    print(
        f"  restart 10 minutes later: {stale} mappings idle past their timeout ended "
        f"(stale_at_recovery); their ports rest {demo.config.port_reuse_delay_s} s from the restart"
    )

    last_dns = [e for e in created if e.proto == 17 and e.int_port == 41000]
    if last_dns:
        e = last_dns[0]
        at = (e.at_ns + S // 2) // 1_000_000 * 1_000_000  # whole milliseconds: the asked time is exact
        endpoint = f"{ntoa(e.ext_addr)}:{e.ext_port}/udp"
        at_text = f"{at // S}.{at % S // 1_000_000:03d}"
        print(f"\nThe abuse desk asks: who held {endpoint} at {at_text} (epoch seconds)?")
        print(f"  $ gw-audit {journal_dir} who {endpoint} --at {at_text}")
        journal = Journal(journal_dir)  # what gw-audit reads, in process: the same query and answer
        holders = find_holders(journal, e.ext_addr, e.ext_port, e.proto, at)
        lines = [line for n, h in enumerate(holders) for line in ([""] if n else []) + describe(h, at)]
        if not holders:
            lines = [f"nobody held {endpoint} at {format_time(at)}"]
        lines += [f"gw-audit: note: {note}" for note in journal.notes]
        for line in lines:
            print(f"  {line}")
    if kept:
        print(
            f"\nThe journal is kept: try  gw-replay {journal_dir} timeline  or  gw-replay {journal_dir} stats"
        )
    return 0 if same else 1


def _describe(pkt: bytes | bytearray) -> str:
    if len(pkt) < 20:
        return "(runt)"
    proto = pkt[9]
    frag = P.get_u16(pkt, P.IP_FRAG)[0]
    if frag & P.IP_OFFSET_MASK or proto not in (6, 17):
        tag = " frag" if frag & P.IP_FRAG_MASK else ""
        return f"{PROTO_NAMES.get(proto, proto)}{tag} {ntoa(_src_addr(pkt))} -> {ntoa(P.get_u32(pkt, 16)[0])}"
    return f"{PROTO_NAMES[proto]} {_src(pkt)} -> {_dst(pkt)}"


def _src_addr(pkt: bytes | bytearray) -> int:
    return P.get_u32(pkt, P.IP_SRC)[0]


def _sport(pkt: bytes | bytearray) -> int:
    return P.get_u16(pkt, P.ip_header_len(pkt))[0]


def _src(pkt: bytes | bytearray) -> str:
    if pkt[9] in (6, 17) and not P.get_u16(pkt, P.IP_FRAG)[0] & P.IP_OFFSET_MASK:
        return f"{ntoa(_src_addr(pkt))}:{_sport(pkt)}"
    return ntoa(_src_addr(pkt))


def _dst(pkt: bytes | bytearray) -> str:
    addr = ntoa(P.get_u32(pkt, P.IP_DST)[0])
    if pkt[9] in (6, 17):
        return f"{addr}:{P.get_u16(pkt, P.ip_header_len(pkt) + 2)[0]}"
    return addr


def _verdict_name(v: int) -> str:
    return outcome_name(v)
