"""The virtio-net header (``struct virtio_net_hdr``) that a TUN device with ``IFF_VNET_HDR`` puts before each packet.

Why: with offloads on (``TUNSETOFFLOAD``), the kernel hands user space TCP and UDP "super-packets" of up
to 64 KB instead of MTU-sized ones, and takes them back the same way; this 10-byte header says how the
packet is to be segmented (``gso_type``, ``gso_size``, ``hdr_len``) and whether its L4 checksum is still
a partial one to be finished (``NEEDS_CSUM`` with ``csum_start``/``csum_offset``). So Python pays its
per-packet cost once per 64 KB, not once per 1.4 KB.

Layout (Linux include/uapi/linux/virtio_net.h): flags u8, gso_type u8, hdr_len u16, gso_size u16,
csum_start u16, csum_offset u16. The u16 fields are in the guest's byte order for legacy virtio, which
for TUN is the host's unless ``TUNSETVNETBE``/``TUNSETVNETLE`` says otherwise: little-endian on x86 and
arm64, the hosts gw runs on. Sans-I/O: pure ``struct`` reads and writes, no object per packet beyond the
tuple ``read_header`` returns.
"""

from __future__ import annotations

import struct

# --- spec: include/uapi/linux/virtio_net.h ----------------------------------------------------------
VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr); the _mrg_rxbuf variant (12) is not used on TUN

VNET_F_NEEDS_CSUM = 1  # L4 checksum holds the pseudo-header sum; finish it from csum_start, store at +offset
VNET_F_DATA_VALID = 2  # checksum already verified (kernel to user space only)

VNET_GSO_NONE = 0  # not a super-packet
VNET_GSO_TCPV4 = 1  # IPv4 TCP (TSO)
VNET_GSO_UDP = 3  # IPv4 UDP fragmentation offload (UFO), deprecated since Linux 4.14
VNET_GSO_TCPV6 = 4  # IPv6 TCP
VNET_GSO_UDP_L4 = 5  # UDP segmentation offload (USO), IPv4 and IPv6; Linux >= 6.2 on TUN
VNET_GSO_ECN = 0x80  # flag bit on gso_type: the TCP super-packet carries ECN (CWR) bits

# flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_VNET_HDR = struct.Struct("<BBHHHH")
assert _VNET_HDR.size == VNET_HDR_LEN

NO_OFFLOAD = bytes(VNET_HDR_LEN)  # the header of a plain, fully checksummed packet


def read_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int, int, int, int]:
    """(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) at ``offset``.

    Raises: struct.error when fewer than 10 bytes follow ``offset``.
    """
    return _VNET_HDR.unpack_from(buf, offset)


def write_header(
    buf: bytearray | memoryview,
    offset: int,
    flags: int,
    gso_type: int,
    hdr_len: int,
    gso_size: int,
    csum_start: int,
    csum_offset: int,
) -> None:
    """Write a virtio-net header into ``buf`` at ``offset``.

    Raises: struct.error when the buffer is too short or a field is out of range.
    """
    _VNET_HDR.pack_into(buf, offset, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


# --- the header on a link-layer socket ---------------------------------------------------------------
# On a TUN the frame starts at the IP header; on an AF_PACKET socket (PACKET_VNET_HDR) at the link
# header, and the kernel counts csum_start and hdr_len from there. Moving a header between the two
# adds or takes off the link header's length. hdr_len 0 means "no hint" and stays 0; csum_start means
# something only with NEEDS_CSUM.
ETH_HLEN = 14  # an Ethernet II header, the link these helpers are used for
U16_MAX = 0xFFFF


def to_link(buf: bytes | bytearray | memoryview, link_hlen: int = ETH_HLEN) -> bytes | None:
    """The header at the start of ``buf`` (offsets from the IP header, as on a TUN) with its offsets
    counted from a link header of ``link_hlen`` bytes; None when ``buf`` is shorter than a header or
    an offset cannot take the addition (it would not fit in 16 bits). Raises nothing."""
    if len(buf) < VNET_HDR_LEN:
        return None
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = read_header(buf)
    if flags & VNET_F_NEEDS_CSUM:
        csum_start += link_hlen
    if hdr_len:
        hdr_len += link_hlen
    if csum_start > U16_MAX or hdr_len > U16_MAX:
        return None
    out = bytearray(VNET_HDR_LEN)
    write_header(out, 0, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    return bytes(out)


def from_link(buf: bytes | bytearray | memoryview, link_hlen: int = ETH_HLEN) -> bytes | None:
    """The header at the start of ``buf`` (offsets from a link header of ``link_hlen`` bytes, as on
    an AF_PACKET socket) with its offsets counted from the IP header; None when ``buf`` is shorter
    than a header or an offset points into the link header (no IP packet starts there: the checksum
    could not be finished). Raises nothing."""
    if len(buf) < VNET_HDR_LEN:
        return None
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = read_header(buf)
    if flags & VNET_F_NEEDS_CSUM:
        if csum_start < link_hlen:
            return None
        csum_start -= link_hlen
    if hdr_len:
        if hdr_len < link_hlen:
            return None
        hdr_len -= link_hlen
    out = bytearray(VNET_HDR_LEN)
    write_header(out, 0, flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    return bytes(out)
