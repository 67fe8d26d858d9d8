"""Fuzz audit index files: ``journal.index.decode_index`` (and what an audit asks of an index).

Input: a mode byte, then the bytes. Mode 0: the bytes as a whole ``.idx`` file; 1: with the payload CRC
made right; 2: the bytes are the msgpack payload and the harness writes the magic and CRC before it
(mode bit 2 puts a valid version first, so the fuzzer's arrays reach the type checks behind it).
An index that decodes answers ``touches`` for the endpoints it lists and one it does not, and
``is_current`` for a stat result; it must encode back to the same index.
Contract under test: ``decode_index`` raises nothing but ``JournalCorruptError``.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib

from fuzz.common import fuzz, instrumented, require

with instrumented():
    import msgspec

    from journal.errors import JournalCorruptError
    from journal.index import INDEX_VERSION, SegmentIndex, decode_index, encode_index, is_current

_HEADER = struct.Struct("<4sI")
_STAT = os.stat_result((0o100600, 0, 0, 1, 0, 0, 741, 0, 0, 0))


def index_file(mode: int, body: bytes) -> bytes:
    kind = mode & 3
    if kind == 0:
        return body
    if kind == 1:
        return body[:4] + struct.pack("<I", zlib.crc32(body[8:])) + body[8:] if len(body) >= 8 else body
    payload = body
    if mode & 4 and body[:1] and 0x90 <= body[0] <= 0x9F:  # a fixarray: its first element the version
        payload = body[:1] + msgspec.msgpack.encode(INDEX_VERSION) + body[1:]
    return _HEADER.pack(b"GWI2", zlib.crc32(payload)) + payload


def one_input(data: bytes) -> None:
    if not data:
        return
    try:
        index = decode_index(index_file(data[0], data[1:]))
    except JournalCorruptError:
        return
    require(isinstance(index, SegmentIndex), "decode_index returned no SegmentIndex")
    for key in index.endpoints[:4]:
        if 0 <= key < 1 << 56:
            require(index.touches(key >> 48, key >> 16 & 0xFFFFFFFF, key & 0xFFFF) or
                    sorted(index.endpoints) != index.endpoints, "an index misses an endpoint it lists")  # fmt: skip
    index.touches(17, 0xC6336401, 40001)
    is_current(index, _STAT)
    try:
        again = encode_index(index)
    except OverflowError:
        return
    require(decode_index(again) == index, "an index does not encode back to itself")


def seeds() -> list[bytes]:
    """Indexes ``gw demo``'s writer made, and hand-made ones."""
    import shutil
    import tempfile
    from pathlib import Path

    from gw.demo import run_demo

    made = [SegmentIndex(INDEX_VERSION, 741, 1, 1, 36, 1, 2, [17 << 48 | 0xC6336401 << 16 | 40001], True),
            SegmentIndex(INDEX_VERSION, 0, 0, 5, 4, None, None, [], False)]  # fmt: skip
    files = [encode_index(i) for i in made]
    demo = Path(tempfile.mkdtemp(prefix="gw-fuzz-seed-"))
    try:
        run_demo(str(demo / "j"), 2, True, True)
        files += [p.read_bytes() for p in sorted((demo / "j").glob("*.idx"))]
    finally:
        shutil.rmtree(demo, ignore_errors=True)
    out = []
    for f in files:
        out += [b"\x00" + f, b"\x01" + f[:-1], b"\x02" + f[8:], b"\x06" + f[8:9] + f[9:]]
    return out


if __name__ == "__main__":
    fuzz("index", one_input, sys.argv)
