"""Crash survival: the gateway SIGKILLed again and again under load, restarted, and everything checked.

``sudo python -m bench.crash [--kills 20] [--audit strict|fast]``

In a lab (``gw.lab.world``, raw external gateway), while both clients carry traffic to the internet
host, the daemon is SIGKILLed at random moments (every ``--gap`` seconds, uniformly drawn) and started
again at once with the same configuration. The traffic, each a process inside a client namespace:

- steady flows: ``STEADY_FLOWS`` UDP flows per client, each one socket sending a datagram every 200 ms
  to the internet host's echo; the datagram size names the client and the flow, so the internet host's
  log says which public endpoint each flow had, datagram by datagram;
- churn: a new UDP flow (a new socket, one datagram, its answer) every 200 ms per client;
- downloads: alice downloads ``--download-mb`` over HTTP from the internet host again and again, each
  checked against its sha256, so every crash lands in the middle of one.

Then it checks, and prints each check with what it saw:

- the clients came back with the same VPN addresses (every ``SessionOpened`` of a client in the journal);
- every steady flow kept one public endpoint through every crash (its mapping was durable: restored),
  and was answered after the last restart;
- every download completed with the right sha256, and the downloads spanned the crashes;
- no public endpoint the internet host saw for one client was ever seen for the other, and
  ``gw-replay verify --reuse-delay`` passes (no endpoint handed to someone else within the delay);
- in strict mode, every public endpoint the internet host ever saw is in the journal;
- ``gw-audit who`` names the right client for steady flows before, across and after the crashes, and
  the journal names the right one for every churn flow.

And it measures: time to recovery (process start to the first packet the new process forwarded, from
its status counters), how many flows survived, and the datagrams lost around each crash. It ends with
one JSON line. Bounded: every process is stopped by its PID, and the lab is removed at the end, also on
failure and Ctrl-C. ``run`` is also what the CI test calls, with a few kills.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gw import inet
from gw.lab.world import ECHO_PORT, HTTP_PORT, INTERNET_HOST, INTERNET_WWW, LabWorld

ROOT = Path(__file__).resolve().parent.parent
STEADY_FLOWS = 8  # per client
STEADY_EVERY_S = 0.025  # one datagram per 25 ms, round robin: each flow every 200 ms
CHURN_EVERY_S = 0.2  # a new flow per client
ANSWER_WAIT_S = 1.0  # a churn flow's answer
SIZES = {"c1": 100, "c2": 200}  # steady flow i of a client sends SIZES[role] + i bytes
CHURN_SIZE = {"c1": 150, "c2": 250}
CLIENT_OF = {"c1": "alice", "c2": "bob"}
WARMUP_S, TAIL_S = 2.0, 3.0  # traffic before the first kill and after the last restart
RECOVERY_TIMEOUT_S = 15.0
REUSE_DELAY_S = 120


# ------------------------------------------------------------------ the traffic (inside a client namespace)
def steady(spec: dict) -> dict:
    """``--role steady``: STEADY_FLOWS sockets, round robin; what each sent and which sends went unanswered."""
    dst, end = (spec["dst"], spec["port"]), time.time() + spec["seconds"]
    socks = []
    for _ in range(STEADY_FLOWS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(("0.0.0.0", 0))
        socks.append(s)
    sent: list[dict[int, float]] = [{} for _ in socks]  # seq -> send time, until answered
    counts = [{"port": s.getsockname()[1], "sent": 0, "answered": 0, "last_answer": 0.0} for s in socks]
    seq, flow = 0, 0
    next_send = time.time()
    while time.time() < end + ANSWER_WAIT_S:
        now = time.time()
        if now >= next_send and now < end:
            size = spec["size"] + flow
            payload = seq.to_bytes(8, "big").ljust(size, b"s")
            try:
                socks[flow].sendto(payload, dst)
            except OSError:  # the route through the tunnel is down for a moment: lost like any other
                pass
            sent[flow][seq] = now
            counts[flow]["sent"] += 1
            seq, flow = seq + 1, (flow + 1) % STEADY_FLOWS
            next_send += STEADY_EVERY_S
        for i, s in enumerate(socks):
            while True:
                try:
                    data = s.recv(2048)
                except OSError:
                    break
                if sent[i].pop(int.from_bytes(data[:8], "big"), None) is not None:
                    counts[i]["answered"] += 1
                    counts[i]["last_answer"] = time.time()
        time.sleep(0.002)
    lost = sorted(t for flow_sent in sent for t in flow_sent.values())
    return {"flows": counts, "lost_at": lost}


def churn(spec: dict) -> dict:
    """``--role churn``: a new flow every CHURN_EVERY_S: (local port, send time, answered)."""
    dst, end, flows = (spec["dst"], spec["port"]), time.time() + spec["seconds"], []
    while time.time() < end:
        start = time.time()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(ANSWER_WAIT_S)
            try:
                s.sendto(b"c" * spec["size"], dst)
                s.recv(2048)
                answered = True
            except OSError:
                answered = False
            flows.append({"port": s.getsockname()[1], "at": start, "answered": answered})
        time.sleep(max(0.0, CHURN_EVERY_S - (time.time() - start)))
    return {"flows": flows}


def downloads(spec: dict) -> dict:
    """``--role downloads``: HTTP downloads one after the other until the time is up, each sha256-checked."""
    from gw.lab.probes import http_get
    from gw.lab.services import http_body_sha256

    want = http_body_sha256(spec["bytes"])
    end, done = time.time() + spec["seconds"], []
    while time.time() < end:
        start = time.time()
        try:
            r = http_get(spec["host"], spec["port"], f"/bytes/{spec['bytes']}", spec["timeout"])
        except (OSError, ValueError) as e:  # TimeoutError is an OSError
            r = {"error": f"{type(e).__name__}: {e}"}
        done.append({"start": start, "end": time.time(), "ok": r.get("sha256") == want and
                     r.get("bytes") == spec["bytes"], "error": r.get("error", "")})  # fmt: skip
    return {"downloads": done}


ROLES = {"steady": steady, "churn": churn, "downloads": downloads}


# ------------------------------------------------------------------ the driver
def _spawn(world: LabWorld, role: str, name: str, kind: str, spec: dict) -> dict:
    return world.spawn_command(role, name, sys.executable, "-m", "bench.crash", "--role", kind,
                               "--spec", json.dumps(spec))  # fmt: skip


def _result(world: LabWorld, record: dict, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while world.alive(record) and time.monotonic() < deadline:
        time.sleep(0.1)
    world.stop(record)
    lines = Path(record["log"]).read_text().splitlines()
    for line in reversed(lines):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{record['name']} gave no result:\n" + "\n".join(lines[-10:]))


def _first_forward(world: LabWorld, timeout_s: float) -> float | None:
    """Seconds from now until the new gateway process has forwarded a packet (its ``sent`` counter)."""
    from gw.status import query

    t0, deadline = time.monotonic(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if query(world.status_socket, timeout=1.0)["external"].get("sent", 0) > 0:
                return time.monotonic() - t0
        except Exception:  # noqa: BLE001 - not answering yet
            pass
        time.sleep(0.005)
    return None


def run(kills: int = 20, audit: str = "strict", gap: tuple[float, float] = (1.5, 2.5), download_mb: int = 300,
        seed: int | None = None, tag: str = "crash", directory: Path | None = None,
        progress=print) -> dict:  # fmt: skip
    """Build a lab, crash its gateway ``kills`` times under load, check and measure; returns the report."""
    rng = random.Random(seed)
    world = LabWorld(tag, directory=directory, external="raw")
    try:
        world.build()
        toml = world.gateway_toml.read_text().replace("[journal]\n", f'[journal]\naudit = "{audit}"\n', 1)
        world.gateway_toml.write_text(toml)
        vpn = world.start()
        progress(f"lab up, clients {vpn}; audit = {audit}; {kills} kills every {gap[0]}-{gap[1]} s")
        seconds = WARMUP_S + kills * (gap[1] + 1.5) + TAIL_S
        procs = {}
        for role in ("c1", "c2"):
            procs[f"steady-{role}"] = _spawn(world, role, f"steady-{role}", "steady", {
                "dst": INTERNET_HOST, "port": ECHO_PORT, "seconds": seconds, "size": SIZES[role]})
            procs[f"churn-{role}"] = _spawn(world, role, f"churn-{role}", "churn", {
                "dst": INTERNET_HOST, "port": ECHO_PORT, "seconds": seconds, "size": CHURN_SIZE[role]})
        procs["downloads"] = _spawn(world, "c1", "downloads", "downloads", {
            "host": INTERNET_WWW, "port": HTTP_PORT, "bytes": download_mb * 1_000_000, "seconds": seconds - TAIL_S,
            "timeout": 60})  # fmt: skip
        time.sleep(WARMUP_S)
        before = time.time()
        crashes = []
        for i in range(kills):
            time.sleep(rng.uniform(*gap))
            killed = time.time()
            world.stop(world.process("gateway"), signal.SIGKILL)
            started = time.monotonic()
            world.start_gateway(timeout_s=RECOVERY_TIMEOUT_S)
            up = time.monotonic() - started
            first = _first_forward(world, RECOVERY_TIMEOUT_S)
            recovery = None if first is None else up + first
            crashes.append({"killed_at": killed, "recovery_s": recovery, "listening_s": up})
            progress(f"kill {i + 1}/{kills}: back in {up:.2f} s, forwarding after "
                     f"{'never' if recovery is None else f'{recovery:.2f} s'}")  # fmt: skip
        after = time.time()
        results = {name: _result(world, rec, seconds + 90) for name, rec in procs.items()}
        return _report(world, audit, crashes, results, before, after, vpn)
    finally:
        world.down()


# ------------------------------------------------------------------ checks and figures
def _seen(world: LabWorld) -> list[tuple[int, str]]:
    lines = (world.dir / "internet.log").read_text().splitlines()
    return [(int(ln.split()[2]), ln.split()[-1]) for ln in lines if ln.startswith("udp echo")]


def _holder(journal, endpoint: str, at_ns: int) -> list[str]:
    from journal.holders import find_holders

    addr, _, port = endpoint.rpartition(":")
    return [h.record.client for h in find_holders(journal, inet.aton(addr), int(port), 17, at_ns)]


def _audit_cli(world: LabWorld, endpoint: str, at: float) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "tools.audit", "--json", str(world.journal), "who",
                          f"{endpoint}/udp", "--at", f"{at:.3f}"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)  # fmt: skip
    if out.returncode not in (0, 1):
        return [f"error: {out.stderr.strip()[:200]}"]
    return [h["client"] for h in json.loads(out.stdout)["holders"]]


def _report(world: LabWorld, audit: str, crashes: list[dict], results: dict, before: float, after: float,
            vpn: dict) -> dict:  # fmt: skip
    from journal.events import SessionOpened
    from journal.reader import Journal

    journal = Journal(world.journal)
    events = list(journal.events())
    checks: list[tuple[str, bool, str]] = []

    # the clients came back with their addresses
    opened: dict[str, set[str]] = {}
    for e in events:
        if type(e) is SessionOpened:
            opened.setdefault(e.client, set()).add(inet.ntoa(e.vpn_addr))
    sessions = {c: sum(1 for e in events if type(e) is SessionOpened and e.client == c) for c in opened}
    same = all(len(a) == 1 for a in opened.values()) and set(opened) == set(vpn)
    checks.append(("the clients reconnected with the same VPN addresses", same,
                   ", ".join(f"{c}: {sessions[c]} sessions, {sorted(a)}" for c, a in sorted(opened.items()))))

    # steady flows: one public endpoint each, answered after the last restart
    seen = _seen(world)
    by_size: dict[int, set[str]] = {}
    for size, endpoint in seen:
        by_size.setdefault(size, set()).add(endpoint)
    survived, total = 0, 0
    for role in ("c1", "c2"):
        for i, flow in enumerate(results[f"steady-{role}"]["flows"]):
            total += 1
            endpoints = by_size.get(SIZES[role] + i, set())
            if len(endpoints) == 1 and flow["last_answer"] > after:
                survived += 1
    checks.append(("every steady flow kept its public endpoint and went on after the last restart",
                   survived == total, f"{survived} of {total} flows"))

    # downloads
    done = results["downloads"]["downloads"]
    spanning = sum(1 for d in done if any(d["start"] < c["killed_at"] < d["end"] for c in crashes))
    bad = [d for d in done if not d["ok"]]
    checks.append(("every download completed with the right sha256, across the crashes",
                   not bad and spanning > 0,
                   f"{len(done) - len(bad)} of {len(done)} right, {spanning} spanned a crash"
                   + (f"; failed: {bad[0]['error'] or 'wrong sha256'}" if bad else "")))

    # no endpoint of one client seen for the other; verify
    mine = {role: {e for s, e in seen if s in range(SIZES[role], SIZES[role] + STEADY_FLOWS) or s == CHURN_SIZE[role]}
            for role in ("c1", "c2")}  # fmt: skip
    shared = mine["c1"] & mine["c2"]
    verify = subprocess.run([sys.executable, "-m", "tools.replay", str(world.journal), "verify", "--reuse-delay",
                             str(REUSE_DELAY_S)], capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    checks.append(("no public endpoint went to the other client; gw-replay verify passes",
                   not shared and verify.returncode == 0,
                   f"{len(mine['c1'])} endpoints alice, {len(mine['c2'])} bob, {len(shared)} shared; verify exit "
                   f"{verify.returncode}" + ("" if verify.returncode == 0 else f": {verify.stdout.strip()[-300:]}")))

    # strict: every endpoint the internet saw is in the journal
    now_ns = time.time_ns()
    endpoints = {e for _, e in seen}
    unattributed = [e for e in sorted(endpoints) if not _holder(journal, e, now_ns)]
    checks.append(("every public endpoint the internet host saw is in the journal", not unattributed,
                   f"{len(endpoints) - len(unattributed)} of {len(endpoints)}"
                   + ("" if audit == "strict" else " (fast mode: not promised)")))
    if audit != "strict":
        checks[-1] = (checks[-1][0], True, checks[-1][2])

    # gw-audit who: steady flows before, across and after the crashes; the journal for every churn flow
    wrong = []
    middle = crashes[len(crashes) // 2]["killed_at"] if crashes else before
    for role in ("c1", "c2"):
        endpoint = next(iter(by_size.get(SIZES[role], {""})))
        for at in (before, middle, after):
            if endpoint and _audit_cli(world, endpoint, at) != [CLIENT_OF[role]]:
                wrong.append(f"{endpoint} at {at:.1f}")
        for e in mine[role]:
            if _holder(journal, e, now_ns) not in ([CLIENT_OF[role]], []):
                wrong.append(e)
    checks.append(("gw-audit who names the right client before, across and after the crashes", not wrong,
                   f"{6 + len(mine['c1']) + len(mine['c2'])} questions" + (f"; wrong: {wrong[:3]}" if wrong else "")))

    # figures
    recoveries = [c["recovery_s"] for c in crashes if c["recovery_s"] is not None]
    lost_at = sorted(results["steady-c1"]["lost_at"] + results["steady-c2"]["lost_at"])
    per_crash = [sum(1 for t in lost_at if c["killed_at"] - 0.5 <= t <= c["killed_at"] + 10) for c in crashes]
    churn = [f for r in ("c1", "c2") for f in results[f"churn-{r}"]["flows"]]
    figures = {
        "kills": len(crashes),
        "recovery_s": _stats(recoveries),
        "never_recovered": len(crashes) - len(recoveries),
        "listening_s": _stats([c["listening_s"] for c in crashes]),
        "steady_flows_survived": survived,
        "steady_flows": total,
        "steady_datagrams_sent": sum(f["sent"] for r in ("c1", "c2") for f in results[f"steady-{r}"]["flows"]),
        "steady_datagrams_lost": len(lost_at),
        "lost_per_crash": _stats(per_crash),
        "lost_ms_per_crash": _stats([n * STEADY_EVERY_S * 1000 / 2 for n in per_crash]),  # two clients
        "churn_flows": len(churn),
        "churn_unanswered": sum(1 for f in churn if not f["answered"]),
        "downloads": len(done),
        "downloads_spanning_a_crash": spanning,
    }
    return {"audit": audit, "ok": all(ok for _, ok, _ in checks),
            "checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in checks], "figures": figures}


def _stats(values: list[float]) -> dict:
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}  # fmt: skip


def render(report: dict) -> str:
    lines = [f"bench.crash: {'all checks passed' if report['ok'] else 'FAILED'} (audit = {report['audit']})"]
    for c in report["checks"]:
        lines.append(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")
    f = report["figures"]
    r, lpc = f["recovery_s"], f["lost_per_crash"]
    lines += [
        f"  time to recovery (process start to first forwarded packet): median {r['median']} s "
        f"(min {r['min']}, max {r['max']}) over {f['kills']} kills; never: {f['never_recovered']}",
        f"  steady flows survived: {f['steady_flows_survived']} of {f['steady_flows']}; datagrams lost: "
        f"{f['steady_datagrams_lost']} of {f['steady_datagrams_sent']}; per crash median {lpc['median']} "
        f"(max {lpc['max']}), about {f['lost_ms_per_crash']['median']} ms of traffic",
        f"  churn flows: {f['churn_flows']}, unanswered {f['churn_unanswered']}; downloads: {f['downloads']}, "
        f"{f['downloads_spanning_a_crash']} spanning a crash",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crash", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the gateway (default 20)")
    parser.add_argument("--audit", choices=("strict", "fast"), default="strict", help="[journal] audit")
    parser.add_argument("--gap", type=float, nargs=2, default=(1.5, 2.5), metavar=("MIN", "MAX"),
                        help="seconds between kills, drawn uniformly (default 1.5 2.5)")  # fmt: skip
    parser.add_argument("--download-mb", type=int, default=300, help="each HTTP download (default 300 MB)")
    parser.add_argument("--seed", type=int, help="the kill times' random seed")
    parser.add_argument("--tag", default="crash", help="the lab's tag (default crash)")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)  # traffic, inside a client
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        print(json.dumps(ROLES[args.role](json.loads(args.spec))), flush=True)
        return 0
    if not 1 <= args.kills <= 1000:
        parser.error("--kills: 1 to 1000")

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        report = run(args.kills, args.audit, tuple(args.gap), args.download_mb, args.seed, args.tag,
                     progress=lambda s: print(f"bench.crash: {s}", file=sys.stderr, flush=True))  # fmt: skip
    except KeyboardInterrupt:
        print("bench.crash: interrupted; the lab is taken down", file=sys.stderr)
        return 130
    print(render(report))
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
