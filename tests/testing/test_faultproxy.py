"""The fault-injecting proxy does what each fault says, in front of an echo server (no Redis needed)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from fleche_redis.testing.faultproxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        with server.lock:  # type: ignore[attr-defined]
            server.open += 1  # type: ignore[attr-defined]
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass
        finally:
            with server.lock:  # type: ignore[attr-defined]
                server.open -= 1  # type: ignore[attr-defined]


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.open = 0
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo):
    with FaultProxy(echo.server_address) as proxy:
        yield proxy


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = bytearray()
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return bytes(received)


def wait_for(condition, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_forwards_bytes_intact_both_ways(proxy):
    payload = bytes(range(256)) * 8192  # 2 MiB, more than a socket buffer holds
    with connect(proxy) as sock:
        assert exchange(sock, b"ping") == b"ping"
        assert exchange(sock, payload) == payload
        assert proxy.connections == 1
    assert wait_for(lambda: proxy.connections == 0)


def test_latency_delays_each_direction(proxy):
    with connect(proxy) as sock:
        exchange(sock, b"warm")
        proxy.set_latency(0.05)
        start = time.monotonic()
        assert exchange(sock, b"slow") == b"slow"
        assert time.monotonic() - start >= 0.1  # 50 ms there, 50 ms back


def test_bandwidth_caps_the_link(proxy):
    proxy.set_bandwidth(1_000_000)
    payload = b"x" * 200_000
    with connect(proxy) as sock:
        start = time.monotonic()
        assert exchange(sock, payload) == payload
        assert time.monotonic() - start >= 0.3  # 400 kB through a 1 MB/s link
    proxy.set_bandwidth(None)


def test_blackhole_accepts_and_never_answers(proxy, echo):
    with connect(proxy, timeout=0.2) as before:
        exchange(before, b"ok")
        proxy.blackhole()
        before.sendall(b"lost")
        with pytest.raises(socket.timeout):
            before.recv(10)
        with connect(proxy, timeout=0.2) as new:  # accepted ...
            new.sendall(b"lost too")
            with pytest.raises(socket.timeout):  # ... and never answered
                new.recv(10)
            assert echo.open == 1  # nothing reached the server
            proxy.heal()
            # Bytes went missing: healing resets those connections.
            for sock in (before, new):
                sock.settimeout(2)
                with pytest.raises(ConnectionResetError):
                    sock.recv(10)
    with connect(proxy) as after:
        assert exchange(after, b"back") == b"back"


def test_blackhole_swallows_bytes_in_flight(proxy):
    with connect(proxy, timeout=0.3) as sock:
        exchange(sock, b"ok")
        proxy.set_latency(0.1)
        sock.sendall(b"in flight")
        time.sleep(0.02)  # past the proxy, not yet delivered
        proxy.blackhole()
        with pytest.raises(socket.timeout):
            sock.recv(10)


def test_half_open_drops_the_server_side_silently(proxy, echo):
    with connect(proxy, timeout=0.2) as sock:
        exchange(sock, b"ok")
        assert echo.open == 1
        proxy.half_open()
        assert wait_for(lambda: echo.open == 0)  # the server saw its peer go ...
        sock.sendall(b"anyone?")
        with pytest.raises(socket.timeout):  # ... the client saw nothing
            sock.recv(10)
        with connect(proxy, timeout=0.2) as new:
            with pytest.raises(socket.timeout):
                new.recv(10)
        proxy.heal()
        sock.settimeout(2)
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    with connect(proxy) as after:
        assert exchange(after, b"back") == b"back"


def test_reset_after_cuts_a_reply_in_the_middle(proxy):
    with connect(proxy) as sock:
        exchange(sock, b"ok")
        proxy.reset_after(1000)
        sock.sendall(b"y" * 100_000)
        received = bytearray()
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        assert len(received) == 1000
    assert proxy.resets == 1
    with connect(proxy) as after:  # armed once
        payload = b"z" * 100_000
        assert exchange(after, payload) == payload


def test_pause_holds_bytes_until_resume(proxy):
    with connect(proxy, timeout=0.2) as sock:
        exchange(sock, b"ok")
        proxy.pause()
        sock.sendall(b"held")
        with pytest.raises(socket.timeout):
            sock.recv(10)
        proxy.resume()
        sock.settimeout(2)
        assert sock.recv(10) == b"held"


def test_close_ends_its_thread_and_connections(echo):
    threads = threading.active_count()
    proxy = FaultProxy(echo.server_address)
    sock = connect(proxy)
    exchange(sock, b"ok")
    assert threading.active_count() == threads + 2  # the proxy's one, and the echo handler
    proxy.close()
    assert sock.recv(10) == b""
    sock.close()
    assert wait_for(lambda: threading.active_count() == threads)
    assert echo.open == 0


def test_to_url_reads_host_and_port():
    proxy = FaultProxy.to_url("redis://:pw@127.0.0.1:1/0")
    try:
        assert proxy.target == ("127.0.0.1", 1)
        assert proxy.url == f"redis://127.0.0.1:{proxy.port}/0"
    finally:
        proxy.close()
