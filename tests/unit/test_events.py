"""The event schema: round trips, stable tags, and what version 1 wrote still decodes (schema evolution)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import pytest

from journal import recovery
from journal.events import (
    DECODER,
    ENCODER,
    GatewayStarted,
    GatewayStopped,
    Heartbeat,
    MappingCreated,
    MappingExpired,
    QuotaHit,
    SessionClosed,
    SessionOpened,
    SessionRefused,
    Snapshot,
    SnapshotTaken,
)
from journal.frames import decode_frame, encode_frame
from journal.segments import SegmentReader, read_snapshot

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "journal"
V1 = VECTORS / "v1"
T = 1_767_225_600_000_000_000

# The wire tags are the journal's identity for each type: never renumbered, never reused.
TAGS = {
    GatewayStarted: 1,
    GatewayStopped: 2,
    SessionOpened: 3,
    SessionRefused: 4,
    SessionClosed: 5,
    MappingCreated: 6,
    MappingExpired: 7,
    QuotaHit: 8,
    SnapshotTaken: 9,
    Heartbeat: 10,
}
V1_TYPES = set(TAGS) - {Heartbeat}  # Heartbeat came after version 1

ONE_OF_EACH = [
    GatewayStarted(
        seq=1, at_ns=T, version="0.1.0", ext_addrs=[0xC6336402, 0xC6336403], recovered=True, unclean=True
    ),
    GatewayStopped(seq=2, at_ns=T + 1, reason="signal"),
    SessionOpened(
        seq=3,
        at_ns=T + 2,
        session=7,
        client="bob",
        fingerprint="ab" * 32,
        remote_addr="198.51.100.7",
        remote_port=443,
        vpn_addr=0x0A424D05,
    ),
    SessionRefused(
        seq=4, at_ns=T + 3, fingerprint="cd" * 32, remote_addr="::1", remote_port=1, reason="revoked"
    ),
    SessionClosed(seq=5, at_ns=T + 4, session=7, client="bob", reason="dead peer", packets_in=1, bytes_in=2),
    MappingCreated(
        seq=6,
        at_ns=T + 5,
        proto=17,
        int_addr=0x0A424D05,
        int_port=5353,
        ext_addr=0xC6336402,
        ext_port=65535,
        client="bob",
        session=7,
        remote_addr=0x08080808,
        remote_port=53,
    ),
    MappingExpired(
        seq=7,
        at_ns=T + 6,
        proto=6,
        ext_addr=0xC6336402,
        ext_port=1024,
        reason="tcp_closed",
        packets_out=2**40,
        bytes_out=2**62,
        packets_in=0,
        bytes_in=1,
    ),
    QuotaHit(seq=8, at_ns=T + 7, proto=1, int_addr=0x0A424D05, int_port=0, quota=1),
    SnapshotTaken(seq=9, at_ns=T + 8, upto_seq=8, file="snap-00000000000000000008.gws", mappings_count=3),
    Heartbeat(seq=10, at_ns=T + 9, mappings_count=3),
]


def defaults_of(cls: type) -> dict:
    return {
        f.name: (f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default)
        for f in msgspec.structs.fields(cls)
        if f.default is not msgspec.NODEFAULT or f.default_factory is not msgspec.NODEFAULT
    }


def assert_matches_v1(obj: msgspec.Struct, expected: dict) -> None:
    """Fields v1 wrote keep their values (nested structs too); fields added since carry their defaults."""
    assert type(obj).__name__ == expected["type"]
    for name, want in expected.items():
        if name == "type":
            continue
        value = getattr(obj, name)
        if isinstance(want, list) and want and isinstance(want[0], dict):
            assert len(value) == len(want)
            for item, item_want in zip(value, want, strict=True):
                assert_matches_v1(item, item_want)
        else:
            assert value == want, (expected["type"], name)
    defaults = defaults_of(type(obj))
    for name in set(msgspec.structs.asdict(obj)) - set(expected):
        assert name in defaults, f"{expected['type']}.{name} was added without a default"
        assert getattr(obj, name) == defaults[name]


def test_every_event_type_is_covered_by_the_round_trip():
    assert {type(e) for e in ONE_OF_EACH} == set(TAGS)


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: type(e).__name__)
def test_event_round_trips_through_msgpack(event):
    assert DECODER.decode(ENCODER.encode([event])) == [event]


def test_every_event_type_round_trips_through_one_frame():
    events, end = decode_frame(encode_frame(ONE_OF_EACH))
    assert events == ONE_OF_EACH
    assert [type(e) for e in events] == [type(e) for e in ONE_OF_EACH]


@pytest.mark.parametrize(("cls", "tag"), TAGS.items(), ids=lambda x: getattr(x, "__name__", str(x)))
def test_event_tag_is_stable_and_first_on_the_wire(cls, tag):
    event = next(e for e in ONE_OF_EACH if type(e) is cls)
    wire = msgspec.msgpack.decode(ENCODER.encode(event))
    assert wire[:3] == [tag, event.seq, event.at_ns]  # array_like: tag, seq, at_ns, then fields in order


def test_v1_journal_decodes_to_what_v1_meant():
    expected = json.loads((V1 / "expected.json").read_text())["events"]
    reader = SegmentReader(V1)
    events = list(reader.events())
    assert len(events) == len(expected) and not reader.notes
    for event, want in zip(events, expected, strict=True):
        assert_matches_v1(event, want)


def test_v1_journal_holds_one_of_every_event_type():
    assert {type(e) for e in SegmentReader(V1).events()} == V1_TYPES


def test_v1_snapshot_decodes_to_what_v1_meant():
    expected = json.loads((V1 / "expected.json").read_text())["snapshot"]
    snapshot = read_snapshot(V1 / "snap-00000000000000000006.gws")
    assert_matches_v1(snapshot, expected)


def test_v1_journal_recovers_from_its_snapshot(tmp_path):
    journal = tmp_path / "j"
    shutil.copytree(V1, journal)
    rec = recovery.load(journal)
    assert rec.snapshot is not None and rec.snapshot.upto_seq == 6
    assert [e.seq for e in rec.events] == list(range(7, 13))
    assert rec.last_seq == 12 and not rec.clean and not rec.notes


def test_event_from_an_older_writer_with_fewer_fields_decodes_with_defaults():
    # MappingExpired as an older writer knew it, without counters
    old = msgspec.msgpack.encode([[7, 41, T, 17, 0xC6336402, 40001, "idle"]])
    (event,) = DECODER.decode(old)
    assert event == MappingExpired(
        seq=41, at_ns=T, proto=17, ext_addr=0xC6336402, ext_port=40001, reason="idle"
    )
    assert (event.packets_out, event.bytes_out, event.packets_in, event.bytes_in) == (0, 0, 0, 0)


def test_mapping_created_from_an_older_writer_decodes_with_defaults():
    old = msgspec.msgpack.encode([[6, 5, T, 6, 0x0A424D02, 5000, 0xC6336402, 40000]])
    (event,) = DECODER.decode(old)
    assert (event.client, event.session, event.remote_addr, event.remote_port) == ("", 0, 0, 0)


def test_event_missing_a_required_field_does_not_decode():
    with pytest.raises(msgspec.ValidationError):
        DECODER.decode(msgspec.msgpack.encode([[7, 41, T, 17, 0xC6336402, 40001]]))  # no reason


def test_snapshot_round_trips_with_defaults_for_empty_columns():
    snap = Snapshot(upto_seq=3, at_ns=T)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(snap), type=Snapshot) == snap


def test_heartbeat_is_a_new_tagged_type_appended_to_the_union_and_has_only_defaulted_fields():
    # schema evolution: a new meaning gets a new tag; its own fields default, so later ones can be appended
    assert set(TAGS.values()) == set(range(1, 11))
    assert msgspec.msgpack.decode(ENCODER.encode(Heartbeat(seq=5, at_ns=T))) == [10, 5, T, 0]
    assert DECODER.decode(msgspec.msgpack.encode([[10, 5, T]])) == [Heartbeat(seq=5, at_ns=T)]


def test_rest_until_is_the_one_port_rest_rule():
    from journal.events import rest_until

    assert rest_until(T, 120 * 10**9) == T + 120 * 10**9
