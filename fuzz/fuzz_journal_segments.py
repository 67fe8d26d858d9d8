"""Fuzz journal segment files through every reader: ``SegmentReader`` (strict, salvage), ``journal.reader.Journal``
(chunks, index, continuity), ``journal.index.build_index``, ``journal.recovery.load`` then the NAT's fold
(``Nat.restore``), and ``journal.recovery.repair``.

The readers take a directory, so the input is written as segment files into a private temporary directory
(on /dev/shm when there is one), emptied before each input. Input: a mode byte, then the bytes.

- mode bit 0: walk the bytes as frames and make each frame's CRCs right (``fuzz_journal_frames.fix_crcs``),
  so mutations of real segments reach the decoder and the seq checks instead of stopping at a checksum;
- bit 1: two segments: the first ``u16`` after the mode byte says where the bytes are cut;
- bit 2: run recovery (which cuts a torn tail into ``.broken``) and fold what it returns into a NAT, as
  the daemon starts; bit 3: run ``repair``.

Each segment is named for the first seq its first frame header holds (1 when none reads), so the name
checks pass unless the fuzzer makes them fail. Contract under test: strict readers raise nothing but
``JournalCorruptError``/``JournalGapError`` (naming file and offset); salvage mode raises nothing;
``build_index`` raises nothing for bad data; recovery raises only ``JournalError``s.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import sys
import tempfile
from pathlib import Path

from fuzz.common import fuzz, instrumented, require, scratch_dir

with instrumented():
    from fuzz.fuzz_journal_frames import fix_crcs, sample_events
    from gw.config import NatConfig
    from gw.nat import Nat
    from journal import reader as R
    from journal import recovery
    from journal.errors import JournalCorruptError, JournalError, JournalGapError, TornFrame
    from journal.frames import FRAME_HEADER_LEN, FRAME_MAGIC, decode_header, encode_frame
    from journal.index import build_index
    from journal.segments import SegmentReader, segment_name

WORK = scratch_dir("journal_segments")
NAT_CONFIG = NatConfig(external_addresses=["198.51.100.1", "198.51.100.2"])
STRICT_ERRORS = (JournalCorruptError, JournalGapError)


def fix_all_crcs(buf: bytearray) -> None:
    """``fix_crcs`` on every frame found walking the bytes by their headers' payload lengths."""
    at = 0
    while at + FRAME_HEADER_LEN <= len(buf) and buf[at : at + 4] == FRAME_MAGIC:
        at = fix_crcs(buf, at)


def name_seq(buf: bytes, default: int) -> int:
    try:
        return max(decode_header(buf, 0).first_seq, 0)
    except (TornFrame, JournalError):
        return default


def write_segments(mode: int, body: bytes) -> None:
    for entry in os.scandir(WORK):
        os.unlink(entry.path)
    buf = bytearray(body)
    parts = [buf]
    if mode & 2 and len(buf) >= 2:
        cut = struct.unpack_from("!H", buf, 0)[0] % max(len(buf) - 1, 1)
        parts = [buf[2 : 2 + cut], buf[2 + cut :]]
    seq = 1
    for part in parts:
        if mode & 1:
            fix_all_crcs(part)
        seq = name_seq(part, seq)
        (WORK / segment_name(seq)).write_bytes(part)
        seq += 1


def read_all() -> None:
    """Every read-only reader over the directory."""
    try:
        for _ in SegmentReader(WORK).frames():
            pass
    except STRICT_ERRORS:
        pass
    salvage = SegmentReader(WORK, salvage=True)
    for _ in salvage.frames():  # salvage: nothing raised for bad data
        pass
    R._INDEXES.clear()  # the process-wide cache is keyed by path, size and mtime: one entry per input here
    journal = R.Journal(WORK)
    for i in range(len(journal.segments)):
        try:
            for n in range(len(journal.chunks(i))):
                journal.chunk_events(i, n)
            journal.check_continuity(i)
        except STRICT_ERRORS:
            pass
        journal.index(i)
        build_index(journal.segments[i].path, write=False)
    try:
        list(journal.events())
    except STRICT_ERRORS:
        pass
    lenient = R.Journal(WORK, salvage=True)
    list(lenient.events())
    if lenient.segments:
        lenient.start_point(1 << 62, partial=True)


def recover() -> None:
    """``gw.server.Gateway._start``'s journal part: recovery, then the fold into a NAT."""
    try:
        rec = recovery.load(WORK)
    except JournalError:
        return
    nat = Nat.restore(NAT_CONFIG, rec.snapshot, rec.events, random.Random(3), lazy=True)
    nat.finish_restore(0)
    if rec.last_seq:
        nat.resume(10**18, rec.down_since_ns or 0)
    require(nat.next_seq == rec.last_seq + 1 or not rec.events, "the NAT does not continue the journal's seq")


def one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    write_segments(mode, data[1:])
    read_all()
    if mode & 4:
        recover()
    if mode & 8:
        try:
            recovery.repair(WORK)
        except JournalError:
            pass


# ---------------------------------------------------------------------- seeds


def seeds() -> list[bytes]:
    """Segments gw's own writer made (``gw demo``), the committed test vectors, and frames of every event."""
    out = []
    demo = Path(tempfile.mkdtemp(prefix="gw-fuzz-seed-"))
    try:
        from gw.demo import run_demo

        run_demo(str(demo / "j"), 2, True, True)
        segs = sorted((demo / "j").glob("seg-*.gwj"))
        for seg in segs:
            out.append(b"\x00" + seg.read_bytes())
            out.append(b"\x04" + seg.read_bytes())
        if len(segs) >= 2:
            a, b = segs[0].read_bytes(), segs[1].read_bytes()
            out.append(b"\x06" + struct.pack("!H", len(a)) + a + b)
    finally:
        shutil.rmtree(demo, ignore_errors=True)
    vectors = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "journal"
    for path in sorted(vectors.rglob("*.gwj")):
        out.append(b"\x00" + path.read_bytes())
        out.append(b"\x0c" + path.read_bytes())
    events = sample_events()
    one, two = encode_frame(events[:4]), encode_frame(events[4:])
    out += [b"\x04" + one + two, b"\x04" + one + two[:-7], b"\x00" + one + bytes(40), b"\x01" + two + one,
            b"\x06" + struct.pack("!H", len(one)) + one + two, b"\x0c" + one + b"GWJ1" + two[4:20]]  # fmt: skip
    return [s for s in out if len(s) <= 8192]


if __name__ == "__main__":
    fuzz("journal_segments", one_input, sys.argv)
