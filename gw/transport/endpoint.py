"""The tunnel's asyncio endpoints: TLS 1.3 streams that move ``wire`` frames, nothing else.

Theory of operation
-------------------
Both ends are ``asyncio.BufferedProtocol``s: TLS decrypts straight into the session's ``FrameReader``
buffer, and the frames are handled in ``buffer_updated`` before the next read, so packets are handed
to ``on_packets`` as views of that buffer (valid during the call). A batch is sent as one contiguous
buffer of frames (``wire.encode_packets``), written once: uvloop's TLS ``writelines`` would seal each element as
its own record.

The gateway bounds what a stranger can cost it: the TLS handshake and the tunnel handshake each have a
timeout, at most ``max_handshakes`` connections may be in either at once, counted from the TCP accept
(the daemon accepts on its own listening socket and starts TLS over each connection it keeps,
``loop.connect_accepted_socket``), so a connection that never begins TLS counts too; more are closed
at accept,
a connection in its handshake gets a 32 KiB reader, not a session's 512 KiB, and a session whose
peer does not read has its packets dropped and counted once its write buffer holds ``max_buffered``
bytes. Keepalives go out after ``keepalive_s`` without sending; a peer silent for ``dead_after_s`` is
closed as ``Close.DEAD_PEER``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from gw.identity import Identity
from gw.transport import suites, wire
from gw.transport.handshake import ClientHandshake, GatewayHandshake, PinMismatch, Proof, Refused
from gw.transport.wire import Close, FrameReader, ProtocolError

TLS_HANDSHAKE_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
MAX_HANDSHAKES = 256
LISTEN_BACKLOG = 512  # the kernel's accept queue: a burst of clients reconnecting after a restart
ACCEPT_BATCH = 64  # connections accepted per readiness callback
ACCEPT_PAUSE_S = 0.1  # out of file descriptors: try accepting again after this long
MAX_BUFFERED = 4 << 20  # bytes queued towards one peer before its packets are dropped
# the client pauses reading its TUN above this (pause_writing) and never drops: a TUN batch of 64
# super-packets is 4 MiB, so its cap leaves room for a batch read just before the pause
WRITE_HIGH_WATER = 1 << 20
CLIENT_MAX_BUFFERED = 4 * MAX_BUFFERED


@dataclass(frozen=True)
class Limits:
    tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    max_handshakes: int = MAX_HANDSHAKES
    max_buffered: int = MAX_BUFFERED


def server_context(me: Identity) -> ssl.SSLContext:
    """TLS 1.3 only, the gateway's identity, the suite this machine seals fastest first (``suites``);
    clients prove theirs in the stream (``handshake``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(me.cert_path, me.key_path)
    suites.prefer_fastest(ctx)
    return ctx


def client_context() -> ssl.SSLContext:
    """TLS 1.3 only; the gateway is checked by its pinned fingerprint right after the TLS handshake
    (self-signed: there is no chain to verify)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Stream(asyncio.BufferedProtocol):
    """What both ends share: the reader, frames out, keepalives and dead-peer detection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(wire.MAX_CONTROL)
        self.established = False
        self.vnet = False
        self.closed = asyncio.get_running_loop().create_future()  # -> (Close, reason)
        self.dropped = 0  # packets not sent: the peer's queue was full
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self._keepalive_s = self._dead_after_s = 0.0
        self._last_rx = self._last_tx = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self.max_buffered = MAX_BUFFERED

    # -- asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._last_rx = time.monotonic()
        try:
            frames = self.reader.buffer_updated(nbytes)
            while frames:
                for ftype, flags, count, payload in frames:
                    self._frame(ftype, flags, count, payload)
                    if self.closed.done():
                        return
                frames = self.reader.frames() if self.established and self._grow() else []
        except ProtocolError as e:
            self.close(e.code, e.detail)

    def connection_lost(self, exc: Exception | None) -> None:
        # the transport (uvloop's SSL protocol) holds our bound methods: without this the pair is a cycle
        # that keeps its TLS buffers (~256 KiB) until a full collection, and a handshake flood ratchets RSS
        self.transport = None
        if self._timer is not None:
            self._timer.cancel()
        if not self.closed.done():
            self.closed.set_result(
                (Close.SHUTDOWN, f"connection lost: {exc}" if exc else "connection closed")
            )

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark: the feeder should stop (``on_writable``)."""
        self.on_writable(False)

    def resume_writing(self) -> None:
        self.on_writable(True)

    def on_writable(self, writable: bool) -> None:  # overridden by the client: pause reading its TUN
        pass

    # -- frames
    def _grow(self) -> bool:
        """After the welcome: a full-size reader, carrying what the small one had not parsed."""
        if self.reader.max_payload < wire.MAX_PAYLOAD:
            self.reader = self.reader.grown()
            return True
        return False

    def _frame(self, ftype: int, flags: int, count: int, payload: memoryview) -> None:
        if ftype == wire.KEEPALIVE and self.established:
            return
        if ftype == wire.PACKETS and self.established:
            packets = wire.split_packets(payload, count, bool(flags & wire.VNET))
            self.packets_in += count
            self.bytes_in += wire.HEADER_LEN + len(payload)  # frame bytes, as bytes_out counts them
            self.on_packets(packets, bool(flags & wire.VNET))
            return
        if ftype == wire.CLOSE:
            message = wire.decode_message(ftype, payload)
            code = Close.of(message.code)
            self._finish(code, f"the peer closed: {message.reason}")
            return
        self.handshake_frame(ftype, payload)

    def handshake_frame(self, ftype: int, payload: memoryview) -> None:
        raise ProtocolError(Close.UNEXPECTED, f"frame type {ftype} here")

    def on_packets(self, packets: list[memoryview], vnet: bool) -> None:  # overridden per session
        pass

    # -- out
    def send_packets(self, packets: list, vnet: bool = False) -> bool:
        """Send a batch (views or bytes); False, and counted in ``dropped``, when the peer's queue is full."""
        if self.transport is None or self.closed.done():
            return False
        if self.transport.get_write_buffer_size() > self.max_buffered:
            self.dropped += len(packets)
            return False
        frames = wire.encode_packets(packets, vnet)
        self.transport.write(frames)
        self.packets_out += len(packets)
        self.bytes_out += len(frames)
        self._last_tx = time.monotonic()
        return True

    def close(self, code: Close, reason: str = "") -> None:
        """Say why (a CLOSE frame), then end the TLS stream."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wire.encode_message(wire.CloseMessage(int(code), reason[:200])))
        self._finish(code, reason)

    def _finish(self, code: Close, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result((code, reason))
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()

    def _live(self, keepalive_s: float, dead_after_s: float) -> None:
        self._keepalive_s, self._dead_after_s = keepalive_s, dead_after_s
        self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._last_rx >= self._dead_after_s:
            self.close(Close.DEAD_PEER, f"nothing received for {self._dead_after_s:g} s")
            return
        if now - self._last_tx >= self._keepalive_s and self.transport is not None:
            self.transport.write(wire.keepalive())
            self._last_tx = now
        step = min(self._keepalive_s, self._dead_after_s) / 2
        self._timer = asyncio.get_running_loop().call_later(step, self._tick)


# ------------------------------------------------------------------------------------------ gateway

Authorize = Callable[[Proof, tuple[str, int]], "wire.Welcome | wire.Refusal"]


class GatewayConnection(_Stream):
    """One client connection, from accept to close. ``server.authorize`` decides who gets a session."""

    def __init__(self, server: TunnelServer) -> None:
        super().__init__()
        self.server = server
        self.peer: tuple[str, int] = ("", 0)
        self.proof: Proof | None = None
        self.welcome: wire.Welcome | None = None
        self.max_buffered = server.limits.max_buffered
        self._handshake = GatewayHandshake(server.identity.certificate)
        self._deadline: asyncio.TimerHandle | None = None
        self._counted = True  # in server.handshaking, from TCP accept until the hello (or the end)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer = transport.get_extra_info("peername")[:2]
        self._deadline = asyncio.get_running_loop().call_later(
            self.server.limits.handshake_timeout_s, self.close, Close.HANDSHAKE_TIMEOUT, "no hello in time"
        )
        transport.write(self._handshake.start())

    def handshake_frame(self, ftype: int, payload: memoryview) -> None:
        if self.proof is not None:
            raise ProtocolError(Close.UNEXPECTED, f"frame type {ftype} after the hello")
        self.proof = self._handshake.receive(ftype, payload)
        self._handshake_done()
        answer = self.server.authorize(self.proof, self.peer)
        if isinstance(answer, wire.Refusal):
            self.transport.write(GatewayHandshake.refuse(answer.code, answer.reason))
            self._finish(Close.REFUSED, f"{answer.code}: {answer.reason}")
            return
        self.welcome = answer
        self.vnet = answer.offloads and "vnet" in self.proof.features
        self.transport.write(GatewayHandshake.welcome(answer))
        self.established = True
        self._live(answer.keepalive_s, answer.dead_after_s)
        self.server.on_session(self)

    def handshake_failed(self) -> None:
        """The TLS handshake under this connection failed: it leaves the count of handshakes."""
        self._handshake_done()

    def _handshake_done(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._counted:
            self._counted = False
            self.server.handshaking -= 1

    def _finish(self, code: Close, reason: str) -> None:
        self._handshake_done()
        super()._finish(code, reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self._handshake_done()
        super().connection_lost(exc)
        if self.established:
            self.server.on_session_closed(self)


class TunnelServer:
    """Accepts tunnels. ``authorize(proof, peer)`` returns a Welcome or a Refusal (and journals it);
    ``on_session(conn)`` / ``on_session_closed(conn)`` tell the daemon; ``conn.on_packets`` is set there."""

    def __init__(
        self,
        me: Identity,
        authorize: Authorize,
        on_session: Callable[[GatewayConnection], None],
        on_session_closed: Callable[[GatewayConnection], None] = lambda conn: None,
        limits: Limits = Limits(),
    ) -> None:
        self.identity, self.authorize, self.limits = me, authorize, limits
        self.on_session, self.on_session_closed = on_session, on_session_closed
        self.handshaking = 0  # connections between TCP accept and their hello (TLS handshake included)
        self.refused_at_accept = 0  # connections closed at once: too many handshakes in progress
        self.accept_errors = 0  # accept() failures (out of file descriptors)
        self.context = server_context(me)
        self._listener: socket.socket | None = None
        self._tls_tasks: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (0 picks a free one). Raises OSError (address in use...).

        Why not ``create_server(ssl=...)``: its protocol sees a connection only after the TLS handshake,
        so connections that never finish one go uncounted and hold a descriptor each until the timeout.
        Why not ``start_tls`` over a plain server's transport: uvloop starts reading right after
        ``connection_made`` and can hand the ClientHello to the plain protocol before TLS takes over."""
        sock = socket.create_server((host, port), backlog=LISTEN_BACKLOG)
        sock.setblocking(False)
        self._listener = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)
        return sock.getsockname()[1]

    def _accept(self) -> None:
        """Take the connections waiting: each is counted against the cap before any TLS work, or closed."""
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError:  # out of file descriptors (EMFILE): stop accepting for a moment
                self.accept_errors += 1
                loop.remove_reader(self._listener.fileno())
                loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)
                return
            if self.handshaking >= self.limits.max_handshakes:
                self.refused_at_accept += 1
                sock.close()
                continue
            self.handshaking += 1
            task = loop.create_task(self._tls(sock))
            self._tls_tasks.add(task)
            task.add_done_callback(self._tls_tasks.discard)

    def _resume_accepting(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)

    async def _tls(self, sock: socket.socket) -> None:
        """The TLS handshake over an accepted socket; then the connection is a GatewayConnection's. A
        failed TLS handshake (timeout, garbage, the peer gone) just ends the connection."""
        conn = GatewayConnection(self)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn, sock, ssl=self.context, ssl_handshake_timeout=self.limits.tls_handshake_timeout_s
            )
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception:  # noqa: BLE001 - whatever the peer did to the TLS handshake, it ends here
            conn.handshake_failed()
            sock.close()

    async def stop(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for task in list(self._tls_tasks):
            task.cancel()


# ------------------------------------------------------------------------------------------ client


class ClientConnection(_Stream):
    """The client's tunnel: ``await ready`` gives the Welcome (or raises Refused / PinMismatch)."""

    def __init__(self, me: Identity, gateway_fingerprint: str, offloads: bool = True) -> None:
        super().__init__()
        self._handshake = ClientHandshake(me, gateway_fingerprint, ("vnet",) if offloads else ())
        self.max_buffered = CLIENT_MAX_BUFFERED
        self.ready = asyncio.get_running_loop().create_future()
        self.closed.add_done_callback(self._closed_early)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        try:
            self._handshake.check_gateway(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
        except PinMismatch as e:
            self.ready.set_exception(e)
            transport.abort()

    def handshake_frame(self, ftype: int, payload: memoryview) -> None:
        if self.ready.done():
            raise ProtocolError(Close.UNEXPECTED, f"frame type {ftype} after the welcome")
        try:
            answer = self._handshake.receive(ftype, payload)
        except Refused as e:
            self.ready.set_exception(e)
            self._finish(Close.REFUSED, str(e))
            return
        if isinstance(answer, wire.Welcome):
            self.established = True
            self.vnet = answer.offloads and "vnet" in self._handshake.features
            self._live(answer.keepalive_s, answer.dead_after_s)
            self.ready.set_result(answer)
        else:
            self.transport.write(answer)

    def _closed_early(self, closed: asyncio.Future) -> None:
        if not self.ready.done():
            code, reason = closed.result()
            self.ready.set_exception(
                ConnectionError(f"the tunnel closed in its handshake ({code.name}): {reason}")
            )


async def connect(
    host: str, port: int, me: Identity, gateway_fingerprint: str, timeout: float = 15.0, offloads: bool = True
) -> tuple[ClientConnection, wire.Welcome]:
    """Open a tunnel: TLS, pin check, proof; returns the connection and its Welcome.

    Raises: PinMismatch, Refused, ConnectionError/OSError (unreachable, closed), TimeoutError."""
    loop = asyncio.get_running_loop()
    opening = loop.create_connection(
        lambda: ClientConnection(me, gateway_fingerprint, offloads), host, port, ssl=client_context()
    )
    _, conn = await asyncio.wait_for(opening, timeout)
    welcome = await asyncio.wait_for(conn.ready, timeout)
    return conn, welcome
