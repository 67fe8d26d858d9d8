"""The tunnel's wire format, sans-I/O: frames on the TLS byte stream, and the control messages.

Theory of operation
-------------------
A frame is an 8-byte header (type u8, flags u8, count u16, payload length u32; network order) and its
payload. Control frames (``CHALLENGE``, ``HELLO``, ``WELCOME``, ``REFUSE``, ``CLOSE``) carry one msgpack
message; ``PACKETS`` carries ``count`` IPv4 packets, each a u32 length and its bytes, and with flag
``VNET`` each packet starts with its 10-byte virtio-net header (``gw.vnet``), so a TCP super-packet of
64 KB crosses the tunnel whole and the far side writes it to its TUN as it is; ``KEEPALIVE`` is empty.

``FrameReader`` owns one fixed buffer that a ``BufferedProtocol`` decrypts into (``get_buffer`` /
``buffer_updated``) or that ``feed`` copies into; frames come out as memoryviews of it, valid until the
next read, so a packet batch is parsed without a copy and the NAT rewrites packets where they lie.
Every length is checked before it is trusted: anything malformed raises ``ProtocolError`` with the
close code the session sends, and nothing else is raised for any input (property-tested).
"""

from __future__ import annotations

import struct
from enum import IntEnum

import msgspec

# frame types
CHALLENGE, HELLO, WELCOME, REFUSE, CLOSE = 1, 2, 3, 4, 5
PACKETS, KEEPALIVE = 16, 17
CONTROL_TYPES = frozenset({CHALLENGE, HELLO, WELCOME, REFUSE, CLOSE})
VNET = 0x01  # PACKETS flag: each packet is preceded by its virtio-net header

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!BBHI")
HEADER_LEN = HEADER.size
MAX_PACKET = 10 + 65536  # a vnet header and the largest super-packet the kernel hands out
MAX_PACKETS_PER_FRAME = 1024
MAX_PAYLOAD = 256 << 10  # 256 KiB: 4 super-packets, or 180 full-size packets, per frame
MAX_CONTROL = 16 << 10  # a message with a certificate in it is ~500 bytes
_LEN = struct.Struct("!I")


class Close(IntEnum):
    """Why a session ended, sent in a ``CLOSE`` frame (and logged) before the TLS stream ends."""

    SHUTDOWN = 0  # the peer is stopping
    PROTOCOL = 1  # a malformed frame
    TOO_LARGE = 2  # a frame over MAX_PAYLOAD (or a control message over MAX_CONTROL)
    UNEXPECTED = 3  # a frame type not allowed now (data before the welcome, a second hello)
    HANDSHAKE_TIMEOUT = 4
    DEAD_PEER = 5  # nothing received for the dead-peer time
    REFUSED = 6  # the handshake ended in a refusal
    VERSION = 7  # no protocol version in common
    OVERLOAD = 8  # the peer does not read: its queue is full

    @classmethod
    def of(cls, code: int) -> Close:
        """The code a peer sent; one this build does not know reads as PROTOCOL."""
        return cls(code) if code in cls._value2member_map_ else cls.PROTOCOL


class ProtocolError(Exception):
    """The peer sent something malformed; the session closes with ``code``."""

    def __init__(self, code: Close, detail: str) -> None:
        super().__init__(f"{code.name.lower()}: {detail}")
        self.code = code
        self.detail = detail


# ---------------------------------------------------------------------------------------- messages


class Challenge(msgspec.Struct, array_like=True, frozen=True):
    """Gateway -> client, first: its protocol version and a fresh nonce for the client to sign."""

    version: int
    nonce: bytes


class Hello(msgspec.Struct, array_like=True, frozen=True):
    """Client -> gateway: its certificate (DER) and a signature proving it holds the key
    (``gw.transport.handshake.proof_data``), the protocol version and the features it speaks."""

    version: int
    certificate: bytes
    signature: bytes
    features: list[str] = []


class Welcome(msgspec.Struct, array_like=True, frozen=True):
    """Gateway -> client: the session and how to set up its side of the VPN."""

    session: int
    vpn_addr: str
    prefix_len: int
    gateway_addr: str
    dns: list[str]
    mtu: int
    offloads: bool  # packets may carry vnet headers (super-packets) both ways
    keepalive_s: float
    dead_after_s: float


class Refusal(msgspec.Struct, array_like=True, frozen=True):
    """Gateway -> client: no session, and why (``code`` is stable: unknown, revoked, version, pool_empty...)."""

    code: str
    reason: str


class CloseMessage(msgspec.Struct, array_like=True, frozen=True):
    code: int
    reason: str = ""


_MESSAGE_TYPES = {Challenge: CHALLENGE, Hello: HELLO, Welcome: WELCOME, Refusal: REFUSE, CloseMessage: CLOSE}
_DECODERS = {t: msgspec.msgpack.Decoder(cls) for cls, t in _MESSAGE_TYPES.items()}
_ENCODER = msgspec.msgpack.Encoder()


def encode_message(message: Challenge | Hello | Welcome | Refusal | CloseMessage) -> bytes:
    """One control frame."""
    payload = _ENCODER.encode(message)
    return HEADER.pack(_MESSAGE_TYPES[type(message)], 0, 0, len(payload)) + payload


def decode_message(
    ftype: int, payload: bytes | memoryview
) -> Challenge | Hello | Welcome | Refusal | CloseMessage:
    """The message of a control frame. Raises ProtocolError."""
    decoder = _DECODERS.get(ftype)
    if decoder is None:
        raise ProtocolError(Close.UNEXPECTED, f"frame type {ftype} is not a control message")
    try:
        return decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise ProtocolError(Close.PROTOCOL, f"bad {ftype} message: {e}") from None


def keepalive() -> bytes:
    return HEADER.pack(KEEPALIVE, 0, 0, 0)


# ---------------------------------------------------------------------------------------- packets


def encode_packets(packets: list, vnet: bool = False) -> bytes:
    """``PACKETS`` frames holding ``packets`` (bytes-like; each with its vnet header when ``vnet``), as
    many as the limits need (MAX_PAYLOAD bytes, MAX_PACKETS_PER_FRAME packets each), in one contiguous
    buffer: the TLS layer then seals the whole batch in as few records as it can, with one write.

    Raises: ValueError for no packets, or a packet over MAX_PACKET."""
    if not packets:
        raise ValueError("no packets to frame")
    cuts = []  # (first index, end index, payload size) per frame
    first, size = 0, 0
    for i, p in enumerate(packets):
        n = len(p)
        if n > MAX_PACKET:
            raise ValueError(f"a packet of {n} bytes exceeds {MAX_PACKET}")
        if size + 4 + n > MAX_PAYLOAD or i - first == MAX_PACKETS_PER_FRAME:
            cuts.append((first, i, size))
            first, size = i, 0
        size += 4 + n
    cuts.append((first, len(packets), size))
    flags = VNET if vnet else 0
    parts: list = []  # joined once: no zero-filled buffer first (a batch of super-packets is megabytes)
    for first, end, size in cuts:
        parts.append(HEADER.pack(PACKETS, flags, end - first, size))
        for p in packets[first:end]:
            parts.append(_LEN.pack(len(p)))
            parts.append(p)
    return b"".join(parts)


def split_packets(payload: memoryview, count: int, vnet: bool) -> list[memoryview]:
    """The packets of a ``PACKETS`` payload, as views of it. Raises ProtocolError unless the payload is
    exactly ``count`` well-formed packets."""
    if not 1 <= count <= MAX_PACKETS_PER_FRAME:
        raise ProtocolError(Close.PROTOCOL, f"a packet frame with count {count}")
    least = 10 + 20 if vnet else 20
    out = []
    at, end = 0, len(payload)
    unpack_len = _LEN.unpack_from
    for _ in range(count):
        if at + 4 > end:
            raise ProtocolError(Close.PROTOCOL, "packet frame ends inside a length")
        (n,) = unpack_len(payload, at)
        if not least <= n <= MAX_PACKET or at + 4 + n > end:
            raise ProtocolError(Close.PROTOCOL, f"packet length {n} at offset {at} does not fit")
        out.append(payload[at + 4 : at + 4 + n])
        at += 4 + n
    if at != end:
        raise ProtocolError(Close.PROTOCOL, f"{end - at} bytes after the last packet")
    return out


# ---------------------------------------------------------------------------------------- the reader


class FrameReader:
    """Frames out of a byte stream, in one fixed buffer (see the module docstring)."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        """``max_payload``: the largest frame accepted; a session still in its handshake uses
        MAX_CONTROL (32 KiB of buffer instead of 512), then ``grown()``."""
        self.max_payload = max_payload
        # in the handshake, stop after each control message: the next frames may only be legal (or fit)
        # once the session has moved on and grown its reader
        self._one_control = max_payload <= MAX_CONTROL
        self._buf = bytearray(2 * (HEADER_LEN + max_payload))  # never resized: views of it are handed out
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of the bytes received

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next bytes go (asyncio.BufferedProtocol.get_buffer): the free tail of the buffer."""
        if self._start and len(self._buf) - self._end < HEADER_LEN + self.max_payload:
            self._compact()  # the frame under way may not fit in what is left: make room for a whole one
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> list[tuple[int, int, int, memoryview]]:
        """``nbytes`` arrived in the buffer: the frames now whole, as (type, flags, count, payload)."""
        self._end += nbytes
        return self.frames()

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, int, int, memoryview]]:
        """Copy ``data`` in and return the frames now whole (for tests and plain protocols)."""
        frames = []
        data = memoryview(data)
        while data:
            room = self.get_buffer()
            n = min(len(room), len(data))
            room[:n] = data[:n]
            data = data[n:]
            frames.extend(self.buffer_updated(n))
        return frames

    def frames(self) -> list[tuple[int, int, int, memoryview]]:
        """The whole frames buffered and not yet returned."""
        frames = []
        buf, start, end = self._buf, self._start, self._end
        while end - start >= HEADER_LEN:
            ftype, flags, count, length = HEADER.unpack_from(buf, start)
            if length > self.max_payload:
                raise ProtocolError(Close.TOO_LARGE, f"frame of {length} bytes (most {self.max_payload})")
            if ftype in CONTROL_TYPES:
                if length > MAX_CONTROL:
                    raise ProtocolError(Close.TOO_LARGE, f"control message of {length} bytes")
            elif ftype not in (PACKETS, KEEPALIVE):
                raise ProtocolError(Close.PROTOCOL, f"unknown frame type {ftype}")
            if end - start - HEADER_LEN < length:
                break
            body = start + HEADER_LEN
            frames.append((ftype, flags, count, self._view[body : body + length]))
            start = body + length
            if self._one_control and ftype in CONTROL_TYPES:
                break
        self._start = start
        if start == end:
            self._start = self._end = 0
        return frames

    def grown(self, max_payload: int = MAX_PAYLOAD) -> FrameReader:
        """A reader for larger frames holding the bytes this one has not parsed yet."""
        bigger = FrameReader(max_payload)
        n = self._end - self._start
        bigger._buf[:n] = self._buf[self._start : self._end]
        bigger._end = n
        return bigger

    def _compact(self) -> None:
        """Move the unparsed bytes to the front (a slice assignment of equal length: no resize)."""
        n = self._end - self._start
        self._buf[0:n] = self._buf[self._start : self._end]
        self._start, self._end = 0, n
