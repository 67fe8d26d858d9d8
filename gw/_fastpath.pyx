# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, infer_types=False
"""Compiled twins of ``Nat.translate_outbound`` / ``Nat.translate_inbound`` (STYLE section 3: compile the
hot path, keep the readable Python as the specification).

Same checks, same order, same verdict objects, same calls for the rare work (``nat._create``,
``nat._admit_remote``, ``nat._track_tcp``, ``clamp_mss``) and the same fallbacks to ``nat._outbound`` /
``nat._inbound``, looked up on the instance each time as the Python does. Only the arithmetic moves to C:
the fields are read straight from the buffer (a ``bytearray`` directly, anything else through the buffer
protocol, writable) and the RFC 1624 updates are done in 64-bit ints with the Python ``%`` (always
non-negative) reproduced. Mapping fields stay Python attributes; the packed counters stay Python ints.
``tests/property/test_fastpath_compiled.py`` checks this file against ``gw/nat.py``, and
``tests/unit/test_fastpath_names.py`` that every ``nat.`` attribute used here exists.

This module imports the modules ``gw.nat`` imports, never ``gw.nat`` itself (it is imported by it).
"""

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cdef extern from "Python.h":
    # private but kept (restored in 3.13 for its many users); if it goes, CI fails the unbuilt extension
    dict _PyDict_NewPresized(Py_ssize_t minused)

from heapq import heapify as _heapify
from heapq import heappush as _heappush

from gw import packet as P
from gw.clients import Client as _Client
from gw.mapping import NO_REMOTE as _NO_REMOTE
from gw.mapping import COUNT_SHIFT as _COUNT_SHIFT
from gw.mapping import ONE_PACKET
from gw.mapping import Mapping as _Mapping
from gw.mapping import TcpMapping as _TcpMapping
from gw.ports import HELD as _HELD
from journal.events import MappingCreated as _MappingCreated
from gw.rewrite import clamp_mss
from gw.tcp_track import TcpState
from gw.verdict import Drop, Verdict

cdef object _BAD_CHECKSUM = Drop.BAD_CHECKSUM
cdef object _NO_MAPPING = Drop.NO_MAPPING
cdef object _FILTERED = Drop.FILTERED
cdef object _FORWARD = Verdict.FORWARD
cdef object _clamp = clamp_mss
cdef object _DROP = Drop
cdef object _QUOTA = Drop.QUOTA
cdef object _PORTS_EXHAUSTED = Drop.PORTS_EXHAUSTED
cdef object _NO_SESSION = (0, "")
cdef object _NS = 1_000_000_000
cdef object _EXPIRE_BUDGET = 2_000  # gw.nat.EXPIRE_BUDGET (checked by tests/unit/test_fastpath_names.py)
cdef int64_t _ONE_PACKET = ONE_PACKET
cdef long _SYN_OUT = TcpState.SYN_OUT

cdef enum:
    IP_TTL = 8  # RFC 791 offsets, IHL 5
    IP_CSUM = 10
    IP_SRC = 12
    IP_DST = 16
    V4_SPORT = 20
    V4_DPORT = 22
    V4_TCP_ACK = 28
    V4_UDP_CSUM = 26
    V4_TCP_FLAGS = 33
    V4_TCP_CSUM = 36
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_ACK = 0x10
    TCP_STATE_FLAGS = TCP_SYN | TCP_FIN | TCP_RST
    SYN_RST_ACK = TCP_SYN | TCP_RST | TCP_ACK

# drift between these offsets and gw.packet fails the import (an ImportError, which -O keeps)
if (P.IP_TTL, P.IP_CSUM, P.IP_SRC, P.IP_DST, P.V4_SPORT, P.V4_UDP_CSUM, P.V4_TCP_FLAGS, P.V4_TCP_CSUM,
        P.TCP_ACK + 20) != (IP_TTL, IP_CSUM, IP_SRC, IP_DST, V4_SPORT, V4_UDP_CSUM, V4_TCP_FLAGS,
        V4_TCP_CSUM, V4_TCP_ACK):
    raise ImportError("gw._fastpath offsets disagree with gw.packet: rebuild it (just setup)")
if (P.TCP_FIN, P.TCP_SYN, P.TCP_RST, P.TCP_ACK_FLAG) != (TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK):
    raise ImportError("gw._fastpath TCP flags disagree with gw.packet: rebuild it (just setup)")


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
    cdef Py_buffer view
    if type(pkt) is bytearray:
        return _outbound(nat, pkt, <uint8_t*>PyByteArray_AS_STRING(pkt), PyByteArray_GET_SIZE(pkt), now)
    try:
        PyObject_GetBuffer(pkt, &view, PyBUF_WRITABLE)
    except (TypeError, BufferError):
        return nat._outbound(pkt, now)  # not a writable buffer: the general path judges it
    try:
        return _outbound(nat, pkt, <uint8_t*>view.buf, view.len, now)
    finally:
        PyBuffer_Release(&view)


def translate_inbound(nat, pkt, now):
    """``Nat.translate_inbound``, compiled."""
    cdef Py_buffer view
    if type(pkt) is bytearray:
        return _inbound(nat, pkt, <uint8_t*>PyByteArray_AS_STRING(pkt), PyByteArray_GET_SIZE(pkt), now)
    try:
        PyObject_GetBuffer(pkt, &view, PyBUF_WRITABLE)
    except (TypeError, BufferError):
        return nat._inbound(pkt, now)
    try:
        return _inbound(nat, pkt, <uint8_t*>view.buf, view.len, now)
    finally:
        PyBuffer_Release(&view)


def translate_outbound_batch(nat, pkts, now):
    """``Nat.translate_outbound_batch``, compiled: one call for the batch."""
    return [translate_outbound(nat, p, now) for p in pkts]


def translate_inbound_batch(nat, pkts, now):
    """``Nat.translate_inbound_batch``, compiled."""
    return [translate_inbound(nat, p, now) for p in pkts]


cdef object _outbound(nat, pkt, uint8_t* b, Py_ssize_t n, now):
    cdef uint32_t proto, w0, w1, w2, src, dst, sport, dport, flags, ack, l4csum, ea, ep, ipcsum, total, least
    cdef uint64_t ext, rmask
    if n < 28:
        return nat._outbound(pkt, now)
    proto = b[9]
    if proto == 17:
        l4csum = get16(b, V4_UDP_CSUM)
        flags = 0
        ack = 0
        least = 28
    elif proto == 6 and n >= 40:
        l4csum = get16(b, V4_TCP_CSUM)
        flags = b[V4_TCP_FLAGS]
        ack = get32(b, V4_TCP_ACK)
        least = 40
    else:
        return nat._outbound(pkt, now)
    w0 = get32(b, 0)
    w1 = get32(b, 4)
    w2 = get32(b, 8)
    src = get32(b, IP_SRC)
    dst = get32(b, IP_DST)
    sport = get16(b, V4_SPORT)
    dport = get16(b, V4_DPORT)
    total = w0 & 0xFFFF
    # version 4 + IHL 5, total length inside the buffer, not a fragment, TTL above 1, not to us
    if (w0 >> 24 != 0x45 or total < least or total > <uint64_t>n or w1 & 0x3FFF or w2 < 0x02000000
            or dst in nat._ext_set):
        return nat._outbound(pkt, now)
    if (<uint64_t>w0 + w1 + w2 + src + dst) % 0xFFFF:
        return nat._drop(_BAD_CHECKSUM)
    m = nat.by_int.get(<uint64_t>proto << 48 | <uint64_t>src << 16 | sport)
    rmask = nat._rmask
    r = (<uint64_t>dst << 16 | dport) & rmask
    if m is None:
        if proto == 6 and flags & SYN_RST_ACK != TCP_SYN:
            return nat._drop(_NO_MAPPING)  # RFC 5382: only a SYN opens a TCP mapping
        if nat._caller_ports:
            return nat._outbound(pkt, now)
        m = nat._create(proto, src, sport, dst, dport, now)
        if type(m) is _DROP:  # a refusal reason, not a mapping
            return nat._drop(m)
    else:
        remotes = m.remotes
        if r != m.remote and (remotes is None or r not in remotes):
            nat._admit_remote(m, r)
    if proto == 6:
        if flags & TCP_ACK:
            m.ack = ack
        if flags & TCP_STATE_FLAGS:
            nat._track_tcp(m, flags, True, now, pkt)
            if flags & TCP_SYN:
                mss = nat._mss
                if mss:
                    _clamp(pkt, 20, mss)
                    l4csum = get16(b, V4_TCP_CSUM)
    ext = m.ext_key
    ea = <uint32_t>(ext >> 16)
    ep = <uint32_t>(ext & 0xFFFF)
    ipcsum = adjust(<int64_t>ea - src - 0x101 - (w2 & 0xFFFF))  # RFC 1624: address and TTL
    if proto == 17:
        if l4csum:  # a UDP checksum of 0 means none and stays 0 (RFC 768); a computed 0 is sent as 0xFFFF
            l4csum = adjust(<int64_t>ea - src + ep - sport - 1 - l4csum)
            if l4csum == 0:
                l4csum = 0xFFFF
        put16(b, V4_UDP_CSUM, l4csum)
    else:
        put16(b, V4_TCP_CSUM, adjust(<int64_t>ea - src + ep - sport - 1 - l4csum))
    b[IP_TTL] = <uint8_t>((w2 >> 24) - 1)
    put16(b, IP_CSUM, ipcsum)
    put32(b, IP_SRC, ea)
    put16(b, V4_SPORT, ep)
    m.last_seen = now
    m.out += _ONE_PACKET + total
    return _FORWARD


cdef object _inbound(nat, pkt, uint8_t* b, Py_ssize_t n, now):
    cdef uint32_t proto, w0, w1, w2, src, dst, sport, dport, flags, l4csum, ia, ip, ipcsum, total, least
    cdef uint32_t vpn_mask, vpn_net
    cdef uint64_t key, rmask
    if n < 28:
        return nat._inbound(pkt, now)
    proto = b[9]
    if proto == 17:
        l4csum = get16(b, V4_UDP_CSUM)
        flags = 0
        least = 28
    elif proto == 6 and n >= 40:
        l4csum = get16(b, V4_TCP_CSUM)
        flags = b[V4_TCP_FLAGS]
        least = 40
    else:
        return nat._inbound(pkt, now)
    w0 = get32(b, 0)
    w1 = get32(b, 4)
    w2 = get32(b, 8)
    src = get32(b, IP_SRC)
    dst = get32(b, IP_DST)
    sport = get16(b, V4_SPORT)
    dport = get16(b, V4_DPORT)
    total = w0 & 0xFFFF
    vpn_mask = nat._vpn_mask
    vpn_net = nat._vpn_net
    # martian sources (224/3, the VPN subnet, ours, 0/8, 127/8) are judged and counted there
    if (w0 >> 24 != 0x45 or total < least or total > <uint64_t>n or w1 & 0x3FFF or w2 < 0x02000000
            or src >= 0xE0000000 or src & vpn_mask == vpn_net or src >> 24 == 0 or src >> 24 == 127
            or src in nat._ext_set):
        return nat._inbound(pkt, now)
    if (<uint64_t>w0 + w1 + w2 + src + dst) % 0xFFFF:
        return nat._drop(_BAD_CHECKSUM)
    m = nat.by_ext.get(<uint64_t>proto << 48 | <uint64_t>dst << 16 | dport)
    if m is None:
        return nat._drop(_NO_MAPPING)
    rmask = nat._rmask
    r = (<uint64_t>src << 16 | sport) & rmask
    remotes = m.remotes
    if r != m.remote and (remotes is None or r not in remotes):
        return nat._drop(_FILTERED)
    if flags & TCP_STATE_FLAGS or m.state == _SYN_OUT:
        nat._track_tcp(m, flags, False, now, pkt)
        if flags & TCP_SYN:
            mss = nat._mss
            if mss:
                _clamp(pkt, 20, mss)
                l4csum = get16(b, V4_TCP_CSUM)
    key = m.key
    ia = <uint32_t>(key >> 16)
    ip = <uint32_t>(key & 0xFFFF)
    ipcsum = adjust(<int64_t>ia - dst - 0x101 - (w2 & 0xFFFF))
    if proto == 17:
        if l4csum:
            l4csum = adjust(<int64_t>ia - dst + ip - dport - 1 - l4csum)
            if l4csum == 0:
                l4csum = 0xFFFF
        put16(b, V4_UDP_CSUM, l4csum)
    else:
        put16(b, V4_TCP_CSUM, adjust(<int64_t>ia - dst + ip - dport - 1 - l4csum))
    b[IP_TTL] = <uint8_t>((w2 >> 24) - 1)
    put16(b, IP_CSUM, ipcsum)
    put32(b, IP_DST, ia)
    put16(b, V4_DPORT, ip)
    m.inb += _ONE_PACKET + total
    return _FORWARD


def create(nat, proto, src, sport, dst, dport, now):
    """``Nat._create``, compiled: the common case inline, every other case through the same Python calls."""
    cdef uint64_t p = proto, s = src, sp = sport, ea, k
    cdef Py_ssize_t port
    clients = nat.clients
    client = clients.get(src)
    if client is None:
        ext_addr = min(nat.ext_addrs, key=nat._ext_clients.__getitem__)
        low = sp < 1024 and p != 1 and nat._low_share > 0
    else:
        if client.count >= nat._quota:
            nat._quota_hit(client, proto, src, sport, now)
            return _QUOTA
        ext_addr = client.ext_addr
        low = sp < 1024 and p != 1 and client.low_ports < nat._low_share
    ea = ext_addr
    ports = nat.ports
    port = -1
    k = p << 32 | ea
    if not low:
        words = ports.words
        state = ports.state.get(k)
        if words and state is not None:
            port = ports.lo + words.pop() % ports.span
            if (<bytearray>state)[port]:
                port = -1
            else:
                (<bytearray>state)[port] = _HELD
                ports.free[k][1] -= 1
    if port < 0:
        port = ports.pick(proto, ext_addr, low)
        if port < 0 and low:
            port = ports.pick(proto, ext_addr, False)
        if port < 0:
            ports.sweep(now, _EXPIRE_BUDGET)
            port = ports.pick(proto, ext_addr, False)
            if port < 0:
                return _PORTS_EXHAUSTED
    # _created
    session, name = nat.sessions.holder.get(src, _NO_SESSION)
    seq = nat.next_seq
    if nat._log_dest:
        event = _MappingCreated(seq, now + nat.wall_offset, proto, src, sport, ext_addr, port, name, session,
                                dst, dport)
    else:
        event = _MappingCreated(seq, now + nat.wall_offset, proto, src, sport, ext_addr, port, name, session)
    # _insert(event, now, held=True)
    # one Python int each, shared by the mapping, both tables and the wheel (a C int converts anew per use)
    okey = <object>(p << 48 | s << 16 | sp)
    oext = <object>(p << 48 | ea << 16 | <uint64_t>port)
    rmask = nat._rmask
    if rmask == 0:
        remote = 0
    elif nat._log_dest and dst:
        remote = (dst << 16 | dport) & rmask
    else:
        remote = _NO_REMOTE
    if p == 6:
        m = _TcpMapping(okey, oext, session, remote, now, now, _SYN_OUT)
    else:
        m = _Mapping(okey, oext, session, remote, now, now, 0)
    nat.by_int[okey] = m
    nat.by_ext[oext] = m
    if client is None:
        client = clients[src] = _Client(ext_addr)
        ext_clients = nat._ext_clients
        ext_clients[ext_addr] = ext_clients.get(ext_addr, 0) + 1
    client.count += 1
    client.mappings.append(m)
    if remote > 0:
        client.remotes += 1
    if port < 1024:
        client.low_ports += 1
    second = (now + nat._first_timeout[proto]) // _NS + 1
    wheel = nat._wheel
    keys = wheel.get(second)
    if keys is None:
        wheel[second] = [okey]
        _heappush(nat._wheel_due, second)
    else:
        keys.append(okey)
    nat.next_seq = seq + 1
    nat.last_mapping_seq = seq
    nat.events.append(event)
    if rmask:
        if m.remote == _NO_REMOTE:
            client.remotes += 1
        m.remote = (dst << 16 | dport) & rmask
    return m


def load_rows(nat, s, list remotes, list created, list seen):
    """``Nat._load_rows``, compiled: the same rows in the same order into the same tables, in one loop.

    The arithmetic stays on Python ints (a snapshot's columns are Python ints of any size), so every
    result equals the Python's; what goes is the interpreter between them, and the tables' regrowth:
    an empty ``by_int``/``by_ext`` is replaced by one sized for the rows up front (nothing refers to
    the tables of a Nat still being restored).
    """
    cdef list proto = s.proto, int_addr = s.int_addr, int_port = s.int_port, ext_addr = s.ext_addr
    cdef list ext_port = s.ext_port, session = s.session, tcp_state = s.tcp_state
    cdef list packets_out = s.packets_out, bytes_out = s.bytes_out, packets_in = s.packets_in
    cdef list bytes_in = s.bytes_in
    cdef Py_ssize_t i, n = len(proto)
    # the Python's columns are zipped: the shortest one bounds the rows
    for column in (int_addr, int_port, ext_addr, ext_port, session, remotes, created, seen, tcp_state,
                   packets_out, bytes_out, packets_in, bytes_in):
        n = min(n, len(<list>column))
    cdef list ms = [None] * n
    cdef dict by_int = nat.by_int, by_ext = nat.by_ext, wheel = {}
    if not by_int and not by_ext:
        by_int = nat.by_int = _PyDict_NewPresized(n)
        by_ext = nat.by_ext = _PyDict_NewPresized(n)
    cdef object p, key, ext_key, t, second
    cdef PyObject* found
    cdef object udp = nat._udp_ns, icmp = nat._icmp_ns
    cdef object established = nat._tcp_est_ns, transitory = nat._tcp_trans_ns
    cdef object shift = _COUNT_SHIFT, ns = _NS, est_state = TcpState.ESTABLISHED
    for i in range(n):
        p = proto[i]
        key = p << 48 | int_addr[i] << 16 | int_port[i]
        ext_key = p << 48 | ext_addr[i] << 16 | ext_port[i]
        t = seen[i]
        row = (key, ext_key, session[i], remotes[i], created[i], t, tcp_state[i],
               packets_out[i] << shift | bytes_out[i], packets_in[i] << shift | bytes_in[i])
        if p == 6:
            m = _TcpMapping(*row)
            second = (t + (established if tcp_state[i] == est_state else transitory)) // ns + 1
        else:
            m = _Mapping(*row)
            second = (t + (udp if p == 17 else icmp)) // ns + 1
        ms[i] = m
        by_int[key] = m
        by_ext[ext_key] = m
        found = PyDict_GetItem(wheel, second)
        if found is NULL:
            wheel[second] = [key]
        else:
            (<list><object>found).append(key)
    nat._wheel.update(wheel)
    due = list(wheel)
    _heapify(due)
    nat._wheel_due = due
    return ms
