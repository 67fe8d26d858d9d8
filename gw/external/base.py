"""The interface every external gateway has (see the package docstring)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

SO_RCVBUFFORCE = 33  # as SO_RCVBUF, past net.core.rmem_max; needs CAP_NET_ADMIN
SO_SNDBUFFORCE = 32

# packets from the internet, to public endpoints, for the NAT; a batch at a time, each starting with a
# virtio-net header when the gateway's ``vnet`` is true, or when the call's second argument (optional)
# is: socket mode's TCP relay makes super-packets for the clients' TUNs, its UDP sockets plain ones
OnPacket = Callable[..., None]


class ExternalGateway(Protocol):
    """How translated packets reach the internet, and answers come back."""

    name: str
    counts: dict[str, int]
    carries_tcp: bool  # False: the daemon answers a client's TCP SYN for the internet with an RST
    vnet: bool  # whether the packets given to on_packet start with a virtio-net header

    def start(self, on_packet: OnPacket) -> None:
        """Begin receiving; ``on_packet`` gets the packets from the internet (on the loop). Raises GwError."""

    def new_mapping(self, pkt: bytearray | memoryview, now: int) -> int:
        """The NAT answered NEEDS_MAPPING (it runs with ``caller_ports``): make the mapping, translate."""

    def send_outbound(self, pkt: bytearray | memoryview, now: int, vnet: bool = False) -> None:
        """Send a packet the NAT translated (source: a public endpoint), after its virtio-net header when
        ``vnet``. Drops are counted, never raised."""

    def mapping_ended(self, proto: int, ext_addr: int, ext_port: int) -> None:
        """The NAT ended a mapping: release what carried it."""

    def tick(self, now: int) -> None:
        """Periodic work (the daemon's timer)."""

    def describe(self) -> dict:
        """What ``gw status`` shows about it, besides its counts."""

    def stop(self) -> None:
        """Release everything."""


def set_buffers(sock: socket.socket, receive: int, send: int) -> None:
    """Fixed kernel buffers of ``receive`` and ``send`` bytes (no autotuning). The FORCE options pass
    the sysctl caps (net.core.rmem_max and wmem_max: 208 KiB on a stock kernel) but need
    CAP_NET_ADMIN; without it (EPERM) the plain ones, which the kernel caps there."""
    options = ((SO_RCVBUFFORCE, socket.SO_RCVBUF, receive), (SO_SNDBUFFORCE, socket.SO_SNDBUF, send))
    for force, plain, size in options:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
