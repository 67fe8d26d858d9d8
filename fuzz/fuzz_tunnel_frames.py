"""Fuzz the tunnel after authentication: ``FrameReader`` with ``split_packets`` and ``decode_message``.

Input: a header byte (bit 0: the gateway's side, else the client's), then records ``[kind][len u16][bytes]``,
each a piece of the established TLS stream: packet batches, keepalives, close frames, anything (see
``fuzz_tunnel_handshake`` for kind bit 1, the frame header the harness adds).

The stream is ``fuzz.peers.Stream``, established: a full-size reader (256 KiB frames), so bytes that
span frames and the buffer's compaction are exercised. Every batch of packets must come out within
bounds and survive ``encode_packets`` -> ``split_packets`` unchanged (what the gateway forwards).
Contract under test: nothing but ``ProtocolError`` for any bytes.
"""

from __future__ import annotations

import sys

from fuzz.common import fuzz, instrumented, record, records

with instrumented():
    from fuzz import peers
    from fuzz.fuzz_tunnel_handshake import framed
    from gw import inet
    from gw import packet as P
    from gw import vnet as V
    from gw.transport import wire

MAX_RECORDS = 16


def one_input(data: bytes) -> None:
    if not data:
        return
    stream = peers.Stream(gateway=bool(data[0] & 1), established=True)
    for i, (kind, payload) in enumerate(records(data)):
        if i == MAX_RECORDS or stream.closed is not None:
            break
        stream.receive(framed(kind, payload) if kind & 2 else payload)


def seeds() -> list[bytes]:
    a, b = inet.aton("10.66.77.2"), inet.aton("203.0.113.10")
    udp = P.build_udp(a, b, 5000, 53, b"query")
    tcp = P.build_tcp(a, b, 40000, 80, payload=bytes(1300))
    batch = wire.encode_packets([udp, tcp, udp])
    vnet_batch = wire.encode_packets([bytes(V.NO_OFFLOAD) + udp, bytes(V.NO_OFFLOAD) + tcp], vnet=True)
    big = wire.encode_packets([tcp] * 5)
    close = wire.encode_message(wire.CloseMessage(1, "protocol"))
    streams = [
        [batch], [vnet_batch], [batch + wire.keepalive() + vnet_batch], [batch[:11], batch[11:]],
        [big[:3000], big[3000:]], [close], [wire.keepalive(), close],
        [wire.encode_message(peers.WELCOME)], [wire.HEADER.pack(99, 0, 0, 0)],
        [wire.HEADER.pack(wire.PACKETS, 0, 2, 28) + struct_len(20) + bytes(20)],
    ]
    out = [bytes([side]) + b"".join(record(0, p) for p in s) for s in streams for side in (0, 1)]
    out.append(b"\x01" + record(2 | 5 << 2, batch[wire.HEADER_LEN :]))
    out.append(b"\x01" + record(2 | 5 << 2 | 32, vnet_batch[wire.HEADER_LEN :]))
    return out


def struct_len(n: int) -> bytes:
    return n.to_bytes(4, "big")


if __name__ == "__main__":
    fuzz("tunnel_frames", one_input, sys.argv)
