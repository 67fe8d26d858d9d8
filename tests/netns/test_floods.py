"""Floods the other clients must not notice, refused and counted, end to end in a raw-mode ``LabWorld``
(issue 13, "Floods" and "Refused and counted"): the real daemon on its own public address 198.51.100.1,
the real clients alice (c1) and bob (c2), the internet host behind the router.

- alice opens new UDP flows as fast as she may: she gets her quota of mappings, every new flow after it
  is refused (``quota`` drops) and one ``QuotaHit`` names her in the journal;
- the internet host sends fragments whose datagrams never complete (first fragments to alice's mapping,
  middle fragments whose first never comes, first fragments to no mapping), each with its own random IP
  identification: the NAT tracks at most its per-source share of them, drops and counts the rest, and
  the gateway's memory stays bounded;
- alice sends datagrams with forged sources through her TUN (``spoofed``), and the internet host sends
  to the public address from sources the internet cannot have: the VPN subnet and the public address
  itself (``martian``); none of the forged datagrams reaches the internet;
- the DNS proxy is no open resolver from outside the VPN in raw mode either (``test_lab`` checks socket
  mode): the public address, the host's address and the gateway's VPN address, over UDP and TCP.

And a datagram whose last fragment comes first reaches its client (the fragment is held until its first
fragment comes, then released; the daemon once never drained what the NAT released).

While each flood runs, bob (c2) gets a UDP echo and a small HTTP download from the internet host whole.
The floods are ``gw.lab.probes`` (``new_flows``, ``fragment_flood``, ``spoofed_flood``), paced and
bounded in count and time, started with ``world.spawn`` and ended by PID; the other tests of hostile
clients (garbage frames, handshake floods, a reader that stops) are in ``test_hostile``.
"""

from __future__ import annotations

import time

import pytest

from gw import inet
from gw.config import FRAGMENT_MAX_BYTES, FRAGMENT_MAX_DATAGRAMS_PER_SOURCE, MAX_MAPPINGS_PER_CLIENT
from gw.lab.hostile import (
    gateway_pid,
    journal_events,
    probe_result,
    public_port,
    rss_bytes,
    sessions,
    spawn_probe,
    status,
    wait_for_line,
)
from gw.lab.services import http_body_sha256
from gw.lab.world import (
    ECHO_PORT,
    GATEWAY_HOST,
    GATEWAY_SIDE,
    HTTP_PORT,
    INTERNET_HOST,
    INTERNET_WWW,
    RAW_PUBLIC,
    LabWorld,
)
from journal.events import QuotaHit
from tests.netns.conftest import require_netns

pytestmark = pytest.mark.netns

# each flood runs at least FLOOD_S and until bob's checks inside it are done (about a second on a quiet
# host; several on a slow one: a flood of a fixed 2 s once ended before them), at most FLOOD_MAX_S
FLOOD_S = 2.0
FLOOD_MAX_S = 30.0
STARTED_WITHIN_S = 10.0  # a flood probe prints "started" once its interpreter is up
ENDED_WITHIN_S = 10.0  # after its SIGTERM
LISTEN_AFTER_S = 1.0  # a listener hears this long past the floods' end (a leak would take a millisecond)
BOB_ECHOES = 10
BOB_HTTP_BYTES = 256 << 10
DISCARD_PORT = 9  # nothing listens there on the internet host
ALICE_PORT = 40000  # alice's UDP port whose mapping the fragments are sent to
STRAY_PORT = 33333  # a public port no mapping holds
VPN_GATEWAY = "10.66.77.1"  # the gateway's VPN address (the lab's default [vpn] subnet)
# what the floods' paths (a client's TUN and its gw client; the router; the gateway's AF_PACKET socket)
# may lose on a busy machine, in packets, before a count is called short: none were lost at 20,000/s here
PATH_LOSS_ALLOWANCE = 256
# the gateway's RSS may grow this much during the fragment flood: the NAT holds at most FRAGMENT_MAX_BYTES
# (4 MiB, the whole gateway; one source gets 1/16 of it) of early fragments and FRAGMENT_MAX_DATAGRAMS
# (4096) entries of a few hundred bytes (under 2 MiB), so even a table filled by every source stays
# under 6 MiB; the rest is the allocator's slack and bob's download (about 0.3 MiB measured). Without
# its limits the 30,000 fragments of this flood hold about 18 MiB (measured).
FRAGMENT_RSS_GROWTH = 8 << 20


def _bob(world: LabWorld) -> dict:
    """bob's UDP echo and HTTP download from the internet host, through his tunnel and the NAT."""
    return {
        "echo": world.probe("c2", "udp_echo", INTERNET_HOST, ECHO_PORT, BOB_ECHOES, 256),
        "http": world.probe("c2", "http_get", INTERNET_WWW, HTTP_PORT, f"/bytes/{BOB_HTTP_BYTES}"),
    }


def _assert_bob_carried_on(bob: dict) -> None:
    assert bob["echo"].get("received") == BOB_ECHOES, bob
    assert bob["http"].get("status") == 200, bob
    assert bob["http"]["sha256"] == http_body_sha256(BOB_HTTP_BYTES), bob


def _paced(rate_pps: int) -> tuple[int, int, float]:
    """A flood's count, rate and time bound: ``rate_pps`` for at most FLOOD_MAX_S (``_while_flooding``
    ends it sooner)."""
    return int(FLOOD_MAX_S * rate_pps), rate_pps, FLOOD_MAX_S


def _while_flooding(world: LabWorld, *floods: tuple, listeners: tuple[str, ...] = ()) -> tuple[list[dict], dict]:
    """Start each ``(role, name, probe, *args)`` flood, run bob's checks while all of them run, then end
    them (SIGTERM, by PID, once at least FLOOD_S has passed) and the ``listeners`` (background probes
    started before); the floods' results and bob's."""
    records = [spawn_probe(world, *flood) for flood in floods]
    for _, name, *_ in floods:
        wait_for_line(world, name, "started", STARTED_WITHIN_S)
    started = time.monotonic()
    bob = _bob(world)
    running = [world.alive(r) for r in records]
    time.sleep(max(0.0, FLOOD_S - (time.monotonic() - started)))
    for record in records:
        world.stop(record)
    time.sleep(LISTEN_AFTER_S)
    for name in listeners:
        world.stop(world.process(name))
    results = [probe_result(world, name, ENDED_WITHIN_S) for _, name, *_ in floods]
    for (_, name, *_), result, alive in zip(floods, results, running):
        assert "error" not in result, (name, result)
        assert alive, f"{name} ended before bob's checks did: the checks did not run during it ({result})"
    return results, bob


def _delta(before: dict, after: dict, key: str) -> int:
    return after["drops"].get(key, 0) - before["drops"].get(key, 0)


def _from_alice(before: dict, after: dict) -> int:
    """Packets alice's session brought the gateway between two status documents (the flood's alone: she
    sends nothing else meanwhile)."""
    return sessions(after)["alice"]["packets_in"] - sessions(before)["alice"]["packets_in"]


def test_a_client_opening_new_flows_gets_its_quota_then_refusals_and_bob_carries_on(raw_world):
    require_netns()
    vpn = raw_world.start()
    before = status(raw_world)
    (flood,), bob = _while_flooding(
        raw_world, ("c1", "new-flows", "new_flows", vpn["alice"], INTERNET_HOST, DISCARD_PORT, 1024,
                    *_paced(10_000)))  # fmt: skip
    after = status(raw_world)
    hits = [e for e in journal_events(raw_world) if type(e) is QuotaHit]
    print({"flood": flood, "bob": bob, "drops": after["drops"], "nat": after["nat"]["by_protocol"],
           "quota_hits": [str(h) for h in hits]})  # fmt: skip

    _assert_bob_carried_on(bob)
    arrived = _from_alice(before, after)  # what her TUN and her gw client did not lose on the way
    assert arrived > 2 * MAX_MAPPINGS_PER_CLIENT, (flood, arrived)  # far past the quota
    # every new flow past the quota is refused: counted, nothing evicted
    assert _delta(before, after, "quota") == arrived - MAX_MAPPINGS_PER_CLIENT, (arrived, after["drops"])
    # journaled once: alice stays at her quota (UDP mappings live 300 s)
    assert [(h.client, h.int_addr, h.proto, h.quota) for h in hits] == [
        ("alice", inet.aton(vpn["alice"]), 17, MAX_MAPPINGS_PER_CLIENT)
    ], hits
    mappings = after["nat"]["mappings"]  # alice's, and bob's few
    assert MAX_MAPPINGS_PER_CLIENT <= mappings <= MAX_MAPPINGS_PER_CLIENT + 8, after["nat"]


def test_an_inbound_fragment_flood_is_tracked_within_its_share_and_bob_carries_on(raw_world):
    require_netns()
    raw_world.start()
    ext_port = public_port(raw_world, "c1", ALICE_PORT, (INTERNET_HOST, ECHO_PORT))
    _assert_bob_carried_on(_bob(raw_world))  # warmed up: the baseline includes bob's download
    pid = gateway_pid(raw_world)
    before, rss_before = status(raw_world), rss_bytes(pid)
    # from alice's remote (address-and-port filtering lets it in), 15,000 fragments/s of 1,220 bytes
    (flood,), bob = _while_flooding(
        raw_world, ("inet", "fragments", "fragment_flood", INTERNET_HOST, RAW_PUBLIC, ECHO_PORT, ext_port,
                    STRAY_PORT, ["first", "later", "stray"], *_paced(15_000), 1200, 13))  # fmt: skip
    after, rss_after = status(raw_world), rss_bytes(pid)
    print({"flood": flood, "bob": bob, "drops": after["drops"], "external": after["external"],
           "rss_growth_mib": (rss_after - rss_before) / 2**20})  # fmt: skip

    _assert_bob_carried_on(bob)
    kinds = [len(range(k, flood["sent"] + flood["refused"], 3)) for k in range(3)]  # first, later, stray in turn
    assert min(kinds) > 4 * FRAGMENT_MAX_DATAGRAMS_PER_SOURCE, flood  # far past the share
    # every first fragment to no mapping is refused
    assert _delta(before, after, "no_mapping") >= kinds[2] - PATH_LOSS_ALLOWANCE, after["drops"]
    # a first fragment passes (to alice) and its datagram is tracked, a middle one is held, within the
    # source's share of FRAGMENT_MAX_DATAGRAMS_PER_SOURCE datagrams; past it each is counted in "fragment"
    # (held middle fragments are not drops, and neither are tracked first fragments)
    tracked = kinds[0] + kinds[1] - _delta(before, after, "fragment")
    assert tracked <= FRAGMENT_MAX_DATAGRAMS_PER_SOURCE + PATH_LOSS_ALLOWANCE, (kinds, after["drops"])
    assert rss_after - rss_before < FRAGMENT_RSS_GROWTH, f"RSS grew {(rss_after - rss_before) / 2**20:.1f} MiB"
    assert FRAGMENT_RSS_GROWTH > FRAGMENT_MAX_BYTES  # the bound above, as its comment reasons


def test_forged_sources_from_a_client_and_martians_from_the_internet_are_dropped_and_counted(raw_world):
    require_netns()
    vpn = raw_world.start()
    before = status(raw_world)
    forged = [vpn["bob"], "10.66.77.250", VPN_GATEWAY, "192.0.2.2", INTERNET_HOST, RAW_PUBLIC]  # not alice's
    martians = [vpn["alice"], VPN_GATEWAY, RAW_PUBLIC]  # the VPN subnet, the public address itself
    spawn_probe(raw_world, "inet", "listener", "udp_listen", INTERNET_HOST, DISCARD_PORT, FLOOD_MAX_S + 3)
    time.sleep(0.5)  # it listens before anything is sent (its interpreter starts in about 0.3 s)
    (spoofed, martian), bob = _while_flooding(
        raw_world,
        ("c1", "spoofed", "spoofed_flood", forged, INTERNET_HOST, DISCARD_PORT, *_paced(10_000)),
        ("inet", "martians", "spoofed_flood", martians, RAW_PUBLIC, STRAY_PORT, *_paced(5_000)),
        listeners=("listener",),
    )  # fmt: skip
    leaked = probe_result(raw_world, "listener", ENDED_WITHIN_S)["received"]
    after = status(raw_world)
    print({"spoofed": spoofed, "martians": martian, "bob": bob, "drops": after["drops"],
           "routes": after["routes"], "leaked": len(leaked)})  # fmt: skip

    _assert_bob_carried_on(bob)
    assert leaked == [], f"{len(leaked)} forged datagrams reached the internet host, e.g. {leaked[:3]}"
    arrived = _from_alice(before, after)
    assert arrived >= spoofed["sent"] - PATH_LOSS_ALLOWANCE, (spoofed, arrived)
    assert _delta(before, after, "spoofed") == arrived, (arrived, after["drops"])  # every one of them
    assert _delta(before, after, "martian") >= martian["sent"] - PATH_LOSS_ALLOWANCE, (martian, after["drops"])


def test_the_dns_proxy_is_no_open_resolver_from_outside_the_vpn_in_raw_mode(raw_world):
    """``test_lab`` asks the host's address (socket mode) and the client link; in raw mode the gateway also
    has its own public address, and the internet may route the VPN subnet to the gateway host, whose
    kernel owns the gateway's VPN address (its host TUN), where the proxy's TCP listener is bound."""
    require_netns()
    raw_world.start()
    raw_world.run("rtr", "ip", "route", "add", "10.66.77.0/24", "via", GATEWAY_HOST)
    before = status(raw_world)
    asked = {  # all at once: each unanswered one waits its 3 s
        "public-udp": ("inet", RAW_PUBLIC, False),
        "public-tcp": ("inet", RAW_PUBLIC, True),
        "host-udp": ("inet", GATEWAY_HOST, False),
        "host-tcp": ("inet", GATEWAY_HOST, True),
        "vpn-udp": ("inet", VPN_GATEWAY, False),
        "vpn-tcp": ("inet", VPN_GATEWAY, True),
        "link-udp": ("c1", GATEWAY_SIDE["c1"], False),  # alice, outside her tunnel
        "inside": ("c1", VPN_GATEWAY, False),  # the control: alice through her tunnel
    }
    for name, (role, server, tcp) in asked.items():
        spawn_probe(raw_world, role, name, "dns", server, "www.lab.example", tcp)
    got = {name: probe_result(raw_world, name, 15) for name in asked}
    after = status(raw_world)
    print({"answers": got, "dns": after["dns"], "drops": after["drops"]})

    assert got["inside"].get("answers") == [INTERNET_WWW], got["inside"]
    for name, r in got.items():
        if name != "inside":
            assert "error" in r, f"{name}: answered from outside the VPN: {r}"
    assert after["dns"]["queries"] - before["dns"]["queries"] == 1  # alice's alone reached the proxy
    assert after["dns"]["tcp_refused"] - before["dns"]["tcp_refused"] >= 1  # vpn-tcp: accepted, then refused
    assert _delta(before, after, "no_mapping") >= 2  # public-udp and public-tcp: no mapping there
    dns_log = [ln for ln in (raw_world.dir / "dns.log").read_text().splitlines() if ln.startswith("dns ")]
    assert len(dns_log) == 1, dns_log  # the upstream saw alice's query alone



REORDERED_PAIRS = 10  # datagrams of two fragments each


def test_a_datagram_whose_last_fragment_comes_first_reaches_the_client(raw_world):
    require_netns()
    vpn = raw_world.start()
    ext_port = public_port(raw_world, "c1", ALICE_PORT, (INTERNET_HOST, ECHO_PORT))
    got = {}
    for kind in ("whole", "reordered"):  # the control: the same datagrams, their fragments in order
        spawn_probe(raw_world, "c1", f"alice-{kind}", "udp_listen", vpn["alice"], ALICE_PORT, 1.5)
        time.sleep(0.5)  # alice listens before anything is sent
        sent = raw_world.probe("inet", "fragment_flood", INTERNET_HOST, RAW_PUBLIC, ECHO_PORT, ext_port, STRAY_PORT,
                               [kind], 2 * REORDERED_PAIRS, 1000, 2.0)  # fmt: skip
        assert sent.get("sent") == 2 * REORDERED_PAIRS, sent
        got[kind] = len(probe_result(raw_world, f"alice-{kind}", 10)["received"])
    print({"datagrams received": got, "drops": status(raw_world)["drops"]})
    assert got["whole"] == REORDERED_PAIRS, got
    assert got["reordered"] == REORDERED_PAIRS, got
