"""gw-replay through its main(argv): timeline, state, verify, stats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from journal import recovery
from journal.events import MappingCreated, MappingExpired, SessionOpened
from journal.frames import encode_frame
from journal.segments import segment_name, write_snapshot
from tests.helpers.history import NS, T0, History, fingerprint, generate, write_journal, write_with_writer
from tools.common import event_type_name, format_time
from tools.replay import main

PUB = 0xC6336402  # 198.51.100.2
VPN_A, VPN_B = 0x0A424D02, 0x0A424D03


def at(seconds: float) -> int:
    return T0 + int(seconds * NS)


def exact(at_ns: int) -> str:
    """A time argument with full ns precision (epoch seconds)."""
    return f"{at_ns // NS}.{at_ns % NS:09d}"


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def history() -> History:
    return generate(21, ticks=120, snapshot_every=30, port_range="40000-40063")


@pytest.fixture
def journal(tmp_path: Path, history: History) -> Path:
    d = tmp_path / "journal"
    write_journal(d, history.events, history.snapshots, frame_events=8, segment_events=60)
    return d


def numbered(*events: object) -> list:
    """Hand-made events with seq 1, 2, ..."""
    out = []
    for i, e in enumerate(events, 1):
        fields = {f: getattr(e, f) for f in e.__struct_fields__}  # type: ignore[attr-defined]
        out.append(type(e)(**{**fields, "seq": i}))
    return out


def created(
    t: float,
    ext_port: int,
    int_addr: int = VPN_A,
    int_port: int = 5000,
    client: str = "alice",
    session: int = 1,
    proto: int = 17,
) -> MappingCreated:
    return MappingCreated(
        seq=0,
        at_ns=at(t),
        proto=proto,
        int_addr=int_addr,
        int_port=int_port,
        ext_addr=PUB,
        ext_port=ext_port,
        client=client,
        session=session,
    )


def expired(t: float, ext_port: int, proto: int = 17) -> MappingExpired:
    return MappingExpired(seq=0, at_ns=at(t), proto=proto, ext_addr=PUB, ext_port=ext_port, reason="idle")


def opened(t: float, session: int = 1, client: str = "alice", vpn: int = VPN_A) -> SessionOpened:
    return SessionOpened(
        seq=0,
        at_ns=at(t),
        session=session,
        client=client,
        fingerprint=fingerprint(client),
        remote_addr="203.0.113.7",
        remote_port=51820,
        vpn_addr=vpn,
    )


# ---------------------------------------------------------------------- timeline


def test_timeline_prints_every_event_once_in_seq_order(journal, history, capsys):
    code, out, _ = run(capsys, journal, "timeline")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(history.events)
    assert [int(line.split()[1][1:]) for line in lines] == [e.seq for e in history.events]
    assert lines[0].startswith(format_time(history.events[0].at_ns))
    assert "mapping created" in out and "mapping expired" in out and "session opened" in out


def _owners(history: History) -> dict[int, MappingCreated]:
    """seq of each MappingExpired -> the MappingCreated it ends."""
    live, owner = {}, {}
    for e in history.events:
        if type(e) is MappingCreated:
            live[(e.proto, e.ext_addr, e.ext_port)] = e
        elif type(e) is MappingExpired:
            owner[e.seq] = live.pop((e.proto, e.ext_addr, e.ext_port))
    return owner


def test_timeline_client_filter_matches_expiries_through_their_owner_even_from_a_window(
    journal, history, capsys
):
    owner = _owners(history)
    snap = history.snapshots[1]
    since, until = snap.at_ns + 1, history.events[-1].at_ns  # mappings from the snapshot expire in the window

    def client_of(e):
        return owner[e.seq].client if type(e) is MappingExpired else getattr(e, "client", None)

    for name in ("client0", "client1", "client2", "client3"):
        want = [e.seq for e in history.events if since <= e.at_ns <= until and client_of(e) == name]
        code, out, _ = run(
            capsys,
            journal,
            "--json",
            "timeline",
            "--client",
            name,
            "--from",
            exact(since),
            "--to",
            exact(until),
        )
        got = [json.loads(line) for line in out.splitlines()]
        assert code == 0 and want and [d["seq"] for d in got] == want
        expiries = [d for d in got if d["type"] == "mapping_expired"]
        assert all(d["client"] == name and d["int_addr"] for d in expiries)
    # the case that needs the state at --from: an expiry whose mapping was created before the snapshot
    assert any(
        owner[e.seq].seq <= snap.upto_seq
        for e in history.events
        if type(e) is MappingExpired and e.at_ns >= since
    )


@pytest.mark.parametrize("which", ["external", "internal"])
def test_timeline_addr_and_port_filters(journal, history, capsys, which):
    owner = _owners(history)
    m = next(e for e in history.events if type(e) is MappingCreated and e.session)
    addr, port = (m.ext_addr, m.ext_port) if which == "external" else (m.int_addr, m.int_port)
    text = f"{addr >> 24}.{addr >> 16 & 255}.{addr >> 8 & 255}.{addr & 255}"

    def matches(e):
        if type(e) is MappingExpired:
            c = owner[e.seq]
            return (addr in (e.ext_addr, c.int_addr)) and port in (e.ext_port, c.int_port)
        if type(e) is MappingCreated:
            return addr in (e.ext_addr, e.int_addr) and port in (e.ext_port, e.int_port)
        return False  # sessions match --addr, but not --port

    want = [e.seq for e in history.events if matches(e)]
    code, out, _ = run(capsys, journal, "timeline", "--addr", text, "--port", port)
    assert code == 0 and [int(line.split()[1][1:]) for line in out.splitlines()] == want


def test_timeline_proto_filter_and_json_lines(journal, history, capsys):
    code, out, _ = run(capsys, journal, "timeline", "--proto", "icmp", "--json")
    docs = [json.loads(line) for line in out.splitlines()]
    want = [e.seq for e in history.events if getattr(e, "proto", None) == 1]
    assert code == 0 and [d["seq"] for d in docs] == want
    assert all(d["proto"] == "icmp" and d["at"].endswith("Z") for d in docs)
    assert {d["type"] for d in docs} <= {"mapping_created", "mapping_expired", "quota_hit"}


def test_timeline_skips_frames_outside_the_window_by_header(tmp_path, capsys):
    events = numbered(*[created(10 * i, 40000 + i) for i in range(40)])
    d = tmp_path / "j"
    write_journal(d, events, frame_events=4, segment_events=None)
    seg = next(d.glob("seg-*.gwj"))
    data = bytearray(seg.read_bytes())
    offsets = [i for i in range(len(data)) if data.startswith(b"GWJ1", i)]
    victim = offsets[-2]  # events 33..36, at 320..350 s
    data[victim + 50] ^= 0xFF  # payload byte: its header still reads fine
    seg.write_bytes(bytes(data))
    code, out, err = run(capsys, d, "timeline", "--to", exact(at(300)))
    assert code == 0 and len(out.splitlines()) == 31 and err == ""
    code, out, err = run(capsys, d, "timeline")
    assert code == 3 and f"byte {victim}" in err and "payload checksum" in err
    code, out, err = run(capsys, d, "timeline", "--salvage")
    assert code == 0 and len(out.splitlines()) == 36 and "skipped" in err


def test_timeline_follow_prints_new_events_as_the_writer_appends_and_rotates(tmp_path, capsys):
    events = numbered(*[created(i, 40000 + i) for i in range(30)])
    d = tmp_path / "j"
    write_journal(d, events[:10], frame_events=5, segment_events=None)
    done: list[int] = []
    t = threading.Thread(
        target=lambda: done.append(
            main([str(d), "timeline", "--follow", "--poll", "0.02", "--to", exact(at(25))])
        ),
    )
    t.start()
    time.sleep(0.2)
    seg = next(d.glob("seg-*.gwj"))
    frame = encode_frame(events[10:20])
    with open(seg, "ab") as f:  # a frame written in two pieces: the reader must wait for the whole
        f.write(frame[:30])
        f.flush()
        time.sleep(0.1)
        f.write(frame[30:])
    time.sleep(0.1)
    (d / segment_name(21)).write_bytes(encode_frame(events[20:30]))  # rotation; event 27 is past --to
    t.join(timeout=10)
    assert not t.is_alive() and done == [0]
    out = capsys.readouterr().out
    assert [int(line.split()[1][1:]) for line in out.splitlines()] == list(range(1, 27))


def test_timeline_follow_ends_cleanly_on_ctrl_c(journal):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.replay", str(journal), "timeline", "--follow", "--poll", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err and out.count(b"\n") > 10


# ---------------------------------------------------------------------- state


def test_state_at_t_equals_the_live_table_then(journal, history, capsys):
    picks = [1, len(history.checkpoints) // 3, len(history.checkpoints) // 2, -2]
    for i in picks:
        tick, table = history.checkpoints[i]
        nxt = history.checkpoints[i + 1][0] if i + 1 < len(history.checkpoints) or i < -1 else tick + 1
        for t in (tick, nxt - 1):
            code, out, _ = run(capsys, journal, "state", "--at", exact(t), "--json")
            doc = json.loads(out)
            got = sorted(
                (
                    {"udp": 17, "tcp": 6, "icmp": 1}[m["proto"]],
                    *_ep(m["internal"]),
                    *_ep(m["external"]),
                    m["session"] or 0,
                    m["created_ns"],
                )
                for m in doc["mappings"]
            )
            assert code == 0 and got == table, (i, t)


def _ep(text: str) -> tuple[int, int]:
    addr, port = text.rsplit(":", 1)
    a, b, c, d = (int(x) for x in addr.split("."))
    return a << 24 | b << 16 | c << 8 | d, int(port)


def test_state_shows_mappings_with_clients_and_open_sessions(tmp_path, capsys):
    d = tmp_path / "j"
    write_journal(
        d, numbered(opened(0), created(10, 40001), created(20, 40002, int_port=5001), expired(30, 40001))
    )
    code, out, _ = run(capsys, d, "state", "--at", exact(at(25)))
    assert code == 0
    assert "mappings (2)" in out and "10.66.77.2:5000  198.51.100.2:40001  alice" in out
    assert "open sessions (1)" in out and fingerprint("alice") in out
    code, out, _ = run(capsys, d, "state", "--at", exact(at(30)))
    assert "mappings (1)" in out and "40001" not in out


# ---------------------------------------------------------------------- verify


def test_verify_clean_journal_exits_0(journal, capsys):
    code, out, _ = run(capsys, journal, "verify")
    assert code == 0 and out.rstrip().endswith("ok, 0 warnings")


def test_verify_reports_a_corrupt_middle_frame_with_file_and_offset(journal, capsys):
    seg = sorted(journal.glob("seg-*.gwj"))[1]
    data = bytearray(seg.read_bytes())
    middle = [i for i in range(len(data)) if data.startswith(b"GWJ1", i)][3]
    data[middle + 60] ^= 0x55
    seg.write_bytes(bytes(data))
    code, out, _ = run(capsys, journal, "verify")
    assert code == 1
    assert f"{seg.name} offset {middle}" in out and "payload checksum mismatch" in out
    assert "gap" in out  # the events of the bad frame are missing


def test_verify_reports_a_seq_gap(tmp_path, capsys):
    events = numbered(*[created(i, 40000 + i) for i in range(20)])
    d = tmp_path / "j"
    write_journal(d, events[:8] + events[10:], frame_events=4, segment_events=None)
    code, out, _ = run(capsys, d, "--json", "verify")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"]
    gaps = [f for f in doc["findings"] if f["kind"] == "gap"]
    assert len(gaps) == 1 and "expected seq 9, found 11" in gaps[0]["detail"]


def test_verify_reports_an_endpoint_held_twice_and_an_orphan_expiry(tmp_path, capsys):
    d = tmp_path / "j"
    events = numbered(
        opened(0),
        created(10, 40001),
        created(20, 40001, int_addr=VPN_B, client="bob", session=2),
        expired(30, 40001),
        expired(40, 40001),
        expired(50, 40009),
    )
    write_journal(d, events, frame_events=2)
    code, out, _ = run(capsys, d, "verify")
    assert code == 1
    assert "double_held" in out and "198.51.100.2:40001/udp given to 10.66.77.3:5000 (bob)" in out
    assert "still held since seq 2" in out
    assert out.count("orphan_expiry") == 2  # the second expiry of 40001, and 40009 never created


def test_verify_reuse_delay_is_a_flag(tmp_path, capsys):
    d = tmp_path / "j"
    write_journal(d, numbered(created(0, 40001), expired(10, 40001), created(70, 40001, int_port=6000)))
    code, out, _ = run(capsys, d, "verify")
    assert code == 1 and "early_reuse" in out and "1m00s after it was freed" in out
    code, out, _ = run(capsys, d, "verify", "--reuse-delay", "60")
    assert code == 0, out


def test_verify_torn_tail_is_a_warning_and_left_in_place(journal, capsys):
    seg = sorted(journal.glob("seg-*.gwj"))[-1]
    with open(seg, "ab") as f:
        f.write(encode_frame(numbered(created(0, 1)))[:30])
    size = seg.stat().st_size
    code, out, _ = run(capsys, journal, "verify")
    assert code == 0 and "WARNING  torn_tail" in out and "left in place" in out
    assert seg.stat().st_size == size


def test_verify_reports_a_snapshot_that_disagrees_with_the_events(tmp_path, history, capsys):
    d = tmp_path / "j"
    write_journal(d, history.events, history.snapshots, frame_events=8, segment_events=60)
    snap = history.snapshots[0]
    assert snap.proto
    fields = msgspec.structs.asdict(snap)
    fields["ext_port"] = [p ^ 1 for p in snap.ext_port]
    write_snapshot(d, type(snap)(**fields), fsync=False)
    code, out, _ = run(capsys, d, "verify")
    assert code == 1 and "snapshot_mismatch" in out and f"up to seq {snap.upto_seq}" in out


# ---------------------------------------------------------------------- stats


def test_stats_counts_peaks_and_lifetimes(journal, history, capsys):
    code, out, _ = run(capsys, journal, "stats", "--json")
    doc = json.loads(out)
    assert code == 0
    assert doc["counts"] == dict(Counter(event_type_name(e) for e in history.events))
    live: Counter = Counter()
    peak: Counter = Counter()
    owners = _owners(history)
    lifetimes = []
    for e in history.events:  # naive: one event at a time
        if type(e) is MappingCreated:
            live[e.ext_addr] += 1
            peak[e.ext_addr] = max(peak[e.ext_addr], live[e.ext_addr])
        elif type(e) is MappingExpired:
            live[e.ext_addr] -= 1
            lifetimes.append(e.at_ns - owners[e.seq].at_ns)
    assert {a: p["live"] for a, p in doc["peak_per_address"].items()} == {
        f"198.51.100.{a & 255}": n for a, n in peak.items()
    }
    assert doc["lifetimes"]["count"] == len(lifetimes)
    assert doc["lifetimes"]["max_s"] == max(lifetimes) / NS
    assert sum(b["count"] for b in doc["lifetimes"]["histogram"]) == len(lifetimes)
    code, out, _ = run(capsys, journal, "stats")
    assert "peak live mappings per client" in out and "mapping lifetimes" in out and "#" in out


def test_stats_window_counts_only_events_inside(journal, history, capsys):
    since, until = history.checkpoints[10][0], history.checkpoints[40][0]
    code, out, _ = run(capsys, journal, "stats", "--from", exact(since), "--to", exact(until), "--json")
    doc = json.loads(out)
    assert doc["events"] == sum(since <= e.at_ns <= until for e in history.events)


def test_stats_plot_writes_a_png(journal, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "ports.png"
    code, out, _ = run(capsys, journal, "stats", "--plot", target)
    assert code == 0 and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plot written" in out


def test_stats_plot_without_matplotlib_says_install_gw_plot(journal, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run(capsys, journal, "stats", "--plot", tmp_path / "x.png")
    assert code == 2 and "install gw[plot]" in err and err.count("\n") == 1 and out == ""


# ---------------------------------------------------------------------- usage and read-only


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["{missing}", "timeline"], "no such journal directory"),
        (["{file}", "state", "--at", "0"], "not a directory"),
        (["{dir}", "state", "--at", "10:02"], "bad time '10:02'"),
        (["{dir}", "state"], "--at"),
        (["{dir}", "timeline", "--proto", "gre"], "unknown protocol 'gre'"),
        (["{dir}", "timeline", "--addr", "198.51.100"], "not an IPv4 address"),
        (["{dir}", "timeline", "--port", "x"], "'x' is not a port number (0-65535)"),
        (["{dir}", "timeline", "--from", "1795000100", "--to", "1795000000"], "is after --to"),
        (["{dir}", "verify", "--reuse-delay", "soon"], "is not a number of seconds"),
        (["{dir}", "replay"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(journal, tmp_path, capsys, argv, expect):
    (tmp_path / "file").write_text("x")
    subst = {"{dir}": str(journal), "{missing}": str(tmp_path / "nope"), "{file}": str(tmp_path / "file")}
    code, out, err = run(capsys, *[subst.get(a, a) for a in argv])
    assert code == 2 and expect in err
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_help_teaches_with_examples(capsys):
    code, out, _ = run(capsys, "--help")
    assert (
        code == 0 and "examples:" in out and "state --at 2026-11-23T10:02:17Z" in out and "JSON lines" in out
    )


def test_replay_never_modifies_the_journal(journal, capsys, tmp_path):
    seg = sorted(journal.glob("seg-*.gwj"))[-1]
    with open(seg, "ab") as f:
        f.write(b"GWJ1\x30")  # torn tail
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in journal.iterdir()}
    for argv in (["timeline"], ["state", "--at", exact(at(10**4))], ["verify"], ["stats"]):
        code, _, err = run(capsys, journal, *argv)
        assert code == 0 and "Traceback" not in err, argv
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in journal.iterdir()}
    assert after == before
    assert not [p for p in os.listdir(journal) if p.endswith(".broken")]


def test_progress_bar_only_with_progress_or_a_terminal(journal, capsys, monkeypatch):
    from tools import common

    monkeypatch.setattr(common, "PROGRESS_DELAY_S", 0.0)
    monkeypatch.setattr(common, "PROGRESS_INTERVAL_S", 0.0)
    code, out, err = run(capsys, journal, "verify")
    assert code == 0 and "verifying" not in err  # stderr is not a terminal here
    code, out, err = run(capsys, journal, "verify", "--progress")
    assert code == 0 and "verifying" in err and "━" in err and "ok, 0 warnings" in out  # a rich bar
    assert "verifying" not in out  # stdout stays clean


def test_after_retention_state_needs_a_snapshot_and_timeline_notes_what_is_missing(tmp_path, capsys):
    h = generate(5, ticks=80, snapshot_ticks=(40,), port_range="40000-40999")
    snap = h.snapshots[0]
    d = tmp_path / "j"
    write_journal(d, h.events, h.snapshots, frame_events=4, segment_events=20)
    segs = sorted(d.glob("seg-*.gwj"))
    for seg, nxt in zip(segs, segs[1:], strict=False):
        if int(nxt.name[4:24]) - 1 <= snap.upto_seq:
            seg.unlink()  # what the writer's retention does once the snapshot covers them
    oldest = int(sorted(d.glob("seg-*.gwj"))[0].name[4:24])
    code, out, err = run(capsys, d, "state", "--at", exact(h.start_ns + NS))
    assert code == 3 and f"needs events 1..{oldest - 1}, which were removed" in err and out == ""
    code, out, err = run(capsys, d, "state", "--at", exact(snap.at_ns), "--json")
    assert code == 0 and len(json.loads(out)["mappings"]) == len(snap.proto)
    code, out, err = run(capsys, d, "timeline", "--from", exact(h.start_ns))
    assert (
        code == 0
        and "were removed (retention)" in err
        and len(out.splitlines()) == len(h.events) - oldest + 1
    )
    code, out, _ = run(capsys, d, "verify")
    assert code == 0 and "journal starts at seq" in out


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
    code, out, err = run(capsys, d, "timeline", "--from", exact(kept[10].at_ns))
    assert code == 0 and err == "" and len(out.splitlines()) == sum(e.at_ns >= kept[10].at_ns for e in kept)
    code, out, err = run(capsys, d, "timeline")
    assert code == 0 and err == "" and len(out.splitlines()) == len(kept)
    code, out, err = run(capsys, d, "state", "--at", exact(kept[-1].at_ns + NS), "--json")
    assert code == 0 and err == "" and json.loads(out)["upto_seq"] == kept[-1].seq
    code, out, err = run(capsys, d, "verify")
    assert code == 0 and "ok, 0 warnings" in out, out
    code, out, err = run(capsys, d, "stats", "--json")
    assert code == 0 and err == "" and json.loads(out)["events"] == len(kept)


@pytest.mark.parametrize("when", ["999999999999", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z"])
def test_times_outside_1970_to_9999_are_a_usage_error(journal, capsys, when):
    code, out, err = run(capsys, journal, "state", "--at", when)
    assert code == 2 and out == "" and "Traceback" not in err and err.count("\n") == 1
    assert "outside 1970-01-01T00:00:00Z..9999-12-31T23:59:59Z" in err


@pytest.mark.parametrize("port", ["70000", "65536", "-1", "\u0664\u0660"])
def test_timeline_port_is_0_to_65535(journal, capsys, port):
    code, out, err = run(capsys, journal, "timeline", "--port", port)
    assert code == 2 and out == "" and "is not a port number (0-65535)" in err and err.count("\n") == 1


def test_stats_from_after_to_is_a_usage_error(journal, capsys):
    code, out, err = run(capsys, journal, "stats", "--from", "1795000100", "--to", "1795000000")
    assert code == 2 and out == "" and "--from 1795000100 is after --to 1795000000" in err


@pytest.mark.parametrize(
    ("name", "expect"),
    [
        ("{tmp}/out.txt", "format 'txt' is not one matplotlib writes"),
        ("{tmp}/out", "no file extension"),
        ("{tmp}/nowhere/out.png", "does not exist"),
        ("{journal}/out.png", "outside the journal directory"),
        ("{tmp}", "is a directory"),
    ],
)
def test_stats_plot_target_is_checked_before_the_scan(journal, tmp_path, capsys, monkeypatch, name, expect):
    pytest.importorskip("matplotlib")
    from tools import stats

    monkeypatch.setattr(stats, "collect_stats", lambda *a, **k: pytest.fail("scanned before checking --plot"))
    target = name.replace("{tmp}", str(tmp_path)).replace("{journal}", str(journal))
    code, out, err = run(capsys, journal, "stats", "--plot", target)
    assert code == 2 and out == "" and expect in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (journal / "out.png").exists()


# ---------------------------------------------------------------------- issue 10


def test_state_from_a_corrupt_only_snapshot_is_unknown_exit_3_not_an_empty_table(tmp_path, history, capsys):
    d = tmp_path / "j"
    snap = history.snapshots[0]
    write_journal(d, [], [snap])  # a journal of one snapshot
    path = next(d.glob("snap-*.gws"))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    code, out, err = run(capsys, d, "state", "--at", exact(snap.at_ns + NS))
    assert code == 3 and out == "" and "is not known" in err
    code, out, err = run(capsys, d, "--salvage", "state", "--at", exact(snap.at_ns + NS))
    assert code == 0 and "INCOMPLETE" in out and "is not known" in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "-5"])
def test_verify_reuse_delay_must_be_a_finite_number_0_or_more(journal, capsys, value):
    code, out, err = run(capsys, journal, "verify", "--reuse-delay", value)
    assert code == 2 and out == "" and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "1e400"])
def test_follow_poll_is_checked_before_anything_is_printed(journal, capsys, value):
    code, out, err = run(capsys, journal, "timeline", "--follow", "--poll", value)
    assert code == 2 and out == "" and "Traceback" not in err and "--poll" in err


def test_repair_cuts_a_bad_frame_and_the_whole_frames_after_it_so_recovery_starts(tmp_path, history, capsys):
    from journal import recovery
    from journal.errors import JournalCorruptError

    d = tmp_path / "j"
    write_journal(d, history.events[:40], frame_events=8, segment_events=None)
    (seg,) = d.glob("seg-*.gwj")
    data = bytearray(seg.read_bytes())
    third = data.find(b"GWJ1", data.find(b"GWJ1", 4) + 4)
    data[third + 60] ^= 0xFF  # frame 3 of 5: whole frames follow it
    seg.write_bytes(bytes(data))
    with pytest.raises(JournalCorruptError) as info:
        recovery.load(d)
    assert f"gw-replay {d} repair" in str(info.value)
    code, out, err = run(capsys, d, "repair")
    assert code == 0 and "16 events in whole frames after the damage are lost" in out
    kept = seg.with_name(seg.name + ".broken")
    assert kept.read_bytes() == bytes(data[third:]) and seg.read_bytes() == bytes(data[:third])
    rec = recovery.load(d)
    assert rec.last_seq == 16 and rec.notes == []
    assert run(capsys, d, "repair")[1].endswith("nothing to repair\n")


def test_repair_refuses_while_a_writer_holds_the_journal(journal, capsys):
    from journal.writer import JournalWriter

    with JournalWriter(journal):
        code, out, err = run(capsys, journal, "repair")
    assert code == 1 and "the gateway is running" in err


def test_timeline_prints_heartbeats(tmp_path, capsys):
    from journal.events import Heartbeat

    d = tmp_path / "j"
    write_journal(d, [Heartbeat(seq=1, at_ns=T0, mappings_count=12)])
    code, out, _ = run(capsys, d, "timeline")
    assert code == 0 and "heartbeat         12 mappings" in out
