"""A hostile client leaves the gateway serving the others, end to end in a ``LabWorld``: the real daemon
and the real clients alice (c1) and bob (c2) as processes, and a hostile script beside alice in c1.

- garbage on the tunnel, before and after a welcome, is answered with a CLOSE frame of the right code
  and the end of that connection, within seconds; the other sessions do not notice;
- a flood of connections that never say hello holds at most ``MAX_HANDSHAKES`` handshake slots, the rest
  are closed at accept, the sessions keep working, and once the flood ends its descriptors are gone and a
  new client gets in;
- a client that stops reading costs the gateway at most its send cap: its packets are dropped and
  counted, the gateway's memory stays bounded and the other sessions keep working.

Every load is bounded in count and time; every packet goes to an address inside the lab (the gateway's
tunnel ends 192.0.2.1 / 192.0.2.5, or a VPN address 10.66.77.x). The hostile scripts are functions of
``gw.lab.hostile`` run in a fresh interpreter inside a namespace (``_CHILD``), by ``world.run``
(bounded by a timeout) or ``world.spawn`` (ended by PID in ``world.down``).
"""

from __future__ import annotations

import json
import time

import pytest

from gw.lab.hostile import (
    C1_TUNNEL,
    add_client,
    assert_serving,
    blast,
    call,
    flood,
    gateway_pid,
    hostile_frames,
    log_lines,
    open_fds,
    rss_bytes,
    sessions,
    slow_reader,
    spawn,
    status,
    wait_exit,
    wait_for_line,
)
from gw.lab.world import TUNNEL_PORT
from gw.transport.endpoint import MAX_BUFFERED, MAX_HANDSHAKES
from gw.transport.wire import Close
from tests.netns.conftest import require_netns

pytestmark = pytest.mark.netns
CLOSED_WITHIN_S = 3.0  # a hostile connection must be answered and ended within this
PROTOCOL_ERRORS = {Close.PROTOCOL.name, Close.TOO_LARGE.name, Close.UNEXPECTED.name}


# ---------------------------------------------------------------------------------------- the tests


def test_garbage_frames_close_that_connection_with_its_code_and_the_others_carry_on(world):
    require_netns()
    eve = add_client(world, "eve")
    vpn = world.start()
    before = sessions(status(world))
    assert set(before) == {"alice", "bob"}

    got = call(world, "c1", hostile_frames, C1_TUNNEL, TUNNEL_PORT, str(eve.cert_path), str(eve.key_path),
               world.identities["gateway"].fingerprint)  # fmt: skip
    print(json.dumps(got, indent=1))

    expected = {"random": PROTOCOL_ERRORS, "huge_hello": {"TOO_LARGE"}, "huge_packets": {"TOO_LARGE"},
                "unknown_type": {"PROTOCOL"}, "bad_hello": {"PROTOCOL"}, "packets_first": {"UNEXPECTED"}}  # fmt: skip
    for case, codes in expected.items():
        r = got[case]
        assert r["challenge"], (case, r)
        assert r["close"] in codes, (case, r)  # the CLOSE frame came first, with the right code
        assert r["end"] in ("eof", "reset") and r["seconds"] < CLOSED_WITHIN_S, (case, r)
    assert got["plaintext"]["end"] in ("eof", "reset"), got["plaintext"]
    assert got["plaintext"]["seconds"] < CLOSED_WITHIN_S, got["plaintext"]
    late = got["huge_after_welcome"]  # a known client, past its handshake: the session's full-size reader
    assert late["vpn_addr"] not in vpn.values(), late
    assert late["close"] == "TOO_LARGE" and late["seconds"] < CLOSED_WITHIN_S, late

    assert_serving(world, vpn)
    after = status(world)
    assert after["tunnel"]["handshaking"] == 0, after["tunnel"]
    now = sessions(after)
    assert set(now) == {"alice", "bob"}  # eve's session is gone, alice's and bob's are the same ones
    assert {n: s["session"] for n, s in now.items()} == {n: s["session"] for n, s in before.items()}


def test_a_handshake_flood_is_capped_and_leaves_nothing_behind(world):
    require_netns()
    vpn = world.start()
    pid = gateway_pid(world)
    time.sleep(0.5)  # the clients' sessions settle
    baseline_fds = open_fds(pid)
    total, tcp_only_every, hold_s = 400, 5, 5.0  # 320 through TLS (> MAX_HANDSHAKES), 80 TCP only
    flooder = spawn(world, "c1", "flood", flood, C1_TUNNEL, TUNNEL_PORT, total, tcp_only_every, hold_s)

    most_handshaking = most_fds = 0
    held_doc = ping = None
    deadline = time.monotonic() + hold_s + 20
    while world.alive(flooder) and time.monotonic() < deadline:
        doc = status(world)
        most_handshaking = max(most_handshaking, doc["tunnel"]["handshaking"])
        most_fds = max(most_fds, open_fds(pid))
        if ping is None and any("ready" in line for line in log_lines(world, "flood")):
            ping = world.probe("c2", "ping", vpn["alice"], 3)  # bob -> alice while the flood is held
            held_doc = status(world)
        time.sleep(0.05)
    wait_exit(world, "flood", 5)
    ready = wait_for_line(world, "flood", "ready", 0)
    print(json.dumps({"flood": ready, "most_handshaking": most_handshaking, "baseline_fds": baseline_fds,
                      "most_fds": most_fds, "held": held_doc["tunnel"] if held_doc else None}))  # fmt: skip

    assert ready["ready"]["tls"] + ready["ready"]["tls_failed"] > MAX_HANDSHAKES, ready
    assert held_doc is not None and ping is not None, "the flood ended before it was held"
    assert 0 < most_handshaking <= MAX_HANDSHAKES
    assert held_doc["tunnel"]["handshaking"] <= MAX_HANDSHAKES, held_doc["tunnel"]
    assert held_doc["tunnel"]["refused_at_accept"] > 0, held_doc["tunnel"]
    assert ping["received"] == 3, ping
    assert set(sessions(held_doc)) == {"alice", "bob"}

    deadline = time.monotonic() + 10  # closing the flood's sockets frees its slots and descriptors
    while time.monotonic() < deadline:
        doc, fds = status(world), open_fds(pid)
        if doc["tunnel"]["handshaking"] == 0 and fds <= baseline_fds + 2:
            break
        time.sleep(0.1)
    assert doc["tunnel"]["handshaking"] == 0, doc["tunnel"]
    assert fds <= baseline_fds + 2, f"the gateway holds {fds} descriptors, {baseline_fds} before the flood"

    world.stop(world.process("alice"))  # a new session for alice, after the flood
    world.start_client("c1", "alice")
    alice = world.vpn_address("c1")
    assert alice == vpn["alice"]
    vpn["alice"] = alice
    assert_serving(world, vpn)
    assert world.probe("c2", "ping", alice, 3)["received"] == 3


def test_a_client_that_does_not_read_costs_its_send_cap_and_the_others_carry_on(world):
    require_netns()
    slow = add_client(world, "slow")
    vpn = world.start()
    pid = gateway_pid(world)
    hold_s, blast_s = 15.0, 5.0
    spawn(world, "c1", "slow", slow_reader, C1_TUNNEL, TUNNEL_PORT, str(slow.cert_path), str(slow.key_path),
          world.identities["gateway"].fingerprint, hold_s)  # fmt: skip
    slow_addr = wait_for_line(world, "slow", "vpn_addr", 10)["vpn_addr"]
    assert slow_addr not in vpn.values()
    assert_serving(world, vpn)  # warmed up: the baseline includes what alice and bob use
    baseline_rss = rss_bytes(pid)

    # from bob's namespace, to the slow client's VPN address: through bob's tunnel, the gateway, its tunnel
    blaster = spawn(world, "c2", "blast", blast, slow_addr, 9, 200_000, 1200, blast_s, 20_000)
    most_rss, echo, dropping = baseline_rss, None, None
    deadline = time.monotonic() + blast_s + 15
    while world.alive(blaster) and time.monotonic() < deadline:
        most_rss = max(most_rss, rss_bytes(pid))
        doc = status(world)
        if echo is None and sessions(doc).get("slow", {}).get("dropped", 0) > 0:
            dropping = doc
            echo = world.probe("c1", "udp_echo", vpn["bob"], 7, 10, 512)  # alice -> bob, while slow drops
            most_rss = max(most_rss, rss_bytes(pid))
        time.sleep(0.05)
    wait_exit(world, "blast", 5)
    blasted = log_lines(world, "blast")[-1]
    doc = status(world)
    most_rss = max(most_rss, rss_bytes(pid))
    print(json.dumps({"blast": blasted, "baseline_rss_mib": baseline_rss / 2**20, "most_rss_mib": most_rss / 2**20,
                      "sessions": doc["sessions"], "drops": doc["drops"]}))  # fmt: skip

    assert blasted["sent"] * 1200 > 8 * MAX_BUFFERED, blasted  # far more than the slow session may queue
    assert dropping is not None, "the slow session's packets were never dropped"
    assert echo is not None and echo["received"] == 10, echo
    now = sessions(doc)
    assert now["slow"]["dropped"] > 0, now["slow"]
    assert now["alice"]["dropped"] == 0 and now["bob"]["dropped"] == 0, now
    assert most_rss - baseline_rss < 64 << 20, f"RSS grew {(most_rss - baseline_rss) / 2**20:.1f} MiB"
    assert_serving(world, vpn)


def test_connections_that_never_start_tls_count_against_the_handshake_cap(world):
    """The endpoint's contract (gw/transport/endpoint.py): "at most ``max_handshakes`` connections may be
    in either [the TLS or the tunnel handshake] at once (more are closed at accept)". A bare TCP
    connection that never sends a ClientHello is in the TLS handshake: past the cap it must be closed
    at accept, not hold a descriptor (and a TLS object) until the TLS handshake timeout."""
    require_netns()
    vpn = world.start()
    pid = gateway_pid(world)
    time.sleep(0.5)  # the clients' sessions settle
    baseline_fds = open_fds(pid)
    total, hold_s = 400, 5.0
    spawn(world, "c1", "flood", flood, C1_TUNNEL, TUNNEL_PORT, total, 1, hold_s)  # every one TCP only
    ready = wait_for_line(world, "flood", "ready", 15)
    time.sleep(0.5)  # the gateway has taken (or refused) every connection the kernel accepted
    held_fds, held = open_fds(pid), status(world)
    ping = world.probe("c2", "ping", vpn["alice"], 3)  # bob -> alice while the flood is held
    wait_exit(world, "flood", hold_s + 10)
    deadline = time.monotonic() + 10
    while (fds := open_fds(pid)) > baseline_fds + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    print(json.dumps({"flood": ready, "baseline_fds": baseline_fds, "held_fds": held_fds, "after_fds": fds,
                      "held": held["tunnel"]}))  # fmt: skip

    assert ready["ready"]["tcp"] + ready["ready"]["tcp_failed"] == total, ready
    assert ping["received"] == 3, ping
    assert set(sessions(held)) == {"alice", "bob"}
    assert fds <= baseline_fds + 2, f"the gateway holds {fds} descriptors, {baseline_fds} before the flood"
    assert_serving(world, vpn)
    assert held["tunnel"]["handshaking"] <= MAX_HANDSHAKES, held["tunnel"]
    assert held_fds <= baseline_fds + MAX_HANDSHAKES + 8, (
        f"{total} bare TCP connections held {held_fds - baseline_fds} descriptors in the gateway "
        f"(cap {MAX_HANDSHAKES}); tunnel status {held['tunnel']}"
    )
    assert held["tunnel"]["refused_at_accept"] > 0, held["tunnel"]
