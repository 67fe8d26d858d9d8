"""Properties of gw.packet's checksum arithmetic against a naive RFC 1071 implementation written here."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from gw import packet as P
from tests.helpers.strategies import inet_checksum


def naive_rfc1071(data: bytes, initial: int = 0) -> int:
    """RFC 1071 section 4.1, word by word: add with end-around carry, then complement."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for i in range(0, len(data), 2):
        total += data[i] << 8 | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


WORDS = st.sampled_from([b"\x00\x00", b"\xff\xff", b"\xff\xfe", b"\x80\x00", b"\x00\x01", b"\x7f\xff"])
buffers = st.one_of(
    st.binary(max_size=600),
    st.integers(0, 300).map(lambda n: b"\0" * n),  # all zero, even and odd lengths
    st.integers(0, 300).map(lambda n: b"\xff" * n),  # all ones
    st.tuples(st.lists(WORDS, max_size=80), st.binary(max_size=1)).map(lambda t: b"".join(t[0]) + t[1]),
)
initials = st.one_of(st.just(0), st.integers(0, 0xFFFF), st.integers(0, 6 * 0xFFFF))  # a pseudo-header sum


@given(data=buffers, initial=initials)
def test_checksum_equals_naive_rfc1071(data, initial):
    assert P.checksum(data, initial=initial) == naive_rfc1071(data, initial)
    assert P.checksum(bytearray(data), initial=initial) == naive_rfc1071(data, initial)


@given(data=buffers, cut=st.tuples(st.integers(0, 600), st.integers(0, 600)), initial=initials)
def test_checksum_of_a_slice_equals_naive(data, cut, initial):
    start, end = min(cut), max(cut)
    assert P.checksum(memoryview(data), start, end, initial) == naive_rfc1071(data[start:end], initial)


@given(data=buffers)
def test_a_buffer_carrying_its_checksum_sums_to_zero(data):
    """Append the checksum as a word (even-length data): the whole then verifies, unless it was all zeros."""
    if len(data) % 2:
        data += b"\0"
    whole = data + struct.pack("!H", P.checksum(data))
    assert P.checksum(whole) == 0


@st.composite
def field_changes(draw):
    """A buffer with a correct checksum word, and 1-3 changes of distinct 16- or 32-bit fields."""
    n_words = draw(st.integers(3, 40))
    data = bytearray(draw(st.binary(min_size=2 * n_words, max_size=2 * n_words)))
    csum_at = 2 * draw(st.integers(0, n_words - 1))
    free = [w for w in range(n_words) if w != csum_at // 2]
    changes, used = [], set()
    for _ in range(draw(st.integers(1, 3))):
        w = draw(st.sampled_from(free))
        wide = draw(st.booleans()) and w + 1 < n_words and w + 1 != csum_at // 2
        if w in used or (wide and w + 1 in used):
            continue
        used |= {w, w + 1} if wide else {w}
        new = draw(st.integers(0, 0xFFFFFFFF if wide else 0xFFFF))
        changes.append((2 * w, 4 if wide else 2, new))
    return data, csum_at, changes


@given(case=field_changes())
def test_csum_adjust_equals_full_recomputation(case):
    data, at, changes = case
    data[at : at + 2] = b"\0\0"
    data[at : at + 2] = struct.pack("!H", naive_rfc1071(bytes(data)))
    csum = struct.unpack_from("!H", data, at)[0]
    delta = 0
    for off, size, new in changes:
        if size == 2:
            old = struct.unpack_from("!H", data, off)[0]
            delta += (~old & 0xFFFF) + new
            struct.pack_into("!H", data, off, new)
        else:
            old = struct.unpack_from("!I", data, off)[0]
            delta += P.addr_delta(old, new)
            struct.pack_into("!I", data, off, new)
    got = P.csum_adjust(csum, delta)
    data[at : at + 2] = b"\0\0"
    want = naive_rfc1071(bytes(data))
    if any(data):
        assert got == want
    else:
        # RFC 1624 section 4: eqn. 3 yields 0x0000 where the only verifying value is 0xFFFF, and only
        # when every other word is zero (impossible in a real IP, UDP, TCP or ICMP header).
        assert got == 0 and want == 0xFFFF


@given(data=st.binary(max_size=80), fix=st.booleans())
def test_check_ipv4_agrees_with_an_independent_reading(data, fix):
    pkt = bytearray(data)
    if fix and len(pkt) >= 20 and 20 <= (pkt[0] & 15) * 4 <= len(pkt):
        hl = (pkt[0] & 15) * 4
        pkt[10:12] = b"\0\0"
        pkt[10:12] = struct.pack("!H", inet_checksum(pkt[:hl]))
    verdict = P.check_ipv4(pkt)
    hl = (pkt[0] & 15) * 4 if pkt else 0
    sound = (
        len(pkt) >= 20
        and pkt[0] >> 4 == 4
        and 20 <= hl <= len(pkt)
        and hl <= struct.unpack_from("!H", pkt, 2)[0] <= len(pkt)
        and inet_checksum(pkt[:hl]) == 0
    )
    assert (verdict == 0) == sound
    assert verdict == 0 or verdict in set(P.Drop)


@given(proto=st.sampled_from([6, 17]), src=st.integers(0, 2**32 - 1), dst=st.integers(0, 2**32 - 1),
       seg=st.binary(min_size=20, max_size=200))
def test_l4_checksum_equals_naive_over_pseudo_header(proto, src, dst, seg):
    pkt = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(seg), 0, 0, 64, proto, 0, src, dst) + seg)
    off = 20 + (16 if proto == 6 else 6)
    pkt[off : off + 2] = b"\0\0"
    pseudo = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + len(seg)
    want = naive_rfc1071(bytes(pkt[20:]), pseudo)
    if proto == 17 and want == 0:
        want = 0xFFFF
    assert P.l4_checksum(pkt) == want
