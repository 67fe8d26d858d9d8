"""Fuzz snapshot files: ``journal.segments.decode_snapshot`` (what recovery reads first), then ``Nat.restore``.

Input: a mode byte, then the bytes. A snapshot file is a CRC-checked header and a zstd payload, so as in
``fuzz_journal_frames`` the mode (low 2 bits) lets the harness build what the fuzzer cannot forge:

- 0: the bytes as a whole file;
- 1: the bytes with both CRCs made right;
- 2: the bytes are the msgpack payload: the harness compresses it and writes the header around it, with
  ``upto_seq``/``at_ns`` read from the payload when it is an array starting with two integers (else from
  the input), and flags from mode bit 2 (1 = packed columns, what gw writes; 0 = lists);
- 3: as 2, but the bytes are the zstd payload itself.

A snapshot that decodes is restored into a NAT as the daemon does after a crash (lazy with mode bit 3,
then loaded in slices by ``expire``, or at once), resumed, and snapshotted again: the table it gives must
encode and decode back. Contract under test: ``decode_snapshot`` raises nothing but
``JournalCorruptError``; ``Nat.restore`` nothing but ``ValueError`` ("a snapshot gw did not write").
"""

from __future__ import annotations

import random
import struct
import sys
import zlib

from fuzz.common import fuzz, instrumented, require

with instrumented():
    import msgspec
    import zstandard

    from gw.config import NatConfig
    from gw.nat import Nat
    from journal.errors import JournalCorruptError
    from journal.events import SessionOpened, Snapshot
    from journal.segments import SNAPSHOT_PACKED, decode_snapshot, encode_snapshot

_HEADER = struct.Struct("<4sHHQQqII")
_CCTX = zstandard.ZstdCompressor(level=3)
NAT_CONFIG = NatConfig(external_addresses=["198.51.100.1", "198.51.100.2"], max_mappings_per_client=64)
NS = 1_000_000_000
WALL = 1_700_000_000 * NS  # the restoring process's wall clock minus its monotonic one


def header_fields(raw: bytes, fallback: bytes) -> tuple[int, int]:
    """(upto_seq, at_ns) as the payload holds them when it reads as such, else from ``fallback``."""
    try:
        value = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        value = None
    if isinstance(value, list) and len(value) >= 2 and all(type(v) is int for v in value[:2]):
        upto, at = value[0], value[1]
        if 0 <= upto < 1 << 64 and -(1 << 63) <= at < 1 << 63:
            return upto, at
    return struct.unpack("<Qq", fallback.ljust(16, b"\0")[:16])


def snapshot_file(mode: int, body: bytes) -> bytes:
    kind = mode & 3
    if kind == 0:
        return body
    if kind == 1:
        buf = bytearray(body)
        if len(buf) >= _HEADER.size:
            struct.pack_into("<I", buf, 32, zlib.crc32(buf[_HEADER.size :]))
            struct.pack_into("<I", buf, 36, zlib.crc32(buf[:36]))
        return bytes(buf)
    fallback, rest = body[:16], body[16:]
    if kind == 2:
        payload, raw = _CCTX.compress(rest), rest
    else:
        payload = rest
        raw = b""
        try:  # only to read upto_seq/at_ns from it: small payloads only, never a bomb's declared size
            if 0 <= zstandard.frame_content_size(rest) <= 1 << 20:
                raw = zstandard.ZstdDecompressor().decompress(rest)
        except zstandard.ZstdError:
            pass
    upto, at = header_fields(raw, fallback)
    flags = SNAPSHOT_PACKED if mode & 4 else 0
    head = [b"GWS1", _HEADER.size, flags, len(payload), upto, at, zlib.crc32(payload)]
    return _HEADER.pack(*head, zlib.crc32(_HEADER.pack(*head, 0)[:36])) + payload


def one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    try:
        snap = decode_snapshot(snapshot_file(mode, data[1:]))
    except JournalCorruptError:
        return
    require(isinstance(snap, Snapshot), "decode_snapshot returned no Snapshot")
    try:
        nat = Nat.restore(NAT_CONFIG, snap, [], random.Random(1), wall_offset=WALL, lazy=bool(mode & 8))
    except ValueError:
        return  # documented: a snapshot gw did not write (columns of unequal length or width)
    now = 5 * NS
    nat.resume(now, snap.at_ns)
    for _ in range(8):  # a lazy restore loads its rows in slices from expire, as the daemon's timer runs it
        if not nat.expire(now):
            break
    nat.finish_restore(now)
    again = nat.snapshot_view(now).build()
    require(decode_snapshot(encode_snapshot(again)).upto_seq == again.upto_seq, "a restored table's snapshot "
            "does not read back")  # fmt: skip


# ---------------------------------------------------------------------- seeds


def sample_snapshot() -> Snapshot:
    """A small table: two clients' mappings of each protocol, a resting port, a session, a quota flag."""
    c1, c2, pub = 0x0A424D02, 0x0A424D03, 0xC6336401
    rows = [(17, c1, 5000, pub, 40001), (6, c1, 40000, pub, 40002), (1, c1, 0x1234, pub, 40003),
            (17, c2, 6000, pub, 40004)]  # fmt: skip
    n = len(rows)
    at = WALL + 3 * NS
    return Snapshot(
        upto_seq=12, at_ns=at,
        proto=[r[0] for r in rows], int_addr=[r[1] for r in rows], int_port=[r[2] for r in rows],
        ext_addr=[r[3] for r in rows], ext_port=[r[4] for r in rows], session=[1, 1, 1, 2],
        created_ns=[at - NS] * n, last_seen_ns=[at] * n, tcp_state=[0, 3, 0, 0], packets_out=[1, 5, 1, 2],
        bytes_out=[60, 500, 84, 90], packets_in=[1, 4, 1, 0], bytes_in=[120, 4000, 84, 0],
        remote_addr=[0xCB00710A] * n, remote_port=[53, 80, 0, 4000], client=["alice", "alice", "alice", "bob"],
        rest_proto=[17], rest_ext_addr=[pub], rest_ext_port=[40010], rest_until_ns=[at + 60 * NS],
        sessions=[SessionOpened(seq=2, at_ns=at - 2 * NS, session=1, client="alice", fingerprint="ab" * 32,
                                remote_addr="192.0.2.7", remote_port=50000, vpn_addr=c1),
                  SessionOpened(seq=3, at_ns=at - 2 * NS, session=2, client="bob", fingerprint="cd" * 32,
                                remote_addr="192.0.2.8", remote_port=50001, vpn_addr=c2)],
        quota_flagged=[c2],
    )  # fmt: skip


def seeds() -> list[bytes]:
    """The snapshot ``gw demo``'s writer made, a hand-made one, and their payloads for modes 2 and 3."""
    import shutil
    import tempfile
    from pathlib import Path

    from gw.demo import run_demo

    files = [encode_snapshot(sample_snapshot()), encode_snapshot(Snapshot(upto_seq=1, at_ns=WALL))]
    demo = Path(tempfile.mkdtemp(prefix="gw-fuzz-seed-"))
    try:
        run_demo(str(demo / "j"), 2, True, True)
        files += [p.read_bytes() for p in sorted((demo / "j").glob("snap-*.gws"))]
    finally:
        shutil.rmtree(demo, ignore_errors=True)
    out = []
    for f in files:
        payload = f[_HEADER.size :]
        raw = zstandard.ZstdDecompressor().decompress(payload)
        fallback = f[8:24]
        out += [b"\x00" + f, b"\x08" + f, b"\x01" + f[:-3], b"\x06" + fallback + raw, b"\x07" + fallback + payload]
    lists = msgspec.msgpack.encode(sample_snapshot())  # flag 0: columns as msgpack lists
    out.append(b"\x02" + bytes(16) + lists)
    return out


if __name__ == "__main__":
    fuzz("snapshot", one_input, sys.argv)
