"""A real JournalWriter in a child process, killed with SIGKILL mid-stream: the journal recovers to a gap-free
prefix of what was submitted, holding at least everything reported durable, and can be appended to again."""

from __future__ import annotations

import inspect
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from journal import recovery
from journal.events import MappingCreated, MappingExpired
from journal.segments import SegmentReader, list_segments
from journal.writer import JournalWriter

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

ROOT = Path(__file__).resolve().parents[2]
T = 1_767_225_600_000_000_000
CHILD_LIMIT_EVENTS = 2_000_000  # the child stops by itself if the parent never kills it
WAIT_S = 30.0  # bound on waiting for the child's reports


def event(seq: int) -> MappingCreated | MappingExpired:
    """The child's events are a pure function of seq, so the parent can check every recovered event."""
    if seq % 3 == 0:
        return MappingExpired(
            seq=seq,
            at_ns=T + seq * 1000,
            proto=17,
            ext_addr=0xC6336402,
            ext_port=seq * 7 % 65536,
            reason="idle",
            packets_out=seq % 97,
            bytes_out=seq,
        )
    return MappingCreated(
        seq=seq,
        at_ns=T + seq * 1000,
        proto=6 if seq % 2 else 17,
        int_addr=0x0A424D02 + seq % 200,
        int_port=seq * 13 % 65536,
        ext_addr=0xC6336402,
        ext_port=seq * 7 % 65536,
        client=f"client-{seq % 200}",
        session=seq % 200,
    )


CHILD_TEMPLATE = """
from __future__ import annotations
import os, sys, time
from journal.events import MappingCreated, MappingExpired, Snapshot
from journal.writer import JournalWriter
T = {T}
LIMIT = {LIMIT}
{EVENT}
directory, policy = sys.argv[1], sys.argv[2]

def say(line):
    os.write(1, (line + "\\n").encode())  # one write per line: whole lines even from two threads

writer = JournalWriter(directory, fsync=policy, batch_count=256, batch_age_s=0.001, fsync_interval_s=0.005,
                       segment_max_bytes=48 * 1024, on_durable=lambda seq: say(f"durable {{seq}}"))
writer.start()
seq = 1
while seq <= LIMIT:
    n = 1 + seq % 97
    writer.submit([event(s) for s in range(seq, seq + n)])
    seq += n
    say(f"submitted {{seq - 1}}")
    if (seq - 1) // 4000 != (seq - 1 - n) // 4000:
        writer.submit_snapshot(Snapshot(upto_seq=seq - 1, at_ns=T + seq * 1000, proto=[17] * 50,
                                        ext_port=list(range(50))))
    time.sleep(0.0002)  # traffic, not a tight loop: let the writer thread run
writer.close()
say("done")
"""
CHILD = CHILD_TEMPLATE.format(T=T, LIMIT=CHILD_LIMIT_EVENTS, EVENT=inspect.getsource(event))


def run_and_kill(directory: Path, policy: str, kill_after_seq: int) -> tuple[int, int]:
    """Run the child, SIGKILL it by PID once it submitted ``kill_after_seq``; (max submitted, max durable)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), policy],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    submitted = durable = 0
    buffer = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + WAIT_S
    try:
        while submitted < kill_after_seq and time.monotonic() < deadline:
            if not sel.select(timeout=1.0):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                what, _, number = line.partition(b" ")
                if what == b"submitted":
                    submitted = int(number)
                elif what == b"durable":
                    durable = max(durable, int(number))
        assert submitted >= kill_after_seq, proc.stderr.read1(4096) if proc.poll() is not None else "too slow"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
        sel.close()
    for line in (buffer + proc.stdout.read()).split(b"\n"):  # what the child said before it died
        what, _, number = line.partition(b" ")
        if what == b"submitted":
            submitted = max(submitted, int(number))
        elif what == b"durable":
            durable = max(durable, int(number))
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return submitted, durable


@pytest.mark.parametrize(
    ("policy", "kill_after_seq"),
    [("interval", 500), ("never", 9_000), ("always", 3_000), ("interval", 25_000)],
)
def test_killed_writer_leaves_a_gap_free_prefix_holding_everything_durable(tmp_path, policy, kill_after_seq):
    submitted, durable = run_and_kill(tmp_path, policy, kill_after_seq)
    rec = recovery.load(tmp_path)
    upto = rec.snapshot.upto_seq if rec.snapshot else 0
    assert durable <= rec.last_seq <= submitted
    assert upto <= rec.last_seq
    assert [e.seq for e in rec.events] == list(range(upto + 1, rec.last_seq + 1))
    assert all(e == event(e.seq) for e in rec.events)
    assert not rec.clean or rec.last_seq == 0  # killed before its first frame: an empty journal
    assert all(n.kind in ("torn_tail", "stale_tmp") for n in rec.notes), rec.notes
    # the whole journal (not just after the snapshot) is a gap-free prefix of what was submitted
    assert [e.seq for e in SegmentReader(tmp_path).events()] == list(range(1, rec.last_seq + 1))
    # and the daemon can go on where it stopped
    with JournalWriter(tmp_path) as writer:
        writer.submit([event(s) for s in range(rec.last_seq + 1, rec.last_seq + 101)])
    again = recovery.load(tmp_path)
    assert again.last_seq == rec.last_seq + 100 and again.notes == []
    assert len(list_segments(tmp_path)) >= (2 if rec.last_seq else 1)  # appended in a segment of its own
