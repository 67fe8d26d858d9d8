"""The VPN client, ``gw connect -c client.toml``: a TUN device and one tunnel, reconnected with backoff.

Theory of operation
-------------------
The tunnel comes first (``gw.transport.endpoint.connect``: TLS, the pinned gateway, the proof); the
welcome says how to set up the TUN (address, prefix, MTU). The TUN is opened with the kernel's offloads
(``gw.tun``), and packets cross in both directions with their vnet headers, so a TCP super-packet of
64 KB is read, sent and written whole. Only the VPN subnet is routed through the tunnel (the route the
kernel adds with the TUN's address); nothing else on the host changes. When the tunnel ends, the client
reconnects at once, then after 0.25 s doubling to 30 s (jittered); the TUN is removed on exit.

``routes`` in client.toml adds prefixes through the tunnel (``gw.routes``); ``0.0.0.0/0`` sends everything
and keeps the gateway's endpoint on the path it had. They are added once the first tunnel is up and
removed on exit, so a reconnect never finds the host without a way to the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import sys

from gw.config import ClientConfig
from gw.identity import load_identity
from gw.transport.endpoint import connect
from gw.transport.handshake import PinMismatch, Refused
from gw.transport.wire import Close

if sys.platform == "win32":
    from gw.tun_windows import WintunDevice as TunDevice
else:
    from gw.tun import TunDevice

log = logging.getLogger("gw.client")
# a lost tunnel is tried again at once, then after 0.25 s doubling to 30 s, each wait jittered by +-50 %:
# a restarted gateway (about half a second) gets its clients back within a second, and a gateway that
# stays down is not met by all its clients in step
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.25, 30.0
TUN_BATCH = 64


async def run_client(config: ClientConfig, stop: asyncio.Event) -> int:
    """Serve until ``stop``; returns the exit status (2: the gateway refused us or is not the pinned one)."""
    me = load_identity(config.identity.certificate, config.identity.key)
    host, _, port = config.gateway.endpoint.rpartition(":")
    loop = asyncio.get_running_loop()
    tun: TunDevice | None = None
    routes = None  # gw.routes.RouteSet once added
    backoff = BACKOFF_FIRST_S
    offloads = config.offloads and sys.platform != "win32"  # WinTun has no offloads
    try:
        while not stop.is_set():
            try:
                conn, welcome = await connect(host, int(port), me, config.gateway.fingerprint, offloads=offloads)
            except (Refused, PinMismatch) as e:
                log.error("the gateway at %s: %s", config.gateway.endpoint, e)
                return 2
            except (OSError, ConnectionError, TimeoutError) as e:
                wait = backoff * random.uniform(0.5, 1.5)
                log.warning("cannot reach %s (%s): again in %.1f s", config.gateway.endpoint, e, wait)
                await _wait(stop, wait)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            backoff = BACKOFF_FIRST_S
            if tun is None:
                tun = TunDevice.open(config.device, vnet_hdr=conn.vnet)
            tun.configure(welcome.vpn_addr, welcome.prefix_len, welcome.mtu)
            if routes is None and config.routes:
                from gw.routes import RouteSet  # netlink: Linux only

                routes = RouteSet(tun.name, config.routes, host)
                log.info("routes through the tunnel: %s", ", ".join(routes.add()))
            log.info("session %d: %s/%d via %s", welcome.session, welcome.vpn_addr, welcome.prefix_len,
                     config.gateway.endpoint)  # fmt: skip

            def from_tun(tun: TunDevice = tun, conn=conn) -> None:
                batch = tun.read_batch(TUN_BATCH)
                if batch:
                    conn.send_packets(batch, vnet=conn.vnet)

            def to_tun(packets, vnet, tun: TunDevice = tun) -> None:
                for pkt in packets:
                    try:
                        tun.write(pkt)
                    except BlockingIOError:
                        pass  # the kernel's queue is full: dropped, as a link would

            def writable(ok: bool, tun: TunDevice = tun, from_tun=from_tun) -> None:
                # back-pressure: while the tunnel cannot take more, leave packets in the TUN's queue
                # (the kernel's TCP then sees a full device queue, not losses we would make here)
                if ok:
                    tun.attach(loop, from_tun)
                else:
                    tun.detach(loop)

            conn.on_packets = to_tun
            conn.on_writable = writable
            tun.attach(loop, from_tun)
            try:
                done, _ = await asyncio.wait(
                    [asyncio.ensure_future(conn.closed), asyncio.ensure_future(stop.wait())],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                tun.detach(loop)
            if stop.is_set():
                conn.close(Close.SHUTDOWN, "client stopping")
                break
            code, reason = conn.closed.result()
            log.warning("tunnel closed (%s: %s): reconnecting", code.name.lower(), reason)
        return 0
    finally:
        if routes is not None:
            routes.remove()
        if tun is not None:
            tun.close()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


def connect_main(config: ClientConfig) -> int:
    """``gw connect``: run until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gw: %(message)s")

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_client(config, stop)

    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())
