"""The lab's servers: a small authoritative DNS server, UDP and TCP echo, an HTTP server.
``python -m gw.lab.services``.

They stand in for the internet (the DNS server the gateway's proxy forwards to, a web server to
download from) and for applications on the clients (the echo servers the other client talks to).
Each is a plain asyncio server bound to the addresses given on the command line, inside a lab
namespace; nothing here sends a packet that was not an answer to one it received. Every request is
logged to stdout, one line each (an HTTP download a second line when it ends), so the lab can show
who really asked (the DNS server sees the gateway's address, never a client's).

The DNS server is authoritative for ``lab.example.`` (``ZONE``): A queries for its names get their
address, other types NODATA, unknown names NXDOMAIN, and names outside the zone REFUSED, over UDP and
TCP (RFC 1035 4.2.2: a two-byte length before each message). ``big.lab.example`` has ``BIG_COUNT`` A
records, more than a 512-byte datagram holds: over UDP it is answered truncated (TC, no records), so
a resolver must ask again over TCP.

The HTTP server answers HTTP/1.1 ``GET /bytes/N`` with 200 and exactly N bytes (N up to
``MAX_HTTP_BYTES``, else 400) with a Content-Length; any other path is 404, any other method 405,
and a request it cannot read 400. It answers one request per connection and says so
(``Connection: close``). The body is a fixed pattern, so that a download can be checked by its
sha256 without the server: ``HTTP_BLOCK`` (64 KiB) is the SHA-256 counter-mode stream
``sha256(HTTP_SEED + i.to_bytes(4, "big"))`` for i = 0 .. 2047, concatenated, and the body of
``/bytes/N`` is ``HTTP_BLOCK`` repeated and cut after N bytes. ``http_body_sha256(n)`` is the
expected digest, computed without a network (the tests' oracle). Every connection is logged when it
is accepted (``http connection from ADDR:PORT``), so a test can tell that one never arrived.

Three routes do more than answer (``http_action``), for the relay's tests of uploads and of a
remote's unusual endings:

- ``POST /upload`` with a Content-Length (up to ``MAX_HTTP_BYTES``; none: 411): the body is read as
  it comes and hashed, never held; the answer is 200 with the line ``<sha256 hex> <bytes>``.
- ``GET /reset/N``: 200 without a Content-Length (the body runs to the end of the stream), N bytes of
  the pattern, and then, once the client's side has acknowledged all of them (the kernel's send queue
  is empty: nothing the RST could destroy), a RST instead of a FIN (``SO_LINGER`` 0).
- ``POST /halfclose``: 200 with an empty body at once, then the server's FIN (it shuts its write side);
  it reads on whatever the client sends until the client's FIN, and logs the byte count and sha256
  (``http halfclose received N bytes sha256 HEX from ADDR:PORT``), since it cannot answer any more.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import hashlib
import re
import signal
import socket
import struct
import sys
from collections.abc import Iterator, Sequence

ZONE = "lab.example"
RECORDS = {  # name -> IPv4 address
    "www.lab.example": "203.0.113.80",
    "inet.lab.example": "203.0.113.10",
    "second.lab.example": "203.0.113.11",
    "gateway.lab.example": "198.51.100.1",
}
TTL_S = 60
BIG_NAME, BIG_COUNT = "big.lab.example", 100  # 100 A records: 1.6 KB, over the 512 bytes of plain UDP DNS
MAX_DNS_MESSAGE = 4096  # a query in this lab is below 300 bytes; anything larger is dropped
MAX_ECHO_BYTES = 1 << 30  # bound one TCP echo connection: the lab's transfers are far smaller
HTTP_SEED = b"gw lab http body"
HTTP_BLOCK_SIZE = 1 << 16  # the pattern's period: made once at import (2048 sha256 calls, about 1 ms)
HTTP_CHUNK_SIZE = 1 << 18  # one write: 256 KiB keeps the per-write Python cost small at several Gbit/s
MAX_HTTP_BYTES = 1 << 30  # the largest /bytes/N: 1 GiB is more than any lab transfer needs
MAX_HTTP_HEAD = 8192  # a request head from the probes or curl is below 200 bytes; a longer one is a 400
HTTP_READ_S = 10  # the time a client has to send its request head
HTTP_STALL_S = 30  # the longest one write may wait for the client to read (a stalled download ends)
HTTP_LINGER_S = 2  # after the response, how long the client's own close is waited for (see _linger_close)
HTTP_READ_CHUNK = 1 << 20  # one read of an upload (the stream hands over what it has, up to this)
HTTP_ACKED_POLL_S = 0.005  # /reset/N: how often the kernel's send queue is looked at before the RST
SIOCOUTQ = 0x5411  # linux/sockios.h: bytes the peer has not acknowledged yet
_HEADER = struct.Struct("!HHHHHH")
_QTYPE_A, _QCLASS_IN = 1, 1
_NOERROR, _FORMERR, _NXDOMAIN, _REFUSED = 0, 1, 3, 5


def dns_answer(query: bytes, tcp: bool = False) -> bytes | None:
    """The server's answer to one DNS message, or None to stay silent (not a query, or unreadable)."""
    if len(query) < 12 or len(query) > MAX_DNS_MESSAGE:
        return None
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(query)
    if flags & 0x8000:  # a response: never answer one
        return None
    rd = flags & 0x0100
    labels, at = [], 12
    try:
        while query[at]:
            n = query[at]
            if n > 63:
                raise IndexError
            labels.append(query[at + 1 : at + 1 + n].decode("ascii").lower())
            at += 1 + n
        qtype, qclass = struct.unpack_from("!HH", query, at + 1)
    except (IndexError, struct.error, UnicodeDecodeError):
        return _HEADER.pack(ident, 0x8000 | rd | _FORMERR, 0, 0, 0, 0)
    question = query[12 : at + 5]
    name = ".".join(labels)
    if qdcount != 1:
        return _HEADER.pack(ident, 0x8000 | rd | _FORMERR, 0, 0, 0, 0)
    if name != ZONE and not name.endswith("." + ZONE):
        return _HEADER.pack(ident, 0x8000 | rd | _REFUSED, 1, 0, 0, 0) + question
    if name == BIG_NAME and qtype == _QTYPE_A:
        if not tcp:
            return _HEADER.pack(ident, 0x8600 | rd | _NOERROR, 1, 0, 0, 0) + question  # AA, TC
        answers = b"".join(struct.pack("!HHHIH", 0xC00C, _QTYPE_A, _QCLASS_IN, TTL_S, 4) + bytes([198, 18, 0, i])
                           for i in range(BIG_COUNT))  # fmt: skip
        return _HEADER.pack(ident, 0x8400 | rd | _NOERROR, 1, BIG_COUNT, 0, 0) + question + answers
    address = RECORDS.get(name)
    if address is None:
        return _HEADER.pack(ident, 0x8400 | rd | _NXDOMAIN, 1, 0, 0, 0) + question  # AA
    if qtype != _QTYPE_A or qclass != _QCLASS_IN:
        return _HEADER.pack(ident, 0x8400 | rd | _NOERROR, 1, 0, 0, 0) + question  # NODATA
    answer = struct.pack("!HHHIH", 0xC00C, _QTYPE_A, _QCLASS_IN, TTL_S, 4) + socket.inet_aton(address)
    return _HEADER.pack(ident, 0x8400 | rd | _NOERROR, 1, 1, 0, 0) + question + answer


class _DnsUdp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = dns_answer(data)
        _log(f"dns udp from {addr[0]}:{addr[1]} {'answered' if reply else 'ignored'}")
        if reply is not None:
            self.transport.sendto(reply, addr)


async def _dns_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    try:
        while True:
            (n,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
            reply = dns_answer(await asyncio.wait_for(reader.readexactly(n), 10), tcp=True)
            _log(f"dns tcp from {peer[0]}:{peer[1]} {'answered' if reply else 'ignored'}")
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, OSError):
        pass
    finally:
        writer.close()


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        _log(f"udp echo {len(data)} bytes from {addr[0]}:{addr[1]}")
        self.transport.sendto(data, addr)


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    total = 0
    try:
        while total < MAX_ECHO_BYTES:
            data = await asyncio.wait_for(reader.read(1 << 16), 30)
            if not data:
                break
            total += len(data)
            writer.write(data)
            await writer.drain()
    except (TimeoutError, OSError):
        pass
    finally:
        _log(f"tcp echo {total} bytes from {peer[0]}:{peer[1]}")
        writer.close()


HTTP_BLOCK = b"".join(hashlib.sha256(HTTP_SEED + i.to_bytes(4, "big")).digest()
                     for i in range(HTTP_BLOCK_SIZE // 32))  # fmt: skip
_HTTP_CHUNK = HTTP_BLOCK * (HTTP_CHUNK_SIZE // HTTP_BLOCK_SIZE)  # whole periods: every full chunk alike
_BYTES_PATH = re.compile(r"/bytes/(\d{1,10})")
_RESET_PATH = re.compile(r"/reset/(\d{1,10})")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required"}


def http_body_chunks(n: int) -> Iterator[bytes]:
    """The body of ``/bytes/n`` as ``HTTP_CHUNK_SIZE`` pieces (the last one cut): what the server writes."""
    whole, rest = divmod(n, HTTP_CHUNK_SIZE)
    for _ in range(whole):
        yield _HTTP_CHUNK
    if rest:
        yield _HTTP_CHUNK[:rest]


def http_body_sha256(n: int) -> str:
    """The sha256 (hex) of the body of ``/bytes/n``, without a network: 1 GiB takes about a second."""
    digest = hashlib.sha256()
    for chunk in http_body_chunks(n):
        digest.update(chunk)
    return digest.hexdigest()


def http_action(method: str, target: str) -> tuple[str, int] | None:
    """The route that does more than answer, for a request line: ``("upload", 0)``, ``("halfclose", 0)``
    or ``("reset", N)`` (see the module docstring); None for the others, which ``http_route`` answers.
    A /reset/N over ``MAX_HTTP_BYTES`` is not one (``http_route``: 404)."""
    if method == "POST" and target in ("/upload", "/halfclose"):
        return target[1:], 0
    match = _RESET_PATH.fullmatch(target) if method == "GET" else None
    if match is not None and int(match[1]) <= MAX_HTTP_BYTES:
        return "reset", int(match[1])
    return None


def http_route(method: str, target: str) -> tuple[int, int]:
    """What the server answers a request line with, unless ``http_action`` has it: (status, body length)."""
    if method != "GET":
        return 405, len(_REASONS[405]) + 1
    if not target.startswith("/bytes/"):
        return 404, len(_REASONS[404]) + 1
    match = _BYTES_PATH.fullmatch(target)
    if match is None or int(match[1]) > MAX_HTTP_BYTES:
        return 400, len(_REASONS[400]) + 1
    return 200, int(match[1])


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection: read one request head (bounded), answer it (or act: ``http_action``), close."""
    peer = writer.get_extra_info("peername")
    who = f"{peer[0]}:{peer[1]}"
    _log(f"http connection from {who}")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_READ_S)
    except asyncio.LimitOverrunError:  # no end of the head within MAX_HTTP_HEAD: a 400
        _log(f"http request head over {MAX_HTTP_HEAD} bytes from {who}")
        status, length = 400, len(_REASONS[400]) + 1
    except (asyncio.IncompleteReadError, TimeoutError, OSError):  # closed or silent before a request
        writer.close()
        return
    else:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) == 3 and parts[2] in ("HTTP/1.0", "HTTP/1.1"):
            _log(f"http {parts[0][:16]} {parts[1][:100]} from {who}")
            action = http_action(parts[0], parts[1])
            if action is not None:
                await _act(action, head, reader, writer, who)
                return
            status, length = http_route(parts[0], parts[1])
        else:
            status, length = 400, len(_REASONS[400]) + 1
            _log(f"http unreadable request line from {who}")
    await _answer(reader, writer, who, status, length)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str, status: int,
                  length: int, body: bytes | None = None) -> None:  # fmt: skip
    """A whole response: for 200 ``length`` bytes of the pattern (or ``body``), else the reason; then close."""
    ctype = "application/octet-stream" if status == 200 and body is None else "text/plain"
    writer.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode("ascii"))  # fmt: skip
    if body is not None:
        chunks = [body]
    else:
        chunks = http_body_chunks(length) if status == 200 else [_REASONS[status].lower().encode() + b"\n"]
    sent = await _send_chunks(writer, chunks, who, length)
    if sent is None:
        return
    _log(f"http sent {sent} bytes to {who}")
    await _linger_close(reader, writer)


async def _send_chunks(writer: asyncio.StreamWriter, chunks, who: str, length: int) -> int | None:
    """Write ``chunks``, each drained (bounded by HTTP_STALL_S); the count sent, or None (logged, closed)
    if the client went away or stopped reading."""
    sent = 0
    try:
        for chunk in chunks:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), HTTP_STALL_S)
            sent += len(chunk)
    except (TimeoutError, OSError) as e:  # the client went away, or stopped reading
        _log(f"http sent {sent} of {length} bytes to {who}: {type(e).__name__}")
        writer.close()
        return None
    return sent


def _content_length(head: bytes) -> int | None:
    """The request head's Content-Length, None without one; ValueError if unreadable, repeated or over
    MAX_HTTP_BYTES."""
    found = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"content-length":
            continue
        value = value.strip()
        if found is not None or not value.isdigit() or len(value) > 10 or int(value) > MAX_HTTP_BYTES:
            raise ValueError(value[:40])
        found = int(value)
    return found


async def _act(action: tuple[str, int], head: bytes, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter, who: str) -> None:  # fmt: skip
    kind, n = action
    if kind == "reset":
        await _reset_after(n, writer, who)
    elif kind == "halfclose":
        await _half_close_first(reader, writer, who)
    else:
        try:
            length = _content_length(head)
        except ValueError:
            await _answer(reader, writer, who, 400, len(_REASONS[400]) + 1)
            return
        if length is None:
            await _answer(reader, writer, who, 411, len(_REASONS[411]) + 1)
            return
        await _upload(length, reader, writer, who)


async def _read_hashed(reader: asyncio.StreamReader, limit: int) -> tuple[int, str, str | None]:
    """Read up to ``limit`` bytes or to the end of the stream, hashing as they come: (count, sha256 hex,
    None, or why the reading stopped early: the client's silence for HTTP_STALL_S, or an error)."""
    digest, got = hashlib.sha256(), 0
    try:
        while got < limit:
            data = await asyncio.wait_for(reader.read(min(HTTP_READ_CHUNK, limit - got)), HTTP_STALL_S)
            if not data:
                break
            digest.update(data)
            got += len(data)
    except (TimeoutError, OSError) as e:
        return got, digest.hexdigest(), type(e).__name__
    return got, digest.hexdigest(), None


async def _upload(length: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str) -> None:
    """POST /upload: read the body to its Content-Length (hashed, not held), answer its sha256 and count."""
    got, sha, error = await _read_hashed(reader, length)
    if got < length:
        _log(f"http upload ended after {got} of {length} bytes from {who}: {error or 'closed'}")
        writer.close()
        return
        return
    _log(f"http upload {got} bytes sha256 {sha} from {who}")
    body = f"{sha} {got}\n".encode("ascii")
    await _answer(reader, writer, who, 200, len(body), body)


async def _reset_after(n: int, writer: asyncio.StreamWriter, who: str) -> None:
    """GET /reset/N: the head (no Content-Length), N bytes, and once the client's side acknowledged them
    all, a RST (SO_LINGER 0, then close): a remote that aborts mid-stream, losing nothing it sent."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
    sent = await _send_chunks(writer, http_body_chunks(n), who, n)
    if sent is None:
        return
    sock = writer.get_extra_info("socket")
    try:
        async with asyncio.timeout(HTTP_STALL_S):  # the client's side acknowledges everything, or stalls
            while writer.transport.get_write_buffer_size() or _unacknowledged(sock):
                await asyncio.sleep(HTTP_ACKED_POLL_S)
    except (TimeoutError, OSError) as e:
        _log(f"http sent {sent} of {n} bytes to {who}, not acknowledged: {type(e).__name__}")
        writer.close()
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # closes the socket: with linger 0, a RST
    _log(f"http reset after {sent} bytes to {who}")


def _unacknowledged(sock) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]


async def _half_close_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str) -> None:
    """POST /halfclose: answer (empty), send our FIN first, then read the client's bytes to its FIN and log
    their count and sha256 (nothing can be answered after our FIN)."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    try:
        await asyncio.wait_for(writer.drain(), HTTP_STALL_S)
        writer.write_eof()
    except (TimeoutError, OSError) as e:
        _log(f"http halfclose could not answer {who}: {type(e).__name__}")
        writer.close()
        return
    got, sha, error = await _read_hashed(reader, MAX_HTTP_BYTES)
    _log(f"http halfclose received {got} bytes sha256 {sha} from {who}" + (f": {error}" if error else ""))
    writer.close()


async def _linger_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Shut the write side, wait (at most ``HTTP_LINGER_S``) for the client's close, then close.

    Closing a socket that holds unread bytes from the client (a pipelined request, a body nobody
    asked for) makes the kernel send a RST, which can destroy the end of the response before the
    client has read it.
    """
    try:
        writer.write_eof()
        async with asyncio.timeout(HTTP_LINGER_S):
            while await reader.read(1 << 16):
                pass
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()


async def start_http(host: str, port: int) -> asyncio.Server:
    """The HTTP server on ``host:port`` (port 0: any free one), serving until closed."""
    return await asyncio.start_server(_http, host, port, limit=MAX_HTTP_HEAD)


def _log(line: str) -> None:
    print(line, flush=True)


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


async def serve(dns: list[str], udp_echo: list[str], tcp_echo: list[str], http: Sequence[str] = ()) -> None:
    """Run the servers until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    closers = []
    for text in dns:
        host, port = _endpoint(text)
        transport, _ = await loop.create_datagram_endpoint(_DnsUdp, local_addr=(host, port))
        closers.append(transport.close)
        server = await asyncio.start_server(_dns_tcp, host, port)
        closers.append(server.close)
    for text in udp_echo:
        transport, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=_endpoint(text))
        closers.append(transport.close)
    for text in tcp_echo:
        server = await asyncio.start_server(_tcp_echo, *_endpoint(text))
        closers.append(server.close)
    for text in http:
        server = await start_http(*_endpoint(text))
        closers.append(server.close)
    _log("ready")
    await stop.wait()
    for close in closers:
        close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gw.lab.services", description="gw lab's servers (run inside a lab namespace)"
    )
    parser.add_argument("--dns", action="append", default=[], metavar="ADDR:PORT")
    parser.add_argument("--udp-echo", action="append", default=[], metavar="ADDR:PORT")
    parser.add_argument("--tcp-echo", action="append", default=[], metavar="ADDR:PORT")
    parser.add_argument("--http", action="append", default=[], metavar="ADDR:PORT",
                        help="HTTP/1.1: GET /bytes/N answers N bytes of a fixed pattern; POST /upload, "
                             "GET /reset/N, POST /halfclose (see the module docstring)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.dns, args.udp_echo, args.tcp_echo, args.http))
    except OSError as e:
        print(f"gw.lab.services: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
