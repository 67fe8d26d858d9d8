"""What the lab (and the end-to-end tests) do inside a namespace: ping, a DNS lookup, echoes, a spoof,
HTTP downloads and uploads (and the lab server's unusual endings: a RST, its FIN first), and paced
floods (new flows, forged sources, fragments) for the hostile tests and ``bench.flood``.

``python -m gw.lab.probes NAME JSON-ARGS`` runs one probe in the namespace it was started in and prints
its result as one JSON object; ``LabWorld.probe`` starts it with ``ip netns exec``. Every probe bounds
its own waits and sends only to the address it was given (an address inside the lab).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

import dpkt

from gw import inet
from gw.lab.services import http_body_chunks
from gw.packet import IP_MF, UDP_HLEN, build_ipv4, build_udp

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


def http_get(host: str, port: int, path: str, timeout: float = HTTP_TIMEOUT_S, half_close: bool = False) -> dict:
    """HTTP/1.1 GET ``http://host:port/path``: the status, the body's length and sha256 (hashed as it
    arrives, never held), the time from connecting to the last byte, the rate, and ``max_gap_s``: the
    longest wait between two recv() returns (the first counted from the request sent), a stall's length.

    The body is read to its Content-Length (or, without one, to the server's close); at most
    ``MAX_HTTP_BODY`` bytes and ``timeout`` seconds in all, else an error. Chunked bodies are refused.
    ``half_close``: the request is followed by our FIN (``shutdown(SHUT_WR)``), before any answer.
    """
    _check_path(path)
    deadline = time.monotonic() + timeout
    buf = memoryview(bytearray(HTTP_RECV))
    digest = hashlib.sha256()
    t = time.monotonic()
    with socket.create_connection((host, port), timeout=min(WAIT_S, timeout)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        if half_close:
            s.shutdown(socket.SHUT_WR)
        gaps = _Gaps()
        status, length, early = _read_head(s, buf, deadline, gaps)
        if length is not None:
            early = early[:length]
        digest.update(early)
        got = len(early)
        while length is None or got < length:
            n = _recv_into(s, buf if length is None else buf[: min(HTTP_RECV, length - got)], deadline)
            gaps.tick()
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
            "mbit_s": round(got * 8 / seconds / 1e6, 1), "max_gap_s": round(gaps.longest, 3)}  # fmt: skip


def http_until_closed(host: str, port: int, path: str, timeout: float = HTTP_TIMEOUT_S) -> dict:
    """HTTP/1.1 GET, the response read to the end of the stream whatever its head says: the status, the
    bytes after the head (count, sha256), and how the stream ended: ``end`` is "eof" (the server's FIN)
    or the errno name of the error that ended it ("ECONNRESET": a RST)."""
    _check_path(path)
    deadline = time.monotonic() + timeout
    buf = memoryview(bytearray(HTTP_RECV))
    digest = hashlib.sha256()
    with socket.create_connection((host, port), timeout=min(WAIT_S, timeout)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        status, got, end = None, 0, "eof"
        try:
            status, _, early = _read_head(s, buf, deadline)
            digest.update(early)
            got = len(early)
            while n := _recv_into(s, buf, deadline):
                digest.update(buf[:n])
                got += n
                if got > MAX_HTTP_BODY:
                    raise ValueError(f"body over {MAX_HTTP_BODY} bytes")
        except ConnectionError as e:  # a RST (ECONNRESET), or a close inside the head
            if e.errno is None:
                raise
            end = errno.errorcode.get(e.errno, str(e.errno))
    return {"status": status, "bytes": got, "sha256": digest.hexdigest(), "end": end}


def http_post(host: str, port: int, path: str, size: int, timeout: float = HTTP_TIMEOUT_S) -> dict:
    """HTTP/1.1 POST of ``size`` bytes to ``http://host:port/path`` (the lab server's /upload): the body
    is the pattern of ``/bytes/size`` (``services.http_body_chunks``: its sha256 is ``http_body_sha256``),
    sent as the socket takes it. Returns the status, the server's answer (``sha256`` and ``bytes``: what
    it says it received), the time from connecting to the answer, the rate, and ``max_gap_s``: the longest
    wait between two send() returns, or from the last one to the answer's first byte (a stall's length)."""
    _check_path(path)
    if not 0 <= size <= MAX_HTTP_BODY:
        raise ValueError(f"size {size}: 0 to {MAX_HTTP_BODY}")
    deadline = time.monotonic() + timeout
    buf = memoryview(bytearray(HTTP_RECV))
    t = time.monotonic()
    with socket.create_connection((host, port), timeout=min(WAIT_S, timeout)) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {size}\r\n"
                  f"Connection: close\r\n\r\n".encode())  # fmt: skip
        gaps = _Gaps()
        for chunk in http_body_chunks(size):
            view = memoryview(chunk)
            while view:
                n = _send(s, view, deadline)  # a socket with a timeout: returns once some bytes fit
                gaps.tick()
                view = view[n:]
        status, length, body = _read_head(s, buf, deadline, gaps)
        if length is None or length > MAX_HTTP_HEAD:
            raise ValueError(f"answer of {length} bytes: expected a short one with a Content-Length")
        while len(body) < length:
            n = _recv_into(s, buf[: length - len(body)], deadline)
            if not n:
                raise ConnectionError(f"closed after {len(body)} of {length} answer bytes")
            body += buf[:n]
    seconds = max(time.monotonic() - t, 1e-6)
    answer = bytes(body).decode("latin-1").split()
    sha, count = (answer[0], int(answer[1])) if status == 200 and len(answer) == 2 else (None, None)
    return {"status": status, "sha256": sha, "bytes": count, "seconds": round(seconds, 3),
            "mbit_s": round(size * 8 / seconds / 1e6, 1), "max_gap_s": round(gaps.longest, 3)}  # fmt: skip


def http_after_server_fin(host: str, port: int, size: int, timeout: float = HTTP_TIMEOUT_S) -> dict:
    """POST /halfclose to the lab server, which answers and sends its FIN first: the answer is read to
    that FIN (recv returns b""), then ``size`` more bytes (the pattern of ``/bytes/size``) are sent on the
    half-closed connection, then our FIN. The server logs what it received; this returns the status, the
    answer's length (head excluded) and the bytes sent and their sha256."""
    deadline = time.monotonic() + timeout
    buf = memoryview(bytearray(HTTP_RECV))
    sent = hashlib.sha256()
    with socket.create_connection((host, port), timeout=min(WAIT_S, timeout)) as s:
        s.sendall(f"POST /halfclose HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        status, _, early = _read_head(s, buf, deadline)
        extra = len(early)
        while n := _recv_into(s, buf, deadline):  # to the server's FIN
            extra += n
        for chunk in http_body_chunks(size):
            view = memoryview(chunk)
            while view:
                view = view[_send(s, view, deadline):]
            sent.update(chunk)
        s.shutdown(socket.SHUT_WR)
    return {"status": status, "answer_bytes": extra, "sent": size, "sha256": sent.hexdigest()}


class _Gaps:
    """The longest time between two calls of ``tick`` (the first counted from when it was made)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.longest = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self.last)
        self.last = now


def _check_path(path: str) -> None:
    if not path.startswith("/") or any(c <= " " or c > "~" for c in path):
        raise ValueError(f"path {path!r}: must start with / and be printable ASCII without spaces")


def _read_head(s: socket.socket, buf: memoryview, deadline: float, gaps: _Gaps | None = None
               ) -> tuple[int, int | None, bytearray]:  # fmt: skip
    """Read a response head: (status, Content-Length or None, the bytes read after the head)."""
    head = bytearray()
    while (end := head.find(b"\r\n\r\n")) < 0:
        if len(head) > MAX_HTTP_HEAD:
            raise ValueError(f"no end of the response head in {MAX_HTTP_HEAD} bytes")
        n = _recv_into(s, buf, deadline)
        if gaps is not None:
            gaps.tick()
        if not n:
            raise ConnectionError(f"closed after {len(head)} bytes of the response head")
        head += buf[:n]
    status, length = _http_head(bytes(head[:end]))
    return status, length, head[end + 4 :]


def _send(s: socket.socket, view: memoryview, deadline: float) -> int:
    return _before(deadline, "upload", s, s.send, view)


def _recv_into(s: socket.socket, view: memoryview, deadline: float) -> int:
    return _before(deadline, "download", s, s.recv_into, view)


def _before(deadline: float, what: str, s: socket.socket, call, view: memoryview) -> int:
    """``call(view)`` on ``s`` with what is left of ``deadline``; TimeoutError naming ``what`` after it."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"the {what} ran out of time")
    s.settimeout(left)
    try:
        return call(view)
    except TimeoutError:
        raise TimeoutError(f"the {what} ran out of time") from None


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


def _until_sigterm() -> list[int]:
    """A list SIGTERM appends to, for a probe that runs until the test that started it has what it
    waited for (however long a slow host made that): the probe ends as it would at its deadline."""
    stopped: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    return stopped


def udp_listen(addr: str, port: int, seconds: float) -> dict:
    """The datagrams that reach ``addr:port`` within ``seconds``, or until SIGTERM."""
    got = []
    stopped = _until_sigterm()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, port))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not stopped:
            s.settimeout(min(left, 0.1))
            try:
                data, peer = s.recvfrom(65536)
            except TimeoutError:
                continue
            got.append({"from": peer[0], "data": data.decode(errors="replace")})
    return {"received": got}


# linux/in.h and linux/errqueue.h (the socket module has the IP ones from Python 3.12 on)
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_RECVERR, IP_MTU = 10, 2, 11, 14
MSG_ERRQUEUE = 0x2000
SO_EE_ORIGIN_ICMP = 2
# struct sock_extended_err (errno, origin, type, code, pad, info, data), then the offender's sockaddr_in
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")
TRACEROUTE_PORT = 33434  # the first destination port, one more per hop (traceroute's default)
MAX_HOPS = 30  # bound one traceroute: the lab's path is three hops
MAX_DATAGRAMS = 100  # bound what one UDP probe collects: the lab's exchanges are a few datagrams


def _icmp_error(s: socket.socket, deadline: float, answers: list[int] | None = None) -> dict | None:
    """The first ICMP error queued on ``s`` (IP_RECVERR) before ``deadline``: its errno, ICMP type, code and
    info (the MTU of a "fragmentation needed"), and the offender (the host that sent it); None if none came.
    Datagrams that arrive meanwhile are read, their lengths appended to ``answers``."""
    poller = select.poll()
    poller.register(s, select.POLLIN)  # POLLERR is always reported: an error is queued
    while (left := deadline - time.monotonic()) > 0:
        if not poller.poll(left * 1e3):
            break
        try:
            _, ancillary, _, _ = s.recvmsg(512, 512, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:  # no error queued: a datagram (an answer), not what we wait for
            try:
                n = len(s.recv(65536, socket.MSG_DONTWAIT))
            except OSError:
                continue
            if answers is not None:
                answers.append(n)
            continue
        for level, kind, data in ancillary:
            if level != socket.IPPROTO_IP or kind != IP_RECVERR or len(data) < _SOCK_EXTENDED_ERR.size:
                continue
            errno_, origin, icmp_type, code, _, info, _ = _SOCK_EXTENDED_ERR.unpack_from(data)
            offender = None
            if len(data) >= 24 and struct.unpack_from("=H", data, 16)[0] == socket.AF_INET:
                offender = socket.inet_ntoa(data[20:24])  # SO_EE_OFFENDER: sockaddr_in after the error
            return {"errno": errno_, "icmp": origin == SO_EE_ORIGIN_ICMP, "type": icmp_type, "code": code,
                    "info": info, "from": offender}  # fmt: skip
    return None


def traceroute(dst: str, max_hops: int = MAX_HOPS) -> dict:
    """UDP datagrams to ``dst`` with TTL 1, 2, ... (ports 33434, 33435, ...), each from its own socket, its
    ICMP error read with IP_RECVERR: per hop the offender, ICMP type and code (None: no answer in WAIT_S).
    Stops at the first error from ``dst`` itself (port unreachable: arrived)."""
    hops = []
    for ttl in range(1, min(max_hops, MAX_HOPS) + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            s.sendto(b"gw lab traceroute", (dst, TRACEROUTE_PORT + ttl - 1))
            err = _icmp_error(s, time.monotonic() + WAIT_S)
        if err is None or not err["icmp"]:
            hops.append({"ttl": ttl, "from": None, "type": None, "code": None})
            continue
        hops.append({"ttl": ttl, "from": err["from"], "type": err["type"], "code": err["code"]})
        if err["from"] == dst:
            break
    return {"hops": hops}


def pmtu(dst: str, port: int, size: int) -> dict:
    """One ``size``-byte datagram (headers included) with DF (IP_PMTUDISC_DO) on a connected UDP socket to
    ``dst``: the ICMP error it got (``icmp``, read with IP_RECVERR: type, code, info = the next hop's MTU,
    offender; None if none came in WAIT_S), whether it was answered, and the socket's path MTU (IP_MTU)
    before and after."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        s.connect((dst, port))
        mtu_before = s.getsockopt(socket.IPPROTO_IP, IP_MTU)
        s.send(b"x" * (size - 28))  # 20 bytes of IPv4 header, 8 of UDP
        answers: list[int] = []
        err = _icmp_error(s, time.monotonic() + WAIT_S, answers)
        return {"icmp": None if err is None else {k: err[k] for k in ("type", "code", "info", "from")},
                "answered": bool(answers), "mtu_before": mtu_before,
                "mtu": s.getsockopt(socket.IPPROTO_IP, IP_MTU)}  # fmt: skip


def udp_talk(targets: list, seconds: float, bind_port: int = 0, count: int = 0,
             answer_pings: bool = False) -> dict:  # fmt: skip
    """From one UDP socket (bound to ``bind_port``, 0: any), a datagram to each ``[addr, port, text]`` of
    ``targets``, then every datagram that arrives for ``seconds`` (or until ``count`` of them, if given),
    with its source. With ``answer_pings``, one whose text starts with "ping" is answered "pong..." to its
    source (one answer each, never to an answer: no loop). Returns the socket's port and what came."""
    got = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", bind_port))
        for addr, port, text in targets:
            s.sendto(text.encode(), (addr, port))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and len(got) < (count or MAX_DATAGRAMS):
            s.settimeout(left)
            try:
                data, peer = s.recvfrom(65536)
            except TimeoutError:
                break
            got.append({"from": f"{peer[0]}:{peer[1]}", "data": data.decode(errors="replace")})
            if answer_pings and data.startswith(b"ping"):
                s.sendto(b"pong" + data[4:], peer)
        return {"port": s.getsockname()[1], "received": got}


def udp_answer(addr: str, port: int, sources: list, seconds: float) -> dict:
    """Wait up to ``seconds`` for one datagram on ``addr:port``, then answer its source once from each
    ``[src_addr, src_port, text]`` of ``sources`` (a socket bound there; ``addr:port`` itself is the
    listening one): how a host behind a NAT learns which remote endpoints its NAT lets in."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, port))
        s.settimeout(seconds)
        try:
            _, peer = s.recvfrom(65536)
        except TimeoutError:
            return {"peer": None, "sent": []}
        sent = []
        for src_addr, src_port, text in sources:
            if (src_addr, src_port) == (addr, port):
                s.sendto(text.encode(), peer)
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                    other.bind((src_addr, src_port))
                    other.sendto(text.encode(), peer)
            sent.append(text)
            time.sleep(0.05)  # in the order given: what is sent last arrives last
    return {"peer": f"{peer[0]}:{peer[1]}", "sent": sent}


def udp_flows(dst: str, port: int, sizes: list, wait_s: float = 1.0) -> dict:
    """One new UDP socket (a new flow) per entry of ``sizes``, in turn: a datagram of that many bytes to
    the echo server ``dst:port``, and whether it came back within ``wait_s``; and each socket's port. The
    sockets stay open until the last flow has had its answer."""
    answered = []
    sockets = []
    try:
        for size in sizes:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sockets.append(s)
            s.settimeout(wait_s)
            payload = os.urandom(size)
            s.sendto(payload, (dst, port))
            try:
                answered.append(s.recv(65536) == payload)
            except TimeoutError:
                answered.append(False)
        ports = [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
    return {"answered": answered, "ports": ports}


# Floods: one raw IP_HDRINCL socket, paced; each probe bounds itself whatever it is asked
FLOOD_MAX_PACKETS = 2_000_000  # at most this many packets per flood probe
FLOOD_MAX_S = 60.0  # ... and this long
FLOOD_MAX_BURST = 64  # packets sent between two looks at the clock: a late pacer catches up in small steps,
# not in one burst that would overflow a veth's backlog (net.core.netdev_max_backlog, 1000)
FLOOD_PAUSE_S = 0.0005  # the pacer's sleep when nothing is due
FRAGMENT_KINDS = ("first", "later", "stray", "whole", "reordered")
FRAGMENT_MIDDLE = 185  # a later fragment's offset in 8-byte units (1480 bytes: where a 1500-MTU datagram's
# second fragment starts); with "more fragments" set its datagram's end never comes


def _flood(packet, dst: str, count: int, rate_pps: int, seconds: float) -> dict:
    """``packet(i)`` for i = 0, 1, ... sent to ``dst`` through one raw IP_HDRINCL socket (the kernel fills in
    the header checksum; the route to ``dst`` picks the device), paced at ``rate_pps``, at most ``count``
    packets for at most ``seconds`` (both capped: FLOOD_MAX_PACKETS, FLOOD_MAX_S), or until SIGTERM
    (a test ends a flood when its checks are done, however long a slow host made them). Prints
    ``started`` first. Returns how many the kernel took (``sent``), refused (a full queue: ENOBUFS,
    EAGAIN), the time and the rate."""
    count, seconds = min(count, FLOOD_MAX_PACKETS), min(seconds, FLOOD_MAX_S)
    sent = refused = 0
    stopped = _until_sigterm()
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.setblocking(False)
        print(json.dumps({"started": True}), flush=True)
        t = time.monotonic()
        while (done := sent + refused) < count and (elapsed := time.monotonic() - t) < seconds and not stopped:
            due = min(int(elapsed * rate_pps), count) - done
            if due <= 0:
                time.sleep(FLOOD_PAUSE_S)
                continue
            for i in range(done, done + min(due, FLOOD_MAX_BURST)):
                try:
                    s.sendto(packet(i), (dst, 0))
                    sent += 1
                except OSError:
                    refused += 1
        elapsed = time.monotonic() - t
    return {"sent": sent, "refused": refused, "seconds": round(elapsed, 3), "pps": round(sent / max(elapsed, 1e-9))}


def new_flows(src: str, dst: str, port: int, first_port: int, count: int, rate_pps: int, seconds: float) -> dict:
    """A client opening new UDP flows as fast as it is let: one datagram from each source port in turn
    (``first_port`` up to 65535, then again), from its own address ``src`` to ``dst:port``, each a new
    NAT mapping until its quota (see ``_flood`` for the bounds and the result)."""
    pkt = build_udp(inet.aton(src), inet.aton(dst), first_port, port, b"gw lab new flow", zero_checksum=True)
    span = 65536 - first_port

    def packet(i: int) -> bytearray:
        struct.pack_into("!H", pkt, 20, first_port + i % span)  # the UDP source port (IHL 5)
        return pkt

    return _flood(packet, dst, count, rate_pps, seconds)


def spoofed_flood(sources: list, dst: str, port: int, count: int, rate_pps: int, seconds: float) -> dict:
    """UDP datagrams to ``dst:port`` whose sources are forged: each of ``sources`` in turn (``_flood``)."""
    pkts = [build_udp(inet.aton(src), inet.aton(dst), 40000, port, b"gw lab forged") for src in sources]
    return _flood(pkts.__getitem__ if len(pkts) == 1 else lambda i: pkts[i % len(pkts)], dst, count,
                  rate_pps, seconds)  # fmt: skip


def fragment_flood(src: str, dst: str, sport: int, mapped_port: int, stray_port: int, kinds: list, count: int,
                   rate_pps: int, seconds: float, size: int = 1200, seed: int = 0) -> dict:  # fmt: skip
    """IPv4 fragments of UDP datagrams from ``src:sport`` to ``dst``, the kinds in turn (``_flood``), each
    ``size`` bytes of IP payload (a multiple of 8), each datagram with a random IP identification (1-65535
    shuffled: no two datagrams share one before all were used):

    - ``first``: a first fragment (offset 0, more fragments) to ``mapped_port``, whose rest never comes;
    - ``later``: a middle fragment (offset FRAGMENT_MIDDLE, more fragments) whose first never comes;
    - ``stray``: a first fragment to ``stray_port``, whose rest never comes;
    - ``whole``: two packets, a whole datagram to ``mapped_port`` in two fragments, in order;
    - ``reordered``: the same, the last fragment first.
    """
    if size % 8 or not 16 <= size <= 1400 or not set(kinds) <= set(FRAGMENT_KINDS) or not kinds:
        raise ValueError(f"fragment_flood: size {size} (a multiple of 8, 16-1400), kinds {kinds}")
    rng = random.Random(seed or None)
    s, d = inet.aton(src), inet.aton(dst)
    body = bytes(size - UDP_HLEN)
    # first fragments: the UDP header claims the whole datagram (two fragments' worth), checksum 0 (none)
    firsts = {port: struct.pack("!HHHH", sport, port, 2 * size, 0) + body for port in (mapped_port, stray_port)}
    rest = bytes(size)
    pairs = {"whole": ("first", "last+"), "reordered": ("last", "first+")}  # +: the pair's second, same ID
    plan = [part for k in kinds for part in pairs.get(k, (k,))]
    idents = list(range(1, 0x10000))  # random, and none twice before all were used: no datagram meets another
    rng.shuffle(idents)
    ident = -1

    def packet(i: int) -> bytearray:
        nonlocal ident
        kind = plan[i % len(plan)]
        if not kind.endswith("+"):
            ident += 1
        kind = kind.rstrip("+")
        if kind == "first":
            return build_ipv4(s, d, 17, firsts[mapped_port], ident=idents[ident % 0xFFFF], flags_frag=IP_MF)
        if kind == "stray":
            return build_ipv4(s, d, 17, firsts[stray_port], ident=idents[ident % 0xFFFF], flags_frag=IP_MF)
        if kind == "later":
            return build_ipv4(s, d, 17, rest, ident=idents[ident % 0xFFFF], flags_frag=IP_MF | FRAGMENT_MIDDLE)
        return build_ipv4(s, d, 17, rest, ident=idents[ident % 0xFFFF], flags_frag=size // 8)  # the last of two

    return _flood(packet, dst, count, rate_pps, seconds)


PROBES = {f.__name__: f for f in (ping, dns, udp_echo, tcp_echo, http_get, http_until_closed, http_post,
                                   http_after_server_fin, spoofed_udp, udp_listen,
                                   traceroute, pmtu, udp_talk, udp_answer, udp_flows, new_flows,
                                   spoofed_flood, fragment_flood)}  # fmt: skip


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
