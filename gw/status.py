"""``gw status`` and the metrics: what the daemon is doing, from outside it.

The daemon keeps one status document (a dict of plain numbers and strings, ``Gateway.status()``) and
serves it two ways, both read-only:

- a Unix socket (``[status] socket``, mode 0600, so only its owner asks): connecting is the question,
  the answer is the document as one line of JSON; ``gw status`` prints it as tables or ``--json``.
- optionally, a Prometheus endpoint (``[metrics] listen``, off by default, loopback unless
  ``public = true``), through ``prometheus-client``. Its HTTP thread reads the document the event loop
  last published (``publish``), never the daemon's live tables, so a scrape cannot race the packet path.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from gw.errors import GwError

MAX_STATUS_BYTES = 4 << 20  # a status document with thousands of sessions is far below this


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
    table.add_row("handshakes in progress / refused at accept",
                  f"{doc['tunnel']['handshaking']} / {doc['tunnel']['refused_at_accept']:,}")  # fmt: skip
    if dns["enabled"]:
        table.add_row("DNS queries / answered / SERVFAIL", f"{dns['queries']:,} / {dns['answers']:,} / "
                      f"{dns['timeouts'] + dns['over_limit']:,}")  # fmt: skip
    for name, count in sorted(doc["counts"].items()):
        if count:
            table.add_row(name.replace("_", " "), f"{count:,}")
    console.print(table)
    drops = {k: v for k, v in doc["drops"].items() if v}
    if drops:
        t = Table(title="drops by reason", title_justify="left", show_header=False)
        t.add_column("reason")
        t.add_column("packets", justify="right")
        for reason, count in sorted(drops.items(), key=lambda kv: -kv[1]):
            t.add_row(reason, f"{count:,}")
        console.print(t)
    return out.getvalue()


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
        yield GaugeMetricFamily("gw_nat_mappings", "Live NAT mappings", value=doc["nat"]["mappings"])
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
