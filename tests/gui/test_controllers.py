"""The windows' state machines without a display: buttons, status texts, errors, and a whole
federated run through the same controllers the windows drive. Real loopback sockets."""
from __future__ import annotations

import queue
import socket
import time

import pytest

import common  # noqa: F401  (the quiet TensorFlow environment first)
from common.cli import build_global_model
from common.client import ClientConfig
from common.data import CLIENT_DATA
from common.ga import GAConfig
from common.gui.controllers import INITIAL_STATUS, ClientController, ServerController
from common.server import ServerConfig

WAIT = 30  # seconds: every wait has a bound


class MainThread:
    """Stands in for Kivy's main thread: core threads queue handlers here, and they run
    when the test waits, on the test's thread."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()

    def call_soon(self, handler, *args) -> None:
        self.queue.put((handler, args))

    def run_until(self, predicate, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            try:
                handler, args = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"condition not met within {timeout} s") from None
            handler(*args)

    def run_pending(self) -> None:
        while not self.queue.empty():
            handler, args = self.queue.get_nowait()
            handler(*args)


def enabled(controller) -> set[str]:
    return {name for name, on in controller.enabled.items() if on}


@pytest.fixture
def main_thread():
    return MainThread()


@pytest.fixture
def make_server(main_thread):
    controllers = []

    def make(**overrides) -> ServerController:
        config = ServerConfig(host="127.0.0.1", port=0, **overrides)
        controller = ServerController(config, build_global_model, call_soon=main_thread.call_soon)
        controllers.append(controller)
        return controller

    yield make
    for controller in controllers:
        controller.shutdown()


@pytest.fixture
def make_client(main_thread):
    controllers = []

    def make(name="client1", **overrides) -> ClientController:
        config = ClientConfig(host="127.0.0.1", name=name, **overrides)
        controller = ClientController(config, CLIENT_DATA[name], call_soon=main_thread.call_soon)
        controllers.append(controller)
        return controller

    yield make
    for controller in controllers:
        controller.shutdown()


def closed_port() -> int:
    """A loopback port nothing listens on (it was just free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- server window -------------------------------------------------------------------------

def test_server_steps_enable_buttons_in_the_tutorials_order(make_server, main_thread):
    server = make_server()
    assert (server.status, enabled(server)) == (INITIAL_STATUS, {"create"})

    server.create()
    assert (server.status, enabled(server)) == ("Socket Created", {"bind", "close"})
    server.bind("127.0.0.1", "0")
    assert (server.status, enabled(server)) == ("Socket Bound to IPv4 & Port Number",
                                                {"listen", "close"})
    server.listen()
    assert server.status.startswith("Socket is Listening for Connections on 127.0.0.1:")
    assert enabled(server) == {"close"}

    host, port = server.listener.server_address
    with socket.create_connection((host, port), timeout=WAIT) as client:
        peer = "%s:%d" % client.getsockname()[:2]
        main_thread.run_until(lambda: server.view.clients.get(peer) == "connected")
        server.close()
        assert (server.status, enabled(server)) == ("Socket Closed", {"create"})
        assert client.recv(1) == b""  # Close Socket closed the client's connection too
    main_thread.run_until(lambda: server.view.clients.get(peer) == "disconnected")

    server.create()  # the tutorial lets the steps start over
    assert enabled(server) == {"bind", "close"}


@pytest.mark.parametrize("port, reason", [
    ("ten", "Cannot bind: 'ten' is not a port number."),
    ("70000", "Cannot bind: port 70000 is outside 0-65535."),
    ("", "Cannot bind: '' is not a port number."),
])
def test_server_bad_port_is_a_status_and_bind_can_be_retried(make_server, port, reason):
    server = make_server()
    server.create()
    server.bind("127.0.0.1", port)
    assert (server.status, enabled(server)) == (reason, {"bind", "close"})
    server.bind(" 127.0.0.1 ", " 0 ")  # a corrected field works on the same socket
    assert server.status == "Socket Bound to IPv4 & Port Number"


def test_server_port_in_use_is_a_status(make_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = make_server()
        server.create()
        server.bind("127.0.0.1", str(port))
    assert server.status == f"Port {port} on 127.0.0.1 is already in use."
    assert enabled(server) == {"bind", "close"}


def test_server_address_of_another_machine_is_a_status(make_server):
    server = make_server()
    server.create()
    server.bind("192.0.2.1", "0")  # TEST-NET-1: never this machine's; binding sends nothing
    assert server.status == "The address 192.0.2.1 does not belong to this machine."
    assert enabled(server) == {"bind", "close"}


# ---- client window -------------------------------------------------------------------------

def test_client_unreachable_server_is_a_status_and_connect_can_be_retried(make_client,
                                                                          main_thread):
    client = make_client(connect_timeout=0.3)
    assert (client.status, enabled(client)) == (INITIAL_STATUS, {"create"})
    client.create()
    assert (client.status, enabled(client)) == ("Socket Created", {"connect", "close"})
    port = closed_port()
    client.connect("127.0.0.1", str(port))
    assert client.status == f"Connecting to 127.0.0.1:{port} ..."
    assert enabled(client) == {"close"}
    main_thread.run_until(lambda: client.status != f"Connecting to 127.0.0.1:{port} ...")
    assert client.status.startswith(
        f"Error Connecting to the Server: The server at 127.0.0.1:{port} is unreachable")
    assert enabled(client) == {"connect", "close"}


def test_client_bad_port_is_a_status(make_client):
    client = make_client()
    client.create()
    client.connect("127.0.0.1", "ten")
    assert client.status == "Cannot connect: 'ten' is not a port number."
    assert enabled(client) == {"connect", "close"}


def test_client_reports_a_server_that_goes_away(make_client, main_thread):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = make_client()
        client.create()
        client.connect("127.0.0.1", str(listener.getsockname()[1]))
        main_thread.run_until(lambda: enabled(client) == {"train", "close"})
        assert client.status == "Successful Connection to the Server"
        client.train()
        assert (client.status, enabled(client)) == ("Receiving the Model from the Server",
                                                    {"close"})
        connection, _ = listener.accept()
        with connection:
            # The server leaves before sending a model: FIN first, then read what the client
            # sent until it hangs up, so no unread byte turns the close into a reset.
            connection.settimeout(WAIT)
            connection.shutdown(socket.SHUT_WR)
            while connection.recv(65536):
                pass
    main_thread.run_until(lambda: client.status != "Receiving the Model from the Server")
    assert client.status == "The server closed the connection before training was done."
    assert enabled(client) == {"close"}
    client.close()
    assert (client.status, enabled(client)) == ("Socket Closed", {"create"})


def test_client_close_cancels_a_pending_connect(make_client, main_thread):
    client = make_client(connect_timeout=WAIT)  # would keep retrying for a minute
    client.create()
    client.connect("127.0.0.1", str(closed_port()))
    client.close()
    client.shutdown(timeout=5)
    assert not client._connector.is_alive()
    main_thread.run_pending()  # the cancelled attempt's late report changes nothing
    assert (client.status, enabled(client)) == ("Socket Closed", {"create"})


# ---- both, together ----------------------------------------------------------------------

def test_federated_run_through_the_window_controllers(make_server, make_client, main_thread):
    server = make_server(seed=1)
    server.create()
    server.bind("127.0.0.1", "0")
    server.listen()
    port = str(server.listener.server_address[1])
    clients = [make_client(name, seed=1, ga=GAConfig(num_generations=20))
               for name in ("client1", "client2")]
    for client in clients:
        client.create()
        client.connect("127.0.0.1", port)
    main_thread.run_until(lambda: all(enabled(c) == {"train", "close"} for c in clients))
    for client in clients:
        client.train()

    main_thread.run_until(lambda: server.view.summary.startswith("Training done")
                          and all(c.status.startswith("Training is done") for c in clients))
    assert server.view.history[-1][1] == 1.0
    assert server.view.summary.startswith("Training done: global accuracy 1.00 after")
    assert [client.status for client in clients] == ["Training is done: accuracy 1.00"] * 2
    for client in clients:
        assert client.view.round is not None and client.view.best_fitness is not None
        assert client.view.generation == client.view.generations == 20
    main_thread.run_until(lambda: len(server.view.clients) == 2 and all(
        state.startswith("done") for state in server.view.clients.values()))
