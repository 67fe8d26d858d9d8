"""Who may open a tunnel session, and with which VPN address: gateway.toml's ``[[clients]]``, sans-I/O.

Theory of operation
-------------------
``authorize`` takes the fingerprint a client proved (``gw.transport.handshake``) and answers a
``Welcome`` or a ``Refusal``; either way the decision is journaled through the NAT's one sequence
(``SessionOpened`` / ``SessionRefused`` with the fingerprint), so the audit trail names every
identity that came, refused ones included.

Addresses: a client with ``address`` in its table always gets that one. Any other gets the pool
address its fingerprint hashes to, or the next free one after it (the pool is the subnet's hosts minus
the gateway's and the fixed ones). So a client gets the same address on every reconnect and after
every gateway restart, while it is free, with nothing to remember beyond the configuration; and
while any open session of it holds one, it gets that one again (the journal folds those back after a
crash), so its NAT mappings stay its own. An address is free unless an open session of another client
holds it.
"""

from __future__ import annotations

import hashlib

from gw import inet
from gw.config import ClientEntry, GatewayConfig, fingerprint_hex
from gw.nat import Nat
from gw.transport import wire
from journal.events import SessionRefused


class SessionDirectory:
    """``[[clients]]`` and the VPN pool, deciding sessions for the daemon (see the module docstring)."""

    def __init__(self, config: GatewayConfig, nat: Nat, dns: list[str] | None = None) -> None:
        self.config, self.nat = config, nat
        net, self._prefix_len = inet.parse_prefix(config.vpn.subnet)
        self._gateway = inet.aton(config.vpn.gateway_address)
        self._by_fingerprint = {fingerprint_hex(c.fingerprint): c for c in config.clients}
        fixed = {inet.aton(c.address) for c in config.clients if c.address}
        broadcast = net | (~inet.prefix_mask(self._prefix_len) & 0xFFFFFFFF)
        # the pool is implicit (a /8 is 16 million addresses): the hosts after ``net`` minus these, sorted
        self._first_host = net + 1
        self._not_pooled = sorted(a for a in fixed | {self._gateway} if net < a < broadcast)
        self._pool_size = broadcast - self._first_host - len(self._not_pooled)
        self._dns = dns if dns is not None else [config.vpn.gateway_address]
        opened = nat.sessions.opened
        self._last_session = max(opened, default=0)

    def name_of(self, fingerprint: str) -> str:
        """The ``[[clients]]`` name of a fingerprint ("?" if it is not listed)."""
        entry = self._by_fingerprint.get(fingerprint)
        return entry.name if entry is not None else "?"

    def authorize(self, fingerprint: str, remote: tuple[str, int], now: int) -> wire.Welcome | wire.Refusal:
        """A Welcome (and ``SessionOpened``) or a Refusal (and ``SessionRefused``) for a proven client."""
        entry = self._by_fingerprint.get(fingerprint)
        if entry is None:
            return self._refuse(
                fingerprint, remote, now, "unknown", "no [[clients]] entry has this fingerprint"
            )
        if entry.revoked:
            return self._refuse(fingerprint, remote, now, "revoked", f"{entry.name} is revoked", entry.name)
        addr = self._address_for(entry, fingerprint)
        if addr is None:
            return self._refuse(fingerprint, remote, now, "pool_empty", "no VPN address is free", entry.name)
        # unique across restarts without remembering: the wall clock in ms, and above every open session
        session = max(self._last_session + 1, (now + self.nat.wall_offset) // 1_000_000)
        self._last_session = session
        self.nat.open_session(
            now,
            session=session,
            client=entry.name,
            vpn_addr=addr,
            fingerprint=fingerprint,
            remote_addr=remote[0],
            remote_port=remote[1],
        )
        t = self.config.tunnel
        return wire.Welcome(
            session=session,
            vpn_addr=inet.ntoa(addr),
            prefix_len=self._prefix_len,
            gateway_addr=self.config.vpn.gateway_address,
            dns=self._dns,
            mtu=t.mtu,
            offloads=True,
            keepalive_s=t.keepalive_s,
            dead_after_s=t.dead_after_s,
        )

    def _address_for(self, entry: ClientEntry, fingerprint: str) -> int | None:
        if entry.address:
            return inet.aton(entry.address)
        holders = self.nat.sessions.holder  # vpn addr -> (session, client name) of open sessions
        for addr, (_session, name) in holders.items():
            if name == entry.name:
                return addr  # it holds one already (a reconnect before the old session was found dead)
        if self._pool_size <= 0:
            return None
        start = int.from_bytes(hashlib.sha256(fingerprint.encode()).digest()[:8], "big") % self._pool_size
        for i in range(self._pool_size):  # ends at the first address no session holds: len(holders) + 1 at most
            addr = self._pool_address((start + i) % self._pool_size)
            if addr not in holders:
                return addr
        return None

    def _pool_address(self, index: int) -> int:
        """The pool's ``index``-th address, skipping the gateway's and the fixed ones."""
        addr = self._first_host + index
        for skipped in self._not_pooled:
            if skipped > addr:
                break
            addr += 1
        return addr

    def _refuse(
        self, fingerprint: str, remote: tuple[str, int], now: int, code: str, reason: str, name: str = ""
    ) -> wire.Refusal:
        self.nat.record_event(
            SessionRefused, now, fingerprint=fingerprint, remote_addr=remote[0], remote_port=remote[1],
            reason=code, client=name,
        )  # fmt: skip
        return wire.Refusal(code, reason)
