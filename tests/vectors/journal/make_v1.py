"""Make the committed journal vectors, as the first version of the journal wrote them. Run once:

    python3 tests/vectors/journal/make_v1.py

Never regenerate them to make a failing test pass: ``tests/unit/test_events.py`` reads these bytes to prove
that today's code still decodes what version 1 wrote (schema evolution, DESIGN.md "Journal").

Files:
- ``v1/seg-00000000000000000001.gwj``: one of every event type in two frames (seq 1..9), then seq 10..12.
- ``v1/snap-00000000000000000006.gws``: a small snapshot after seq 6 (two mappings, one resting port).
- ``v1/expected.json``: the same events and snapshot by field name (what v1 meant; never regenerated).
- ``torn_tail.gwj``: three frames, the last one cut short (a crash tail): reads as seq 1..8 + a cut.
- ``corrupt_middle.gwj``: three frames, one payload byte of the second flipped: a corrupt middle frame.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from journal.events import (  # noqa: E402
    GatewayStarted,
    GatewayStopped,
    MappingCreated,
    MappingExpired,
    QuotaHit,
    SessionClosed,
    SessionOpened,
    SessionRefused,
    Snapshot,
    SnapshotTaken,
)
from journal.frames import FRAME_HEADER_LEN, encode_frame  # noqa: E402
from journal.segments import encode_snapshot, segment_name, snapshot_name  # noqa: E402

HERE = Path(__file__).resolve().parent
T = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
EXT = 0xC6336402  # 198.51.100.2
VPN1, VPN2 = 0x0A424D02, 0x0A424D03  # 10.66.77.2, 10.66.77.3
FP = "9f" * 32

EVENTS = [
    GatewayStarted(seq=1, at_ns=T, version="0.1.0", ext_addrs=[EXT], recovered=False, unclean=False),
    SessionOpened(
        seq=2,
        at_ns=T + 1_000,
        session=1,
        client="alice",
        fingerprint=FP,
        remote_addr="203.0.113.7",
        remote_port=51820,
        vpn_addr=VPN1,
    ),
    SessionRefused(
        seq=3,
        at_ns=T + 2_000,
        fingerprint="00" * 32,
        remote_addr="203.0.113.9",
        remote_port=40000,
        reason="unknown identity",
        client="",
    ),
    MappingCreated(
        seq=4,
        at_ns=T + 3_000,
        proto=17,
        int_addr=VPN1,
        int_port=53000,
        ext_addr=EXT,
        ext_port=40001,
        client="alice",
        session=1,
        remote_addr=0xCB007107,
        remote_port=53,
    ),
    QuotaHit(
        seq=5, at_ns=T + 4_000, proto=6, int_addr=VPN1, int_port=53001, quota=4096, client="alice", session=1
    ),
    MappingExpired(
        seq=6,
        at_ns=T + 300_000_000_000,
        proto=17,
        ext_addr=EXT,
        ext_port=40001,
        reason="idle",
        packets_out=3,
        bytes_out=180,
        packets_in=2,
        bytes_in=400,
    ),
    SnapshotTaken(seq=7, at_ns=T + 300_000_001_000, upto_seq=6, file=snapshot_name(6), mappings_count=2),
    SessionClosed(
        seq=8,
        at_ns=T + 400_000_000_000,
        session=1,
        client="alice",
        reason="client bye",
        packets_in=10,
        bytes_in=1_000,
        packets_out=12,
        bytes_out=2_000,
    ),
    GatewayStopped(seq=9, at_ns=T + 500_000_000_000, reason="shutdown"),
    GatewayStarted(seq=10, at_ns=T + 600_000_000_000, version="0.1.0", ext_addrs=[EXT], recovered=True),
    MappingCreated(
        seq=11, at_ns=T + 600_000_001_000, proto=6, int_addr=VPN2, int_port=443, ext_addr=EXT, ext_port=40002
    ),
    MappingCreated(
        seq=12, at_ns=T + 600_000_002_000, proto=1, int_addr=VPN2, int_port=7, ext_addr=EXT, ext_port=7
    ),
]

SNAPSHOT = Snapshot(
    upto_seq=6,
    at_ns=T + 300_000_000_500,
    proto=[6, 1],
    int_addr=[VPN1, VPN2],
    int_port=[53002, 9],
    ext_addr=[EXT, EXT],
    ext_port=[40003, 9],
    session=[1, 0],
    created_ns=[T + 5_000, T + 6_000],
    last_seen_ns=[T + 7_000, T + 8_000],
    tcp_state=[2, 0],
    packets_out=[1, 2],
    bytes_out=[60, 120],
    packets_in=[1, 0],
    bytes_in=[60, 0],
    remote_addr=[0, 0],
    remote_port=[0, 0],
    client=["alice", ""],
    rest_proto=[17],
    rest_ext_addr=[EXT],
    rest_ext_port=[40001],
    rest_until_ns=[T + 420_000_000_000],
    sessions=[EVENTS[1]],
)


def _by_name(obj: msgspec.Struct) -> dict:
    """A struct as {"type": class name, field: value...}, nested structs too."""
    out = {"type": type(obj).__name__}
    for name, value in msgspec.structs.asdict(obj).items():
        if isinstance(value, list) and value and isinstance(value[0], msgspec.Struct):
            value = [_by_name(v) for v in value]
        out[name] = value
    return out


def main() -> None:
    v1 = HERE / "v1"
    v1.mkdir(exist_ok=True)
    frames = [encode_frame(EVENTS[0:5]), encode_frame(EVENTS[5:9]), encode_frame(EVENTS[9:12])]
    (v1 / segment_name(1)).write_bytes(b"".join(frames))
    (v1 / snapshot_name(6)).write_bytes(encode_snapshot(SNAPSHOT))
    expected = {"events": [_by_name(e) for e in EVENTS], "snapshot": _by_name(SNAPSHOT)}
    (v1 / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")

    # three frames; the last cut 7 bytes into its payload
    torn = frames[0] + frames[1] + frames[2][: FRAME_HEADER_LEN + 7]
    (HERE / "torn_tail.gwj").write_bytes(torn)
    # three frames; one byte in the middle of the second frame's payload flipped
    middle = bytearray(b"".join(frames))
    middle[len(frames[0]) + FRAME_HEADER_LEN + 10] ^= 0x40
    (HERE / "corrupt_middle.gwj").write_bytes(bytes(middle))
    print(f"frames at offsets 0, {len(frames[0])}, {len(frames[0]) + len(frames[1])}; wrote {v1} and tails")


if __name__ == "__main__":
    main()
