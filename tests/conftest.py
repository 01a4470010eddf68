"""Shared fixtures: a real server on an ephemeral loopback port, real clients as threads."""

from __future__ import annotations

import logging
import queue
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris

import common  # noqa: F401  (sets the quiet TensorFlow environment first)
from common.app import build_global_model
from common.client import ClientConfig, ClientOutcome, Reconnector, RecvThread, connect
from common.data import CLIENT_DATA, Dataset
from common.server import ListenThread
from common.server_config import ServerConfig

WAIT = 60  # seconds: every wait in the tests has a bound
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    """pytest.ini's markers that follow from where a test lives or what it uses: the window
    tests, the Flower tests, and (slow) those that need the TLS files openssl makes."""
    for item in items:
        path = Path(item.path)
        if TESTS / "gui" in path.parents:
            item.add_marker(pytest.mark.gui)
        elif path.name == "test_flower.py":
            item.add_marker(pytest.mark.flower)
        if "certificates" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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
                raise AssertionError(
                    f"no matching event within {timeout} s; saw {self.seen}"
                ) from None
            self.seen.append(event)
            if predicate(event):
                return event


def start_server(**overrides):
    config = ServerConfig.of(host="127.0.0.1", port=0, **overrides)
    events = EventLog()
    global_model = build_global_model(config, on_event=events)  # as server.py builds it
    server = ListenThread(global_model, config, on_event=events)
    server.start()
    return server, events


@pytest.fixture(autouse=True)
def root_logging_restored():
    """A test that runs a command's main() in this process gets its logging set up on the
    test's captured stderr (``configure_logging``): taken off again after the test, or a
    later test's thread would log into that stream once pytest has closed it."""
    root = logging.getLogger()
    handlers, level = set(root.handlers), root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(level)


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

    def make(
        address, data=None, name="client1", reconnect=False, thread_type=RecvThread, **overrides
    ):
        config = ClientConfig(host=address[0], port=address[1], name=name, **overrides)
        events = EventLog()
        sock = connect(config.host, config.port, timeout=5)
        thread = thread_type(
            config.buffer_size,
            config.recv_timeout,
            sock=sock,
            data=data or CLIENT_DATA[name],
            config=config,
            on_event=events,
            reconnect=Reconnector(config.host, config.port, config.retries) if reconnect else None,
        )
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
    assert client.outcome is ClientOutcome.ERROR
    return error


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=WAIT)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory):
    """A test CA (ca.pem) and a server certificate (server.pem, server.key) for localhost and
    127.0.0.1, as the README makes them; other.pem/other.key are someone else's."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=fedga test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=folder,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        cwd=folder,
    )
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
        cwd=folder,
    )
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=someone else",
        "-keyout",
        "other.key",
        "-out",
        "other.pem",
        cwd=folder,
    )
    return folder


def standardised_iris() -> tuple[np.ndarray, np.ndarray]:
    """Iris shuffled (seed 0) and standardised: the first 30 samples are a server's test set."""
    inputs, labels = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(labels))
    inputs, labels = inputs[order].astype(np.float32), labels[order]
    return (inputs - inputs.mean(axis=0)) / inputs.std(axis=0), labels


@pytest.fixture(scope="module")
def iris_split(tmp_path_factory):
    """Iris: the server's test file and the training samples over five clients."""
    inputs, labels = standardised_iris()
    folder = tmp_path_factory.mktemp("iris")
    np.savez(folder / "test.npz", inputs=inputs[:30], outputs=labels[:30])
    parts = np.array_split(np.arange(30, len(labels)), 5)
    return str(folder / "test.npz"), [Dataset(inputs[rows], labels[rows]) for rows in parts]
