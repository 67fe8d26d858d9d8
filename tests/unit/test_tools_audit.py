"""gw-audit through its main(argv): who, client, export, and what bad input gives."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from journal import holders, reader, recovery
from journal.events import MappingCreated, MappingExpired, SessionClosed, SessionOpened
from journal.frames import encode_frame
from journal.index import build_index, index_path
from journal.segments import segment_name, write_snapshot
from tests.helpers.history import NS, T0, fingerprint, generate, write_journal, write_with_writer
from tools import common
from tools.audit import EXPORT_FIELDS, main
from tools.common import format_time

PUB = 0xC6336402  # 198.51.100.2
VPN_A, VPN_B = 0x0A424D02, 0x0A424D03  # 10.66.77.2, 10.66.77.3


def at(seconds: float) -> int:
    return T0 + int(seconds * NS)


def exact(at_ns: int) -> str:
    """A time argument with full ns precision (epoch seconds)."""
    return f"{at_ns // NS}.{at_ns % NS:09d}"


def iso(seconds: float) -> str:
    return format_time(at(seconds))  # ms precision is enough: the events below are on whole seconds


def story() -> list:
    """alice holds 198.51.100.2:40001/udp over [100 s, 400 s); bob gets it at 600 s, after the reuse delay;
    alice also holds 40001/tcp over [150 s, 200 s)."""
    events = [
        SessionOpened(
            seq=0,
            at_ns=at(0),
            session=7,
            client="alice",
            fingerprint=fingerprint("alice"),
            remote_addr="203.0.113.7",
            remote_port=51820,
            vpn_addr=VPN_A,
        ),
        SessionOpened(
            seq=0,
            at_ns=at(50),
            session=8,
            client="bob",
            fingerprint=fingerprint("bob"),
            remote_addr="203.0.113.8",
            remote_port=51820,
            vpn_addr=VPN_B,
        ),
        MappingCreated(
            seq=0,
            at_ns=at(100),
            proto=17,
            int_addr=VPN_A,
            int_port=5353,
            ext_addr=PUB,
            ext_port=40001,
            client="alice",
            session=7,
            remote_addr=0xCB00710A,
            remote_port=53,
        ),
        MappingCreated(
            seq=0,
            at_ns=at(150),
            proto=6,
            int_addr=VPN_A,
            int_port=40000,
            ext_addr=PUB,
            ext_port=40001,
            client="alice",
            session=7,
        ),
        MappingExpired(
            seq=0,
            at_ns=at(200),
            proto=6,
            ext_addr=PUB,
            ext_port=40001,
            reason="tcp_closed",
            packets_out=5,
            bytes_out=500,
            packets_in=4,
            bytes_in=4000,
        ),
        MappingExpired(
            seq=0,
            at_ns=at(400),
            proto=17,
            ext_addr=PUB,
            ext_port=40001,
            reason="idle",
            packets_out=3,
            bytes_out=180,
            packets_in=2,
            bytes_in=120,
        ),
        MappingCreated(
            seq=0,
            at_ns=at(600),
            proto=17,
            int_addr=VPN_B,
            int_port=1234,
            ext_addr=PUB,
            ext_port=40001,
            client="bob",
            session=8,
        ),
        SessionClosed(seq=0, at_ns=at(700), session=7, client="alice", reason="client_closed"),
    ]
    return [type(e)(**{**_fields(e), "seq": i}) for i, e in enumerate(events, 1)]


def _fields(e: object) -> dict:
    return {f: getattr(e, f) for f in e.__struct_fields__}  # type: ignore[attr-defined]


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    d = tmp_path / "journal"
    write_journal(d, story(), frame_events=2, segment_events=4)
    return d


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------- who


def test_who_names_the_client_its_identity_and_the_mapping(journal, capsys):
    code, out, _ = run(capsys, journal, "who", "198.51.100.2:40001/udp", "--at", iso(250))
    assert code == 0
    assert "held by alice" in out
    assert fingerprint("alice") in out
    assert "10.66.77.2:5353" in out
    assert "session      7, opened" in out and "203.0.113.7:51820" in out
    assert f"{iso(100)} .. {iso(400)} (idle)" in out
    assert "203.0.113.10:53" in out  # the logged destination


def test_who_finds_the_later_holder_of_the_same_endpoint(journal, capsys):
    code, out, _ = run(capsys, journal, "who", "198.51.100.2:40001/udp", "--at", iso(650))
    assert code == 0 and "held by bob" in out and "still held" in out and fingerprint("bob") in out


@pytest.mark.parametrize(
    ("seconds", "holder"),
    [
        (99.999_999_999, None),
        (100, "alice"),
        (399.999_999_999, "alice"),
        (400, None),
        (599, None),
        (600, "bob"),
    ],
)
def test_who_holds_over_created_up_to_not_including_expired(journal, seconds, holder):
    j = reader.Journal(journal)
    got = holders.find_holders(j, PUB, 40001, 17, T0 + round(seconds * NS))
    assert [h.record.client for h in got] == ([holder] if holder else [])


def test_who_nobody_exits_1_and_says_so(journal, capsys):
    code, out, err = run(capsys, journal, "who", "198.51.100.2:40001/udp", "--at", iso(500))
    assert code == 1
    assert out == f"nobody held 198.51.100.2:40001/udp at {iso(500)}\n"
    assert err == ""


def test_who_without_proto_answers_every_protocol_that_matches(journal, capsys):
    code, out, _ = run(capsys, journal, "who", "198.51.100.2:40001", "--at", iso(175), "--json")
    assert code == 0
    doc = json.loads(out)
    assert [(h["proto"], h["client"], h["internal"]) for h in doc["holders"]] == [
        ("udp", "alice", "10.66.77.2:5353"),
        ("tcp", "alice", "10.66.77.2:40000"),
    ]
    assert doc["holders"][1]["end_reason"] == "tcp_closed" and doc["held"] is True


def test_who_accepts_epoch_seconds_and_offsets(journal, capsys):
    epoch = f"{(T0 + 250 * NS) // NS}.5"
    assert run(capsys, journal, "who", "198.51.100.2:40001/udp", "--at", epoch)[0] == 0
    plus_one = format_time(at(250)).replace("Z", "")  # same instant written in UTC+01:00
    hour, rest = plus_one[11:13], plus_one[13:]
    shifted = f"{plus_one[:11]}{int(hour) + 1:02d}{rest}+01:00"
    code, out, _ = run(capsys, journal, "who", "198.51.100.2:40001/udp", "--at", shifted)
    assert code == 0 and "alice" in out


def test_who_reads_only_segments_whose_index_names_the_endpoint(tmp_path, monkeypatch):
    h = generate(11, ticks=300, port_range="40000-40999", snapshot_every=20)
    d = tmp_path / "j"
    write_journal(d, h.events, h.snapshots, frame_events=8, segment_events=30)
    creates = [e for e in h.events if type(e) is MappingCreated and e.session]
    target = creates[len(creates) // 2]
    decoded: list[int] = []
    real = reader.Journal.segment_events
    monkeypatch.setattr(reader.Journal, "segment_events", lambda self, i: decoded.append(i) or real(self, i))
    j = reader.Journal(d)
    assert len(j.segments) > 20
    got = holders.find_holders(j, target.ext_addr, target.ext_port, target.proto, target.at_ns + 1)
    assert [g.record.created_seq for g in got] == [target.seq]
    # the segment with the mapping, maybe the next with its expiry; the session came from a snapshot
    home = j.segment_for_seq(target.seq)
    assert set(decoded) <= {home, home + 1}, (sorted(set(decoded)), home)
    decoded.clear()
    assert holders.find_holders(reader.Journal(d), PUB, 39999, 17, h.end_ns) == []  # never handed out
    assert decoded == []


def test_who_uses_the_snapshot_for_mappings_older_than_the_retained_segments(tmp_path, capsys):
    h = generate(5, ticks=80, snapshot_ticks=(40,), port_range="40000-40999")
    snap = h.snapshots[0]
    d = tmp_path / "j"
    write_journal(d, h.events, h.snapshots, frame_events=4, segment_events=20)
    old = sorted(d.glob("seg-*.gwj"))
    firsts = [int(p.name[4:24]) for p in old]
    for p, nxt in zip(old, firsts[1:], strict=False):
        if nxt - 1 <= snap.upto_seq:
            p.unlink()  # retention: these events are covered by the snapshot
    assert len(list(d.glob("seg-*.gwj"))) < len(old)
    row = max(range(len(snap.proto)), key=lambda r: snap.created_ns[r])
    proto = {17: "udp", 6: "tcp", 1: "icmp"}[snap.proto[row]]
    ep = f"{format_ep(snap.ext_addr[row], snap.ext_port[row])}/{proto}"
    code, out, _ = run(capsys, d, "who", ep, "--at", f"{snap.at_ns // NS}.{snap.at_ns % NS:09d}")
    assert code == 0, out
    session = next(s for s in snap.sessions if s.session == snap.session[row])
    assert f"held by {session.client}" in out and session.fingerprint in out
    assert "from         snapshot snap-" in out


def format_ep(addr: int, port: int) -> str:
    return f"{addr >> 24}.{addr >> 16 & 255}.{addr >> 8 & 255}.{addr & 255}:{port}"


def test_who_writes_no_index_into_a_directory_it_may_not_write(journal, capsys, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(
        common.os, "access", lambda p, mode: False if mode == os.W_OK else real_access(p, mode)
    )
    assert run(capsys, journal, "who", "198.51.100.2:40001/udp", "--at", iso(250))[0] == 0
    assert not list(journal.glob("*.idx"))


def test_who_corrupt_segment_is_one_line_naming_file_and_offset_and_salvage_reads_around(journal, capsys):
    seg = sorted(journal.glob("seg-*.gwj"))[0]
    data = bytearray(seg.read_bytes())
    second = data.find(b"GWJ1", 4)  # corrupt the second frame's payload (events 3..4: the mappings)
    data[second + 60] ^= 0xFF
    seg.write_bytes(bytes(data))
    code, out, err = run(capsys, journal, "who", "198.51.100.2:40001/udp", "--at", iso(250))
    assert code == 3 and out == ""  # damage has its own exit code
    assert err.count("\n") == 1 and "Traceback" not in err
    assert seg.name in err and f"byte {second}" in err and "--salvage" in err
    code, out, err = run(capsys, journal, "--salvage", "who", "198.51.100.2:40001/udp", "--at", iso(650))
    assert code == 0 and "bob" in out
    assert "note:" in err and f"offset {second}" in err


# ---------------------------------------------------------------------- client


def test_client_lists_its_mappings_overlapping_the_window_and_its_sessions(journal, capsys):
    code, out, _ = run(capsys, journal, "--json", "client", "alice", "--from", iso(180), "--to", iso(300))
    assert code == 0
    doc = json.loads(out)
    assert [(m["proto"], m["external"], m["start"], m["end"]) for m in doc["mappings"]] == [
        ("udp", "198.51.100.2:40001", iso(100), iso(400)),  # ends after the window: its real end
        ("tcp", "198.51.100.2:40001", iso(150), iso(200)),
    ]
    assert [(s["session"], s["closed"]) for s in doc["sessions"]] == [(7, iso(700))]
    code, out, _ = run(capsys, journal, "client", "alice", "--from", iso(200), "--to", iso(250))
    assert "mappings (1)" in out  # the TCP mapping ended at 200 s: [150, 200) does not meet [200, 250]
    code, out, _ = run(capsys, journal, "client", "bob", "--from", iso(0), "--to", iso(599))
    assert "mappings (0)" in out and "sessions (1)" in out


# ---------------------------------------------------------------------- export


def test_export_csv_has_ipfix_field_names_and_one_record_per_mapping(journal, capsys):
    code, out, _ = run(capsys, journal, "export", "--from", iso(0), "--to", iso(1000), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == EXPORT_FIELDS
    for name in (
        "protocolIdentifier",
        "sourceIPv4Address",
        "sourceTransportPort",
        "postNATSourceIPv4Address",
        "postNAPTSourceTransportPort",
        "natEvent",
        "flowStartMilliseconds",
        "flowEndMilliseconds",
        "initiatorPackets",
        "responderOctets",
    ):
        assert name in rows[0]
    by_start = {(r["protocolIdentifier"], r["flowStartMilliseconds"]): r for r in rows}
    assert len(rows) == 3
    udp = by_start[("17", str(at(100) // 1_000_000))]
    assert udp["natEvent"] == "9" and udp["flowEndMilliseconds"] == str(at(400) // 1_000_000)
    assert (udp["sourceIPv4Address"], udp["sourceTransportPort"]) == ("10.66.77.2", "5353")
    assert (udp["postNATSourceIPv4Address"], udp["postNAPTSourceTransportPort"]) == ("198.51.100.2", "40001")
    assert (udp["destinationIPv4Address"], udp["destinationTransportPort"]) == ("203.0.113.10", "53")
    assert (udp["initiatorPackets"], udp["initiatorOctets"], udp["responderPackets"]) == ("3", "180", "2")
    assert (udp["client"], udp["fingerprint"], udp["end_reason"]) == ("alice", fingerprint("alice"), "idle")
    bob = by_start[("17", str(at(600) // 1_000_000))]
    assert bob["natEvent"] == "8" and bob["flowEndMilliseconds"] == "" and bob["end_reason"] == "still_held"
    assert bob["destinationIPv4Address"] == ""  # not logged


def test_export_jsonl_to_a_file(journal, tmp_path, capsys):
    target = tmp_path / "out.jsonl"
    code, out, err = run(
        capsys, journal, "export", "--from", iso(120), "--to", iso(160), "--format", "jsonl", "-o", target
    )
    assert code == 0 and out == "" and "wrote 2 records" in err
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert sorted(r["protocolIdentifier"] for r in records) == [6, 17]
    assert set(records[0]) == set(EXPORT_FIELDS)


def test_export_refuses_to_write_into_the_journal(journal, capsys):
    code, _, err = run(capsys, journal, "export", "--from", iso(0), "--to", iso(1), "-o", journal / "x.csv")
    assert code == 2 and "outside the journal directory" in err
    assert not (journal / "x.csv").exists()


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["{missing}", "who", "198.51.100.2:40001/udp", "--at", "1795000000"], "no such journal directory"),
        (["{dir}", "who", "198.51.100.2:40001/udp", "--at", "yesterday"], "bad time 'yesterday'"),
        (["{dir}", "who", "198.51.100.2:40001/udp", "--at", "2026-11-23T10:02:17"], "add a UTC offset"),
        (["{dir}", "who", "198.51.100.2:40001/udp", "--at", "2026-13-23T10:02:17Z"], "bad time"),
        (["{dir}", "who", "198.51.100.2/udp", "--at", "1795000000"], "bad endpoint"),
        (["{dir}", "who", "198.51.100.256:1/udp", "--at", "1795000000"], "not an IPv4 address"),
        (["{dir}", "who", "198.51.100.2:70000", "--at", "1795000000"], "not 0-65535"),
        (["{dir}", "who", "198.51.100.2:1/sctp", "--at", "1795000000"], "unknown protocol 'sctp'"),
        (["{dir}", "who", "198.51.100.2:1/udp"], "--at"),
        (["{dir}", "client", "alice", "--from", "1795000100", "--to", "1795000000"], "is after --to"),
        (["{dir}", "export", "--from", "0", "--to", "1", "--format", "xml"], "invalid choice"),
        (["{dir}"], "required"),
        (["{empty}", "who", "198.51.100.2:1", "--at", "0"], "holds no journal"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(journal, tmp_path, capsys, argv, expect):
    (tmp_path / "empty").mkdir()
    subst = {"{dir}": str(journal), "{missing}": str(tmp_path / "nope"), "{empty}": str(tmp_path / "empty")}
    code, out, err = run(capsys, *[subst.get(a, a) for a in argv])
    assert code == 2
    assert expect in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_help_teaches_with_examples(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "examples:" in out and "who 198.51.100.2:40001/udp --at" in out
    code, out, _ = run(capsys, "DIR", "export", "--help")
    assert code == 0 and "postNAPTSourceTransportPort" in out and "IPFIX" in out


def test_audit_never_modifies_the_journal(journal, capsys):
    seg = sorted(journal.glob("seg-*.gwj"))[-1]
    with open(seg, "ab") as f:
        f.write(b"GWJ1\x30\x00")  # a torn tail: the writer crashed mid-frame
    before = {p.name: p.read_bytes() for p in journal.iterdir()}
    run(capsys, journal, "who", "198.51.100.2:40001/udp", "--at", iso(650))
    run(capsys, journal, "client", "bob", "--from", iso(0), "--to", iso(1000))
    code, _, err = run(capsys, journal, "export", "--from", iso(0), "--to", iso(1000))
    assert code == 0 and "torn tail of 6 bytes" in err
    after = {p.name: p.read_bytes() for p in journal.iterdir()}
    assert after == before  # no .idx either: missing indexes are built in memory


# ---------------------------------------------------------------------- review fixes


def test_an_empty_segment_left_by_recovery_is_clean_with_no_frames_for_every_command(tmp_path, capsys):
    h = generate(3, ticks=40)
    d = tmp_path / "j"
    write_with_writer(d, h.events[:-5])
    frame = encode_frame(h.events[-5:])
    (d / segment_name(h.events[-5].seq)).write_bytes(frame[: len(frame) // 2])  # crash mid first frame
    recovery.load(d)  # the daemon's start: the torn first frame is cut to nothing
    assert (d / segment_name(h.events[-5].seq)).stat().st_size == 0
    kept = h.events[:-5]
    since, until = kept[-3].at_ns, kept[-1].at_ns + 10 * NS  # the newest segment (empty) holds this window
    truth = [r for r in mappings_truth(kept) if r[5] <= until and (r[6] is None or r[6] > since)]
    assert truth
    code, out, err = run(
        capsys, d, "export", "--from", exact(since), "--to", exact(until), "--format", "jsonl"
    )
    assert code == 0 and err == ""
    got = sorted(
        (r["postNAPTSourceTransportPort"], r["protocolIdentifier"]) for r in map(json.loads, out.splitlines())
    )
    assert got == sorted((r[4], r[0]) for r in truth)
    code, out, err = run(
        capsys, d, "--json", "client", "client0", "--from", exact(since), "--to", exact(until)
    )
    assert code == 0 and err == "" and "mappings" in json.loads(out)
    held = next(r for r in truth if r[6] is None)
    ep = f"{format_ep(held[3], held[4])}/{ {17: 'udp', 6: 'tcp', 1: 'icmp'}[held[0]] }"
    code, out, err = run(capsys, d, "who", ep, "--at", exact(until))
    assert code == 0 and err == "" and "still held" in out


@pytest.mark.parametrize(
    "when",
    ["999999999999", "9999-12-31T23:59:59-01:00", "1969-12-31T23:59:59Z", "1970-01-01T00:30:00+01:00"],
)
def test_times_outside_1970_to_9999_are_a_usage_error(journal, capsys, when):
    code, out, err = run(capsys, journal, "who", "198.51.100.2:40001/udp", "--at", when)
    assert code == 2 and out == "" and "Traceback" not in err and err.count("\n") == 1
    assert "outside 1970-01-01T00:00:00Z..9999-12-31T23:59:59Z" in err


def test_times_at_the_edges_of_the_range_are_accepted():
    assert common.parse_time("0") == 0
    assert common.parse_time("9999-12-31T23:59:59Z") == 253_402_300_799 * NS
    assert common.parse_time("253402300799.999999999") == common.TIME_MAX_NS


@pytest.mark.parametrize("at_ns", [-(1 << 63), -1, 1 << 63, 253_402_300_800 * NS, 10**30])
def test_format_time_never_raises(at_ns):
    text = format_time(at_ns)
    assert text.endswith("Z") or text == f"{at_ns}ns"
    assert format_time(253_402_300_800 * NS) == f"{253_402_300_800 * NS}ns"


@pytest.mark.parametrize("offset", ["+24:00", "-99:00", "+01:60", "+99:99"])
def test_utc_offset_hours_are_at_most_23_and_minutes_at_most_59(journal, capsys, offset):
    code, out, err = run(
        capsys, journal, "who", "198.51.100.2:40001/udp", "--at", f"2026-11-18T12:40:00{offset}"
    )
    assert code == 2 and out == "" and f"UTC offset {offset}" in err and err.count("\n") == 1
    assert common.parse_time("2026-11-18T12:40:00+23:59") < common.parse_time("2026-11-18T12:40:00Z")


@pytest.mark.parametrize(
    ("endpoint", "expect"),
    [
        ("198.51.100.2:\u0664\u0660\u0660\u0660\u0661/udp", "not 0-65535"),  # Arabic-Indic digits
        ("198.51.100.2:\u00b2/udp", "not 0-65535"),  # superscript two: isdigit() but not a number
        ("198.51.100.2:+1/udp", "not 0-65535"),
        ("198.51.100.2:65536", "not 0-65535"),
        ("198.51.100.2:5/", "nothing after '/'"),
        ("198.51.100.2:5/\u0661\u0667", "unknown protocol"),  # 17 in Arabic-Indic digits
    ],
)
def test_endpoint_port_is_ascii_digits_0_to_65535_and_a_slash_needs_a_protocol(
    journal, capsys, endpoint, expect
):
    code, out, err = run(capsys, journal, "who", endpoint, "--at", "1795000000")
    assert code == 2 and out == "" and expect in err and err.count("\n") == 1 and "Traceback" not in err
    assert common.parse_endpoint("198.51.100.2:00080/17") == (PUB, 80, 17)


def test_epoch_seconds_are_ascii_digits(journal, capsys):
    code, _, err = run(capsys, journal, "who", "198.51.100.2:40001/udp", "--at", "\u0661\u0667\u0669\u0665")
    assert code == 2 and "bad time" in err


def _snapshot_only(tmp_path: Path):
    """A journal holding one snapshot of a generated run, taken mid-run, and no segments."""
    h = generate(5, ticks=60, snapshot_ticks=(30,), port_range="40000-40999")
    snap = h.snapshots[0]
    d = tmp_path / "snaps"
    d.mkdir()
    write_snapshot(d, snap, fsync=False)
    return snap, d


def test_client_and_export_over_a_window_holding_the_only_snapshot_report_its_mappings_and_say_so(
    tmp_path, capsys
):
    snap, d = _snapshot_only(tmp_path)
    assert len(snap.proto) > 0
    names = {s.session: s.client for s in snap.sessions}
    client = names[snap.session[0]]
    since, until = snap.at_ns - 600 * NS, snap.at_ns + 600 * NS
    code, out, err = run(capsys, d, "--json", "client", client, "--from", exact(since), "--to", exact(until))
    doc = json.loads(out)
    held = sum(names.get(snap.session[r]) == client for r in range(len(snap.proto)))
    assert code == 0 and len(doc["mappings"]) == held > 0
    assert f"state before {format_time(snap.at_ns)} is not known" in err
    assert any("is not known" in n for n in doc["notes"])
    code, out, err = run(capsys, d, "export", "--from", exact(since), "--to", exact(until))
    assert code == 0 and len(out.splitlines()) - 1 == len(snap.proto)
    assert f"state before {format_time(snap.at_ns)} is not known" in err
    # from at or after the snapshot: the state is known, no note
    code, out, err = run(capsys, d, "export", "--from", exact(snap.at_ns), "--to", exact(until))
    assert code == 0 and len(out.splitlines()) - 1 == len(snap.proto) and err == ""
    # a window wholly before the snapshot: nothing can be known, and the note says so
    code, out, err = run(capsys, d, "export", "--from", exact(since), "--to", exact(snap.at_ns - NS))
    assert code == 0 and len(out.splitlines()) == 1 and "is not known" in err


def test_client_window_starting_before_the_retained_segments_merges_the_snapshot_inside_it(tmp_path, capsys):
    h = generate(5, ticks=80, snapshot_ticks=(40,), port_range="40000-40999")
    snap = h.snapshots[0]
    d = tmp_path / "j"
    write_journal(d, h.events, h.snapshots, frame_events=4, segment_events=20)
    segs = sorted(d.glob("seg-*.gwj"))
    for seg, nxt in zip(segs, segs[1:], strict=False):
        if int(nxt.name[4:24]) - 1 <= snap.upto_seq:
            seg.unlink()  # retention
    oldest = int(sorted(d.glob("seg-*.gwj"))[0].name[4:24])
    assert oldest > 1
    truth = mappings_truth(h.events)
    code, out, err = run(
        capsys, d, "export", "--from", exact(h.start_ns), "--to", exact(h.end_ns), "--format", "jsonl"
    )
    assert code == 0 and f"state before {format_time(snap.at_ns)} is not known" in err
    got = {
        (r["postNAPTSourceTransportPort"], r["protocolIdentifier"], r["flowEndMilliseconds"])
        for r in map(json.loads, out.splitlines())
    }
    # every mapping still held at the snapshot or created after it is there, with its real end
    want = {
        (r[4], r[0], None if r[6] is None else r[6] // 1_000_000)
        for r in truth
        if r[6] is None or r[6] > snap.at_ns
    }
    assert want <= got


def mappings_truth(events: list) -> list[tuple]:
    """(proto, int_addr, int_port, ext_addr, ext_port, created_ns, end_ns) of every mapping, naively."""
    live: dict = {}
    out = []
    for e in events:
        if type(e) is MappingCreated:
            live[(e.proto, e.ext_addr, e.ext_port)] = [
                e.proto,
                e.int_addr,
                e.int_port,
                e.ext_addr,
                e.ext_port,
                e.at_ns,
                None,
            ]
        elif type(e) is MappingExpired and (rec := live.pop((e.proto, e.ext_addr, e.ext_port), None)):
            rec[6] = e.at_ns
            out.append(tuple(rec))
    return out + [tuple(r) for r in live.values()]


def _split_at_snapshot(tmp_path: Path):
    """A journal whose second segment starts right after its snapshot's last event."""
    h = generate(5, ticks=80, snapshot_ticks=(40,), port_range="40000-40999")
    snap = h.snapshots[0]
    d = tmp_path / "j"
    k = next(n for n, e in enumerate(h.events) if e.seq > snap.upto_seq)
    write_journal(d, h.events[:k], [snap], frame_events=4, segment_events=None)
    write_journal(d, h.events[k:], frame_events=4, segment_events=None)
    row = max(range(len(snap.proto)), key=lambda r: snap.created_ns[r])
    proto = {17: "udp", 6: "tcp", 1: "icmp"}[snap.proto[row]]
    ep = f"{format_ep(snap.ext_addr[row], snap.ext_port[row])}/{proto}"
    return snap, d, ep


def test_who_says_created_before_the_retained_segments_only_when_they_start_after_the_snapshot(
    tmp_path, capsys
):
    snap, d, ep = _split_at_snapshot(tmp_path)
    when = f"{snap.at_ns // NS}.{snap.at_ns % NS:09d}"
    code, out, _ = run(capsys, d, "who", ep, "--at", when)  # every segment retained
    assert code == 0 and "created before the retained segments" not in out
    assert f"state from snapshot {snap_name(snap)}" in out
    code, out, _ = run(capsys, d, "who", ep, "--at", when, "--json")
    holder = json.loads(out)["holders"][0]
    assert (
        holder["source"] == snap_name(snap)
        and holder["source_note"] == f"state from snapshot {snap_name(snap)}"
    )
    (d / segment_name(1)).unlink()  # retention: the segment before the snapshot goes
    code, out, _ = run(capsys, d, "who", ep, "--at", when)
    assert code == 0 and f"snapshot {snap_name(snap)} (created before the retained segments)" in out
    code, out, _ = run(capsys, d, "who", ep, "--at", when, "--json")
    assert json.loads(out)["holders"][0]["source_note"] == "created before the retained segments"


def snap_name(snap: object) -> str:
    return f"snap-{snap.upto_seq:020d}.gws"  # type: ignore[attr-defined]


def test_tools_never_write_into_the_journal_and_build_missing_indexes_in_memory(tmp_path, capsys):
    from tools import replay

    h = generate(11, ticks=120, snapshot_every=20)
    d = tmp_path / "j"
    write_journal(d, h.events, h.snapshots, frame_events=8, segment_events=30)
    d.chmod(0o755)
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    e = next(e for e in h.events if type(e) is MappingCreated)
    ep = f"{format_ep(e.ext_addr, e.ext_port)}"
    t = f"{e.at_ns // NS}"
    assert run(capsys, d, "who", ep, "--at", t)[0] == 0
    assert run(capsys, d, "client", e.client, "--from", "0", "--to", t)[0] == 0
    assert run(capsys, d, "export", "--from", "0", "--to", t)[0] == 0
    for argv in (["timeline"], ["state", "--at", t], ["verify"], ["stats"]):
        assert replay.main([str(d), *argv]) == 0
    capsys.readouterr()
    after = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    assert after == before and not list(d.glob("*.idx"))
    seg = sorted(d.glob("seg-*.gwj"))[0]
    assert reader.segment_index(seg) is reader.segment_index(seg)  # built once per process



def test_the_process_keeps_only_the_last_few_segment_indexes(tmp_path, monkeypatch):
    """A long-running reader meets every segment of a journal: the index cache is bounded, least recently
    used first out, and a segment that changed is indexed again."""
    h = generate(11, ticks=120, snapshot_every=20)
    d = tmp_path / "j"
    write_journal(d, h.events, h.snapshots, frame_events=8, segment_events=30)
    segs = sorted(d.glob("seg-*.gwj"))
    assert len(segs) > 3
    monkeypatch.setattr(reader, "_INDEXES", type(reader._INDEXES)())
    monkeypatch.setattr(reader, "_INDEX_CACHE_SIZE", 2)
    first = reader.segment_index(segs[0])
    for seg in segs[1:]:
        reader.segment_index(seg)
    assert list(reader._INDEXES) == [str(s) for s in segs[-2:]]
    assert reader.segment_index(segs[0]) is not first and reader.segment_index(segs[0]) == first
    last = reader.segment_index(segs[-2])
    assert reader.segment_index(segs[-2]) is last
    os.utime(segs[-2], ns=(1, 1))  # a segment replaced under the reader
    assert reader.segment_index(segs[-2]) is not last

def test_reindex_writes_the_missing_indexes_and_nothing_else(tmp_path, capsys):
    h = generate(11, ticks=120, snapshot_every=20)
    d = tmp_path / "j"
    write_journal(d, h.events, h.snapshots, frame_events=8, segment_events=30)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    code, out, err = run(capsys, d, "reindex")
    segs = sorted(d.glob("seg-*.gwj"))
    assert code == 0 and f"wrote {len(segs)} indexes, 0 already current" in out and err == ""
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.suffix != ".idx"} == before
    for seg in segs:
        assert build_index(seg, write=False) == reader.segment_index(seg)[0]
        assert index_path(seg).exists()
    code, out, _ = run(capsys, d, "--json", "reindex")
    assert code == 0 and json.loads(out) == {
        "segments": len(segs),
        "written": 0,
        "current": len(segs),
        "refused": [],
        "torn": [],
        "removed_tmp": [],
    }
    code, out, _ = run(capsys, "--help")
    assert "reindex" in out and "only" in out


def test_reindex_in_a_journal_it_may_not_write_is_one_line_exit_2(journal, capsys, monkeypatch):
    from journal import writer

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(writer.os, "open", refuse)
    code, out, err = run(capsys, journal, "reindex")
    assert code == 2 and "permission denied" in err and err.count("\n") == 1 and out == ""


def test_export_to_a_file_leaves_it_untouched_when_the_scan_fails(journal, tmp_path, capsys):
    target = tmp_path / "day.csv"
    target.write_text("yesterday's export\n")
    seg = sorted(journal.glob("seg-*.gwj"))[0]
    data = bytearray(seg.read_bytes())
    data[data.find(b"GWJ1", 4) + 60] ^= 0xFF  # corrupt: the scan fails (strict mode)
    seg.write_bytes(bytes(data))
    code, out, err = run(capsys, journal, "export", "--from", iso(0), "--to", iso(1000), "-o", target)
    assert code == 3 and "corrupt journal data" in err
    assert target.read_text() == "yesterday's export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["day.csv", "journal"])
    code, _, err = run(
        capsys, journal, "export", "--from", iso(0), "--to", iso(1), "-o", tmp_path / "no" / "x.csv"
    )
    assert code == 2 and "does not exist" in err


def test_export_refuses_a_file_anywhere_inside_the_journal(journal, capsys):
    (journal / "sub").mkdir()
    code, _, err = run(
        capsys, journal, "export", "--from", iso(0), "--to", iso(1), "-o", journal / "sub" / "x.csv"
    )
    assert code == 2 and "outside the journal directory" in err
    shutil.rmtree(journal / "sub")


# ---------------------------------------------------------------------- every answer true or flagged (issue 10)


def test_who_across_a_removed_middle_segment_is_a_gap_exit_3_never_a_wrong_holder(tmp_path, capsys):
    d = tmp_path / "j"
    write_journal(d, story(), frame_events=2, segment_events=2)  # seg-1 (1,2) seg-3 (3,4) seg-5 (5,6) seg-7
    (d / segment_name(5)).unlink()  # held the expiries at 200 s and 400 s
    code, out, err = run(capsys, d, "--json", "who", "198.51.100.2:40001/udp", "--at", iso(450))
    assert code == 3 and out == "" and "events 5..6 are missing" in err and err.count("\n") == 1
    code, out, err = run(capsys, d, "--salvage", "--json", "who", "198.51.100.2:40001/udp", "--at", iso(450))
    doc = json.loads(out)
    assert any("events 5..6 are missing" in n for n in doc["notes"])  # flagged, never a silent answer


def test_a_flipped_bit_in_an_index_is_caught_who_reads_the_segment_and_verify_reports_it(journal, capsys):
    assert run(capsys, journal, "reindex")[0] == 0
    seg = sorted(journal.glob("seg-*.gwj"))[0]  # holds alice's MappingCreated
    idx = index_path(seg)
    data = bytearray(idx.read_bytes())
    data[-1] ^= 0x01
    idx.write_bytes(bytes(data))
    code, out, err = run(capsys, journal, "--json", "who", "198.51.100.2:40001/udp", "--at", iso(250))
    doc = json.loads(out)
    assert code == 0 and doc["holders"][0]["client"] == "alice"
    assert any("index checksum mismatch" in n for n in doc["notes"])
    from tools.replay import main as replay_main

    assert replay_main([str(journal), "--json", "verify"]) == 1
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert [f["kind"] for f in findings] == ["bad_index"] and seg.name in findings[0]["where"]
    assert run(capsys, journal, "reindex")[0] == 0  # rewritten
    assert replay_main([str(journal), "verify"]) == 0


def _without_the_session_openings(tmp_path: Path, *, snapshot: bool) -> Path:
    d = tmp_path / "j"
    events = story()
    write_journal(d, events, frame_events=2, segment_events=2)
    if snapshot:  # taken at 450 s while both sessions were open: it lists them
        from journal.events import Snapshot

        write_snapshot(d, Snapshot(upto_seq=6, at_ns=at(450), sessions=list(events[:2])), fsync=False)
    (d / segment_name(1)).unlink()  # retention removed the SessionOpened events
    return d


def test_who_after_retention_takes_the_identity_from_a_kept_snapshot_that_lists_the_session(tmp_path, capsys):
    d = _without_the_session_openings(tmp_path, snapshot=True)
    code, out, err = run(capsys, d, "--json", "who", "198.51.100.2:40001/udp", "--at", iso(250))
    (h,) = json.loads(out)["holders"]
    assert code == 0 and h["client"] == "alice" and h["fingerprint"] == fingerprint("alice")


def test_who_says_when_retention_took_the_identity(tmp_path, capsys):
    d = _without_the_session_openings(tmp_path, snapshot=False)
    code, out, err = run(capsys, d, "--json", "who", "198.51.100.2:40001/udp", "--at", iso(250))
    doc = json.loads(out)
    assert code == 0 and doc["holders"][0]["fingerprint"] is None
    assert any("identity" in n and "removed by retention" in n for n in doc["notes"])


def test_help_documents_the_exit_codes_damage_has_its_own(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "1  who: nobody held it" in out and "3  the journal is damaged" in out


def test_reindex_refuses_garbage_segments_exit_3_and_writes_no_index_for_them(journal, capsys):
    garbage = journal / segment_name(100)
    garbage.write_bytes(os.urandom(300))
    code, out, err = run(capsys, journal, "reindex")
    assert code == 3 and "1 refused" in out and garbage.name in err and "not a whole journal segment" in err
    assert not index_path(garbage).exists()
    assert all(index_path(p).exists() for p in journal.glob("seg-*.gwj") if p != garbage)


def test_reindex_removes_leftover_index_temp_files(journal, capsys):
    seg = sorted(journal.glob("seg-*.gwj"))[0]
    leftover = seg.with_name(seg.name + ".idx.tmp")
    leftover.write_bytes(b"half")
    code, out, _ = run(capsys, journal, "reindex")
    assert code == 0 and not leftover.exists() and "removed 1 leftover" in out


def test_the_tools_have_no_frame_reader_of_their_own():
    """One reader (issue 10): the tools read frames only through journal.segments / journal.reader."""
    import ast

    root = Path(__file__).resolve().parents[2] / "tools"
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "journal.frames"]
        names = {a.name for n in imports for a in n.names}
        assert not names & {"decode_frame", "decode_header", "next_frame_offset"}, path.name


def test_salvage_notes_the_same_for_a_corrupt_middle_frame_in_every_reader(journal):
    from journal.segments import SegmentReader

    seg = sorted(journal.glob("seg-*.gwj"))[0]
    data = bytearray(seg.read_bytes())
    second = data.find(b"GWJ1", 4)
    data[second + 60] ^= 0xFF
    seg.write_bytes(bytes(data))
    r = SegmentReader(journal, salvage=True)
    list(r.events())
    j = reader.Journal(journal, salvage=True)
    list(j.events())
    assert [n.kind for n in r.notes] == [n.kind for n in j.notes] == ["skipped", "gap"]
