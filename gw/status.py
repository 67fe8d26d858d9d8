"""``gw status`` and the metrics: what the daemon is doing, from outside it.

The daemon keeps one status document (a dict of plain numbers and strings, ``Gateway.status()``) and
serves it two ways, both read-only:

- a Unix socket (``[status] socket``, mode 0600, so only its owner asks): connecting is the question,
  the answer is the document as one line of JSON; ``gw status`` prints it as tables or ``--json``.
- optionally, a Prometheus endpoint (``[metrics] listen``, off by default, loopback unless
  ``public = true``), through ``prometheus-client``. Its HTTP thread reads the document the event loop
  last published (``publish``), never the daemon's live tables, so a scrape cannot race the packet path.

The NAT's part of the document is ``nat_figures(nat)``. The daemon builds it once a second and for
each ``gw status``, so it never walks the table. Mappings by protocol come from the port pool: each
mapping holds one port of its (protocol, public address), and those are counted at C speed, 64 KiB per
address and protocol. While a lazy restore is loading its rows, the per-protocol counts still include
every row, because the NAT counts its pending rows by protocol. Pool use covers only the rows loaded so
far (``restoring`` is then true).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gw import inet
from gw.errors import GwError
from gw.packet import PROTO_ICMP, PROTO_TCP, PROTO_UDP
from gw.verdict import Drop

if TYPE_CHECKING:
    from rich.table import Table

    from gw.nat import Nat

MAX_STATUS_BYTES = 4 << 20  # a status document with thousands of sessions is far below this
PROTOCOLS = {PROTO_UDP: "udp", PROTO_TCP: "tcp", PROTO_ICMP: "icmp"}  # the NAT's protocols, in table order


class StatusError(GwError):
    """The daemon's status could not be read."""


class StatusServer:
    """Answers each connection to a Unix socket with ``collect()`` as JSON, then closes it."""

    def __init__(self, path: str | os.PathLike[str], collect: Callable[[], dict]) -> None:
        self.path, self.collect = Path(path), collect
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen (replacing a stale socket file). Raises StatusError naming the path."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.path.is_socket():
                self.path.unlink()
            old_mask = os.umask(0o177)  # the socket file is made 0600
            try:
                self._server = await asyncio.start_unix_server(self._answer, str(self.path))
            finally:
                os.umask(old_mask)
        except OSError as e:
            raise StatusError(f"[status] socket = \"{self.path}\": cannot listen: {e.strerror or e}") from None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self.collect()).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), 5)
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self.path.unlink(missing_ok=True)


def query(path: str | os.PathLike[str], timeout: float = 5.0) -> dict:
    """The status document of the daemon listening on ``path``. Raises StatusError with the fix."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise StatusError(f"{path}: no status socket (is gw serve running with this configuration?)") from None
        except OSError as e:
            raise StatusError(f"{path}: cannot connect: {e.strerror or e} (is gw serve running?)") from None
        data = b""
        try:
            while len(data) < MAX_STATUS_BYTES and (chunk := s.recv(1 << 16)):
                data += chunk
        except TimeoutError:
            raise StatusError(f"{path}: the daemon did not answer in {timeout:g} s") from None
    try:
        return json.loads(data)
    except ValueError:
        raise StatusError(f"{path}: not a gw status answer ({len(data)} bytes)") from None


def nat_figures(nat: Nat) -> dict:
    """The NAT's part of the status document, as plain data. It does not walk the table (see the module
    docstring). Its cost is 0.05-0.13 ms per public address and protocol, whatever the number of
    mappings: 8 ms for 1e6 mappings on 20 addresses here, where a walk of the table takes 180 ms.

    ``mappings``: live mappings (pending rows included). ``by_protocol``: the same, by protocol name.
    ``pools``: per public address, then per protocol: ``used`` ports of ``port_range`` (held or resting:
    a new flow cannot have them), ``size`` of ``port_range``, and ``mappings`` on that address and
    protocol (in any range). ``drops``: the NAT's own drop counters by reason, zeros included so that each
    metric series exists from the start (``Drop.HELD`` counts held fragments, which are not drops, so
    it is left out).
    """
    by_protocol = {label: nat.pending_by_proto.get(proto, 0) for proto, label in PROTOCOLS.items()}
    pools: dict[str, dict[str, dict[str, int]]] = {}
    size = nat.ports.span
    order = {proto: i for i, proto in enumerate(PROTOCOLS)}  # udp, tcp, icmp within each address
    for proto, addr, held, used in sorted(nat.ports.usage(), key=lambda u: (u[1], order.get(u[0], 3))):
        label = PROTOCOLS.get(proto)
        if label is not None:  # the pool has arrays for these alone, unless a journal named another
            by_protocol[label] += held
            pools.setdefault(inet.ntoa(addr), {})[label] = {"used": used, "size": size, "mappings": held}
    drops = nat.drops
    return {
        "mappings": len(nat),
        "by_protocol": by_protocol,
        "pools": pools,
        "restoring": nat.restoring,
        "drops": {d.name.lower(): drops[d] for d in Drop if d is not Drop.HELD},
    }


EXTERNAL_LEVELS = frozenset({"sockets", "max_sockets"})  # the external gateway's figures that go down as well


def render(doc: dict) -> str:
    """The status document as tables for a terminal."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    out = StringIO()
    console = Console(file=out, width=110, force_terminal=False)
    g = doc["gateway"]
    console.print(
        f"gw {g['version']} up {_duration(g['uptime_s'])}, tunnel {g['listen']}, "
        f"VPN {g['subnet']} (gateway {g['address']})"
    )
    sessions = Table(title=f"sessions ({len(doc['sessions'])})", title_justify="left")
    for col in ("client", "VPN address", "from", "up", "packets in", "bytes in", "packets out", "bytes out",
                "dropped", "offloads"):  # fmt: skip
        sessions.add_column(col, justify="left" if col in ("client", "VPN address", "from") else "right")
    for s in doc["sessions"]:
        sessions.add_row(s["client"], s["vpn_addr"], s["peer"], _duration(s["up_s"]), f"{s['packets_in']:,}",
                         _bytes(s["bytes_in"]), f"{s['packets_out']:,}", _bytes(s["bytes_out"]),
                         f"{s['dropped']:,}", "on" if s["offloads"] else "off")  # fmt: skip
    console.print(sessions)
    table = Table(title="gateway", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    nat, journal, dns = doc["nat"], doc["journal"], doc["dns"]
    table.add_row("NAT mappings", f"{nat['mappings']:,}" + (" (restoring)" if nat["restoring"] else ""))
    table.add_row("journal: last seq / durable", f"{journal['last_seq']:,} / {journal['durable_seq']:,}")
    table.add_row("journal lag (events not yet durable)", f"{journal['lag_events']:,}")
    if journal["error"]:
        table.add_row("journal error", journal["error"])
    ext, audit = doc.get("external", {}), doc.get("audit", {})
    if ext.get("mode", "none") != "none":
        where = ext.get("interface", "") or "host sockets"
        table.add_row(f"external: {ext['mode']} ({where})",
                      " / ".join(f"{k.replace('_', ' ')} {ext[k]:,}" for k in ("sent", "received", "send_failed",
                                                                               "sockets") if k in ext))  # fmt: skip
        if ext.get("next_hop"):
            table.add_row("external: next hop", f"{ext['next_hop']} at {ext.get('next_hop_mac') or 'unresolved'}")
    if audit:
        waiting = f"{audit.get('waiting', 0):,} packets waiting for the journal"
        table.add_row(f"audit: {audit['mode']}",
                      "refusing new flows (journal cannot write)" if audit.get("refusing_new_flows") else waiting)
    table.add_row("handshakes in progress / refused at accept",
                  f"{doc['tunnel']['handshaking']} / {doc['tunnel']['refused_at_accept']:,}")  # fmt: skip
    if dns["enabled"]:
        table.add_row("DNS queries / answered / SERVFAIL", f"{dns['queries']:,} / {dns['answers']:,} / "
                      f"{dns['timeouts'] + dns['over_limit']:,}")  # fmt: skip
    for name, count in sorted(doc["counts"].items()):
        if count:
            table.add_row(name.replace("_", " "), f"{count:,}")
    console.print(table)
    if "by_protocol" in nat:  # a daemon from before these figures sends only the total
        console.print(_nat_table(nat))
    drops = {k: v for k, v in doc["drops"].items() if v}
    if drops:
        t = Table(title="drops by reason", title_justify="left", show_header=False)
        t.add_column("reason")
        t.add_column("packets", justify="right")
        for reason, count in sorted(drops.items(), key=lambda kv: -kv[1]):
            t.add_row(reason, f"{count:,}")
        console.print(t)
    return out.getvalue()


def _nat_table(nat: dict) -> Table:
    """Mappings by protocol, then the port pool's use per public address: one column per protocol."""
    from rich.table import Table

    title = "NAT" + (" (restoring: pool use counts the rows loaded so far)" if nat["restoring"] else "")
    t = Table(title=title, title_justify="left")
    t.add_column("")
    for label in PROTOCOLS.values():
        t.add_column(label, justify="right")
    t.add_row("mappings", *(f"{nat['by_protocol'].get(label, 0):,}" for label in PROTOCOLS.values()))
    for addr, pool in nat["pools"].items():
        t.add_row(f"{addr} ports used", *(_use(pool.get(label)) for label in PROTOCOLS.values()))
    return t


def _use(pool: dict | None) -> str:
    """'used/size (pct%)' for one protocol's ports on one public address."""
    if not pool or not pool["size"]:
        return "-"
    used, size = pool["used"], pool["size"]
    return f"{used:,}/{size:,} ({100 * used / size:.1f}%)"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d{s % 86400 // 3600:02d}h" if s >= 86400 else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ------------------------------------------------------------------------------------------ metrics


class Metrics:
    """A Prometheus endpoint over the status document the loop last published."""

    def __init__(self, listen: str) -> None:
        self.doc: dict | None = None
        self.listen = listen

    def publish(self, doc: dict) -> None:
        """Called on the loop: the next scrape reads this document (one reference swap, no lock)."""
        self.doc = doc

    def start(self) -> None:
        """Serve /metrics on ``listen`` in prometheus-client's own thread. Raises StatusError."""
        from prometheus_client import start_http_server
        from prometheus_client.registry import CollectorRegistry

        registry = CollectorRegistry()
        registry.register(self)
        host, _, port = self.listen.rpartition(":")
        try:
            start_http_server(int(port), addr=host, registry=registry)
        except OSError as e:
            raise StatusError(f"[metrics] listen = \"{self.listen}\": {e.strerror or e}") from None

    def collect(self):  # the prometheus-client Collector protocol
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        doc = self.doc
        if doc is None:
            return
        yield GaugeMetricFamily("gw_sessions", "Open tunnel sessions", value=len(doc["sessions"]))
        for direction in ("in", "out"):
            c = CounterMetricFamily(f"gw_session_bytes_{direction}", f"Tunnel payload bytes {direction}",
                                    labels=["client"])  # fmt: skip
            for s in doc["sessions"]:
                c.add_metric([s["client"]], s[f"bytes_{direction}"])
            yield c
        yield from _nat_metrics(doc["nat"])
        drops = CounterMetricFamily("gw_drops", "Packets dropped, by reason", labels=["reason"])
        for reason, count in doc["drops"].items():
            drops.add_metric([reason], count)
        yield drops
        j = doc["journal"]
        yield GaugeMetricFamily("gw_journal_lag_events", "Journal events not yet durable", value=j["lag_events"])
        yield GaugeMetricFamily("gw_journal_ok", "1 unless the journal writer reports an error",
                                value=0 if j["error"] else 1)  # fmt: skip
        dns = CounterMetricFamily("gw_dns", "DNS proxy outcomes", labels=["outcome"])
        for key in ("queries", "answers", "timeouts", "over_limit", "malformed", "mismatched", "refused"):
            dns.add_metric([key], doc["dns"].get(key, 0))
        yield dns
        events = CounterMetricFamily("gw_events", "Gateway data-path events", labels=["event"])
        for key, count in doc["counts"].items():
            events.add_metric([key], count)
        yield events
        external = CounterMetricFamily("gw_external", "External gateway counters", labels=["mode", "counter"])
        levels = GaugeMetricFamily("gw_external_level", "External gateway levels", labels=["mode", "level"])
        ext = doc.get("external", {})
        for key, value in ext.items():
            if isinstance(value, int) and not isinstance(value, bool):
                family = levels if key in EXTERNAL_LEVELS else external
                family.add_metric([ext.get("mode", "none"), key], value)
        yield external
        yield levels
        audit = doc.get("audit", {})
        yield GaugeMetricFamily("gw_audit_refusing_new_flows", "1 while new flows are refused (journal)",
                                value=1 if audit.get("refusing_new_flows") else 0)  # fmt: skip
        yield GaugeMetricFamily("gw_audit_waiting_packets", "Packets waiting for their mapping to be durable",
                                value=audit.get("waiting", 0))  # fmt: skip


def _nat_metrics(nat: dict):
    """The NAT's gauges and counters, from ``nat_figures``' part of the document."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if "by_protocol" not in nat:  # a document without nat_figures: the total alone, as before
        yield GaugeMetricFamily("gw_nat_mappings", "Live NAT mappings", value=nat["mappings"])
        return
    mappings = GaugeMetricFamily("gw_nat_mappings", "Live NAT mappings, by protocol", labels=["protocol"])
    for label, count in nat["by_protocol"].items():
        mappings.add_metric([label], count)
    yield mappings
    yield GaugeMetricFamily("gw_nat_restoring", "1 while a lazy restore is still loading the NAT table",
                            value=1 if nat["restoring"] else 0)  # fmt: skip
    used = GaugeMetricFamily("gw_nat_pool_ports_used", "Ports of port_range held or resting",
                             labels=["address", "protocol"])  # fmt: skip
    size = GaugeMetricFamily("gw_nat_pool_ports_size", "Ports in port_range", labels=["address", "protocol"])
    for addr, pool in nat["pools"].items():
        for label, use in pool.items():
            used.add_metric([addr, label], use["used"])
            size.add_metric([addr, label], use["size"])
    yield used
    yield size
    drops = CounterMetricFamily("gw_nat_drops", "Packets the NAT dropped, by reason", labels=["reason"])
    for reason, count in nat.get("drops", {}).items():
        drops.add_metric([reason], count)
    yield drops
