"""The daemon's side of the journal (gw.server.Gateway._drain, _note_created, _durable) without a loop:
a writer that refuses a batch (back-pressure) never loses or reorders events; strict audit registers
every mapping made, whatever the packet's verdict; a packet whose mapping ended while it waited is
not sent."""

from __future__ import annotations

import random

from gw import inet
from gw import packet as P
from gw.config import parse
from gw.identity import new_identity
from gw.nat import Nat
from gw.server import Gateway
from gw.strict import Hold, public_key
from journal.reader import Journal
from journal.writer import JournalWriter

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


def _gateway(tmp_path, strict: bool) -> Gateway:
    me = new_identity("gateway", tmp_path / "keys")
    text = (f'[tunnel]\ncertificate = "{me.cert_path}"\nkey = "{me.key_path}"\n'
            f'[journal]\ndirectory = "{tmp_path / "journal"}"\naudit = "{"strict" if strict else "fast"}"\n'
            '[nat]\nexternal_addresses = ["198.51.100.1"]\n')  # fmt: skip
    gw = Gateway(parse(text))
    gw.nat = Nat(gw.config.nat, random.Random(1), vpn=gw.config.vpn)
    return gw


def _new_flows(nat: Nat, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        pkt = P.build_udp(inet.aton("10.66.77.2"), inet.aton("203.0.113.10"), 2000 + i, 7, b"x")
        nat.translate_outbound(pkt, T0 + i)


def test_a_refused_batch_is_kept_in_order_and_written_once_the_writer_has_room(tmp_path):
    gw = _gateway(tmp_path, strict=True)
    gw.writer = JournalWriter(tmp_path / "journal", batch_count=4, max_backlog_events=8)  # not started: fills up
    _new_flows(gw.nat, 6)
    gw._drain()  # 6 of 8: taken
    _new_flows(gw.nat, 6, 6)
    gw._drain()  # 12 > 8: refused, kept, no exception
    assert gw.counts["journal_refused"] == 1 and gw._refuse_new and len(gw.nat.events) == 6
    _new_flows(gw.nat, 2, 12)
    gw._drain()  # still full: the 8 kept, in order, and nothing submitted out of order
    assert [e.seq for e in gw.nat.events] == list(range(7, 15))
    gw.writer.start()
    gw.writer.flush()  # room again
    gw._drain()
    gw.writer.close()
    assert [e.seq for e in Journal(tmp_path / "journal").events()] == list(range(1, 15))


def test_strict_registers_a_mapping_made_by_any_packet_and_drops_what_outlived_its_mapping(tmp_path):
    gw = _gateway(tmp_path, strict=True)
    gw.hold = Hold()
    made = gw.nat.last_mapping_seq
    _new_flows(gw.nat, 2)
    gw._note_created(made)
    keys = sorted(gw.hold.pending)
    assert len(keys) == 2 and all(k >> 48 == P.PROTO_UDP for k in keys)

    sent = []

    class Recorder:
        def send_outbound(self, pkt, now, vnet=False):
            sent.append(bytes(pkt))

    gw.external = Recorder()
    for key in keys:
        pkt = P.build_udp(key >> 16 & 0xFFFFFFFF, inet.aton("203.0.113.10"), key & 0xFFFF, 7, b"held")
        assert public_key(pkt) == key
        gw._send_when_durable(memoryview(pkt), memoryview(pkt), False, T0)
    assert sent == [] and len(gw.hold) == 2
    first = gw.nat.lookup_external(P.PROTO_UDP, keys[0] >> 16 & 0xFFFFFFFF, keys[0] & 0xFFFF)
    gw.nat._expire_mapping(first, T0 + 1, "test")  # its session closed while its packet waited
    gw._durable(gw.nat.last_mapping_seq + 10)
    assert len(sent) == 1 and gw.counts["held_orphaned"] == 1
    gw._stopping = True
    gw.hold.hold(99, T0, (b"late", False, keys[1]), 4)
    gw._durable(200)  # the gateway is stopping: nothing more goes out
    assert len(sent) == 1
