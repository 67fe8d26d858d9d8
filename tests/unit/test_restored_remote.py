"""A mapping restored from a journal without destinations (``log_destination`` off) learns its first
inbound remote, so a flow the remote drives (a download) goes on after a restart; only one, and never
from a TCP SYN. Both fast paths (Python and compiled) are driven."""

from __future__ import annotations

import random

import dpkt
import pytest

from gw import packet as P
from gw.nat import COMPILED, FORWARD, Nat
from gw.packet import Drop
from tests.helpers.packets import CLIENT, NS, SERVER, A, nat_config

C, SRV, OTHER = A(CLIENT), A(SERVER), A("203.0.113.99")
T0 = 1_700_000_000 * NS
PATHS = [False, True] if COMPILED else [False]
paths = pytest.mark.parametrize("compiled", PATHS, ids=["python", "compiled"][: len(PATHS)])


def _restored(compiled: bool, proto: int, log_destination: bool = False) -> tuple[Nat, int]:
    """A NAT with one mapping made by traffic, then a new NAT folded from its journal; the public port."""
    config = nat_config(log_destination=log_destination)
    live = Nat(config, random.Random(3), compiled=compiled)
    if proto == P.PROTO_TCP:
        first = P.build_tcp(C, SRV, 40000, 80, flags=P.TCP_SYN)
    else:
        first = P.build_udp(C, SRV, 40000, 53, b"q")
    assert live.translate_outbound(first, T0) == FORWARD
    port = P.get_u16(first, 20)[0]
    restored = Nat.restore(config, None, live.events, random.Random(3), compiled=compiled)
    return restored, port


def _from(src: int, sport: int, port: int, proto: int, flags: int = P.TCP_ACK_FLAG) -> bytearray:
    public = A(nat_config().external_addresses[0])
    if proto == P.PROTO_TCP:
        return P.build_tcp(src, public, sport, port, flags=flags, seq=1000, ack=1, payload=b"data")
    return P.build_udp(src, public, sport, port, b"answer")


@paths
@pytest.mark.parametrize("proto", [P.PROTO_TCP, P.PROTO_UDP], ids=["tcp", "udp"])
def test_the_first_remote_to_reach_a_restored_mapping_is_learned_and_only_it(compiled, proto):
    nat, port = _restored(compiled, proto)
    sport = 80 if proto == P.PROTO_TCP else 53
    pkt = _from(SRV, sport, port, proto)
    assert nat.translate_inbound(pkt, T0 + NS) == FORWARD
    ip = dpkt.ip.IP(bytes(pkt))
    assert ip.dst == bytes(map(int, CLIENT.split("."))) and ip.data.dport == 40000
    assert nat.remotes_learned == 1
    assert nat.translate_inbound(_from(SRV, sport, port, proto), T0 + 2 * NS) == FORWARD  # the fast path now
    assert nat.translate_inbound(_from(OTHER, sport, port, proto), T0 + 3 * NS) == Drop.FILTERED
    assert nat.remotes_learned == 1


@paths
def test_a_syn_never_claims_a_restored_mapping(compiled):
    nat, port = _restored(compiled, P.PROTO_TCP)
    assert nat.translate_inbound(_from(OTHER, 80, port, P.PROTO_TCP, P.TCP_SYN), T0 + NS) == Drop.FILTERED
    assert nat.remotes_learned == 0
    assert nat.translate_inbound(_from(SRV, 80, port, P.PROTO_TCP), T0 + NS) == FORWARD  # then the real one


@paths
def test_a_mapping_restored_with_its_destination_filters_as_before(compiled):
    nat, port = _restored(compiled, P.PROTO_UDP, log_destination=True)
    assert nat.translate_inbound(_from(OTHER, 53, port, P.PROTO_UDP), T0 + NS) == Drop.FILTERED
    assert nat.translate_inbound(_from(SRV, 53, port, P.PROTO_UDP), T0 + NS) == FORWARD
    assert nat.remotes_learned == 0


@paths
def test_a_live_mapping_never_learns(compiled):
    nat = Nat(nat_config(), random.Random(3), compiled=compiled)
    first = P.build_udp(C, SRV, 40000, 53, b"q")
    assert nat.translate_outbound(first, T0) == FORWARD
    port = P.get_u16(first, 20)[0]
    assert nat.translate_inbound(_from(OTHER, 53, port, P.PROTO_UDP), T0 + NS) == Drop.FILTERED
    assert nat.remotes_learned == 0
