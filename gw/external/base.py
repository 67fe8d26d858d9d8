"""The interface every external gateway has (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

OnPacket = Callable[[list[bytearray]], None]  # packets from the internet, to public endpoints, for the NAT


class ExternalGateway(Protocol):
    """How translated packets reach the internet, and answers come back."""

    name: str
    counts: dict[str, int]

    def start(self, on_packet: OnPacket) -> None:
        """Begin receiving; ``on_packet`` gets the packets from the internet, a batch at a time (on the loop)."""

    def send_outbound(self, pkt: bytearray | memoryview, now: int) -> None:
        """Send a packet the NAT translated (source: a public endpoint). Drops are counted, never raised."""

    def mapping_ended(self, proto: int, ext_addr: int, ext_port: int) -> None:
        """The NAT ended a mapping: release what carried it."""

    def stop(self) -> None:
        """Release everything."""
