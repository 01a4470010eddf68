"""Shared fixtures: a real server on an ephemeral loopback port, real clients as threads."""
from __future__ import annotations

import queue
import socket
import threading

import pytest

import common  # noqa: F401  (sets the quiet TensorFlow environment first)
from common.cli import build_global_model
from common.client import ClientConfig, Reconnector, RecvThread, connect
from common.data import CLIENT_DATA
from common.server import ListenThread, ServerConfig

WAIT = 60  # seconds: every wait in the tests has a bound


class EventLog:
    """Records events from any thread; tests wait on it instead of sleeping."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.seen: list = []

    def __call__(self, event) -> None:
        self.queue.put(event)

    def all(self) -> list:
        """Every event so far (call once the producer has finished)."""
        while not self.queue.empty():
            self.seen.append(self.queue.get())
        return self.seen

    def wait_for(self, predicate, timeout: float = WAIT):
        for event in self.seen:
            if predicate(event):
                return event
        while True:
            try:
                event = self.queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no matching event within {timeout} s; saw {self.seen}")
            self.seen.append(event)
            if predicate(event):
                return event


def start_server(**overrides):
    config = ServerConfig(host="127.0.0.1", port=0, **overrides)
    events = EventLog()
    global_model = build_global_model(config, on_event=events)  # as server.py builds it
    server = ListenThread(global_model, config, on_event=events)
    server.start()
    return server, events


@pytest.fixture
def server_factory():
    servers = []

    def make(**overrides):
        server, events = start_server(**overrides)
        servers.append(server)
        return server, events

    yield make
    for server in servers:
        server.shutdown()


@pytest.fixture
def server(server_factory):
    return server_factory()


@pytest.fixture
def client_factory():
    threads = []

    def make(address, data=None, name="client1", reconnect=False, **overrides):
        config = ClientConfig(host=address[0], port=address[1], name=name, **overrides)
        events = EventLog()
        sock = connect(config.host, config.port, timeout=5)
        thread = RecvThread(config.buffer_size, config.recv_timeout, sock=sock,
                            data=data or CLIENT_DATA[name], config=config, on_event=events,
                            reconnect=Reconnector(config.host, config.port, config.retries)
                            if reconnect else None)
        thread.start()
        threads.append(thread)
        return thread, events

    yield make
    for thread in threads:
        thread.stop()
        thread.join(WAIT)


def raw_connection(address) -> socket.socket:
    sock = socket.create_connection(address, timeout=WAIT)
    return sock


def client_error_against(stub, client_factory):
    """Run ``stub(connection)`` as a one-connection server; return our client's error event."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        def serve():
            connection, _ = listening.accept()
            with connection:
                stub(connection)

        server = threading.Thread(target=serve)
        server.start()
        client, events = client_factory(listening.getsockname())
        error = events.wait_for(lambda e: e.kind == "error")
        client.join(WAIT)
        server.join(WAIT)
    assert client.outcome == "error"
    return error
