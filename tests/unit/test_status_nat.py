"""gw.status.nat_figures: the NAT's mappings by protocol, port-pool use per public address and drops. They
are checked against a walk of the table (the oracle), live and after every kind of restore. render() and
Metrics.collect show them. Each NAT test runs on the Python fast paths and, when built, on the compiled
ones, whose ``create`` fills the table without going through ``Nat._insert``."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from gw import packet as P
from gw.nat import COMPILED, FORWARD, RESTORE_SLICE, Nat
from gw.packet import Drop
from gw.status import PROTOCOLS, Metrics, nat_figures, render
from journal.segments import read_snapshot, write_snapshot
from tests.helpers.packets import CLIENT, CLIENT_B, NS, PUBLIC, PUBLIC_2, SERVER, A, nat_config, ntoa

C, CB, PUB, PUB2, SRV = A(CLIENT), A(CLIENT_B), A(PUBLIC), A(PUBLIC_2), A(SERVER)
T0 = 1_700_000_000 * NS
UDP, TCP, ICMP = P.PROTO_UDP, P.PROTO_TCP, P.PROTO_ICMP
SPAN = 65535 - 1024 + 1  # the default port_range, 1024-65535
CONFIG = {"external_addresses": [PUBLIC, PUBLIC_2], "max_mappings_per_client": 20_000}
PATHS = [False, True] if COMPILED else [False]
paths = pytest.mark.parametrize("compiled", PATHS, ids=["python", "compiled"][: len(PATHS)])


def at(seconds: float) -> int:
    return T0 + int(seconds * NS)


def new_nat(compiled: bool, **overrides: object) -> Nat:
    return Nat(nat_config(**{**CONFIG, **overrides}), random.Random(7), compiled=compiled)


def walked(nat: Nat) -> dict:
    """The figures nat_figures gives, from a walk of the whole table (loading any pending rows)."""
    by_protocol = dict.fromkeys(PROTOCOLS.values(), 0)
    per_address: Counter[tuple[str, str]] = Counter()
    for m in nat.mappings():
        label = PROTOCOLS[m.key >> 48]
        by_protocol[label] += 1
        per_address[ntoa(m.ext_key >> 16 & 0xFFFFFFFF), label] += 1
    return {"mappings": sum(by_protocol.values()), "by_protocol": by_protocol, "per_address": per_address}


def mapping_figures(fig: dict) -> dict:
    """The part of nat_figures a walk can check: totals, by protocol and each address's mappings."""
    pools = fig["pools"]
    per_address = Counter(
        {(a, label): u["mappings"] for a, pool in pools.items() for label, u in pool.items()}
    )
    return {"mappings": fig["mappings"], "by_protocol": fig["by_protocol"], "per_address": +per_address}


def traffic(nat: Nat, now: int) -> None:
    """Client A: 3 UDP flows, 2 TCP SYNs and a ping. Client B (paired with the other address): 1 UDP, 1 ping."""
    for sport in (40001, 40002, 40003):
        assert nat.translate_outbound(P.build_udp(C, SRV, sport, 53, b"q"), now) == FORWARD
    for sport in (50001, 50002):
        assert nat.translate_outbound(P.build_tcp(C, SRV, sport, 443, flags=P.TCP_SYN), now) == FORWARD
    assert nat.translate_outbound(P.build_icmp_echo(C, SRV, 77, 1, b"x"), now) == FORWARD
    assert nat.translate_outbound(P.build_udp(CB, SRV, 40001, 53, b"q"), now) == FORWARD
    assert nat.translate_outbound(P.build_icmp_echo(CB, SRV, 78, 1, b"x"), now) == FORWARD


# ---------------------------------------------------------------------------------- live


@paths
def test_figures_count_mappings_by_protocol_and_pool_use_per_address(compiled):
    nat = new_nat(compiled)
    fig = nat_figures(nat)
    assert fig["mappings"] == 0 and fig["by_protocol"] == {"udp": 0, "tcp": 0, "icmp": 0}
    assert fig["pools"][PUBLIC]["udp"] == {"used": 0, "size": SPAN, "mappings": 0}
    traffic(nat, at(0))
    fig = nat_figures(nat)
    assert fig["mappings"] == len(nat) == 8
    assert fig["by_protocol"] == {"udp": 4, "tcp": 2, "icmp": 2}
    assert fig["restoring"] is False
    assert list(fig["pools"]) == [PUBLIC, PUBLIC_2]  # by address, each with udp, tcp, icmp in that order
    assert list(fig["pools"][PUBLIC]) == ["udp", "tcp", "icmp"]
    assert fig["pools"][PUBLIC] == {
        "udp": {"used": 3, "size": SPAN, "mappings": 3},
        "tcp": {"used": 2, "size": SPAN, "mappings": 2},
        "icmp": {"used": 1, "size": SPAN, "mappings": 1},
    }
    assert fig["pools"][PUBLIC_2]["udp"] == {"used": 1, "size": SPAN, "mappings": 1}
    assert fig["pools"][PUBLIC_2]["tcp"] == {"used": 0, "size": SPAN, "mappings": 0}
    assert mapping_figures(fig) == walked(nat)


@paths
def test_expiry_lowers_the_counts_and_a_resting_port_stays_used_until_its_rest_ends(compiled):
    nat = new_nat(compiled)  # ICMP 60 s, TCP transitory 240 s, UDP 300 s; ports rest 120 s
    traffic(nat, at(0))
    while nat.expire(at(61)):
        pass
    fig = nat_figures(nat)
    assert fig["by_protocol"] == {"udp": 4, "tcp": 2, "icmp": 0}
    assert fig["pools"][PUBLIC]["icmp"] == {"used": 1, "size": SPAN, "mappings": 0}  # resting
    assert mapping_figures(fig) == walked(nat)
    while nat.expire(at(241)):
        pass
    fig = nat_figures(nat)
    assert fig["by_protocol"] == {"udp": 4, "tcp": 0, "icmp": 0}
    assert fig["pools"][PUBLIC]["icmp"]["used"] == 0  # rested 120 s from 61 s
    assert fig["pools"][PUBLIC]["tcp"] == {"used": 2, "size": SPAN, "mappings": 0}
    assert mapping_figures(fig) == walked(nat)
    while nat.expire(at(400)):
        pass
    fig = nat_figures(nat)
    assert fig["mappings"] == 0 and fig["by_protocol"] == {"udp": 0, "tcp": 0, "icmp": 0}
    assert mapping_figures(fig) == walked(nat)


@paths
def test_a_closed_session_and_a_caller_chosen_port_are_counted(compiled):
    nat = Nat(nat_config(**CONFIG), random.Random(7), compiled=compiled, caller_ports=True)
    nat.open_session(at(0), session=1, client="alice", vpn_addr=C)
    assert nat.create_mapping(UDP, C, 40001, 33333, at(0)).ext_key & 0xFFFF == 33333
    assert nat.create_mapping(TCP, C, 50001, 44444, at(0)).ext_key & 0xFFFF == 44444
    assert nat.create_mapping(ICMP, C, 77, 555, at(0)).ext_key & 0xFFFF == 555  # below port_range
    fig = nat_figures(nat)
    assert fig["by_protocol"] == {"udp": 1, "tcp": 1, "icmp": 1}
    assert fig["pools"][PUBLIC]["icmp"] == {"used": 0, "size": SPAN, "mappings": 1}  # not of port_range
    nat.close_session(at(1), 1, "closed")
    assert nat_figures(nat)["by_protocol"] == {"udp": 0, "tcp": 0, "icmp": 0}


@paths
def test_the_nat_s_drops_are_reported_by_reason_and_held_fragments_are_not_drops(compiled):
    nat = new_nat(compiled)
    reply = P.build_udp(SRV, PUB, 53, 12345, b"nobody asked")
    assert nat.translate_inbound(reply, at(0)) == Drop.NO_MAPPING
    assert nat.translate_outbound(bytearray(b"\x45" + bytes(10)), at(0)) == Drop.TRUNCATED
    drops = nat_figures(nat)["drops"]
    assert drops["no_mapping"] == 1 and drops["truncated"] == 1
    # zeros too, so that each series exists from the start
    assert set(drops) == {d.name.lower() for d in Drop} - {"held"}
    assert sum(drops.values()) == 2


@paths
def test_nat_figures_does_not_walk_the_table(compiled):
    nat = new_nat(compiled)
    traffic(nat, at(0))

    class NoWalk(dict):
        def _walk(self, *args: object) -> None:
            raise AssertionError("nat_figures walked the table")

        __iter__ = values = items = keys = _walk

    nat.by_ext, nat.by_int = NoWalk(nat.by_ext), NoWalk(nat.by_int)
    assert nat_figures(nat)["by_protocol"] == {"udp": 4, "tcp": 2, "icmp": 2}


# ---------------------------------------------------------------------------------- restored


def _snapshot_file(nat: Nat, tmp_path, now: int):
    """The snapshot as a restarting gateway reads it: from a file (packed columns)."""
    return read_snapshot(write_snapshot(tmp_path, nat.snapshot_view(now).build(), fsync=False))


def _same_mappings_and_pools(a: Nat, b: Nat) -> None:
    fa, fb = nat_figures(a), nat_figures(b)
    assert {k: fa[k] for k in ("mappings", "by_protocol", "pools")} == {
        k: fb[k] for k in ("mappings", "by_protocol", "pools")
    }


@paths
def test_a_folded_or_restored_nat_reports_the_live_figures(tmp_path, compiled):
    live = new_nat(compiled)
    traffic(live, at(0))
    while live.expire(at(61)):  # the pings end; their ports rest
        pass
    folded = Nat.restore(live.config, None, live.events, random.Random(1), compiled=compiled)
    _same_mappings_and_pools(folded, live)
    restored = Nat.restore(live.config, _snapshot_file(live, tmp_path, at(62)), [], random.Random(1),
                           compiled=compiled)  # fmt: skip
    _same_mappings_and_pools(restored, live)
    assert mapping_figures(nat_figures(restored)) == walked(live)


@paths
def test_a_lazy_restore_reports_every_row_by_protocol_while_its_rows_load(tmp_path, compiled):
    live = new_nat(compiled)
    for i in range(2 * RESTORE_SLICE + 500):  # several slices, both addresses
        src = C + i % 50
        assert live.translate_outbound(P.build_udp(src, SRV, 10000 + i // 50, 53, b"q"), at(0)) == FORWARD
        if i % 7 == 0:
            syn = P.build_tcp(src, SRV, 20000 + i // 50, 443, flags=P.TCP_SYN)
            assert live.translate_outbound(syn, at(0)) == FORWARD
        if i % 11 == 0:
            ping = P.build_icmp_echo(src, SRV, 3000 + i // 50, 1, b"x")
            assert live.translate_outbound(ping, at(0)) == FORWARD
    expected = walked(live)
    assert expected["by_protocol"]["tcp"] and expected["by_protocol"]["icmp"]
    snap = _snapshot_file(live, tmp_path, at(1))

    nat = Nat.restore(live.config, snap, [], random.Random(1), lazy=True, compiled=compiled)
    fig = nat_figures(nat)
    assert nat.restoring and fig["restoring"] and not nat.by_ext  # nothing loaded yet
    assert fig["mappings"] == expected["mappings"] and fig["by_protocol"] == expected["by_protocol"]
    assert fig["pools"][PUBLIC]["udp"]["mappings"] == 0  # pool use counts the rows loaded so far
    # rows ahead of the background cursor, loaded by packets: the slices that reach them must not count
    # them again
    for i in (77, RESTORE_SLICE + 5, 2 * RESTORE_SLICE + 10):  # each with a UDP, a TCP and an ICMP row
        src, sport = C + i % 50, 10000 + i // 50
        assert nat.translate_outbound(P.build_udp(src, SRV, sport, 53, b"again"), at(2)) == FORWARD
        assert nat.translate_outbound(P.build_icmp_echo(src, SRV, 3000 + i // 50, 2, b"x"), at(2)) == FORWARD
    assert nat_figures(nat)["by_protocol"] == expected["by_protocol"]
    calls = 0
    while nat.expire(at(2)):
        calls += 1
        fig = nat_figures(nat)
        assert fig["mappings"] == expected["mappings"] and fig["by_protocol"] == expected["by_protocol"]
    assert calls >= 2 and not nat.restoring
    _same_mappings_and_pools(nat, live)


@paths
def test_a_lazy_restore_counts_the_journal_s_later_events_and_the_rows_resume_ends(tmp_path, compiled):
    live = new_nat(compiled)
    traffic(live, at(0))
    snap = _snapshot_file(live, tmp_path, at(1))
    live.events.clear()
    # after the snapshot: one UDP flow ends (its row is pending at restore), a new TCP flow starts
    udp = live.lookup_internal(UDP, C, 40002)
    live._expire_mapping(udp, at(2), "idle")
    assert live.translate_outbound(P.build_tcp(C, SRV, 50009, 443, flags=P.TCP_SYN), at(2)) == FORWARD
    nat = Nat.restore(live.config, snap, live.events, random.Random(1), lazy=True, compiled=compiled)
    assert nat.restoring
    assert nat_figures(nat)["by_protocol"] == walked(live)["by_protocol"] == {"udp": 3, "tcp": 3, "icmp": 2}
    # restarted 200 s after the last event: the pings (60 s) are stale, the rest live on
    nat.resume(at(202), at(2) + nat.wall_offset)
    while nat.expire(at(202)):
        pass
    fig = nat_figures(nat)
    assert fig["by_protocol"] == {"udp": 3, "tcp": 3, "icmp": 0} and fig["mappings"] == 6
    assert mapping_figures(fig) == walked(nat)


# ---------------------------------------------------------------------------------- render and metrics


def document(nat_part: dict, lag: int = 0) -> dict:
    """A status document as ``Gateway.status`` builds it, with ``nat_part`` as its "nat"."""
    return {
        "gateway": {
            "version": "0",
            "uptime_s": 5.0,
            "listen": "0.0.0.0:4443",
            "subnet": "10.66.77.0/24",
            "address": "10.66.77.1",
            "host_device": "",
        },
        "sessions": [],
        "tunnel": {"handshaking": 0, "refused_at_accept": 0, "accept_errors": 0},
        "nat": nat_part,
        "drops": {"no_mapping": 1},
        "routes": {},
        "counts": {},
        "external": {"mode": "none"},
        "dns": {"enabled": False},
        "journal": {
            "directory": "/tmp/j",
            "last_seq": 10 + lag,
            "durable_seq": 10,
            "lag_events": lag,
            "error": "",
        },
    }


def _scrape(doc: dict) -> str:
    metrics = Metrics("127.0.0.1:0")
    metrics.publish(doc)
    registry = CollectorRegistry()
    registry.register(metrics)
    return generate_latest(registry).decode()


def test_render_shows_mappings_by_protocol_and_pool_use_per_address():
    nat = new_nat(False)
    traffic(nat, at(0))
    text = render(document(nat_figures(nat)))
    section = text[text.index("\nNAT ") :]
    rows = [line.replace("│", " ").replace("┃", " ").split() for line in section.splitlines()]
    assert ["udp", "tcp", "icmp"] in rows and ["mappings", "4", "2", "2"] in rows
    size = f"{SPAN:,}"  # 64,512
    assert [PUBLIC, "ports", "used", *f"3/{size} (0.0%) 2/{size} (0.0%) 1/{size} (0.0%)".split()] in rows
    assert [PUBLIC_2, "ports", "used", *f"1/{size} (0.0%) 0/{size} (0.0%) 1/{size} (0.0%)".split()] in rows
    assert "NAT mappings" in text  # the gateway table's total, as before
    nat_restoring = {**nat_figures(nat), "restoring": True}
    assert "restoring: pool use counts the rows loaded so far" in render(document(nat_restoring))


def test_render_reads_a_document_without_the_nat_figures():
    text = render(document({"mappings": 5, "restoring": False}))  # an older daemon's answer
    assert "NAT mappings" in text and "ports used" not in text


def test_metrics_export_the_nat_figures_and_the_journal_lag():
    nat = new_nat(False)
    traffic(nat, at(0))
    assert nat.translate_inbound(P.build_udp(SRV, PUB, 53, 12345, b"?"), at(0)) == Drop.NO_MAPPING
    text = _scrape(document(nat_figures(nat), lag=7))
    lines = set(text.splitlines())
    for label, n in (("udp", 4), ("tcp", 2), ("icmp", 2)):
        assert f'gw_nat_mappings{{protocol="{label}"}} {n}.0' in lines
    assert f'gw_nat_pool_ports_used{{address="{PUBLIC}",protocol="udp"}} 3.0' in lines
    assert f'gw_nat_pool_ports_used{{address="{PUBLIC_2}",protocol="icmp"}} 1.0' in lines
    assert f'gw_nat_pool_ports_size{{address="{PUBLIC}",protocol="tcp"}} {SPAN}.0' in lines
    assert 'gw_nat_drops_total{reason="no_mapping"} 1.0' in lines
    assert 'gw_nat_drops_total{reason="quota"} 0.0' in lines
    assert "gw_nat_restoring 0.0" in lines
    assert "gw_journal_lag_events 7.0" in lines
    assert 'gw_drops_total{reason="no_mapping"} 1.0' in lines  # the gateway-wide drops, as before


def test_metrics_of_a_document_without_the_nat_figures_keep_the_total():
    lines = set(_scrape(document({"mappings": 5, "restoring": False})).splitlines())
    assert "gw_nat_mappings 5.0" in lines and not any(line.startswith("gw_nat_pool") for line in lines)


def test_figures_are_plain_data():
    import json

    nat = new_nat(False)
    traffic(nat, at(0))
    fig = nat_figures(nat)
    assert json.loads(json.dumps(fig)) == fig


def test_metrics_and_render_show_the_external_gateway_and_the_audit_mode():
    nat = new_nat(False)
    doc = document(nat_figures(nat))
    doc["external"] = {"mode": "raw", "interface": "ext", "next_hop": "198.51.100.254", "next_hop_mac": "",
                       "sent": 12, "received": 34, "send_failed": 1, "sockets": 5}  # fmt: skip
    doc["audit"] = {"mode": "strict", "refusing_new_flows": True, "waiting": 3, "held": 9}
    lines = set(_scrape(doc).splitlines())
    assert 'gw_external_total{counter="sent",mode="raw"} 12.0' in lines
    assert 'gw_external_total{counter="send_failed",mode="raw"} 1.0' in lines
    assert 'gw_external_level{level="sockets",mode="raw"} 5.0' in lines  # a level, not a counter
    assert "gw_audit_refusing_new_flows 1.0" in lines and "gw_audit_waiting_packets 3.0" in lines
    text = render(doc)
    assert "external: raw (ext)" in text and "198.51.100.254 at unresolved" in text
    assert "refusing new flows" in text
