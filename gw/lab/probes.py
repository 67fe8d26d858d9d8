"""What the lab (and the end-to-end tests) do inside a namespace: ping, a DNS lookup, echoes, a spoof,
an HTTP download.

``python -m gw.lab.probes NAME JSON-ARGS`` runs one probe in the namespace it was started in and prints
its result as one JSON object; ``LabWorld.probe`` starts it with ``ip netns exec``. Every probe bounds
its own waits and sends only to the address it was given (an address inside the lab).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import sys
import time

import dpkt

from gw import inet
from gw.packet import build_udp

WAIT_S = 3.0  # the longest a probe waits for one answer
HTTP_TIMEOUT_S = 20.0  # one whole download: below the lab's 30 s per probe, so the probe reports it itself
MAX_HTTP_HEAD = 16384  # the lab's server sends a response head of about 120 bytes
MAX_HTTP_BODY = 1 << 30  # the lab's server sends at most 1 GiB (services.MAX_HTTP_BYTES)
HTTP_RECV = 1 << 20  # one recv_into: loopback hands over up to a few hundred KiB at a time


def ping(dst: str, count: int = 3) -> dict:
    """ICMP echo to ``dst`` through a raw socket: how many came back and their round-trip times."""
    ident = os.getpid() & 0xFFFF
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(WAIT_S)
        for seq in range(1, count + 1):
            echo = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=b"gw lab ping"))
            t = time.monotonic()
            s.sendto(bytes(echo), (dst, 0))
            deadline = t + WAIT_S
            while time.monotonic() < deadline:
                try:
                    data, (src, _) = s.recvfrom(2048)
                except TimeoutError:
                    break
                reply = dpkt.ip.IP(data).data
                if (src == dst and isinstance(reply, dpkt.icmp.ICMP) and reply.type == 0
                        and reply.data.id == ident and reply.data.seq == seq):  # fmt: skip
                    rtts.append(round((time.monotonic() - t) * 1e3, 3))
                    break
    return {"sent": count, "received": len(rtts), "rtt_ms": rtts}


def dns(server: str, name: str, tcp: bool = False, qtype: int = 1) -> dict:
    """One DNS query for ``name`` to ``server``:53 over UDP or TCP: the rcode, the A records, the time."""
    query = dpkt.dns.DNS(id=random.randrange(1 << 16), rd=1, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
    wire = bytes(query)
    t = time.monotonic()
    if tcp:
        with socket.create_connection((server, 53), timeout=WAIT_S) as s:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            (n,) = struct.unpack("!H", _read_exactly(s, 2))
            data = _read_exactly(s, n)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(WAIT_S)
            s.sendto(wire, (server, 53))
            data = s.recv(4096)
    ms = (time.monotonic() - t) * 1e3
    reply = dpkt.dns.DNS(data)
    if reply.id != query.id:
        raise AssertionError(f"DNS reply ID {reply.id} for query {query.id}")
    answers = [socket.inet_ntoa(rr.ip) for rr in reply.an if rr.type == dpkt.dns.DNS_A]
    truncated = bool(reply.op & dpkt.dns.DNS_TC)
    return {"rcode": reply.rcode, "answers": answers, "truncated": truncated, "ms": round(ms, 3)}


def _read_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def udp_echo(dst: str, port: int, count: int = 5, size: int = 64) -> dict:
    """``count`` datagrams to an echo server: how many came back whole, and the median round trip."""
    rtts = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(WAIT_S)
        for i in range(count):
            payload = i.to_bytes(4, "big") + os.urandom(max(0, size - 4))
            t = time.monotonic()
            s.sendto(payload, (dst, port))
            try:
                while s.recv(65536) != payload:
                    pass
            except TimeoutError:
                continue
            rtts.append((time.monotonic() - t) * 1e3)
    rtts.sort()
    return {"sent": count, "received": len(rtts), "median_ms": round(rtts[len(rtts) // 2], 3) if rtts else None}


def tcp_echo(dst: str, port: int, size: int) -> dict:
    """``size`` random bytes through a TCP echo server and back: sha256 both ways, and the rate."""
    sent, back = hashlib.sha256(), hashlib.sha256()
    chunk = os.urandom(1 << 16)
    got = 0
    t = time.monotonic()
    with socket.create_connection((dst, port), timeout=WAIT_S) as s:
        s.settimeout(10)
        todo = size
        while todo or got < size:
            if todo:
                piece = chunk[: min(todo, len(chunk))]
                s.sendall(piece)
                sent.update(piece)
                todo -= len(piece)
            while got < size - todo:  # keep the echo drained: both directions stay below the windows
                data = s.recv(1 << 20)
                if not data:
                    raise ConnectionError(f"the echo closed after {got} of {size} bytes")
                back.update(data)
                got += len(data)
    seconds = time.monotonic() - t
    return {"bytes": got, "same": sent.digest() == back.digest(), "mbit_s": round(2 * size * 8 / seconds / 1e6, 1)}


def http_get(host: str, port: int, path: str, timeout: float = HTTP_TIMEOUT_S) -> dict:
    """HTTP/1.1 GET ``http://host:port/path``: the status, the body's length and sha256 (hashed as it
    arrives, never held), the time from connecting to the last byte, and the rate.

    The body is read to its Content-Length (or, without one, to the server's close); at most
    ``MAX_HTTP_BODY`` bytes and ``timeout`` seconds in all, else an error. Chunked bodies are refused.
    """
    if not path.startswith("/") or any(c <= " " or c > "~" for c in path):
        raise ValueError(f"path {path!r}: must start with / and be printable ASCII without spaces")
    deadline = time.monotonic() + timeout
    buf = memoryview(bytearray(HTTP_RECV))
    digest = hashlib.sha256()
    t = time.monotonic()
    with socket.create_connection((host, port), timeout=min(WAIT_S, timeout)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        head = bytearray()
        while (end := head.find(b"\r\n\r\n")) < 0:
            if len(head) > MAX_HTTP_HEAD:
                raise ValueError(f"no end of the response head in {MAX_HTTP_HEAD} bytes")
            n = _recv_into(s, buf, deadline)
            if not n:
                raise ConnectionError(f"closed after {len(head)} bytes of the response head")
            head += buf[:n]
        status, length = _http_head(bytes(head[:end]))
        early = bytes(head[end + 4 :] if length is None else head[end + 4 : end + 4 + length])  # read with the head
        digest.update(early)
        got = len(early)
        while length is None or got < length:
            n = _recv_into(s, buf if length is None else buf[: min(HTTP_RECV, length - got)], deadline)
            if not n:
                if length is None:
                    break
                raise ConnectionError(f"closed after {got} of {length} body bytes")
            digest.update(buf[:n])
            got += n
            if got > MAX_HTTP_BODY:
                raise ValueError(f"body over {MAX_HTTP_BODY} bytes")
    seconds = max(time.monotonic() - t, 1e-6)
    return {"status": status, "bytes": got, "sha256": digest.hexdigest(), "seconds": round(seconds, 3),
            "mbit_s": round(got * 8 / seconds / 1e6, 1)}  # fmt: skip


def _recv_into(s: socket.socket, view: memoryview, deadline: float) -> int:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the download ran out of time")
    s.settimeout(left)
    try:
        return s.recv_into(view)
    except TimeoutError:
        raise TimeoutError("the download ran out of time") from None


def _http_head(head: bytes) -> tuple[int, int | None]:
    """A response head's status and Content-Length (None: read to the close)."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit() or rest[3:4] not in ("", " "):
        raise ValueError(f"not an HTTP/1 status line: {lines[0][:100]!r}")
    lengths = set()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not colon:
            raise ValueError(f"not a header line: {line[:100]!r}")
        if name == "transfer-encoding":
            raise ValueError(f"Transfer-Encoding {value[:40]!r} is not supported")
        if name == "content-length":
            if not value.isdigit() or len(value) > 12:
                raise ValueError(f"Content-Length {value[:40]!r}")
            lengths.add(int(value))
    if len(lengths) > 1:
        raise ValueError(f"conflicting Content-Length headers: {sorted(lengths)}")
    length = lengths.pop() if lengths else None
    if length is not None and length > MAX_HTTP_BODY:
        raise ValueError(f"Content-Length {length} over {MAX_HTTP_BODY}")
    return int(code), length


def spoofed_udp(src: str, dst: str, port: int, payload: str) -> dict:
    """A UDP datagram with a forged source address, sent through a raw socket (IP_HDRINCL)."""
    pkt = build_udp(inet.aton(src), inet.aton(dst), 40000, port, payload.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.sendto(bytes(pkt), (dst, 0))
    return {"sent": len(pkt)}


def udp_listen(addr: str, port: int, seconds: float) -> dict:
    """The datagrams that reach ``addr:port`` within ``seconds``."""
    got = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, port))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, peer = s.recvfrom(65536)
            except TimeoutError:
                break
            got.append({"from": peer[0], "data": data.decode(errors="replace")})
    return {"received": got}


PROBES = {f.__name__: f for f in (ping, dns, udp_echo, tcp_echo, http_get, spoofed_udp, udp_listen)}


def main(argv: list[str]) -> int:
    name, args = argv[0], json.loads(argv[1]) if len(argv) > 1 else []
    try:
        result = PROBES[name](*args)
    except (OSError, AssertionError, ValueError, dpkt.UnpackError) as e:
        result = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
