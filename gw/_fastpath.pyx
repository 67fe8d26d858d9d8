# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, infer_types=False
"""Compiled twins of ``Nat.translate_outbound`` / ``Nat.translate_inbound`` (STYLE section 3: compile the
hot path, keep the readable Python as the specification).

Same checks, same order, same verdict objects, same calls for the rare work (``nat._create``,
``nat._admit_remote``, ``nat._track_tcp``, ``_clamp_mss``) and the same fallbacks to ``nat._outbound`` /
``nat._inbound``, looked up on the instance each time as the Python does. Only the arithmetic moves to C:
the fields are read straight from the bytearray and the RFC 1624 updates are done in 64-bit ints with the
Python ``%`` (always non-negative) reproduced. Mapping fields stay Python attributes; the packed counters
stay Python ints. ``tests/property/test_fastpath_compiled.py`` checks this file against ``gw/nat.py``.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from gw import packet as P
from gw.nat import FORWARD, ONE_PACKET, Mapping, Nat, _clamp_mss
from gw.packet import Drop
from gw.tcp_track import TcpState

cdef object _BAD_CHECKSUM = Drop.BAD_CHECKSUM
cdef object _NO_MAPPING = Drop.NO_MAPPING
cdef object _FILTERED = Drop.FILTERED
cdef object _FORWARD = FORWARD
cdef object _MAPPING = Mapping
cdef object _clamp = _clamp_mss
cdef object _py_outbound = Nat.translate_outbound  # the reference, for a pkt that is not a bytearray
cdef object _py_inbound = Nat.translate_inbound
cdef int64_t _ONE_PACKET = ONE_PACKET
cdef long _SYN_OUT = TcpState.SYN_OUT

cdef enum:
    IP_CSUM = 10  # RFC 791 offsets, IHL 5
    IP_SRC = 12
    IP_DST = 16
    L4 = 20
    V4_SPORT = 20
    V4_DPORT = 22
    V4_UDP_LEN = 24
    V4_UDP_CSUM = 26
    V4_TCP_FLAGS = 33
    V4_TCP_CSUM = 36
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_ACK = 0x10
    TCP_STATE_FLAGS = TCP_SYN | TCP_FIN | TCP_RST
    SYN_RST_ACK = TCP_SYN | TCP_RST | TCP_ACK

assert (P.IP_CSUM, P.IP_SRC, P.IP_DST, P.V4_SPORT, P.V4_UDP_CSUM, P.V4_TCP_FLAGS, P.V4_TCP_CSUM) == (
    IP_CSUM, IP_SRC, IP_DST, V4_SPORT, V4_UDP_CSUM, V4_TCP_FLAGS, V4_TCP_CSUM)
assert (P.TCP_FIN, P.TCP_SYN, P.TCP_RST, P.TCP_ACK_FLAG) == (TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK)


cdef inline uint32_t get16(const uint8_t* b, Py_ssize_t at) noexcept nogil:
    return <uint32_t>b[at] << 8 | b[at + 1]


cdef inline uint32_t get32(const uint8_t* b, Py_ssize_t at) noexcept nogil:
    return <uint32_t>b[at] << 24 | <uint32_t>b[at + 1] << 16 | <uint32_t>b[at + 2] << 8 | b[at + 3]


cdef inline void put16(uint8_t* b, Py_ssize_t at, uint32_t v) noexcept nogil:
    b[at] = <uint8_t>(v >> 8)
    b[at + 1] = <uint8_t>v


cdef inline void put32(uint8_t* b, Py_ssize_t at, uint32_t v) noexcept nogil:
    b[at] = <uint8_t>(v >> 24)
    b[at + 1] = <uint8_t>(v >> 16)
    b[at + 2] = <uint8_t>(v >> 8)
    b[at + 3] = <uint8_t>v


cdef inline uint32_t adjust(int64_t x) noexcept nogil:
    """``0xFFFE - x % 0xFFFF`` with Python's non-negative ``%`` (see ``Nat.translate_outbound``)."""
    cdef int64_t r = x % 0xFFFF
    if r < 0:
        r += 0xFFFF
    return <uint32_t>(0xFFFE - r)


def translate_outbound(nat, pkt, now):
    """``Nat.translate_outbound``, compiled."""
    if type(pkt) is not bytearray:
        return _py_outbound(nat, pkt, now)
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(pkt)
    cdef uint8_t* b
    cdef uint32_t proto, w0, w1, w2, src, dst, sport, dport, flags, l4csum, ea, ep, ipcsum
    cdef uint64_t ext, rmask
    cdef int64_t mremote
    if n < 28:
        return nat._outbound(pkt, now)
    b = <uint8_t*>PyByteArray_AS_STRING(pkt)
    proto = b[9]
    if proto == 17:
        l4csum = get16(b, V4_UDP_CSUM)
        flags = 0
    elif proto == 6 and n >= 40:
        l4csum = get16(b, V4_TCP_CSUM)
        flags = b[V4_TCP_FLAGS]
    else:
        return nat._outbound(pkt, now)
    w0 = get32(b, 0)
    w1 = get32(b, 4)
    w2 = get32(b, 8)
    src = get32(b, IP_SRC)
    dst = get32(b, IP_DST)
    sport = get16(b, V4_SPORT)
    dport = get16(b, V4_DPORT)
    # version 4 + IHL 5, total length == buffer, not a fragment, not to one of our public addresses
    if w0 >> 24 != 0x45 or (w0 & 0xFFFF) != <uint64_t>n or w1 & 0x3FFF or dst in nat._ext_set:
        return nat._outbound(pkt, now)
    if (<uint64_t>w0 + w1 + w2 + src + dst) % 0xFFFF:
        return nat._drop(_BAD_CHECKSUM)
    m = nat._by_int.get(<uint64_t>proto << 48 | <uint64_t>src << 16 | sport)
    rmask = nat._rmask
    r = (<uint64_t>dst << 16 | dport) & rmask
    if m is None:
        if proto == 6 and flags & SYN_RST_ACK != TCP_SYN:
            return nat._drop(_NO_MAPPING)  # RFC 5382: only a SYN opens a TCP mapping
        m = nat._create(proto, src, sport, dst, dport, now)
        if type(m) is not _MAPPING:
            return nat._drop(m)
    else:
        remotes = m.remotes
        if r != m.remote and (remotes is None or r not in remotes):
            nat._admit_remote(m, r)
    if flags & TCP_STATE_FLAGS:
        nat._track_tcp(m, flags, True, now)
        if flags & TCP_SYN:
            mss = nat._mss
            if mss:
                _clamp(pkt, 20, mss)
                b = <uint8_t*>PyByteArray_AS_STRING(pkt)
                l4csum = get16(b, V4_TCP_CSUM)
    ext = m.ext_key
    ea = <uint32_t>(ext >> 16)
    ep = <uint32_t>(ext & 0xFFFF)
    ipcsum = adjust(<int64_t>ea - src - 1 - (w2 & 0xFFFF))  # RFC 1624
    b = <uint8_t*>PyByteArray_AS_STRING(pkt)
    if proto == 17:
        if l4csum:  # a UDP checksum of 0 means none and stays 0 (RFC 768); a computed 0 is sent as 0xFFFF
            l4csum = adjust(<int64_t>ea - src + ep - sport - 1 - l4csum)
            if l4csum == 0:
                l4csum = 0xFFFF
        put16(b, V4_UDP_CSUM, l4csum)
    else:
        put16(b, V4_TCP_CSUM, adjust(<int64_t>ea - src + ep - sport - 1 - l4csum))
    put16(b, IP_CSUM, ipcsum)
    put32(b, IP_SRC, ea)
    put16(b, V4_SPORT, ep)
    m.last_seen = now
    m.out += _ONE_PACKET + n
    return _FORWARD


def translate_inbound(nat, pkt, now):
    """``Nat.translate_inbound``, compiled."""
    if type(pkt) is not bytearray:
        return _py_inbound(nat, pkt, now)
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(pkt)
    cdef uint8_t* b
    cdef uint32_t proto, w0, w1, w2, src, dst, sport, dport, flags, l4csum, ia, ip, ipcsum
    cdef uint64_t key, rmask
    if n < 28:
        return nat._inbound(pkt, now)
    b = <uint8_t*>PyByteArray_AS_STRING(pkt)
    proto = b[9]
    if proto == 17:
        l4csum = get16(b, V4_UDP_CSUM)
        flags = 0
    elif proto == 6 and n >= 40:
        l4csum = get16(b, V4_TCP_CSUM)
        flags = b[V4_TCP_FLAGS]
    else:
        return nat._inbound(pkt, now)
    w0 = get32(b, 0)
    w1 = get32(b, 4)
    w2 = get32(b, 8)
    src = get32(b, IP_SRC)
    dst = get32(b, IP_DST)
    sport = get16(b, V4_SPORT)
    dport = get16(b, V4_DPORT)
    if w0 >> 24 != 0x45 or (w0 & 0xFFFF) != <uint64_t>n or w1 & 0x3FFF:
        return nat._inbound(pkt, now)
    if (<uint64_t>w0 + w1 + w2 + src + dst) % 0xFFFF:
        return nat._drop(_BAD_CHECKSUM)
    m = nat._by_ext.get(<uint64_t>proto << 48 | <uint64_t>dst << 16 | dport)
    if m is None:
        return nat._drop(_NO_MAPPING)
    rmask = nat._rmask
    r = (<uint64_t>src << 16 | sport) & rmask
    remotes = m.remotes
    if r != m.remote and (remotes is None or r not in remotes):
        return nat._drop(_FILTERED)
    if flags & TCP_STATE_FLAGS or m.state == _SYN_OUT:
        nat._track_tcp(m, flags, False, now)
        if flags & TCP_SYN:
            mss = nat._mss
            if mss:
                _clamp(pkt, 20, mss)
                b = <uint8_t*>PyByteArray_AS_STRING(pkt)
                l4csum = get16(b, V4_TCP_CSUM)
    key = m.key
    ia = <uint32_t>(key >> 16)
    ip = <uint32_t>(key & 0xFFFF)
    ipcsum = adjust(<int64_t>ia - dst - 1 - (w2 & 0xFFFF))
    b = <uint8_t*>PyByteArray_AS_STRING(pkt)
    if proto == 17:
        if l4csum:
            l4csum = adjust(<int64_t>ia - dst + ip - dport - 1 - l4csum)
            if l4csum == 0:
                l4csum = 0xFFFF
        put16(b, V4_UDP_CSUM, l4csum)
    else:
        put16(b, V4_TCP_CSUM, adjust(<int64_t>ia - dst + ip - dport - 1 - l4csum))
    put16(b, IP_CSUM, ipcsum)
    put32(b, IP_DST, ia)
    put16(b, V4_DPORT, ip)
    m.inb += _ONE_PACKET + n
    return _FORWARD
