"""Fixed tunnel identities and the session's frame loop without asyncio, for the tunnel harnesses.

The identities are made from fixed Ed25519 keys with a fixed certificate (Ed25519 signatures are
deterministic), so a seed holding a valid Hello stays valid across runs: the fuzzer starts past the
signature check instead of having to forge one. Test material only: never use these keys elsewhere.

``Stream`` is ``gw.transport.endpoint._Stream.buffer_updated``/``_frame`` and the two ``handshake_frame``
methods, with the transport calls taken out: the bytes arrive through ``FrameReader.get_buffer`` and
``buffer_updated`` in chunks of the input's choosing, frames are dispatched by the same rules, the reader
grows after the welcome, and a ``ProtocolError`` ends the stream (the session closes with its code).
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from fuzz.common import require
from gw.identity import Identity
from gw.transport import wire
from gw.transport.handshake import ClientHandshake, GatewayHandshake, Proof, Refused
from gw.transport.wire import Close, FrameReader, ProtocolError

NONCE = bytes(range(32))  # the gateway's challenge nonce in every run (os.urandom live)
_EPOCH = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def fixed_identity(name: str, seed_byte: int) -> Identity:
    """An identity from a fixed key and certificate (see the module docstring)."""
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed_byte]) * 32)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(seed_byte + 1)
        .not_valid_before(_EPOCH)
        .not_valid_after(_EPOCH + datetime.timedelta(days=3650))
        .sign(key, None)
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return Identity(name, der, key, Path(f"/nonexistent/{name}.crt"), Path(f"/nonexistent/{name}.key"))


GATEWAY = fixed_identity("gateway", 1)
CLIENT = fixed_identity("alice-laptop", 2)
WELCOME = wire.Welcome(7, "10.66.77.2", 24, "10.66.77.1", ["10.66.77.1"], 1400, True, 10.0, 30.0)


class Stream:
    """One end of a tunnel fed bytes (see the module docstring): ``gateway=True`` for the daemon's side."""

    def __init__(self, gateway: bool, established: bool = False) -> None:
        self.gateway = gateway
        self.reader = FrameReader(wire.MAX_PAYLOAD if established else wire.MAX_CONTROL)
        self.established = established
        self.closed: Close | None = None
        self.proof: Proof | None = None
        self.ready = established  # the client's "welcome received"
        self.sent: list[bytes] = []
        self.packets = 0
        if gateway:
            self.handshake: GatewayHandshake | ClientHandshake = GatewayHandshake(GATEWAY.certificate, NONCE)
            self.sent.append(self.handshake.start())
        else:
            self.handshake = ClientHandshake(CLIENT, GATEWAY.fingerprint)
            self.handshake.check_gateway(GATEWAY.certificate)

    def receive(self, data: bytes) -> None:
        """``data`` from the peer, as one ``buffer_updated`` (or more, when the buffer's free room is smaller)."""
        view = memoryview(data)
        while view and self.closed is None:
            room = self.reader.get_buffer(-1)
            require(len(room) > 0, "FrameReader.get_buffer gave no room")
            n = min(len(room), len(view))
            room[:n] = view[:n]
            view = view[n:]
            room.release()
            self.buffer_updated(n)

    def buffer_updated(self, nbytes: int) -> None:
        """``_Stream.buffer_updated``: frames dispatched until the stream closes."""
        try:
            frames = self.reader.buffer_updated(nbytes)
            while frames:
                for ftype, flags, count, payload in frames:
                    self.frame(ftype, flags, count, payload)
                    if self.closed is not None:
                        return
                frames = self.reader.frames() if self.established and self.grow() else []
        except ProtocolError as e:
            require(isinstance(e.code, Close), "a ProtocolError without a close code")
            self.closed = e.code

    def grow(self) -> bool:
        if self.reader.max_payload < wire.MAX_PAYLOAD:
            self.reader = self.reader.grown()
            return True
        return False

    def frame(self, ftype: int, flags: int, count: int, payload: memoryview) -> None:
        """``_Stream._frame``."""
        if ftype == wire.KEEPALIVE and self.established:
            return
        if ftype == wire.PACKETS and self.established:
            vnet = bool(flags & wire.VNET)
            packets = wire.split_packets(payload, count, vnet)
            require(len(packets) == count, "split_packets returned another count")
            least = 30 if vnet else 20
            require(all(least <= len(p) <= wire.MAX_PACKET for p in packets), "a packet out of bounds")
            self.packets += count
            again = wire.encode_packets(packets, vnet)  # what the gateway sends on: must read back the same
            back = FrameReader().feed(again)
            got = [bytes(p) for f in back for p in wire.split_packets(f[3], f[2], bool(f[1] & wire.VNET))]
            require(got == [bytes(p) for p in packets], "encode_packets/split_packets do not round-trip")
            return
        if ftype == wire.CLOSE:
            message = wire.decode_message(ftype, payload)
            Close.of(message.code)
            self.closed = Close.SHUTDOWN
            return
        self.handshake_frame(ftype, payload)

    def handshake_frame(self, ftype: int, payload: memoryview) -> None:
        """``GatewayConnection.handshake_frame`` / ``ClientConnection.handshake_frame``."""
        if self.gateway:
            if self.proof is not None:
                raise ProtocolError(Close.UNEXPECTED, f"frame type {ftype} after the hello")
            self.proof = self.handshake.receive(ftype, payload)
            require(self.proof.certificate and len(self.proof.fingerprint) == 64, "a proof without an identity")
            self.sent.append(GatewayHandshake.welcome(WELCOME))  # authorize: the daemon's answer
            self.established = True
            return
        if self.ready:
            raise ProtocolError(Close.UNEXPECTED, f"frame type {ftype} after the welcome")
        try:
            answer = self.handshake.receive(ftype, payload)
        except Refused:
            self.closed = Close.REFUSED
            return
        if isinstance(answer, wire.Welcome):
            self.established = self.ready = True
        else:
            require(isinstance(answer, bytes), "the client's handshake answered neither bytes nor a Welcome")
            self.sent.append(answer)


def valid_hello() -> bytes:
    """The Hello frame CLIENT sends to GATEWAY's challenge (with the fixed nonce)."""
    client = ClientHandshake(CLIENT, GATEWAY.fingerprint)
    client.check_gateway(GATEWAY.certificate)
    [(ftype, _, _, payload)] = FrameReader(wire.MAX_CONTROL).feed(GatewayHandshake(GATEWAY.certificate, NONCE).start())
    hello = client.receive(ftype, payload)
    assert isinstance(hello, bytes)
    return hello
