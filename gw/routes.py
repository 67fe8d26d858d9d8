"""The client's routes through its TUN (``routes`` in client.toml), added through netlink and removed on exit.

Only the VPN subnet is routed through the tunnel by default (the kernel's connected route of the TUN's
address). Each prefix in ``routes`` is added via the TUN. ``0.0.0.0/0`` is added as two /1 routes,
which win over the host's default route without replacing it (OpenVPN's ``def1``), after a host route
for the gateway's endpoint through the path the kernel uses for it now, so the tunnel itself does not
loop into the TUN. Everything added is recorded and removed by ``remove()``; routes via the TUN also go
when the TUN does, the endpoint's host route is removed explicitly.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from gw.errors import GwError
from gw.tun import netlink

DEFAULT_HALVES = ("0.0.0.0/1", "128.0.0.0/1")  # more specific than any default route, together all of it


class RouteError(GwError):
    """A route could not be added."""


class RouteSet:
    """The routes one client added, so that they can all be removed."""

    def __init__(self, device: str, prefixes: list[str], endpoint_host: str) -> None:
        self.device, self.prefixes, self.endpoint_host = device, prefixes, endpoint_host
        self.added: list[dict] = []  # pyroute2 route specs, in the order they were added

    def add(self) -> list[str]:
        """Add every route (once); returns them as text for the log. Raises RouteError."""
        if self.added or not self.prefixes:
            return [self._text(r) for r in self.added]
        from pyroute2.netlink.exceptions import NetlinkError

        index = socket.if_nametoindex(self.device)
        specs: list[dict] = []
        wanted = [p for p in self.prefixes if p != "0.0.0.0/0"]
        if len(wanted) < len(self.prefixes):
            specs.append(self._endpoint_route())
            wanted = [*DEFAULT_HALVES, *wanted]
        for prefix in wanted:
            specs.append({"dst": prefix, "oif": index})

        def work(ipr: Any) -> None:
            for spec in specs:
                try:
                    ipr.route("add", **spec)
                except NetlinkError as e:
                    if e.code != 17:  # EEXIST: someone (a previous run) added it; it is not ours to remove
                        raise RouteError(f"route {self._text(spec)}: {os.strerror(e.code)}") from None
                    continue
                self.added.append(spec)

        netlink(work)
        return [self._text(r) for r in self.added]

    def _endpoint_route(self) -> dict:
        """A host route for the gateway's endpoint along the path the kernel takes to it now."""
        try:
            addr = socket.getaddrinfo(self.endpoint_host, None, socket.AF_INET)[0][4][0]
        except OSError as e:
            raise RouteError(f"cannot resolve the gateway endpoint {self.endpoint_host}: {e}") from None

        def work(ipr: Any) -> dict:
            found = ipr.route("get", dst=addr)[0]
            spec = {"dst": f"{addr}/32", "oif": found.get_attr("RTA_OIF")}
            gateway = found.get_attr("RTA_GATEWAY")
            if gateway:
                spec["gateway"] = gateway
            return spec

        return netlink(work)

    def remove(self) -> None:
        """Remove what ``add`` added (routes already gone with the TUN are skipped)."""
        from pyroute2.netlink.exceptions import NetlinkError

        added, self.added = self.added, []

        def work(ipr: Any) -> None:
            for spec in reversed(added):
                try:
                    ipr.route("del", **spec)
                except NetlinkError:
                    pass  # gone with its device

        if added:
            netlink(work)

    @staticmethod
    def _text(spec: dict) -> str:
        via = f" via {spec['gateway']}" if "gateway" in spec else ""
        return f"{spec['dst']}{via} dev #{spec['oif']}"
