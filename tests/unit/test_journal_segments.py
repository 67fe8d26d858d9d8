"""journal/segments.py and journal/index.py: reading a journal, torn tails, corruption, snapshots."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import msgspec
import pytest

from journal.errors import JournalCorruptError, JournalGapError
from journal.events import PACKED_COLUMNS, GatewayStopped, MappingCreated, MappingExpired, Snapshot
from journal.frames import FRAME_HEADER_LEN, encode_frame
from journal.index import build_index, index_path, load_or_build_index, segments_touching
from journal.segments import (
    SegmentReader,
    list_segments,
    list_snapshots,
    read_snapshot,
    segment_name,
    write_snapshot,
)
from tests.helpers.snapshots import as_lists

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "journal"
T = 1_767_225_600_000_000_000
EXT = 0xC6336402
S = 1_000_000_000  # one second in ns


def created(seq: int, port: int | None = None, at: int | None = None) -> MappingCreated:
    return MappingCreated(
        seq=seq,
        at_ns=T + seq * S if at is None else at,
        proto=17,
        int_addr=0x0A424D02,
        int_port=50000 + seq,
        ext_addr=EXT,
        ext_port=40000 + seq if port is None else port,
    )


def batch(first: int, count: int) -> list:
    return [created(s) for s in range(first, first + count)]


def write_segment(directory: Path, batches: list[list]) -> tuple[Path, list[int]]:
    """A segment made of one frame per batch, named by its first seq; returns it and its frame offsets."""
    directory.mkdir(parents=True, exist_ok=True)
    blobs = [encode_frame(b) for b in batches]
    path = directory / segment_name(batches[0][0].seq)
    path.write_bytes(b"".join(blobs))
    offsets, at = [], 0
    for blob in blobs:
        offsets.append(at)
        at += len(blob)
    return path, offsets


def seqs(events) -> list[int]:
    return [e.seq for e in events]


# -- reading ---------------------------------------------------------------------------------------


def test_reader_reads_events_across_segments_in_seq_order(tmp_path):
    write_segment(tmp_path, [batch(1, 3), batch(4, 2)])
    write_segment(tmp_path, [batch(6, 4)])
    write_segment(tmp_path, [batch(10, 1)])
    reader = SegmentReader(tmp_path)
    assert seqs(reader.events()) == list(range(1, 11))
    assert reader.notes == [] and reader.last_seq == 10


def test_empty_journal_directory_reads_as_nothing(tmp_path):
    assert list(SegmentReader(tmp_path).events()) == []
    assert list(SegmentReader(tmp_path / "missing").events()) == []


def test_gap_between_segments_names_the_file_and_offset(tmp_path):
    write_segment(tmp_path, [batch(1, 3)])
    later, _ = write_segment(tmp_path, [batch(5, 2)])
    with pytest.raises(JournalGapError) as info:
        list(SegmentReader(tmp_path).events())
    assert (info.value.path, info.value.offset, info.value.expected_seq, info.value.got_seq) == (
        str(later),
        0,
        4,
        5,
    )
    assert later.name in str(info.value) and "events 4..4 are missing" in str(info.value)


def test_gap_between_frames_names_the_frame_offset(tmp_path):
    path, offsets = write_segment(tmp_path, [batch(1, 3), batch(4, 3), batch(8, 3)])
    with pytest.raises(JournalGapError) as info:
        list(SegmentReader(tmp_path).events())
    assert (info.value.path, info.value.offset) == (str(path), offsets[2])


def test_segment_named_for_another_seq_is_corrupt(tmp_path):
    path, _ = write_segment(tmp_path, [batch(1, 3)])
    path.rename(tmp_path / segment_name(2))
    with pytest.raises(JournalCorruptError, match="named for seq 2"):
        list(SegmentReader(tmp_path).events())


def test_empty_newest_segment_is_fine(tmp_path):
    write_segment(tmp_path, [batch(1, 3)])
    (tmp_path / segment_name(4)).write_bytes(b"")
    reader = SegmentReader(tmp_path)
    assert seqs(reader.events()) == [1, 2, 3] and reader.notes == []


def test_files_that_are_not_segments_are_ignored(tmp_path):
    write_segment(tmp_path, [batch(1, 2)])
    for name in (
        "lock",
        "seg-00000000000000000001.gwj.broken",
        "seg-00000000000000000001.gwj.idx",
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"junk")
    assert seqs(SegmentReader(tmp_path).events()) == [1, 2]


# -- torn tails --------------------------------------------------------------------------------------


def test_torn_tail_at_every_offset_of_the_last_frame_is_cut_reported_and_kept(tmp_path):
    whole, offsets = write_segment(tmp_path / "whole", [batch(1, 3)])
    write_segment(tmp_path / "whole", [batch(4, 2), batch(6, 2)])
    newest = tmp_path / "whole" / segment_name(4)
    data = newest.read_bytes()
    last = len(encode_frame(batch(4, 2)))  # the last frame starts here
    for cut in range(last + 1, len(data)):
        journal = tmp_path / f"cut{cut}"
        shutil.copytree(tmp_path / "whole", journal)
        os.truncate(journal / newest.name, cut)
        reader = SegmentReader(journal, truncate_torn_tail=True)
        assert seqs(reader.events()) == [1, 2, 3, 4, 5], cut
        (note,) = reader.notes
        assert (note.kind, note.path, note.offset, note.bytes_count) == (
            "torn_tail",
            str(journal / newest.name),
            last,
            cut - last,
        )
        assert f"cut {cut - last} bytes of torn tail at offset {last}" in str(note)
        assert (journal / newest.name).stat().st_size == last
        assert (journal / (newest.name + ".broken")).read_bytes() == data[last:cut]
        assert seqs(SegmentReader(journal).events()) == [1, 2, 3, 4, 5]  # now clean
        shutil.rmtree(journal)


def test_torn_tail_in_read_only_mode_is_reported_and_left_in_place(tmp_path):
    path, offsets = write_segment(tmp_path, [batch(1, 3), batch(4, 3)])
    os.truncate(path, offsets[1] + FRAME_HEADER_LEN + 5)
    before = path.read_bytes()
    reader = SegmentReader(tmp_path)
    assert seqs(reader.events()) == [1, 2, 3]
    (note,) = reader.notes
    assert note.kind == "torn_tail" and "left in place" in str(note)
    assert path.read_bytes() == before and not list(tmp_path.glob("*.broken"))


def test_second_torn_tail_is_kept_beside_the_first(tmp_path):
    path, offsets = write_segment(tmp_path, [batch(1, 3), batch(4, 3)])
    (tmp_path / (path.name + ".broken")).write_bytes(b"an earlier tail")
    os.truncate(path, offsets[1] + 9)
    reader = SegmentReader(tmp_path, truncate_torn_tail=True)
    list(reader.events())
    assert (tmp_path / (path.name + ".broken")).read_bytes() == b"an earlier tail"
    assert (tmp_path / (path.name + ".broken.1")).stat().st_size == 9


def test_whole_last_frame_with_a_bad_checksum_is_damage_not_a_torn_tail_and_names_repair(tmp_path):
    """Bit rot in the newest segment's last frame: whole in length, so the write had finished (issue 10)."""
    path, offsets = write_segment(tmp_path, [batch(1, 3), batch(4, 3)])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorruptError) as info:
        list(SegmentReader(tmp_path, truncate_torn_tail=True).events())
    assert info.value.offset == offsets[1] and "not a torn write" in str(info.value)
    assert f"gw-replay {tmp_path} repair" in str(info.value)
    assert path.read_bytes() == bytes(data)  # nothing cut as routine
    reader = SegmentReader(tmp_path, salvage=True)
    assert seqs(reader.events()) == [1, 2, 3] and [n.kind for n in reader.notes] == ["skipped"]


@pytest.mark.parametrize("cut", [1, 20, FRAME_HEADER_LEN, FRAME_HEADER_LEN + 5])
def test_a_frame_cut_short_is_a_torn_tail_and_zeros_are_too(tmp_path, cut):
    path, offsets = write_segment(tmp_path, [batch(1, 3), batch(4, 3)])
    os.truncate(path, offsets[1] + cut)
    reader = SegmentReader(tmp_path, truncate_torn_tail=True)
    assert seqs(reader.events()) == [1, 2, 3] and [n.kind for n in reader.notes] == ["torn_tail"]
    with open(path, "ab") as f:
        f.write(b"\0" * 300)  # a file extended before its data reached the disk
    reader = SegmentReader(tmp_path)
    assert seqs(reader.events()) == [1, 2, 3] and [n.kind for n in reader.notes] == ["torn_tail"]


def test_committed_torn_tail_vector_is_cut_at_the_third_frame(tmp_path):
    shutil.copy(VECTORS / "torn_tail.gwj", tmp_path / segment_name(1))
    reader = SegmentReader(tmp_path, truncate_torn_tail=True)
    assert seqs(reader.events()) == list(range(1, 10))
    (note,) = reader.notes
    assert (note.offset, note.bytes_count) == (399, FRAME_HEADER_LEN + 7)


def test_torn_frame_in_an_older_segment_is_corrupt(tmp_path):
    older, offsets = write_segment(tmp_path, [batch(1, 3), batch(4, 3)])
    write_segment(tmp_path, [batch(7, 2)])
    os.truncate(older, offsets[1] + 20)
    with pytest.raises(JournalCorruptError) as info:
        list(SegmentReader(tmp_path, truncate_torn_tail=True).events())
    assert (info.value.path, info.value.offset) == (str(older), offsets[1])
    assert older.stat().st_size == offsets[1] + 20  # nothing cut


# -- corruption ------------------------------------------------------------------------------------


def test_corrupt_middle_frame_is_an_error_naming_file_and_offset(tmp_path):
    path = tmp_path / segment_name(1)
    shutil.copy(VECTORS / "corrupt_middle.gwj", path)
    with pytest.raises(JournalCorruptError) as info:
        list(SegmentReader(tmp_path, truncate_torn_tail=True).events())
    assert (info.value.path, info.value.offset) == (str(path), 220)
    assert f"{path}: corrupt journal data at byte 220" in str(info.value)
    assert path.read_bytes() == (VECTORS / "corrupt_middle.gwj").read_bytes()


def test_salvage_skips_a_corrupt_middle_frame_and_reports_it(tmp_path):
    shutil.copy(VECTORS / "corrupt_middle.gwj", tmp_path / segment_name(1))
    reader = SegmentReader(tmp_path, salvage=True)
    assert seqs(reader.events()) == [1, 2, 3, 4, 5, 10, 11, 12]
    kinds = [(n.kind, n.offset) for n in reader.notes]
    assert kinds == [("skipped", 220), ("gap", 399)]
    assert reader.notes[0].bytes_count == 399 - 220


def test_salvage_reads_past_garbage_and_torn_frames_in_older_segments(tmp_path):
    older, offsets = write_segment(tmp_path, [batch(1, 3), batch(4, 3)])
    os.truncate(older, offsets[1] + 20)
    newest, _ = write_segment(tmp_path, [batch(7, 2)])
    newest.write_bytes(b"\x00" * 100 + newest.read_bytes() + b"GWJ1 trailing junk")
    reader = SegmentReader(tmp_path, salvage=True)
    assert seqs(reader.events()) == [1, 2, 3, 7, 8]
    # the gap is named at the segment boundary (seq 4 expected, the newest is named for seq 7)
    assert [n.kind for n in reader.notes] == ["skipped", "gap", "skipped", "torn_tail"]


def test_salvage_never_modifies_files(tmp_path):
    with pytest.raises(ValueError):
        SegmentReader(tmp_path, salvage=True, truncate_torn_tail=True)


# -- windows and listing ---------------------------------------------------------------------------


def test_time_window_skips_frames_by_header_without_decompressing(tmp_path):
    path, offsets = write_segment(tmp_path, [batch(1, 3), batch(4, 3), batch(7, 3)])
    data = bytearray(path.read_bytes())
    data[offsets[1] + FRAME_HEADER_LEN + 4] ^= 0xFF  # the middle payload is damaged but outside the window
    path.write_bytes(bytes(data))
    reader = SegmentReader(tmp_path)
    assert seqs(reader.events(since_ns=T + 7 * S)) == [7, 8, 9]
    with pytest.raises(JournalCorruptError):
        list(SegmentReader(tmp_path).events())  # read in full, the damage is found


def test_time_window_filters_events_inside_a_frame(tmp_path):
    write_segment(tmp_path, [batch(1, 10)])
    assert seqs(SegmentReader(tmp_path).events(since_ns=T + 3 * S, until_ns=T + 5 * S)) == [3, 4, 5]


def test_start_seq_does_not_open_older_segments(tmp_path):
    older, _ = write_segment(tmp_path, [batch(1, 3)])
    write_segment(tmp_path, [batch(4, 3), batch(7, 2)])
    older.write_bytes(b"damaged beyond reading")
    assert seqs(SegmentReader(tmp_path).events(start_seq=5)) == [5, 6, 7, 8]


def test_start_seq_before_the_oldest_segment_is_a_gap_naming_what_is_missing(tmp_path):
    write_segment(tmp_path, [batch(10, 3)])
    with pytest.raises(JournalGapError, match=r"events 4\.\.9 are missing"):
        list(SegmentReader(tmp_path).events(start_seq=4))


def test_segments_lists_seq_and_time_ranges_from_headers(tmp_path):
    write_segment(tmp_path, [batch(1, 3), [created(4, at=T), created(5, at=T + 99 * S)]])
    path, _ = write_segment(tmp_path, [batch(6, 2)])
    path.write_bytes(path.read_bytes() + b"GWJ1torn")
    first, second = SegmentReader(tmp_path).segments()
    assert (first.first_seq, first.last_seq, first.min_at_ns, first.max_at_ns) == (1, 5, T, T + 99 * S)
    assert (first.frames_count, first.tail_bytes, first.events_count) == (2, 0, 5)
    assert (second.first_seq, second.last_seq, second.tail_bytes) == (6, 7, 8)
    assert list_segments(tmp_path) == [first, second]


def test_last_event_is_the_end_of_the_newest_whole_frame(tmp_path):
    write_segment(tmp_path, [batch(1, 3)])
    write_segment(tmp_path, [[GatewayStopped(seq=4, at_ns=T)]])
    (tmp_path / segment_name(5)).write_bytes(b"")
    assert SegmentReader(tmp_path).last_event() == GatewayStopped(seq=4, at_ns=T)
    assert SegmentReader(tmp_path / "nothing").last_event() is None


# -- snapshots -------------------------------------------------------------------------------------


def snapshot(upto: int, mappings: int = 3) -> Snapshot:
    rows = range(mappings)
    return Snapshot(
        upto_seq=upto,
        at_ns=T,
        proto=[17] * mappings,
        int_addr=[0x0A424D02] * mappings,
        int_port=[1000 + i for i in rows],
        ext_addr=[EXT] * mappings,
        ext_port=[40000 + i for i in rows],
        client=["alice"] * mappings,
    )


def test_snapshot_round_trips_and_is_private(tmp_path):
    journal = tmp_path / "journal"
    path = write_snapshot(journal, snapshot(42))
    assert path.name == "snap-00000000000000000042.gws"
    assert as_lists(read_snapshot(path)) == snapshot(42)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in journal.iterdir()] == [path.name]  # no temp file left


def test_snapshots_are_listed_oldest_first(tmp_path):
    for upto in (100, 7, 30):
        write_snapshot(tmp_path, snapshot(upto))
    (tmp_path / "snap-00000000000000000200.gws.tmp").write_bytes(b"unfinished")
    assert [s.upto_seq for s in list_snapshots(tmp_path)] == [7, 30, 100]


@pytest.mark.parametrize("damage", ["flip header", "flip payload", "truncate", "append", "empty"])
def test_damaged_snapshot_is_corrupt_naming_the_file(tmp_path, damage):
    path = write_snapshot(tmp_path, snapshot(5))
    data = bytearray(path.read_bytes())
    if damage == "flip header":
        data[12] ^= 1
    elif damage == "flip payload":
        data[-5] ^= 1
    elif damage == "truncate":
        del data[-1]
    elif damage == "append":
        data += b"\x00"
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorruptError, match=path.name):
        read_snapshot(path)


def test_snapshot_columns_are_packed_at_their_widths_and_read_back_as_arrays_at_the_limits(tmp_path):
    """The packed format (issue 10: a restart reads 1 M rows as one copy per column): every integer
    column comes back as an ``array.array`` of its width, holding the largest value the width allows."""
    import array

    limits = {"B": 255, "H": 65535, "I": 2**32 - 1, "q": 2**63 - 1, "Q": 2**64 - 1}
    wide = msgspec.structs.replace(
        snapshot(9, 2), **{name: [0, limits[code]] for name, code in PACKED_COLUMNS.items()}
    )
    back = read_snapshot(write_snapshot(tmp_path, wide))
    for name, code in PACKED_COLUMNS.items():
        column = getattr(back, name)
        assert isinstance(column, array.array) and column.typecode == code, name
        assert list(column) == [0, limits[code]], name
    assert as_lists(back) == wide


def test_a_value_wider_than_its_column_is_a_loud_error_and_leaves_no_file(tmp_path):
    too_wide = msgspec.structs.replace(snapshot(9, 1), ext_port=[65536])
    with pytest.raises(OverflowError):
        write_snapshot(tmp_path, too_wide)
    assert list(tmp_path.iterdir()) == []


def test_a_packed_column_of_a_partial_integer_is_corrupt(tmp_path, monkeypatch):
    """A file with a good checksum whose column is not whole integers (a writer bug, not bit rot)."""
    from journal import segments

    real = segments._pack
    monkeypatch.setattr(
        segments, "_pack", lambda name, values: real(name, values)[: -1 if name == "int_port" else None]
    )
    path = write_snapshot(tmp_path, snapshot(5))
    monkeypatch.undo()
    with pytest.raises(JournalCorruptError, match="int_port"):
        read_snapshot(path)


# -- index -----------------------------------------------------------------------------------------


def expired(seq: int, port: int) -> MappingExpired:
    return MappingExpired(seq=seq, at_ns=T + seq * S, proto=17, ext_addr=EXT, ext_port=port, reason="idle")


def test_index_holds_the_ranges_and_endpoints_of_a_segment(tmp_path):
    path, _ = write_segment(tmp_path, [[created(1, port=40001), created(2, port=40002)], [expired(3, 40005)]])
    index = build_index(path)
    assert (index.first_seq, index.last_seq, index.min_at_ns, index.max_at_ns) == (1, 3, T + S, T + 3 * S)
    assert index.touches(17, EXT, 40001) and index.touches(17, EXT, 40005)
    assert not index.touches(6, EXT, 40001) and not index.touches(17, EXT, 40003)
    assert index.complete and index_path(path).exists()


def test_index_is_rebuilt_when_its_segment_changes(tmp_path):
    path, _ = write_segment(tmp_path, [[created(1, port=40001)]])
    build_index(path)
    path.write_bytes(path.read_bytes() + encode_frame([created(2, port=40002)]))
    assert load_or_build_index(path).touches(17, EXT, 40002)
    index_path(path).write_bytes(b"not an index")
    assert load_or_build_index(path).last_seq == 2


def test_segments_touching_skips_segments_without_the_endpoint_or_after_the_time(tmp_path):
    a, _ = write_segment(tmp_path, [[created(1, port=40001)]])
    write_segment(tmp_path, [[created(2, port=40002)]])
    c, _ = write_segment(tmp_path, [[expired(3, 40001)]])
    d, _ = write_segment(tmp_path, [[created(4, port=40001)]])
    assert segments_touching(tmp_path, 17, EXT, 40001) == [a, c, d]
    assert segments_touching(tmp_path, 17, EXT, 40001, until_ns=T + 3 * S) == [a, c]
    assert segments_touching(tmp_path, 6, EXT, 40001) == []


def test_segment_with_a_torn_tail_is_always_a_candidate(tmp_path):
    path, _ = write_segment(tmp_path, [[created(1, port=40001)]])
    path.write_bytes(path.read_bytes() + b"GWJ1")
    assert not load_or_build_index(path, write=False).complete
    assert segments_touching(tmp_path, 17, EXT, 49999, write=False) == [path]
    assert not index_path(path).exists()
