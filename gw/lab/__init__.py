"""``gw lab``: the whole VPN in throwaway network namespaces, exercised and reported.

``run_lab`` builds the world (``gw.lab.world``), starts the real daemon, the real clients and the lab's
servers as processes, runs the checks (``CHECKS``) from inside the namespaces (``gw.lab.probes``),
prints what went through, and removes everything it made, on success, failure and Ctrl-C alike,
unless asked to keep it (``--keep``; ``--down`` removes a kept lab).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable

from gw import inet
from gw.lab.world import (
    CLIENTS,
    ECHO_PORT,
    GATEWAY_HOST,
    HTTP_PORT,
    INTERNET_HOST,
    INTERNET_WWW,
    LabError,
    LabWorld,
)
from journal.holders import find_holders
from journal.reader import Journal

GATEWAY_VPN = "10.66.77.1"
DNS_NAME, DNS_ADDRESS = "www.lab.example", "203.0.113.80"
TCP_ECHO_BYTES = 8 << 20
HTTP_BYTES = 20_000_000


def _checks(world: LabWorld, vpn: dict[str, str]) -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    alice, bob = vpn["alice"], vpn["bob"]

    def ping(role: str, dst: str) -> tuple[bool, str]:
        r = world.probe(role, "ping", dst, 3)
        return r.get("received") == 3, _detail(r, lambda: f"3/3 replies, rtt {_median(r['rtt_ms'])} ms")

    def dns(tcp: bool) -> tuple[bool, str]:
        r = world.probe("c1", "dns", GATEWAY_VPN, DNS_NAME, tcp)
        ok = r.get("answers") == [DNS_ADDRESS]
        return ok, _detail(r, lambda: f"{DNS_NAME} = {', '.join(r['answers']) or 'rcode ' + str(r['rcode'])} "
                                      f"in {r['ms']:.1f} ms")  # fmt: skip

    def dns_source() -> tuple[bool, str]:
        lines = [ln for ln in (world.dir / "dns.log").read_text().splitlines() if ln.startswith("dns ")]
        sources = {ln.split()[3].rpartition(":")[0] for ln in lines}
        return sources == {GATEWAY_HOST}, f"{len(lines)} queries, all from {', '.join(sorted(sources)) or 'nobody'}"

    def udp() -> tuple[bool, str]:
        r = world.probe("c1", "udp_echo", bob, ECHO_PORT, 10, 512)
        return r.get("received") == 10, _detail(r, lambda: f"10/10 datagrams back, rtt {r['median_ms']} ms")

    def tcp() -> tuple[bool, str]:
        r = world.probe("c1", "tcp_echo", bob, ECHO_PORT, TCP_ECHO_BYTES)
        ok = r.get("same") is True and r.get("bytes") == TCP_ECHO_BYTES
        return ok, _detail(r, lambda: f"{TCP_ECHO_BYTES >> 20} MiB there and back, sha256 equal, "
                                      f"{r['mbit_s']:.0f} Mbit/s")  # fmt: skip

    def internet_udp() -> tuple[bool, str]:
        r = world.probe("c1", "udp_echo", INTERNET_HOST, ECHO_PORT, 10, 512)
        return r.get("received") == 10, _detail(r, lambda: f"10/10 datagrams back through the NAT, rtt "
                                                           f"{r['median_ms']} ms")  # fmt: skip

    def internet_http() -> tuple[bool, str]:
        from gw.lab.services import http_body_sha256

        r = world.probe("c1", "http_get", INTERNET_WWW, HTTP_PORT, f"/bytes/{HTTP_BYTES}", 20)
        ok = r.get("status") == 200 and r.get("sha256") == http_body_sha256(HTTP_BYTES)
        return ok, _detail(r, lambda: f"{HTTP_BYTES // 1_000_000} MB, sha256 right, {r['mbit_s']:.0f} Mbit/s "
                                      "across the 1280-byte link")  # fmt: skip

    def internet_ping() -> tuple[bool, str]:
        r = world.probe("c1", "ping", INTERNET_HOST, 3)
        return r.get("received") == 3, _detail(r, lambda: f"3/3 replies, rtt {_median(r['rtt_ms'])} ms")

    def audit() -> tuple[bool, str]:
        """The abuse desk's question about the public endpoint the internet host saw last."""
        seen = [ln.split()[-1] for ln in (world.dir / "internet.log").read_text().splitlines()
                if ln.startswith("udp echo")]  # fmt: skip
        if not seen:
            return False, "the internet host saw no datagram"
        addr, _, port = seen[-1].rpartition(":")
        at = time.time_ns()
        journal = Journal(world.journal)  # what gw-audit reads, in process: the same query and answer
        holders = find_holders(journal, inet.aton(addr), int(port), 17, at)
        clients = [h.record.client for h in holders]
        return clients == ["alice"], (f"gw-audit {world.journal} who {seen[-1]}/udp --at {at / 1e9:.3f}: "
                                      f"{', '.join(clients) or 'nobody'}")  # fmt: skip

    def status() -> tuple[bool, str]:
        from gw.status import query

        doc = query(world.status_socket)
        names = sorted(s["client"] for s in doc["sessions"])
        return names == sorted(CLIENTS.values()), (
            f"sessions {', '.join(names)}; {doc['dns']['queries']} DNS queries; "
            f"{doc['counts']['echo_replies']} echo replies; drops {sum(doc['drops'].values())}"
        )

    checks = [
        (f"alice ({alice}) pings the gateway {GATEWAY_VPN}", lambda: ping("c1", GATEWAY_VPN)),
        (f"bob ({bob}) pings alice through the gateway", lambda: ping("c2", alice)),
        ("alice resolves through the DNS proxy, UDP", lambda: dns(False)),
        ("alice resolves through the DNS proxy, TCP", lambda: dns(True)),
        ("the internet's DNS server saw only the gateway", dns_source),
        ("alice -> bob UDP echo", udp),
        ("alice -> bob TCP echo", tcp),
        (f"alice -> the internet host {INTERNET_HOST}, UDP echo", internet_udp),
        (f"alice pings the internet host {INTERNET_HOST}", internet_ping),
    ]
    if world.external == "raw":  # TCP to the internet: the raw gateway carries it (socket mode: a later step)
        checks.append((f"alice downloads {HTTP_BYTES // 1_000_000} MB over HTTP from www ({INTERNET_WWW})",
                       internet_http))  # fmt: skip
    return checks + [
        ("the abuse desk asks who held the public endpoint the internet host saw", audit),
        ("gw status", status),
    ]


def _detail(result: dict, ok: Callable[[], str]) -> str:
    if "error" in result:
        return result["error"]
    try:
        return ok()
    except (KeyError, TypeError, ValueError):
        return json.dumps(result)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else float("nan")


def _progress(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"gw lab: {text}", file=sys.stderr, flush=True)


def run_lab(*, keep: bool = False, as_json: bool = False, down: bool = False, tag: str = "lab",
            offloads: bool = True, external: str = "raw") -> int:  # fmt: skip
    """``gw lab``; returns the exit status (0: every check passed)."""
    if down:
        world = LabWorld.load(tag)
        left = world.down()
        if left:
            raise LabError("could not remove: " + "; ".join(left))
        print(f"gw lab: lab {tag!r} removed")
        return 0

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupted)
    world = LabWorld(tag, offloads=offloads, external=external)
    results: list[dict] = []
    try:
        t0 = time.monotonic()
        _progress(as_json, f"building namespaces {', '.join(world.ns.values())}")
        world.build()
        _progress(as_json, f"starting the DNS, echo and HTTP servers, gw serve ({external} external gateway, "
                           f"public {world.public}), gw connect x2")  # fmt: skip
        vpn = world.start()
        _progress(as_json, f"clients up: {', '.join(f'{n} {a}' for n, a in vpn.items())}")
        for label, check in _checks(world, vpn):
            try:
                ok, detail = check()
            except (LabError, OSError, ValueError, KeyError) as e:
                ok, detail = False, str(e).splitlines()[0]
            results.append({"check": label, "ok": ok, "detail": detail})
            _progress(as_json, f"{'ok  ' if ok else 'FAIL'} {label}: {detail}")
        passed = all(r["ok"] for r in results)
        report = {"ok": passed, "seconds": round(time.monotonic() - t0, 1), "checks": results, "vpn": vpn}
        report["journal"] = _journal_summary(world)
        if keep:
            report["lab"] = world.describe()
        if not passed:
            report["logs"] = {n: world.log_tail(n) for n in ("gateway", *CLIENTS.values())}
        if as_json:
            print(json.dumps(report, indent=1))
        else:
            _print_report(report, world)
        return 0 if passed else 1
    except KeyboardInterrupt:
        keep = False
        print("gw lab: interrupted; removing the lab", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
        if not keep:
            left = world.down()
            if left:
                print(f"gw lab: could not remove: {'; '.join(left)}", file=sys.stderr)


def _journal_summary(world: LabWorld) -> dict:
    from journal import recovery

    try:
        events = recovery.load(world.journal, truncate_torn_tail=False).events
    except Exception as e:  # noqa: BLE001 - a summary line, never a reason to fail the lab
        return {"error": str(e)}
    kinds: dict[str, int] = {}
    for e in events:
        kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
    opened = [f"{e.client} {inet.ntoa(e.vpn_addr)} (session {e.session})" for e in events
              if type(e).__name__ == "SessionOpened"]
    return {"events": kinds, "sessions": opened}


def _print_report(report: dict, world: LabWorld) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"gw lab: {'all checks passed' if report['ok'] else 'FAILED'} in {report['seconds']} s",
                  title_justify="left")  # fmt: skip
    table.add_column("", width=4)
    table.add_column("check")
    table.add_column("what went through")
    for r in report["checks"]:
        table.add_row("ok" if r["ok"] else "FAIL", r["check"], r["detail"])
    console.print(table)
    j = report["journal"]
    if "error" not in j:
        console.print("journal: " + ", ".join(f"{k} {v}" for k, v in sorted(j["events"].items())))
        for s in j["sessions"]:
            console.print(f"  SessionOpened {s}")
    for name, tail in report.get("logs", {}).items():
        console.print(f"--- {name}.log (last lines)\n{tail}", markup=False)
    if "lab" in report:
        console.print(f"kept: {json.dumps(report['lab'], indent=1)}", markup=False)
        console.print(f"take it down with: gw lab --down --tag {world.tag}")
