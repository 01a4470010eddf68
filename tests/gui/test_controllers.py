"""The windows' state machines without a display: buttons, status texts, errors, and a whole
federated run through the same controllers the windows drive. Real loopback sockets."""
from __future__ import annotations

import base64
import os
import queue
import socket
import time

import pytest

import common  # noqa: F401  (the quiet TensorFlow environment first)
from common import security
from common.cli import build_global_model
from common.client import ClientConfig
from common.data import CLIENT_DATA, XOR_TEST_DATA
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


def record_statuses(controller) -> list[str]:
    """Every status the controller shows from now on, in order (a window would show each)."""
    statuses: list[str] = []

    def record() -> None:
        if statuses[-1:] != [controller.status]:
            statuses.append(controller.status)

    controller.on_change = record
    return statuses


@pytest.fixture
def main_thread():
    return MainThread()


@pytest.fixture(autouse=True)
def no_secret_in_the_environment(monkeypatch):
    """An empty secret field means $FEDGA_SECRET: the tests set it only where they mean to."""
    monkeypatch.delenv(security.SECRET_ENV, raising=False)


@pytest.fixture
def secured(certificates, tmp_path):
    """The security fields' texts of a server and of its clients: a shared secret and TLS."""
    secret = tmp_path / "fedga.secret"
    secret.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")  # as the README does
    server = {"secret_file": str(secret), "tls_cert": str(certificates / "server.pem"),
              "tls_key": str(certificates / "server.key")}
    client = {"secret_file": str(secret), "tls_ca": str(certificates / "ca.pem")}
    return server, client


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

    def make(name="client1", data=None, **overrides) -> ClientController:
        config = ClientConfig(host="127.0.0.1", name=name, **overrides)
        controller = ClientController(config, CLIENT_DATA[name] if data is None else data,
                                      call_soon=main_thread.call_soon)
        controllers.append(controller)
        return controller

    yield make
    for controller in controllers:
        controller.shutdown()


def listen(server, port: str = "0", **texts: str) -> str:
    """Create, Bind and Listen with these security fields' texts; the port it listens on."""
    server.create()
    server.bind("127.0.0.1", port)
    server.listen(**texts)
    assert server.listener is not None, server.status
    return str(server.listener.server_address[1])


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


def test_client_reports_a_server_that_goes_away_for_good(make_client, main_thread):
    client = make_client(retries=1)
    statuses = record_statuses(client)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client.create()
        client.connect("127.0.0.1", str(port))
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
    # Nothing listens any more: the one reconnect attempt is refused.
    main_thread.run_until(lambda: client.status.startswith("Lost the server and gave up"))
    assert client.status == (f"Lost the server and gave up after 1 reconnect attempt "
                             f"(--retries). The server at 127.0.0.1:{port} is unreachable "
                             "(Connection refused).")
    assert "Lost the server; reconnecting (attempt 1 of 1)" in statuses
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


# ---- security fields ---------------------------------------------------------------------

def test_secret_and_tls_from_the_fields_train_to_done(make_server, make_client, main_thread,
                                                      client_factory, secured):
    server_texts, client_texts = secured
    server = make_server(seed=1)
    assert [(f.name, f.text) for f in server.security_fields()] == [
        ("secret_file", ""), ("tls_cert", ""), ("tls_key", "")]
    port = listen(server, **server_texts)
    assert server.status == (f"Socket is Listening for Connections on 127.0.0.1:{port} "
                             "(TLS, shared secret)")
    assert enabled(server) == {"close"} and server.settings_in_use  # the fields are locked

    client = make_client(seed=1, ga=GAConfig(num_generations=20))
    client.create()
    client.connect("127.0.0.1", port, **client_texts)
    assert client.settings_in_use
    main_thread.run_until(lambda: enabled(client) == {"train", "close"})
    assert client.status == "Successful Connection to the Server (TLS, shared secret)"
    client.train()
    # A headless client with the same settings, as its flags give them, on the same server.
    headless, events = client_factory(
        ("127.0.0.1", int(port)), name="client2", tls_ca=client_texts["tls_ca"],
        secret=security.load_secret(client_texts["secret_file"]))

    main_thread.run_until(lambda: server.view.summary.startswith("Training done")
                          and client.status.startswith("Training is done"))
    assert client.status == "Training is done: accuracy 1.00"
    assert events.wait_for(lambda e: e.kind == "done").accuracy == 1.0
    server.close()
    assert not server.settings_in_use


def test_the_flags_fill_the_fields_and_an_empty_secret_field_means_the_environment(
        make_server, secured, monkeypatch):
    server_texts, _ = secured
    tls = {name: server_texts[name] for name in ("tls_cert", "tls_key")}
    server = make_server(**tls)  # as --tls-cert and --tls-key fill the config
    fields = server.security_fields()
    assert {f.name: f.text for f in fields} == {"secret_file": "", **tls}
    assert [f.hint for f in fields] == ["empty: no secret", "empty: no TLS", "empty: no TLS"]
    monkeypatch.setenv(security.SECRET_ENV, "a secret of 16 bytes or more")
    assert server.security_fields()[0].hint == "empty: $FEDGA_SECRET"

    port = listen(server)  # the fields as the flags filled them
    assert server.status == (f"Socket is Listening for Connections on 127.0.0.1:{port} "
                             "(TLS, shared secret from $FEDGA_SECRET)")
    assert server.listener.config.secret == b"a secret of 16 bytes or more"


@pytest.mark.parametrize("mistake", ["missing secret file", "short secret",
                                     "certificate without key", "key of another certificate"])
def test_server_security_mistakes_are_a_status_and_listen_can_be_retried(
        make_server, certificates, tmp_path, mistake):
    missing, short = tmp_path / "missing.secret", tmp_path / "short.secret"
    short.write_text("too short\n")
    cert, other_key = certificates / "server.pem", certificates / "other.key"
    texts, status = {
        "missing secret file": ({"secret_file": str(missing)},
                                f"Cannot read the secret file {missing}: No such file or directory."),
        "short secret": ({"secret_file": str(short)},
                         f"The secret in the secret file {short} is shorter than 16 bytes."),
        "certificate without key": ({"tls_cert": str(cert)}, "The TLS certificate and the "
                                    "TLS key go together: give both or neither."),
        "key of another certificate": ({"tls_cert": str(cert), "tls_key": str(other_key)},
                                       f"Cannot use the TLS certificate {cert} with key "
                                       f"{other_key}: the key does not belong to the certificate."),
    }[mistake]
    server = make_server()
    server.create()
    server.bind("127.0.0.1", "0")
    server.listen(**texts)
    assert (server.status, enabled(server)) == (status, {"listen", "close"})
    assert server.listener is None and not server.settings_in_use

    server.listen(secret_file=" ", tls_cert="", tls_key="")  # the fields emptied: plain
    assert server.status.startswith("Socket is Listening for Connections on 127.0.0.1:")
    assert not server.status.endswith(")")


def test_client_security_mistakes_are_plain_statuses(make_server, make_client, main_thread,
                                                     secured, certificates, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    client = make_client()
    client.create()
    client.connect("127.0.0.1", "10000", tls_ca=str(junk))
    assert client.status == f"Cannot use the TLS CA file {junk}: it holds no certificate."
    assert enabled(client) == {"connect", "close"} and not client.settings_in_use

    # A CA that did not sign the server's certificate: the TLS handshake, which runs before
    # the first message, refuses the server, and that is not retried.
    server_texts, client_texts = secured
    port = listen(make_server(), **server_texts)
    statuses = record_statuses(client)
    client.connect("127.0.0.1", port, **client_texts | {"tls_ca": str(certificates / "other.pem")})
    main_thread.run_until(lambda: enabled(client) == {"train", "close"})
    client.train()
    main_thread.run_until(lambda: "TLS" in client.status and "handshake" in client.status)
    assert client.status == ("Could not talk to the server safely: TLS handshake failed: "
                             "CERTIFICATE_VERIFY_FAILED.")
    assert enabled(client) == {"close"}
    assert not any("reconnecting" in status for status in statuses)


# ---- reconnecting ------------------------------------------------------------------------

def _train_until_the_server_closes(server, client, main_thread, port, **texts) -> None:
    """Connect and train ``client`` until ``server`` accepted an update, then Close the server."""
    client.create()
    client.connect("127.0.0.1", port, **texts)
    main_thread.run_until(lambda: enabled(client) == {"train", "close"})
    client.train()
    main_thread.run_until(lambda: len(server.view.history) >= 2)  # mid-training
    server.close()


def test_client_reconnects_to_a_restarted_server_and_trains_to_done(make_server, make_client,
                                                                    main_thread, secured):
    server_texts, client_texts = secured
    first = make_server(seed=1, target_accuracy=2.0)  # never done: it trains until closed
    port = listen(first, **server_texts)
    # All four XOR samples: a lone client with half of them cannot be relied on to reach
    # accuracy 1.0 on the server's four, and training to done is what shows the reconnect.
    client = make_client(seed=1, data=XOR_TEST_DATA, ga=GAConfig(num_generations=20))
    statuses = record_statuses(client)
    _train_until_the_server_closes(first, client, main_thread, port, **client_texts)
    main_thread.run_until(lambda: client.status.startswith("Lost the server; reconnecting"))
    assert (client.status, enabled(client)) == ("Lost the server; reconnecting (attempt 1 of 10)",
                                                {"close"})

    second = make_server(seed=1)  # a new server on the same port, with the same settings
    listen(second, port, **server_texts)
    main_thread.run_until(lambda: client.status.startswith("Training is done"))
    assert client.status == "Training is done: accuracy 1.00"
    assert "Reconnected to the Server; waiting for its reply" in statuses
    main_thread.run_until(lambda: second.view.summary.startswith("Training done"))


def test_close_while_reconnecting_returns_promptly(make_server, make_client, main_thread):
    server = make_server(target_accuracy=2.0)
    client = make_client(ga=GAConfig(num_generations=20))
    _train_until_the_server_closes(server, client, main_thread, listen(server))
    # Attempt 3 waits 2 s before it connects (0.5 s doubling): Close must not wait that out.
    main_thread.run_until(lambda: client.status.endswith("(attempt 3 of 10)"))
    started = time.monotonic()
    client.close()
    client.thread.join(WAIT)
    assert time.monotonic() - started < 0.5
    assert client.thread.outcome == "stopped"
    main_thread.run_pending()  # what the thread reported last changes nothing
    assert (client.status, enabled(client)) == ("Socket Closed", {"create"})
