"""A TCP proxy between a client and a Redis server that injects network faults on demand.

Tests put it between a storage and a real ``redis-server`` to see what a slow
link, a silent peer or a broken connection does to a call: added latency, a
bandwidth cap, a blackhole, a half-open connection, a reset in the middle of
a reply, a pause.  One thread serves every connection (a ``selectors`` loop),
so the proxy adds one thread to a test's thread count however many
connections pass through it.  A test helper, not a dependency: the standard
library only.  See docs/testing.md.
"""

from __future__ import annotations

import collections
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import cast

__all__ = ["FaultProxy"]

_CHUNK = 64 * 1024


@dataclass
class _Flow:
    """One direction of a link: bytes read from *source*, due at a time, written to *sink*."""

    source: socket.socket
    sink: socket.socket
    to_client: bool
    queue: collections.deque[list[object]] = field(default_factory=collections.deque)
    """``[due time, bytes]`` in arrival order."""
    blocked: bool = False
    """The sink's buffer is full: wait for it to take more."""
    sent: int = 0
    """Bytes written to the sink since a reset was armed (replies only)."""


@dataclass(eq=False)
class _Link:
    """A client's connection and, unless it was never forwarded, the proxy's to the server."""

    client: socket.socket
    server: socket.socket | None
    flows: list[_Flow] = field(default_factory=list)
    tainted: bool = False
    """Bytes were swallowed: the streams no longer match, so healing closes it."""


class FaultProxy:
    """Forward ``127.0.0.1:port`` to *target*, with faults switched on and off by the test.

    ``latency`` (seconds, each way) and ``bandwidth`` (bytes per second, each
    way) shape the traffic; :meth:`blackhole`, :meth:`half_open`,
    :meth:`reset_after` and :meth:`pause` break it; :meth:`heal` lifts every
    fault.  Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, target: tuple[str, int], *, latency: float = 0.0) -> None:
        self.target = target
        self.latency = latency
        self.bandwidth: float | None = None
        self.mode = "forward"
        """``forward``, ``blackhole``, ``half-open`` or ``paused``."""
        self.reset_at: int | None = None
        self.resets = 0
        """Connections reset by :meth:`reset_after` so far."""
        self.accepted = 0
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closing = False
        self._armed = False
        self._budget = 0.0
        self._budget_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._serve, name=f"faultproxy:{self.port}", daemon=True
        )
        self._thread.start()

    @classmethod
    def to_url(cls, url: str, **options: float) -> FaultProxy:
        """A proxy in front of the server of a ``redis://host:port[/db]`` URL."""
        hostport = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[2]
        host, _, port = hostport.rpartition(":")
        return cls((host, int(port)), **options)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def connections(self) -> int:
        """Client connections open through the proxy now."""
        with self._lock:
            return len(self._links)

    # -- faults -----------------------------------------------------------------

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by *seconds* in each direction (order is kept)."""
        self._change(latency=seconds)

    def set_bandwidth(self, bytes_per_second: float | None) -> None:
        """Cap the link at *bytes_per_second*, shared by every connection and direction; ``None`` lifts it."""
        self._change(bandwidth=bytes_per_second)

    def blackhole(self) -> None:
        """Accept, and never answer: every byte either way is swallowed (those in flight too), nothing is closed."""
        self._change(mode="blackhole")

    def half_open(self) -> None:
        """The server vanishes without FIN or RST.

        The proxy drops its connections to the server; the clients' stay
        open and silent, and new connections are accepted and never answered.
        """
        self._change(mode="half-open")

    def pause(self) -> None:
        """Stop reading and writing (bytes wait in the kernel's buffers) until :meth:`resume`."""
        self._change(mode="paused")

    def resume(self) -> None:
        """Forward again what :meth:`pause` held, in order."""
        self._change(mode="forward")

    def reset_after(self, nbytes: int) -> None:
        """Reset (RST) the next connection whose replies reach *nbytes* from now, mid-reply.

        Armed once: the first connection to reach the count is reset, with
        *nbytes* of its reply delivered, and the proxy forwards as before.
        """
        self._change(reset_at=nbytes, _armed=True)

    def heal(self) -> None:
        """Lift every fault; connections that lost bytes meanwhile are reset, as a real peer would."""
        self._change(mode="forward", latency=0.0, bandwidth=None, reset_at=None)

    def _change(self, **settings: object) -> None:
        with self._lock:
            for name, value in settings.items():
                setattr(self, name, value)
        self._wake_w.send(b"!")

    # -- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Stop the proxy's thread and close every socket it holds."""
        self._closing = True
        try:
            self._wake_w.send(b"!")
        except OSError:
            pass
        self._thread.join(5)
        for link in list(self._links):
            self._drop(link)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop ---------------------------------------------------------------

    def _serve(self) -> None:
        mode = self.mode
        while not self._closing:
            with self._lock:
                changed, mode = self.mode != mode, self.mode
                armed, self._armed = self._armed, False
            if armed:  # count a reply's bytes from now, here where they are counted
                for link in self._links:
                    for flow in link.flows:
                        flow.sent = 0
            if changed:
                self._enter(mode)
            for key, events in self._selector.select(self._timeout(mode)):
                sock = cast(socket.socket, key.fileobj)
                if key.data is not None and key.data not in self._links:
                    continue  # dropped earlier in this round
                if events & selectors.EVENT_WRITE:
                    self._writable(key.data, sock, mode)
                    if not events & selectors.EVENT_READ:
                        continue
                if sock is self._wake_r:
                    try:
                        self._wake_r.recv(4096)
                    except BlockingIOError:
                        pass
                elif sock is self._listener:
                    if mode != "paused":
                        self._accept(mode)
                else:
                    self._read(key.data, sock, mode)
            if mode != "paused":
                self._write_due()

    def _timeout(self, mode: str) -> float | None:
        """Sleep until the next chunk is due, or until something happens."""
        if mode == "paused":
            return None
        due = [
            flow.queue[0][0]
            for link in self._links
            for flow in link.flows
            if flow.queue and not flow.blocked
        ]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())  # type: ignore[type-var, operator]

    def _enter(self, mode: str) -> None:
        """Apply a switch of mode to the connections already open."""
        if mode == "paused":
            self._selector.unregister(self._listener)
        elif self._listener not in self._selector.get_map():
            self._selector.register(self._listener, selectors.EVENT_READ)
        for link in list(self._links):
            events = 0 if mode == "paused" else selectors.EVENT_READ
            for sock in (link.client, link.server):
                if sock is not None:
                    self._interest(sock, events, link)
            for flow in link.flows:
                flow.blocked = False  # interest in writing was just reset
            if mode == "half-open" and link.server is not None:
                self._selector.unregister(link.server)
                link.server.close()  # the server forgets; the client is not told
                link.server, link.flows, link.tainted = None, [], True
            elif mode == "blackhole" and any(flow.queue for flow in link.flows):
                for flow in link.flows:
                    flow.queue.clear()  # bytes in flight (held by latency) are lost too
                link.tainted = True
            elif mode == "forward" and link.tainted:
                self._drop(link, reset=True)

    def _interest(self, sock: socket.socket, events: int, link: _Link) -> None:
        try:
            if events:
                self._selector.modify(sock, events, link)
            else:
                self._selector.unregister(sock)
        except KeyError:
            if events:
                self._selector.register(sock, events, link)

    def _accept(self, mode: str) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        client.setblocking(False)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.accepted += 1
        link = _Link(client, None)
        if mode == "forward":
            try:
                server = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                return
            server.setblocking(False)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link.server = server
            link.flows = [_Flow(client, server, False), _Flow(server, client, True)]
            self._selector.register(server, selectors.EVENT_READ, link)
        else:
            link.tainted = True  # accepted, never to be answered
        self._selector.register(client, selectors.EVENT_READ, link)
        with self._lock:
            self._links.append(link)

    def _read(self, link: _Link, sock: socket.socket, mode: str) -> None:
        try:
            data = sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if sock is link.client or mode == "forward":
                self._drop(link)  # a peer closed: close the other side too
            else:  # the server closed while nothing is forwarded: the client is not told
                self._selector.unregister(sock)
                sock.close()
                link.server, link.flows, link.tainted = None, [], True
            return
        if mode != "forward" or link.server is None:
            link.tainted = True  # swallowed
            return
        flow = link.flows[0] if sock is link.client else link.flows[1]
        flow.queue.append([time.monotonic() + self.latency, data])

    def _write_due(self) -> None:
        now = time.monotonic()
        self._refill(now)
        for link in list(self._links):
            for flow in link.flows:
                while flow.queue and not flow.blocked and flow.queue[0][0] <= now:  # type: ignore[operator]
                    item = flow.queue[0]
                    data: bytes = item[1]  # type: ignore[assignment]
                    size = len(data)
                    if self.bandwidth is not None:
                        size = min(size, int(self._budget))
                        if size <= 0:
                            break
                    reset = False
                    if self.reset_at is not None and flow.to_client:
                        left = self.reset_at - flow.sent
                        if left <= size:
                            size, reset = max(left, 0), True
                    try:
                        written = flow.sink.send(data[:size]) if size else 0
                    except BlockingIOError:
                        written = 0
                    except OSError:
                        self._drop(link)
                        break
                    flow.sent += written
                    if self.bandwidth is not None:
                        self._budget -= written
                    if reset and written == size:
                        with self._lock:
                            self.reset_at = None
                        self.resets += 1
                        self._drop(link, reset=True)
                        break
                    if written < len(data):
                        item[1] = data[written:]
                        if written < size:  # the sink is full: wait until it takes more
                            flow.blocked = True
                            self._interest(
                                flow.sink, selectors.EVENT_READ | selectors.EVENT_WRITE, link
                            )
                        break  # or the budget is spent: later
                    flow.queue.popleft()

    def _writable(self, link: _Link, sock: socket.socket, mode: str) -> None:
        for flow in link.flows:
            if flow.sink is sock:
                flow.blocked = False
        self._interest(sock, 0 if mode == "paused" else selectors.EVENT_READ, link)

    def _refill(self, now: float) -> None:
        rate = self.bandwidth
        if rate is not None:
            # A small burst allowance keeps the rate even without busy waiting.
            self._budget = min(self._budget + (now - self._budget_at) * rate, max(rate / 50, 1.0))
            if self._budget < 1.0 and any(f.queue for link in self._links for f in link.flows):
                time.sleep(min(0.02, (1.0 - self._budget) / rate))
        self._budget_at = now

    def _drop(self, link: _Link, *, reset: bool = False) -> None:
        """Close both sides of *link*; with *reset*, the client gets an RST rather than a FIN."""
        with self._lock:
            if link not in self._links:
                return
            self._links.remove(link)
        if reset:
            link.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for sock in (link.client, link.server):
            if sock is None:
                continue
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
