"""The lab's servers: a small authoritative DNS server, UDP and TCP echo. ``python -m gw.lab.services``.

They stand in for the internet (the DNS server the gateway's proxy forwards to) and for applications
on the clients (the echo servers the other client talks to). Each is a plain asyncio server bound to
the addresses given on the command line, inside a lab namespace; nothing here sends a packet that was
not an answer to one it received. Every request is logged to stdout, one line each, so the lab can show
who really asked (the DNS server sees the gateway's address, never a client's).

The DNS server is authoritative for ``lab.example.`` (``ZONE``): A queries for its names get their
address, other types NODATA, unknown names NXDOMAIN, and names outside the zone REFUSED, over UDP and
TCP (RFC 1035 4.2.2: a two-byte length before each message). ``big.lab.example`` has ``BIG_COUNT`` A
records, more than a 512-byte datagram holds: over UDP it is answered truncated (TC, no records), so
a resolver must ask again over TCP.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct
import sys

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


def _log(line: str) -> None:
    print(line, flush=True)


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


async def serve(dns: list[str], udp_echo: list[str], tcp_echo: list[str]) -> None:
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
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.dns, args.udp_echo, args.tcp_echo))
    except OSError as e:
        print(f"gw.lab.services: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
