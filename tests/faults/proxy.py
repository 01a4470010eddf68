"""A fault-injecting TCP proxy for tests, with Toxiproxy's toxics by their names and meanings.

Toxiproxy's own server cannot be installed here (not in Debian, PyPI or npm) and ``tc
netem`` is not in this kernel, so this is a small asyncio proxy run in a thread of the test
process, listening on 127.0.0.1 at an ephemeral port and forwarding to one upstream address::

    with FaultProxy(server_address, seed=1) as proxy:
        proxy.add_toxic("bandwidth", stream="downstream", rate=32)
        client connects to proxy.address ...
        proxy.remove_toxic("bandwidth_downstream")

A toxic works on one direction of every proxied connection (a ``Link``): ``upstream`` is
client -> server, ``downstream`` server -> client. As in Toxiproxy, ``toxicity`` is the chance
that a toxic applies to a given connection (rolled once per connection, from ``seed``), and
toxics may be added and removed while connections run. Beyond Toxiproxy, ``connections``
picks which connections a toxic may touch by their order of arrival (0: the first), so a
test can cut the first connection and let the reconnection through.

The toxics and their attributes (Toxiproxy's units, but ``bandwidth`` in KiB/s):

- ``latency``: ``latency`` ms added to each chunk, +- ``jitter`` ms (uniform); chunks keep
  their order and are delayed, not serialised (a pipe, not a queue of sleeps).
- ``bandwidth``: at most ``rate`` KiB/s, written in pieces of 100 ms' worth.
- ``slow_close``: the close (EOF) is passed on ``delay`` ms late.
- ``timeout``: a blackhole: data is read and swallowed, the connection stays open; with
  ``timeout`` > 0 ms the connection is closed that long after the toxic began on it.
- ``reset_peer``: ``timeout`` ms after the connection began (or the toxic was added), the
  peer this stream flows to gets a TCP RST (``SO_LINGER`` 0) and the other side a close.
- ``slicer``: data cut into pieces of ``average_size`` +- ``size_variation`` bytes, ``delay``
  microseconds apart.
- ``limit_data``: once ``bytes`` bytes passed this way, the connection is closed: a cut in
  the middle of a message.

Of each type, the latest toxic added that applies is the one a stream uses. Each ``Link``
records what passed for the tests: bytes forwarded and swallowed per stream, the sizes of
the pieces written, the latency delays drawn, and how it ended.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field

STREAMS = ("upstream", "downstream")  # client -> server, server -> client
# Each toxic's attributes with Toxiproxy's defaults.
TOXICS: dict[str, dict[str, float]] = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slow_close": {"delay": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
    "limit_data": {"bytes": 0},
}
CHUNK = 64 * 1024  # bytes per read from either side
QUEUED_CHUNKS = 4  # chunks held per direction before the proxy stops reading: backpressure
KIB = 1024

_EOF = object()  # the source closed its side
_CUT = object()  # limit_data: close the connection once what came before is written


@dataclass(frozen=True)
class Toxic:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, float]
    connections: frozenset[int] | None  # by order of arrival; None: every connection
    added: float  # time.monotonic() when it was added

    def __getattr__(self, name: str) -> float:
        try:
            return self.attributes[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Link:
    """One proxied connection, as far as the tests need to see it."""

    index: int  # 0 for the first connection the proxy accepted
    opened: float  # time.monotonic()
    forwarded: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    swallowed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    pieces: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in STREAMS})
    delays: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STREAMS})
    ended: str = ""  # "closed", "cut", "reset", "timeout", "error" or "proxy closed"
    closed: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """A TCP proxy from ``address`` (127.0.0.1, an ephemeral port) to ``upstream``."""

    def __init__(self, upstream: tuple[str, int], *, seed: int = 0, host: str = "127.0.0.1"):
        self.upstream = (upstream[0], upstream[1])
        self.host = host
        self.address: tuple[str, int] = (host, 0)  # the real port once started
        self._rng = random.Random(seed)  # used in the loop's thread only
        self._toxics: dict[str, Toxic] = {}
        self._lock = threading.Lock()
        self._links: list[Link] = []
        self._links_changed = threading.Condition(self._lock)  # also: a link's counts moved
        self._rolls: dict[tuple[str, int], bool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_error: BaseException | None = None

    # -- from the test's thread --

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="FaultProxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the fault proxy did not start within 30 s")
        if self._start_error is not None:
            raise self._start_error
        return self

    def close(self) -> None:
        """Close every connection and the listening socket, and join the thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def add_toxic(
        self,
        type: str,
        *,
        stream: str = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
        connections: Collection[int] | None = None,
        **attributes: float,
    ) -> str:
        """Add a toxic (running connections included); return its name (by default
        ``type_stream``, as Toxiproxy names them)."""
        if type not in TOXICS:
            raise ValueError(f"no toxic {type!r}; the toxics are {', '.join(TOXICS)}")
        if stream not in STREAMS:
            raise ValueError(f"stream must be upstream or downstream, not {stream!r}")
        unknown = attributes.keys() - TOXICS[type].keys()
        if unknown:
            raise ValueError(f"{type} takes no {', '.join(sorted(unknown))}")
        toxic = Toxic(
            name or f"{type}_{stream}",
            type,
            stream,
            toxicity,
            TOXICS[type] | attributes,
            None if connections is None else frozenset(connections),
            time.monotonic(),
        )
        with self._lock:
            if toxic.name in self._toxics:
                raise ValueError(f"a toxic named {toxic.name!r} is already there")
            self._toxics[toxic.name] = toxic
        self._notify()
        return toxic.name

    def remove_toxic(self, name: str) -> None:
        with self._lock:
            del self._toxics[name]
        self._notify()

    @property
    def toxics(self) -> list[Toxic]:
        with self._lock:
            return list(self._toxics.values())

    @property
    def links(self) -> list[Link]:
        with self._lock:
            return list(self._links)

    def wait_for_links(self, count: int, timeout: float) -> list[Link]:
        """The first ``count`` connections, once that many arrived; AssertionError after
        ``timeout`` seconds."""
        with self._links_changed:
            if not self._links_changed.wait_for(lambda: len(self._links) >= count, timeout):
                raise AssertionError(
                    f"the proxy saw {len(self._links)} connections in {timeout} s, not {count}"
                )
            return self._links[:count]

    def wait_until(self, predicate, timeout: float) -> None:
        """Wait until ``predicate()`` (of the links' records) holds; AssertionError after
        ``timeout`` seconds. Checked whenever a connection comes or its counts move."""
        with self._links_changed:
            if not self._links_changed.wait_for(predicate, timeout):
                raise AssertionError(f"the proxy's links did not get there in {timeout} s")

    def _moved(self) -> None:
        with self._links_changed:
            self._links_changed.notify_all()

    def _notify(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._toxics_changed)

    # -- in the loop's thread --

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        finally:
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        try:
            server = await asyncio.start_server(self._serve, self.host, 0)
        except OSError as exc:
            self._start_error = exc
            self._ready.set()
            return
        self.address = server.sockets[0].getsockname()[:2]
        self._loop = loop
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _toxics_changed(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wakes every watcher waiting on the old event

    def _applies(self, toxic: Toxic, link: Link) -> bool:
        if toxic.connections is not None and link.index not in toxic.connections:
            return False
        key = (toxic.name, link.index)
        if key not in self._rolls:
            self._rolls[key] = toxic.toxicity >= 1 or self._rng.random() < toxic.toxicity
        return self._rolls[key]

    def _active(self, link: Link, stream: str) -> dict[str, Toxic]:
        """The toxics that act on this stream of this link now, by type."""
        with self._lock:
            toxics = list(self._toxics.values())
        return {t.type: t for t in toxics if t.stream == stream and self._applies(t, link)}

    async def _serve(self, client_reader, client_writer) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            self._tasks.discard(task)
            return
        with self._links_changed:
            link = Link(len(self._links), time.monotonic())
            self._links.append(link)
            self._links_changed.notify_all()
        run = _LinkRun(link, client_writer, server_writer)
        queues = {s: asyncio.Queue(QUEUED_CHUNKS) for s in STREAMS}
        parts = [
            self._read(run, "upstream", client_reader, queues["upstream"]),
            self._read(run, "downstream", server_reader, queues["downstream"]),
            self._write(run, "upstream", queues["upstream"], server_writer),
            self._write(run, "downstream", queues["downstream"], client_writer),
            self._watch(run),
        ]
        workers = [asyncio.create_task(part) for part in parts]
        try:
            await run.done.wait()
        except asyncio.CancelledError:
            # The proxy is closing: this link ends as any other. Left cancelled, the task
            # would be reported by asyncio's stream callback as an error with a traceback.
            pass
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await run.close_all("proxy closed")
            link.closed.set()
            self._tasks.discard(task)

    async def _read(self, run: _LinkRun, stream: str, reader, queue: asyncio.Queue) -> None:
        link = run.link
        try:
            while data := await reader.read(CHUNK):
                toxics = self._active(link, stream)
                if "timeout" in toxics:
                    link.swallowed[stream] += len(data)
                    self._moved()
                    continue
                cut = False
                if "limit_data" in toxics:
                    room = int(toxics["limit_data"].bytes) - link.forwarded[stream]
                    if room <= len(data):
                        data, cut = data[: max(room, 0)], True
                link.forwarded[stream] += len(data)
                self._moved()
                delay = 0.0
                if "latency" in toxics:
                    latency = toxics["latency"]
                    jitter = self._rng.uniform(-latency.jitter, latency.jitter)
                    delay = max(0.0, latency.latency + jitter) / 1000
                    link.delays[stream].append(delay)
                await queue.put((time.monotonic() + delay, data))
                if cut:
                    await queue.put(_CUT)
                    return
        except (ConnectionError, OSError):
            await run.close_all("error")
            return
        await queue.put(_EOF)

    async def _write(self, run: _LinkRun, stream: str, queue: asyncio.Queue, writer) -> None:
        link = run.link
        next_free = 0.0  # bandwidth: when the next piece may go
        try:
            while True:
                item = await queue.get()
                if item is _CUT:
                    await run.close_all("cut")
                    return
                if item is _EOF:
                    slow_close = self._active(link, stream).get("slow_close")
                    if slow_close is not None:
                        await asyncio.sleep(slow_close.delay / 1000)
                    await run.half_close(stream, writer)
                    return
                due, data = item
                await _sleep_until(due)
                toxics = self._active(link, stream)
                slicer, bandwidth = toxics.get("slicer"), toxics.get("bandwidth")
                for piece in self._slices(data, slicer):
                    for part in _parts(piece, bandwidth):
                        if bandwidth is not None:
                            start = max(time.monotonic(), next_free)
                            await _sleep_until(start)
                            next_free = start + len(part) / (bandwidth.rate * KIB)
                        link.pieces[stream].append(len(part))  # before: the peer may look
                        writer.write(part)
                        await writer.drain()
                    if slicer is not None and slicer.delay:
                        await asyncio.sleep(slicer.delay / 1e6)
        except (ConnectionError, OSError):
            await run.close_all("error")

    def _slices(self, data: bytes, slicer: Toxic | None) -> list[bytes]:
        if slicer is None:
            return [data]
        pieces, at = [], 0
        average, variation = int(slicer.average_size), int(slicer.size_variation)
        while at < len(data):
            size = max(1, average + self._rng.randint(-variation, variation))
            pieces.append(data[at : at + size])
            at += size
        return pieces

    async def _watch(self, run: _LinkRun) -> None:
        """Fire ``reset_peer`` and a closing ``timeout`` when their time comes."""
        link = run.link
        while True:
            changed = self._changed
            due: list[tuple[float, Toxic]] = []
            for stream in STREAMS:
                for toxic in self._active(link, stream).values():
                    if toxic.type == "reset_peer" or (toxic.type == "timeout" and toxic.timeout):
                        due.append((max(link.opened, toxic.added) + toxic.timeout / 1000, toxic))
            if due:
                when, toxic = min(due, key=lambda pair: pair[0])
                if when <= time.monotonic():
                    if toxic.type == "reset_peer":
                        await run.reset(toxic.stream)
                    else:
                        await run.close_all("timeout")
                    return
            wait = min(when for when, _ in due) - time.monotonic() if due else None
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except TimeoutError:
                pass


class _LinkRun:
    """The two writers of one link and how it ends."""

    def __init__(self, link: Link, client_writer, server_writer):
        self.link = link
        self.writers = {"upstream": server_writer, "downstream": client_writer}
        self.done = asyncio.Event()
        self._half_closed: set[str] = set()

    async def half_close(self, stream: str, writer) -> None:
        """Pass the source's EOF on; once both directions ended, the link is closed."""
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass
        self._half_closed.add(stream)
        if self._half_closed == set(STREAMS):
            await self.close_all("closed")

    async def reset(self, stream: str) -> None:
        """A TCP RST to the peer ``stream`` flows to, a close to the other."""
        victim = self.writers[stream]
        sock = victim.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        victim.transport.abort()
        await self.close_all("reset")

    async def close_all(self, how: str) -> None:
        if not self.link.ended:
            self.link.ended = how
        for writer in self.writers.values():
            if not writer.transport.is_closing():
                writer.close()
        for writer in self.writers.values():
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        self.done.set()


def _parts(piece: bytes, bandwidth: Toxic | None) -> list[bytes]:
    """``piece`` in parts of 100 ms' worth at the bandwidth's rate (all of it without one)."""
    if bandwidth is None:
        return [piece]
    size = max(1, int(bandwidth.rate * KIB / 10))
    return [piece[at : at + size] for at in range(0, len(piece), size)]


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
