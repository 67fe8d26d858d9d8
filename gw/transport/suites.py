"""The tunnel's TLS 1.3 cipher suite: the one this machine seals fastest, measured when the gateway starts.

Why: sealing the tunnel's bytes is about a fifth of the gateway's thread in a download (py-spy, the lab),
and which AEAD is fastest depends on the CPU and the OpenSSL build. On the lab's host (AVX-512, OpenSSL
3.0) ChaCha20-Poly1305 sealed 3.7 GB/s and AES-256-GCM 2.2 GB/s (``openssl speed``, 16 KB blocks); on
CPUs where OpenSSL has its stitched AES-NI path, AES-GCM wins. OpenSSL's default list puts AES-256-GCM
first, and a TLS 1.3 server picks from its own list (Python sets ``OP_CIPHER_SERVER_PREFERENCE``), so
the gateway orders its list by a measurement: each suite seals ``SAMPLE`` bytes through a TLS pair in
memory, best of ``ROUNDS``. Clients offer OpenSSL's defaults, all three suites, and follow the choice.

Python's ``ssl`` has no call for TLS 1.3's suites (``set_ciphers`` is for TLS 1.2), so they are set with
OpenSSL's ``SSL_CTX_set_ciphersuites`` through ctypes, on the context's ``SSL_CTX`` pointer (CPython's
``PySSLContext`` holds it right after the object header). The pointer is trusted only once OpenSSL
reads the context's options through it, as ``SSLContext.options`` gives them, before and after one is
changed. Anything missing (another Python, a libssl that ctypes cannot reach: Windows' separate DLL)
leaves OpenSSL's order; the tunnel works either way, only slower where AES-GCM is the slow one.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import ssl
import sys
import time

log = logging.getLogger("gw.transport")

SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256")
SAMPLE = 1 << 20  # bytes sealed per round: long enough to time, short enough for a start (~1 ms)
ROUNDS = 3
_CHUNK = 64 << 10


def prefer_fastest(server: ssl.SSLContext) -> str | None:
    """Order ``server``'s TLS 1.3 suites fastest first (measured once per process); returns the
    first, or None when the order cannot be set here (OpenSSL's stays)."""
    rates = _rates(server)
    if not rates:
        return None
    order = sorted(rates, key=rates.get, reverse=True) + [s for s in SUITES if s not in rates]
    if not _set_suites(server, ":".join(order)):
        return None
    log.info("tunnel cipher suite: %s (sealed here: %s)", order[0],
             ", ".join(f"{s} {rates[s] / 1e9:.1f} GB/s" for s in order if s in rates))  # fmt: skip
    return order[0]


@functools.cache
def _libssl():
    """OpenSSL's libssl as the ``_ssl`` module uses it, or None. ``dlsym`` on ``_ssl``'s handle also
    searches the libraries it was linked with."""
    if sys.implementation.name != "cpython":
        return None
    try:
        lib = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
        lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    except (OSError, AttributeError):
        return None
    return lib


def _ssl_ctx(ctx: ssl.SSLContext) -> int | None:
    """The context's ``SSL_CTX *``, once checked (``_reads_options``), or None."""
    if _libssl() is None:
        return None
    pointer = _pointer(ctx)
    return pointer if pointer and _reads_options(ctx, pointer) else None


def _pointer(ctx: ssl.SSLContext) -> int | None:
    return ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value


def _reads_options(ctx: ssl.SSLContext, pointer: int) -> bool:
    """Whether OpenSSL reads, through ``pointer``, the options ``ctx.options`` reports, before and
    after one of them is flipped (another context's would match only the first time)."""
    get_options = _libssl().SSL_CTX_get_options
    before = ctx.options
    if get_options(pointer) != int(before):
        return False
    try:
        ctx.options = before ^ ssl.OP_NO_TICKET
        return get_options(pointer) == int(ctx.options)
    finally:
        ctx.options = before


def _set_suites(ctx: ssl.SSLContext, suites: str) -> bool:
    pointer = _ssl_ctx(ctx)
    return pointer is not None and _libssl().SSL_CTX_set_ciphersuites(pointer, suites.encode()) == 1


def _rates(server: ssl.SSLContext) -> dict[str, float] | None:
    """Bytes per second each suite seals here (measured once per process; a suite that could not be,
    one the system's policy turned off, is left out), or None when no suite can be chosen."""
    global _measured
    if _ssl_ctx(server) is None:
        return None
    if _measured is None:
        _measured = {suite: rate for suite in SUITES if (rate := _seal_rate(server, suite)) is not None}
    return _measured


_measured: dict[str, float] | None = None


def _seal_rate(server: ssl.SSLContext, suite: str) -> float | None:
    """Sealing speed of ``suite``: a client that offers only it, a handshake in memory, then the
    server seals ``SAMPLE`` bytes, best of ``ROUNDS``; None if the two cannot agree on it."""
    try:
        return _sealed_per_s(server, suite)
    except ssl.SSLError:  # no suite in common: this one is not allowed here
        return None


def _sealed_per_s(server: ssl.SSLContext, suite: str) -> float | None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    if not _set_suites(client, suite):
        return None
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end in (c, s):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if s.cipher() and c.cipher() and not s_out.pending:
            break
    if s.cipher() is None or s.cipher()[0] != suite:
        return None
    data = bytes(_CHUNK)
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(SAMPLE // _CHUNK):
            s.write(data)
            s_out.read()
        best = min(best, time.perf_counter() - start)
    return SAMPLE / best
