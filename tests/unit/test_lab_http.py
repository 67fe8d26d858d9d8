"""The lab's HTTP server (gw.lab.services --http) and the http_get probe, over loopback.

The server runs as the lab runs it, ``python -m gw.lab.services --http 127.0.0.1:PORT`` in a child
process (stopped by its PID); the probe runs in the test. Bodies are checked three ways: the
probe's sha256 of what arrived, ``http_body_sha256`` (the oracle), and a hash of the pattern built
here from its documented definition, independently of the server's code.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from gw.lab import probes, services

SEED = b"gw lab http body"  # the documented pattern, spelled out again: not imported from the server
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
START_S = 10.0
LONG_REQUEST = b"GET /bytes/10 HTTP/1.1\r\nX: " + b"a" * 2 * services.MAX_HTTP_HEAD + b"\r\n\r\n"


def independent_body(n: int) -> bytes:
    """The body of /bytes/n from its definition: sha256(SEED + counter) with the counter mod 2048."""
    blocks = -(-n // 32)
    return b"".join(hashlib.sha256(SEED + (i % 2048).to_bytes(4, "big")).digest() for i in range(blocks))[:n]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    """(port, log path) of ``python -m gw.lab.services --http 127.0.0.1:PORT``, ended by its PID."""
    port = _free_port()
    log = tmp_path_factory.mktemp("http") / "services.log"
    root = Path(__file__).resolve().parents[2]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gw.lab.services", "--http", f"127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root)  # fmt: skip
    try:
        deadline = time.monotonic() + START_S
        while "ready" not in log.read_text():
            assert proc.poll() is None, f"the server exited: {log.read_text()}"
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.02)
        yield port, log
    finally:
        proc.terminate()  # SIGTERM to proc.pid
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_for_log(log: Path, text: str, timeout_s: float = 3.0) -> str:
    deadline = time.monotonic() + timeout_s
    while text not in (content := log.read_text()):
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{content}"
        time.sleep(0.02)
    return content


def _raw(port: int, request: bytes) -> bytes:
    """Send ``request`` as is and read the answer to the server's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        answer = b""
        while data := s.recv(65536):
            answer += data
    return answer


# ------------------------------------------------------------------ the pattern, without a network
@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 65535, 65536, 65537, 262143, 262144, 262145, 1_000_000])
def test_oracle_matches_the_documented_pattern(n):
    assert services.http_body_sha256(n) == hashlib.sha256(independent_body(n)).hexdigest()
    assert b"".join(services.http_body_chunks(n)) == independent_body(n)


def test_oracle_is_pinned():
    # a change of the pattern changes every recorded download hash: it must be deliberate
    assert services.http_body_sha256(1_000_000) == hashlib.sha256(independent_body(1_000_000)).hexdigest()
    assert services.http_body_sha256(0) == EMPTY_SHA256
    assert services.HTTP_BLOCK[:8].hex() == hashlib.sha256(SEED + bytes(4)).hexdigest()[:16]


def test_chunks_are_at_most_256_kib():
    sizes = [len(c) for c in services.http_body_chunks(3 * services.HTTP_CHUNK_SIZE + 5)]
    assert sizes == [services.HTTP_CHUNK_SIZE] * 3 + [5]


@pytest.mark.parametrize(
    ("method", "target", "answer"),
    [
        ("GET", "/bytes/0", (200, 0)),
        ("GET", "/bytes/1000", (200, 1000)),
        ("GET", f"/bytes/{1 << 30}", (200, 1 << 30)),  # the largest: answered, not downloaded here
        ("GET", f"/bytes/{(1 << 30) + 1}", (400, 12)),
        ("GET", "/bytes/", (400, 12)),
        ("GET", "/bytes/abc", (400, 12)),
        ("GET", "/bytes/-1", (400, 12)),
        ("GET", "/bytes/12345678901", (400, 12)),
        ("GET", "/bytes/10?x=1", (400, 12)),
        ("GET", "/", (404, 10)),
        ("GET", "/bytes", (404, 10)),
        ("GET", "/nope", (404, 10)),
        ("POST", "/bytes/10", (405, 19)),
        ("HEAD", "/bytes/10", (405, 19)),
    ],
)
def test_route(method, target, answer):
    assert services.http_route(method, target) == answer


# ------------------------------------------------------------------ downloads over loopback
def test_download_one_megabyte(http_server):
    port, log = http_server
    result = probes.http_get("127.0.0.1", port, "/bytes/1000000")
    assert result["status"] == 200
    assert result["bytes"] == 1_000_000
    assert result["sha256"] == services.http_body_sha256(1_000_000)
    assert result["sha256"] == hashlib.sha256(independent_body(1_000_000)).hexdigest()
    assert result["seconds"] >= 0 and result["mbit_s"] >= 0
    content = _wait_for_log(log, "http sent 1000000 bytes to 127.0.0.1:")
    assert "http GET /bytes/1000000 from 127.0.0.1:" in content


@pytest.mark.parametrize("n", [1, 65536, 262144, 262145, 3 * 65536 + 7])
def test_download_across_block_and_chunk_boundaries(http_server, n):
    result = probes.http_get("127.0.0.1", http_server[0], f"/bytes/{n}")
    assert (result["status"], result["bytes"]) == (200, n)
    assert result["sha256"] == hashlib.sha256(independent_body(n)).hexdigest()


def test_empty_body(http_server):
    result = probes.http_get("127.0.0.1", http_server[0], "/bytes/0")
    assert (result["status"], result["bytes"], result["sha256"]) == (200, 0, EMPTY_SHA256)
    head = _raw(http_server[0], b"GET /bytes/0 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert b"\r\nContent-Length: 0\r\n" in head and b"\r\nConnection: close\r\n" in head


@pytest.mark.parametrize(
    ("path", "status"),
    [("/nope", 404), ("/", 404), (f"/bytes/{(1 << 30) + 1}", 400), ("/bytes/abc", 400), ("/bytes/", 400)],
)
def test_error_answers(http_server, path, status):
    result = probes.http_get("127.0.0.1", http_server[0], path)
    assert result["status"] == status
    reason = {400: b"bad request\n", 404: b"not found\n"}[status]  # the body: the reason as a line of text
    assert (result["bytes"], result["sha256"]) == (len(reason), hashlib.sha256(reason).hexdigest())


@pytest.mark.parametrize(
    ("request_bytes", "status_line"),
    [
        (b"POST /bytes/10 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 405 Method Not Allowed"),
        (b"garbage\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
        (b"GET /bytes/10 HTTP/2.0\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
        (LONG_REQUEST, b"HTTP/1.1 400 Bad Request"),
        (b"GET /bytes/10 HTTP/1.0\r\n\r\n", b"HTTP/1.1 200 OK"),
        # a pipelined second request and junk after the first: the answer to the first arrives whole
        (b"GET /bytes/10 HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n" + b"x" * 100_000, b"HTTP/1.1 200 OK"),
    ],
)
def test_raw_requests(http_server, request_bytes, status_line):
    answer = _raw(http_server[0], request_bytes)
    assert answer.split(b"\r\n", 1)[0] == status_line
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert len(body) == length
    if status_line.endswith(b"200 OK"):
        assert body == independent_body(10)


def test_a_client_that_leaves_early_does_not_stop_the_server(http_server):
    port, log = http_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /bytes/500000000 HTTP/1.1\r\n\r\n")
        s.recv(65536)
    _wait_for_log(log, " of 500000000 bytes to 127.0.0.1:")
    assert probes.http_get("127.0.0.1", port, "/bytes/100")["sha256"] == services.http_body_sha256(100)


def test_probe_main_prints_json(http_server):
    out = io.StringIO()
    with redirect_stdout(out):
        probes.main(["http_get", json.dumps(["127.0.0.1", http_server[0], "/bytes/12345"])])
    result = json.loads(out.getvalue())
    assert result["status"] == 200 and result["sha256"] == services.http_body_sha256(12345)


def test_one_hundred_megabytes(http_server):
    n = 100_000_000
    result = probes.http_get("127.0.0.1", http_server[0], f"/bytes/{n}", 60)
    assert (result["status"], result["bytes"]) == (200, n)
    assert result["sha256"] == services.http_body_sha256(n)
    # the speed is reported (pytest -s), not asserted
    print(f"\n100 MB over loopback: {result['seconds']} s, {result['mbit_s']} Mbit/s")


# ------------------------------------------------------------------ the probe's bounds
@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + str((1 << 30) + 1).encode(),
        b"HTTP/1.1 200 OK\r\nno colon",
        b"SSH-2.0-OpenSSH_9.6",
        b"HTTP/1.1 2000 OK",
    ],
)
def test_probe_refuses_bad_heads(head):
    with pytest.raises(ValueError):
        probes._http_head(head)


def test_probe_reads_heads():
    assert probes._http_head(b"HTTP/1.1 200 OK\r\ncontent-length: 7") == (200, 7)
    assert probes._http_head(b"HTTP/1.0 404 Not Found\r\nContent-Length: 3\r\nContent-Length: 3") == (404, 3)
    assert probes._http_head(b"HTTP/1.1 204") == (204, None)


@pytest.mark.parametrize("path", ["bytes/1", "/bytes/1 HTTP/1.1\r\nX: y", "/ü"])
def test_probe_refuses_bad_paths(path):
    with pytest.raises(ValueError):
        probes.http_get("127.0.0.1", 9, path)


def _one_shot_server(answer: bytes, hold_s: float = 0.0) -> tuple[int, threading.Thread]:
    """A listener that reads a request, sends ``answer``, waits ``hold_s`` and closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run() -> None:
        with listener:
            listener.settimeout(5)
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)
                time.sleep(hold_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


def test_probe_reports_a_short_body():
    port, thread = _one_shot_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    with pytest.raises(ConnectionError, match="10 of 100"):
        probes.http_get("127.0.0.1", port, "/bytes/100")
    thread.join(5)


def test_probe_reads_to_the_close_without_a_length():
    port, thread = _one_shot_server(b"HTTP/1.0 200 OK\r\n\r\n" + b"y" * 5000)
    result = probes.http_get("127.0.0.1", port, "/")
    assert (result["status"], result["bytes"]) == (200, 5000)
    assert result["sha256"] == hashlib.sha256(b"y" * 5000).hexdigest()
    thread.join(5)


def test_probe_is_bounded_in_time():
    port, thread = _one_shot_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", hold_s=2)
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        probes.http_get("127.0.0.1", port, "/bytes/100", 0.3)
    assert time.monotonic() - t < 1.5
    thread.join(5)


def test_probe_is_bounded_in_size():
    port, thread = _one_shot_server(b"HTTP/1.1 200 OK\r\nX: " + b"z" * 2 * probes.MAX_HTTP_HEAD)
    with pytest.raises(ValueError, match="response head"):
        probes.http_get("127.0.0.1", port, "/")
    thread.join(5)


# ------------------------------------------------------------------ the routes that act: upload, reset, half close
@pytest.mark.parametrize(
    ("method", "target", "action"),
    [
        ("POST", "/upload", ("upload", 0)),
        ("POST", "/halfclose", ("halfclose", 0)),
        ("GET", "/reset/0", ("reset", 0)),
        ("GET", "/reset/5000", ("reset", 5000)),
        ("GET", f"/reset/{(1 << 30) + 1}", None),  # over the bound: http_route's 404
        ("GET", "/reset/abc", None),
        ("GET", "/upload", None),
        ("POST", "/upload/x", None),
        ("POST", "/reset/10", None),
        ("GET", "/bytes/10", None),  # the plain routes stay http_route's
    ],
)
def test_action(method, target, action):
    assert services.http_action(method, target) == action


def test_upload_answers_the_sha256_of_what_it_received(http_server):
    port, log = http_server
    n = 3 * services.HTTP_CHUNK_SIZE + 7
    result = probes.http_post("127.0.0.1", port, "/upload", n)
    assert (result["status"], result["bytes"], result["sha256"]) == (200, n, services.http_body_sha256(n))
    assert result["max_gap_s"] >= 0
    _wait_for_log(log, f"http upload {n} bytes sha256 {services.http_body_sha256(n)} from 127.0.0.1:")


@pytest.mark.parametrize(
    ("request_bytes", "status_line"),
    [
        (b"POST /upload HTTP/1.1\r\n\r\n", b"HTTP/1.1 411 Length Required"),
        (b"POST /upload HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
        (b"POST /upload HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab", b"HTTP/1.1 400 Bad Request"),
        (b"POST /upload HTTP/1.1\r\nContent-Length: " + str((1 << 30) + 1).encode() + b"\r\n\r\n",
         b"HTTP/1.1 400 Bad Request"),  # fmt: skip
        (b"POST /upload HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"HTTP/1.1 200 OK"),
    ],
)
def test_upload_requests(http_server, request_bytes, status_line):
    answer = _raw(http_server[0], request_bytes)
    assert answer.split(b"\r\n", 1)[0] == status_line
    if status_line.endswith(b"200 OK"):
        assert answer.partition(b"\r\n\r\n")[2] == hashlib.sha256(b"abc").hexdigest().encode() + b" 3\n"


def test_an_upload_cut_short_is_logged_not_answered(http_server):
    port, log = http_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100) == b""  # closed without an answer
    _wait_for_log(log, "http upload ended after 10 of 100 bytes from 127.0.0.1:")


def test_reset_sends_every_byte_then_a_rst(http_server):
    n = 1_000_000
    result = probes.http_until_closed("127.0.0.1", http_server[0], f"/reset/{n}")
    assert result == {"status": 200, "bytes": n, "sha256": services.http_body_sha256(n), "end": "ECONNRESET"}
    _wait_for_log(http_server[1], f"http reset after {n} bytes to 127.0.0.1:")


def test_until_closed_reports_a_clean_end(http_server):
    result = probes.http_until_closed("127.0.0.1", http_server[0], "/bytes/1000")
    assert result == {"status": 200, "bytes": 1000, "sha256": services.http_body_sha256(1000), "end": "eof"}


def test_halfclose_reads_on_after_its_fin(http_server):
    port, log = http_server
    n = 300_000
    result = probes.http_after_server_fin("127.0.0.1", port, n)
    assert result == {"status": 200, "answer_bytes": 0, "sent": n, "sha256": services.http_body_sha256(n)}
    _wait_for_log(log, f"http halfclose received {n} bytes sha256 {services.http_body_sha256(n)} from 127.0.0.1:")


def test_a_client_that_half_closes_gets_the_whole_answer(http_server):
    n = 1_000_000
    result = probes.http_get("127.0.0.1", http_server[0], f"/bytes/{n}", 10, True)
    assert (result["status"], result["bytes"], result["sha256"]) == (200, n, services.http_body_sha256(n))


def test_every_connection_is_logged_when_accepted(http_server):
    port, log = http_server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        me = f"127.0.0.1:{s.getsockname()[1]}"
        _wait_for_log(log, f"http connection from {me}\n")
