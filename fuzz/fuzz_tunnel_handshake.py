"""Fuzz the tunnel before authentication: ``FrameReader`` and the handshake (``gw.transport.handshake``).

Input: a header byte (bit 0: the gateway's side, else the client's), then records ``[kind][len u16][bytes]``,
each a piece of the TLS stream as it arrives. With kind bit 1 the harness puts a frame header before the
piece (type from bits 2-4, the VNET flag from bit 5, the count of whole packets it holds), so mutations
of well-framed messages are easy; otherwise the bytes are fed as they are, frame headers and all.

The stream is ``fuzz.peers.Stream``: the session's dispatch without asyncio. The gateway's side starts
with its challenge sent (a fixed nonce) and checks the hello (certificate, Ed25519 proof), then runs
established; the client's side has pinned the gateway and answers challenges until a welcome.
Contract under test: nothing but ``ProtocolError`` (a close code) and, on the client, ``Refused`` (the
gateway said no) comes out of the handshake for any bytes; every frame is read within its limits.
"""

from __future__ import annotations

import struct
import sys

from fuzz.common import fuzz, instrumented, record, records

with instrumented():
    from fuzz import peers
    from gw.transport import wire

FRAME_TYPES = (wire.CHALLENGE, wire.HELLO, wire.WELCOME, wire.REFUSE, wire.CLOSE, wire.PACKETS,
               wire.KEEPALIVE, 0)  # fmt: skip
MAX_RECORDS = 16
_LEN = struct.Struct("!I")


def framed(kind: int, payload: bytes) -> bytes:
    """``payload`` behind a frame header chosen by ``kind`` (see the module docstring)."""
    ftype = FRAME_TYPES[kind >> 2 & 7]
    count, at = 0, 0
    while at + 4 <= len(payload):  # whole u32-length packets, for a PACKETS frame's count
        (n,) = _LEN.unpack_from(payload, at)
        if at + 4 + n > len(payload):
            break
        at += 4 + n
        count += 1
    return wire.HEADER.pack(ftype, wire.VNET if kind & 32 else 0, count & 0xFFFF, len(payload)) + payload


def one_input(data: bytes) -> None:
    if not data:
        return
    stream = peers.Stream(gateway=bool(data[0] & 1))
    for i, (kind, payload) in enumerate(records(data)):
        if i == MAX_RECORDS or stream.closed is not None:
            break
        stream.receive(framed(kind, payload) if kind & 2 else payload)


# ---------------------------------------------------------------------- seeds


def seeds() -> list[bytes]:
    hello = peers.valid_hello()
    packets = wire.encode_packets([bytes(20), bytes(40)])
    close = wire.encode_message(wire.CloseMessage(0, "bye"))
    challenge = peers.GatewayHandshake(peers.GATEWAY.certificate, peers.NONCE).start()
    welcome = wire.encode_message(peers.WELCOME)
    refusal = wire.encode_message(wire.Refusal("unknown", "no such client"))
    gateway = [
        [hello],
        [hello, packets, wire.keepalive(), close],
        [hello, hello],
        [hello[:5], hello[5:17], hello[17:]],
        [packets],
        [close],
        [wire.keepalive(), hello],
        [hello[:8] + bytes(len(hello) - 8)],
        [wire.HEADER.pack(wire.HELLO, 0, 0, wire.MAX_CONTROL + 1)],
    ]
    client = [[challenge, welcome], [challenge, refusal], [close], [welcome], [challenge, challenge],
              [challenge + welcome + packets]]  # fmt: skip
    out = [b"\x01" + b"".join(record(0, p) for p in s) for s in gateway]
    out += [b"\x00" + b"".join(record(0, p) for p in s) for s in client]
    hello_body = hello[wire.HEADER_LEN :]
    out.append(b"\x01" + record(2 | 1 << 2, hello_body))  # kind 6: a HELLO frame around the body
    out.append(b"\x00" + record(2, challenge[wire.HEADER_LEN :]) + record(2 | 2 << 2, welcome[wire.HEADER_LEN :]))
    return out


if __name__ == "__main__":
    fuzz("tunnel_handshake", one_input, sys.argv)
