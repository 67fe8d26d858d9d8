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
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc

cdef extern from "Python.h":
    # private but kept (restored in 3.13 for its many users); if it goes, CI fails the unbuilt extension
    dict _PyDict_NewPresized(Py_ssize_t minused)

from heapq import heappush as _heappush

from gw import packet as P
from gw.clients import Client as _Client
from gw.mapping import NO_REMOTE as _NO_REMOTE
from gw.mapping import COUNT_SHIFT as _COUNT_SHIFT
from gw.mapping import ONE_PACKET
from gw.mapping import Mapping as _Mapping
from gw.mapping import TcpMapping as _TcpMapping
from gw.ports import HELD as _HELD
from gw.ports import RESTING as _RESTING_OBJ
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
cdef unsigned char _RESTING = _RESTING_OBJ
cdef unsigned char _HELD_BYTE = _HELD
cdef object _RESUME_SPREAD_NS = 60 * 1_000_000_000  # gw.nat.RESUME_SPREAD_NS (tests/unit/test_fastpath_names.py)

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
        if m.remote == _NO_REMOTE:  # restored without its remote: the general path decides
            return nat._inbound(pkt, now)
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


def new_table(Py_ssize_t rows):
    """An empty dict sized for ``rows`` entries: a restore's tables grow once instead of twenty times."""
    return _PyDict_NewPresized(rows)


def span(const int64_t[:] column):
    """(min, max) of a restore's time column at C speed ((0, 0) if empty): ``gw.pending.check_times``."""
    cdef Py_ssize_t i, n = column.shape[0]
    cdef int64_t lo = 0, hi = 0, v
    if n:
        lo = hi = column[0]
    for i in range(1, n):
        v = column[i]
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
    return lo, hi


cdef class RowIndex:
    """Flow key -> row of a snapshot's columns, for ``gw.pending``: open addressing over two C arrays, so
    an index of 1 M rows costs 16 MB and a few tens of milliseconds, with no object per row. A later
    duplicate key wins, as in a restore's tables. ``gw.pending.DictIndex`` is its Python twin."""

    cdef uint64_t* keys
    cdef int32_t* slots  # row + 1; 0 is an empty slot
    cdef uint64_t mask
    cdef int shift

    def __cinit__(self, const uint8_t[:] proto, const uint32_t[:] addr, const uint16_t[:] port):
        cdef Py_ssize_t i, n = proto.shape[0]
        cdef uint64_t k, h, cap = 16
        cdef int bits = 4
        if addr.shape[0] != n or port.shape[0] != n or n >= 0x7FFFFFFF:
            raise ValueError("key columns of unequal length")
        while cap < 2 * <uint64_t>n:
            cap <<= 1
            bits += 1
        self.keys = <uint64_t*>malloc((n if n else 1) * sizeof(uint64_t))
        self.slots = <int32_t*>calloc(cap, sizeof(int32_t))
        if self.keys == NULL or self.slots == NULL:
            raise MemoryError()
        self.mask = cap - 1
        self.shift = 64 - bits
        for i in range(n):
            k = <uint64_t>proto[i] << 48 | <uint64_t>addr[i] << 16 | port[i]
            self.keys[i] = k
            h = (k * 0x9E3779B97F4A7C15ULL) >> self.shift
            while self.slots[h] and self.keys[self.slots[h] - 1] != k:
                h = (h + 1) & self.mask
            self.slots[h] = <int32_t>(i + 1)

    def __dealloc__(self):
        free(self.keys)
        free(self.slots)

    def find(self, uint64_t key) -> int:
        """The row holding ``key``, or -1."""
        cdef uint64_t h = (key * 0x9E3779B97F4A7C15ULL) >> self.shift
        cdef int32_t row
        while True:
            row = self.slots[h]
            if row == 0:
                return -1
            if self.keys[row - 1] == key:
                return row - 1
            h = (h + 1) & self.mask


cdef inline object _packed(uint64_t count, uint64_t nbytes):
    """``count << COUNT_SHIFT | bytes`` as ``Mapping`` keeps it: in C when it fits 64 bits."""
    if count < (<uint64_t>1 << (64 - 48)) and nbytes < (<uint64_t>1 << 48):
        return count << 48 | nbytes
    return (<object>count) << _COUNT_SHIFT | nbytes


def load_rows(nat, pending, Py_ssize_t start, Py_ssize_t stop, resumed):
    """``Nat._load_rows``, compiled: the same rows into the same tables, clients, ports and wheel, in one
    loop reading the columns as C arrays (``gw.pending`` gives them fixed widths)."""
    cdef dict c = pending.columns
    cdef const uint8_t[:] proto = c["proto"], tcp_state = c["tcp_state"]
    cdef const uint32_t[:] int_addr = c["int_addr"], ext_addr = c["ext_addr"], remote_addr = c["remote_addr"]
    cdef const uint16_t[:] int_port = c["int_port"], ext_port = c["ext_port"], remote_port = c["remote_port"]
    cdef const int64_t[:] session = c["session"], created = c["created_ns"], last_seen = c["last_seen_ns"]
    cdef const uint64_t[:] packets_out = c["packets_out"], bytes_out = c["bytes_out"]
    cdef const uint64_t[:] packets_in = c["packets_in"], bytes_in = c["bytes_in"]
    cdef bytearray loaded = pending.loaded
    cdef unsigned char* done = <unsigned char*>PyByteArray_AS_STRING(loaded)
    cdef Py_ssize_t i, n = PyByteArray_GET_SIZE(loaded)
    cdef int64_t off = pending.offset, seen, timeout, down = 0, resume_now = 0
    cdef int64_t udp = nat._udp_ns, icmp = nat._icmp_ns
    cdef int64_t established = nat._tcp_est_ns, transitory = nat._tcp_trans_ns
    cdef uint64_t rmask = nat._rmask, key, ext_key, p, a, ea, q, ra
    cdef long est_state = TcpState.ESTABLISHED
    cdef bint resume = resumed is not None
    cdef dict by_int = nat.by_int, by_ext = nat.by_ext, clients = nat.clients, ext_clients = nat._ext_clients
    cdef dict wheel = nat._wheel, state_of = nat.ports.state, resting = nat.ports.resting
    cdef set flagged = pending.quota_flagged, touched = set()
    cdef list due = nat._wheel_due, stale = []
    cdef object ports = nat.ports, pykey, remote, m, client, second, ka, k
    cdef PyObject* found
    cdef bytearray states
    cdef unsigned char* state_bytes
    cdef long state
    if resume:
        resume_now, down = resumed
    if start < 0:
        start = 0
    if stop > n:
        stop = n
    if (proto.shape[0] < stop or int_addr.shape[0] < stop or int_port.shape[0] < stop
            or ext_addr.shape[0] < stop or ext_port.shape[0] < stop or session.shape[0] < stop
            or created.shape[0] < stop or last_seen.shape[0] < stop or tcp_state.shape[0] < stop
            or packets_out.shape[0] < stop or bytes_out.shape[0] < stop or packets_in.shape[0] < stop
            or bytes_in.shape[0] < stop or remote_addr.shape[0] < stop or remote_port.shape[0] < stop):
        raise ValueError("snapshot columns of unequal length")
    for i in range(start, stop):
        if done[i]:
            continue
        done[i] = 1
        pending.left -= 1
        p = proto[i]
        a = int_addr[i]
        ea = ext_addr[i]
        q = ext_port[i]
        key = p << 48 | a << 16 | int_port[i]
        ext_key = p << 48 | ea << 16 | q
        ra = remote_addr[i]
        if ra or not rmask:
            remote = (ra << 16 | remote_port[i]) & rmask
        else:
            remote = _NO_REMOTE
        seen = last_seen[i] - off
        state = tcp_state[i]
        pykey = key
        row = (pykey, ext_key, session[i], remote, created[i] - off, seen, state,
               _packed(packets_out[i], bytes_out[i]), _packed(packets_in[i], bytes_in[i]))
        if p == 6:
            m = _TcpMapping(*row)
            timeout = established if state == est_state else transitory
        else:
            m = _Mapping(*row)
            timeout = udp if p == 17 else icmp
        by_int[pykey] = m
        by_ext[ext_key] = m
        ka = a
        found = PyDict_GetItem(clients, ka)
        if found is NULL:
            client = _Client(ea)
            clients[ka] = client
            ext_clients[ea] = ext_clients.get(ea, 0) + 1
            client.quota_flagged = ka in flagged
        else:
            client = <object>found
        client.count += 1
        client.mappings.append(m)
        if remote > 0:
            client.remotes += 1
        if q < 1024:
            client.low_ports += 1
        k = p << 32 | ea
        found = PyDict_GetItem(state_of, k)
        if found is NULL:  # an address not in the pool (a journal written under another config)
            states = ports.state_array(p, ea)
        else:
            states = <bytearray>found
        state_bytes = <unsigned char*>PyByteArray_AS_STRING(states)
        if state_bytes[q] == _RESTING:
            del resting[ext_key]
        state_bytes[q] = _HELD_BYTE
        touched.add(k)
        if resume:  # resume's rule, row by row
            if seen < down:
                seen = down
            if seen + timeout <= resume_now:
                stale.append(m)
                continue
            m.last_seen = seen
            second = ((seen + timeout) + pykey * 0x9E3779B1 % _RESUME_SPREAD_NS) // _NS + 1
        else:
            second = (seen + timeout) // 1_000_000_000 + 1
        found = PyDict_GetItem(wheel, second)
        if found is NULL:
            wheel[second] = [pykey]
            _heappush(due, second)
        else:
            (<list><object>found).append(pykey)
    ports.recount(touched)
    return stale
