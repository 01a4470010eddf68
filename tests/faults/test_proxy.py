"""The fault proxy itself: each toxic does what it says, measured on a plain echo pair."""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from tests.conftest import WAIT
from tests.faults.proxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(WAIT)
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass  # the proxy reset or cut us: as some tests ask it to


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False


@pytest.fixture
def echo():
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address
    server.shutdown()
    server.server_close()
    thread.join(WAIT)


@pytest.fixture
def proxy(echo):
    with FaultProxy(echo, seed=7) as running:
        yield running


def _connect(proxy: FaultProxy, timeout: float = WAIT) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def _receive(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _round_trip(sock: socket.socket, payload: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.sendall(payload)
    return _receive(sock, len(payload)), time.monotonic() - started


def test_without_toxics_bytes_pass_both_ways_unchanged(proxy):
    payload = bytes(range(256)) * 1024
    with _connect(proxy) as sock:
        assert _round_trip(sock, payload)[0] == payload
    (link,) = proxy.wait_for_links(1, WAIT)
    assert link.closed.wait(WAIT) and link.ended == "closed"
    assert link.forwarded == {"upstream": len(payload), "downstream": len(payload)}


def test_latency_delays_each_way_by_its_milliseconds_with_jitter(proxy):
    proxy.add_toxic("latency", stream="downstream", latency=150, jitter=50)
    proxy.add_toxic("latency", stream="upstream", latency=100)
    with _connect(proxy) as sock:
        times = [_round_trip(sock, b"ping %d" % i)[1] for i in range(3)]
    assert min(times) >= 0.1 + 0.1 - 0.01  # at least 100 ms up and 150 - 50 ms down
    (link,) = proxy.links
    assert link.delays["upstream"] == [0.1] * 3
    assert all(0.1 <= d <= 0.2 for d in link.delays["downstream"])
    assert len(set(link.delays["downstream"])) == 3  # jittered


def test_latency_delays_a_stream_of_chunks_once_not_once_per_chunk(proxy):
    proxy.add_toxic("latency", stream="downstream", latency=200)
    with _connect(proxy) as sock:
        for _ in range(10):  # ten chunks in flight together
            sock.sendall(b"x" * 1000)
            time.sleep(0.01)  # pacing, so they leave as separate chunks
        started = time.monotonic()
        assert len(_receive(sock, 10_000)) == 10_000
        assert time.monotonic() - started < 1.5  # not 10 x 200 ms


def test_bandwidth_holds_a_transfer_to_its_rate(proxy):
    proxy.add_toxic("bandwidth", stream="downstream", rate=64)  # KiB/s
    payload = b"b" * (96 * 1024)
    with _connect(proxy) as sock:
        received, elapsed = _round_trip(sock, payload)
    assert received == payload
    # 96 KiB at 64 KiB/s: 1.5 s, less the first piece (100 ms' worth), which leaves at once
    assert elapsed >= 1.35
    (link,) = proxy.links
    assert max(link.pieces["downstream"]) <= 64 * 1024 // 10


def test_slicer_cuts_data_into_small_pieces_and_delivers_it_whole(proxy):
    proxy.add_toxic("slicer", stream="downstream", average_size=50, size_variation=20, delay=200)
    payload = bytes(range(256)) * 8
    with _connect(proxy) as sock:
        assert _round_trip(sock, payload)[0] == payload
    (link,) = proxy.links
    sizes = link.pieces["downstream"]
    assert sum(sizes) == len(payload) and max(sizes) <= 70
    assert sorted(sizes)[len(sizes) // 2] >= 30  # a chunk's last piece is what was left


def test_the_same_seed_slices_and_jitters_the_same(echo):
    runs = []
    for _ in range(2):
        with FaultProxy(echo, seed=3) as proxy:
            proxy.add_toxic("slicer", average_size=20, size_variation=15)
            proxy.add_toxic("latency", stream="upstream", latency=10, jitter=10)
            with _connect(proxy) as sock:
                _round_trip(sock, b"s" * 500)
            (link,) = proxy.links
            runs.append((link.pieces["downstream"], link.delays["upstream"]))
    assert runs[0] == runs[1]


def test_slow_close_passes_the_close_on_late(proxy):
    proxy.add_toxic("slow_close", stream="downstream", delay=400)
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"bye")[0] == b"bye"
        started = time.monotonic()
        sock.shutdown(socket.SHUT_WR)  # the echo server closes in turn
        assert sock.recv(10) == b""
        assert time.monotonic() - started >= 0.4


def test_timeout_swallows_data_and_keeps_the_connection_until_removed(proxy):
    with _connect(proxy, timeout=0.5) as sock:
        assert _round_trip(sock, b"before")[0] == b"before"
        name = proxy.add_toxic("timeout", stream="downstream")  # added while running
        sock.sendall(b"swallowed")
        with pytest.raises(socket.timeout):
            sock.recv(100)  # neither data nor a close: a blackhole
        (link,) = proxy.links
        proxy.wait_until(lambda: link.swallowed["downstream"] == len(b"swallowed"), WAIT)
        proxy.remove_toxic(name)
        sock.settimeout(WAIT)
        assert _round_trip(sock, b"after")[0] == b"after"
    assert link.swallowed["downstream"] == len(b"swallowed")


def test_timeout_with_milliseconds_closes_the_connection_then(proxy):
    proxy.add_toxic("timeout", stream="upstream", timeout=300)
    with _connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"lost")
        assert sock.recv(10) == b""  # nothing came back, then the close
        assert time.monotonic() - started >= 0.25
    assert proxy.links[0].ended == "timeout"


def test_reset_peer_resets_the_connection_after_its_milliseconds(proxy):
    proxy.add_toxic("reset_peer", stream="downstream", timeout=200)
    with _connect(proxy) as sock:
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            sock.recv(10)  # nothing comes until the reset
        assert time.monotonic() - started >= 0.15
    assert proxy.links[0].ended == "reset"


def test_limit_data_cuts_the_connection_after_its_bytes(proxy):
    proxy.add_toxic("limit_data", stream="downstream", bytes=1000)
    with _connect(proxy) as sock:
        sock.sendall(b"L" * 5000)
        assert _receive(sock, 5000) == b"L" * 1000  # then the close
    (link,) = proxy.wait_for_links(1, WAIT)
    assert link.closed.wait(WAIT) and link.ended == "cut"


def test_connections_and_toxicity_choose_which_connections_a_toxic_touches(proxy):
    proxy.add_toxic("limit_data", bytes=2, connections=[0])
    proxy.add_toxic("timeout", stream="upstream", toxicity=0.0)
    for expected in (b"ab", b"abcd"):
        with _connect(proxy) as sock:
            sock.sendall(b"abcd")
            assert _receive(sock, 4) == expected
    first, second = proxy.wait_for_links(2, WAIT)
    assert first.ended == "cut" and second.swallowed["upstream"] == 0


def test_a_mistyped_toxic_is_refused(proxy):
    with pytest.raises(ValueError, match="no toxic 'latnecy'"):
        proxy.add_toxic("latnecy", latency=10)
    with pytest.raises(ValueError, match="bandwidth takes no latency"):
        proxy.add_toxic("bandwidth", latency=10)
    with pytest.raises(ValueError, match="upstream or downstream"):
        proxy.add_toxic("latency", stream="both")
