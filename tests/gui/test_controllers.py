"""The windows' state machines without a display: buttons, status texts, errors, and a whole
federated run through the same controllers the windows drive. Real loopback sockets."""

from __future__ import annotations

import base64
import csv
import logging
import os
import pickle
import queue
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest

import common  # noqa: F401  (the quiet TensorFlow environment first)
from common import datasets, security
from common.aggregate import AGGREGATIONS, EXCLUDED, SETTINGS
from common.app import build_global_model
from common.attacks import AttackConfig
from common.auto import AUTO
from common.cli import server_parser
from common.client import ClientConfig, ClientOutcome, RecvThread, connect
from common.data import CLIENT_DATA, XOR_TEST_DATA, second_field
from common.events import Outcome
from common.ga import GAConfig
from common.gui.client_controller import ClientController
from common.gui.client_view import NO_DATA
from common.gui.controller import INITIAL_STATUS
from common.gui.server_controller import ServerController
from common.gui.server_view import ClientRow, RowState, rows_shown
from common.gui.setup_fields import parse_texts
from common.model import load_keras, xor_model_json
from common.server_config import ServerConfig

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


def client_state(server, peer: str) -> str | None:
    row = server.view.clients.get(peer)
    return None if row is None else row.state


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
    server = {
        "secret_file": str(secret),
        "tls_cert": str(certificates / "server.pem"),
        "tls_key": str(certificates / "server.key"),
    }
    client = {"secret_file": str(secret), "tls_ca": str(certificates / "ca.pem")}
    return server, client


@pytest.fixture
def make_server(main_thread):
    controllers = []

    def make(**overrides) -> ServerController:
        config = ServerConfig.of(host="127.0.0.1", port=0, **overrides)
        controller = ServerController(config, build_global_model, call_soon=main_thread.call_soon)
        controller.main_thread = main_thread  # for wait_listening
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
        controller = ClientController(
            config, CLIENT_DATA.get(name) if data is None else data, call_soon=main_thread.call_soon
        )
        controllers.append(controller)
        return controller

    yield make
    for controller in controllers:
        controller.shutdown()


def listen(server, port: str = "0", **texts: str) -> str:
    """Create, Bind and Listen with these fields' texts; the port it listens on."""
    server.create()
    server.bind("127.0.0.1", port)
    wait_listening(server, **texts)
    assert server.listener is not None, server.status
    return str(server.listener.server_address[1])


def wait_listening(server, **texts: str) -> None:
    """Click Listen and wait until the model is built and the socket listens, or it failed."""
    server.listen(**texts)
    server.main_thread.run_until(lambda: server.status != "Building the model ...")


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
    assert (server.status, enabled(server)) == (
        "Socket Bound to IPv4 & Port Number",
        {"listen", "close"},
    )
    wait_listening(server)
    assert server.status.startswith("Socket is Listening for Connections on 127.0.0.1:")
    assert enabled(server) == {"close"}

    host, port = server.listener.server_address
    with socket.create_connection((host, port), timeout=WAIT) as client:
        peer = "%s:%d" % client.getsockname()[:2]
        main_thread.run_until(lambda: client_state(server, peer) == "connected")
        server.close()
        assert (server.status, enabled(server)) == ("Socket Closed", {"create"})
        assert client.recv(1) == b""  # Close Socket closed the client's connection too
    main_thread.run_until(lambda: client_state(server, peer) == "disconnected")

    server.create()  # the tutorial lets the steps start over
    assert enabled(server) == {"bind", "close"}


def test_a_dropped_clients_row_says_why(make_server, main_thread):
    server = make_server()
    port = int(listen(server))
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        peer = "%s:%d" % client.getsockname()[:2]
        client.sendall(pickle.dumps([1]))  # not the tutorial's dict: the server drops it
        assert client.recv(1) == b""
    main_thread.run_until(lambda: client_state(server, peer) == RowState.DISCONNECTED)
    row = server.view.clients[peer]
    assert row.reason == "message is a list, not a dict"
    assert server.view.cells(row)[-1] == "disconnected: message is a list, not a dict"


@pytest.mark.parametrize(
    "port, reason",
    [
        ("ten", "Cannot bind: 'ten' is not a port number."),
        ("70000", "Cannot bind: port 70000 is outside 0-65535."),
        ("", "Cannot bind: '' is not a port number."),
    ],
)
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


def test_client_unreachable_server_is_a_status_and_connect_can_be_retried(make_client, main_thread):
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
        f"Error Connecting to the Server: The server at 127.0.0.1:{port} is unreachable"
    )
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
        assert (client.status, enabled(client)) == (
            "Receiving the Model from the Server",
            {"close"},
        )
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
    assert client.status == (
        f"Lost the server and gave up after 1 reconnect attempt "
        f"(--retries). The server at 127.0.0.1:{port} is unreachable "
        "(Connection refused)."
    )
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
    port = listen(server)
    clients = [
        make_client(name, seed=1, ga=GAConfig(num_generations=20))
        for name in ("client1", "client2")
    ]
    for client in clients:
        client.create()
        client.connect("127.0.0.1", port)
    main_thread.run_until(lambda: all(enabled(c) == {"train", "close"} for c in clients))
    for client in clients:
        client.train()

    main_thread.run_until(
        lambda: (
            server.view.summary.startswith("Training done")
            and all(c.status.startswith("Training is done") for c in clients)
        )
    )
    assert server.view.history[-1][1] == 1.0
    assert server.view.summary.startswith("Training done: global accuracy 1.00 after")
    assert [client.status for client in clients] == ["Training is done: accuracy 1.00"] * 2
    for client in clients:
        view = client.view
        assert view.round is not None and view.best_fitness is not None
        # The round ran the server's generations (its GA settings win over the client's 20);
        # the last one said how many ran, and whether the GA stopped before them.
        assert view.generations == GAConfig().num_generations
        assert 0 < view.generation <= view.generations
        assert view.ended_early == (view.generation < view.generations)
    main_thread.run_until(
        lambda: (
            len(server.view.clients) == 2
            and all(row.state.startswith("done") for row in server.view.clients.values())
        )
    )


def test_a_client_window_says_why_its_round_waits(make_server, make_client, main_thread):
    server = make_server(
        seed=1, aggregation="fedavg", min_clients=2, round_timeout=60, notice_interval=0.2
    )
    port = listen(server)
    client = make_client(seed=1)
    client.create()
    client.connect("127.0.0.1", port)
    main_thread.run_until(lambda: enabled(client) == {"train", "close"})
    client.train()
    main_thread.run_until(lambda: client.status.startswith("Round 1: waiting"))
    assert re.fullmatch(r"Round 1: waiting for 1 more client \(at most \d+ s\)", client.status)
    assert enabled(client) == {"close"}
    server.stop_training()  # the round is dropped and the client told done, and why
    main_thread.run_until(
        lambda: client.status.startswith("The server's training was stopped by request")
    )


# ---- security fields ---------------------------------------------------------------------


def test_secret_and_tls_from_the_fields_train_to_done(
    make_server, make_client, main_thread, client_factory, secured
):
    server_texts, client_texts = secured
    server = make_server(seed=1)
    assert [(f.name, f.text) for f in server.security_fields()] == [
        ("secret_file", ""),
        ("tls_cert", ""),
        ("tls_key", ""),
    ]
    port = listen(server, **server_texts)
    assert server.status == (
        f"Socket is Listening for Connections on 127.0.0.1:{port} (TLS, shared secret)"
    )
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
        ("127.0.0.1", int(port)),
        name="client2",
        tls_ca=client_texts["tls_ca"],
        secret=security.load_secret(client_texts["secret_file"]),
    )

    main_thread.run_until(
        lambda: (
            server.view.summary.startswith("Training done")
            and client.status.startswith("Training is done")
        )
    )
    assert client.status == "Training is done: accuracy 1.00"
    assert events.wait_for(lambda e: e.kind == "done").accuracy == 1.0
    server.close()
    assert not server.settings_in_use


def test_the_flags_fill_the_fields_and_an_empty_secret_field_means_the_environment(
    make_server, secured, monkeypatch
):
    server_texts, _ = secured
    tls = {name: server_texts[name] for name in ("tls_cert", "tls_key")}
    server = make_server(**tls)  # as --tls-cert and --tls-key fill the config
    fields = server.security_fields()
    assert {f.name: f.text for f in fields} == {"secret_file": "", **tls}
    assert [f.hint for f in fields] == ["empty: no secret", "empty: no TLS", "empty: no TLS"]
    monkeypatch.setenv(security.SECRET_ENV, "a secret of 16 bytes or more")
    assert server.security_fields()[0].hint == "empty: $FEDGA_SECRET"

    port = listen(server)  # the fields as the flags filled them
    assert server.status == (
        f"Socket is Listening for Connections on 127.0.0.1:{port} "
        "(TLS, shared secret from $FEDGA_SECRET)"
    )
    assert server.listener.config.security.secret == b"a secret of 16 bytes or more"


@pytest.mark.parametrize(
    "mistake",
    [
        "missing secret file",
        "short secret",
        "certificate without key",
        "key of another certificate",
    ],
)
def test_server_security_mistakes_are_a_status_and_listen_can_be_retried(
    make_server, certificates, tmp_path, mistake
):
    missing, short = tmp_path / "missing.secret", tmp_path / "short.secret"
    short.write_text("too short\n")
    cert, other_key = certificates / "server.pem", certificates / "other.key"
    texts, status = {
        "missing secret file": (
            {"secret_file": str(missing)},
            f"Cannot read the secret file {missing}: No such file or directory.",
        ),
        "short secret": (
            {"secret_file": str(short)},
            f"The secret in the secret file {short} is shorter than 16 bytes.",
        ),
        "certificate without key": (
            {"tls_cert": str(cert)},
            "The TLS certificate and the TLS key go together: give both or neither.",
        ),
        "key of another certificate": (
            {"tls_cert": str(cert), "tls_key": str(other_key)},
            f"Cannot use the TLS certificate {cert} with key "
            f"{other_key}: the key does not belong to the certificate.",
        ),
    }[mistake]
    server = make_server()
    server.create()
    server.bind("127.0.0.1", "0")
    server.listen(**texts)
    assert (server.status, enabled(server)) == (status, {"listen", "close"})
    assert server.listener is None and not server.settings_in_use

    wait_listening(server, secret_file=" ", tls_cert="", tls_key="")  # emptied: plain
    assert server.status.startswith("Socket is Listening for Connections on 127.0.0.1:")
    assert not server.status.endswith(")")


def test_client_security_mistakes_are_plain_statuses(
    make_server, make_client, main_thread, secured, certificates, tmp_path
):
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
    assert client.status == (
        "Could not talk to the server safely: TLS handshake failed: CERTIFICATE_VERIFY_FAILED."
    )
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


def test_client_reconnects_to_a_restarted_server_and_trains_to_done(
    make_server, make_client, main_thread, secured
):
    server_texts, client_texts = secured
    first = make_server(seed=1, target_accuracy=2.0)  # never done: it trains until closed
    port = listen(first, **server_texts)
    # All four XOR samples: a lone client with half of them cannot be relied on to reach
    # accuracy 1.0 on the server's four, and training to done is what shows the reconnect.
    client = make_client(seed=1, data=XOR_TEST_DATA, ga=GAConfig(num_generations=20))
    statuses = record_statuses(client)
    _train_until_the_server_closes(first, client, main_thread, port, **client_texts)
    main_thread.run_until(lambda: client.status.startswith("Lost the server; reconnecting"))
    assert (client.status, enabled(client)) == (
        "Lost the server; reconnecting (attempt 1 of 10)",
        {"close"},
    )

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
    assert client.thread.outcome is ClientOutcome.STOPPED
    main_thread.run_pending()  # what the thread reported last changes nothing
    assert (client.status, enabled(client)) == ("Socket Closed", {"create"})


# ---- the client's data row ---------------------------------------------------------------


@pytest.fixture
def iris(tmp_path):
    """scikit-learn's iris split as the README makes it: two client files, a test set, a model."""
    out = tmp_path / "iris"
    assert datasets.main(["iris", "--clients", "2", "--out", str(out), "--seed", "1"]) == 0
    return out


def test_a_client_without_data_opens_empty_and_will_not_train_without_it(make_client):
    client = make_client("client", data=None)
    assert client.view.data == NO_DATA and client.data is None
    client.create()
    client.train()
    assert client.status == "Choose this client's data file before training (Browse)."
    assert enabled(client) == {"connect", "close"}  # the steps carry on as they were
    client.load_data("  ")
    assert client.status.startswith("Choose a data file: .npz, .npy")


def test_the_data_row_loads_each_kind_of_file_and_says_what_it_holds(
    make_client, main_thread, tmp_path
):
    inputs = np.array([[0, 1], [1, 1], [1, 0], [2, 2], [3, 3]], dtype=np.float32)
    labels = np.array([0, 1, 1, 2, 1])
    with open(tmp_path / "x.NPY", "wb") as handle:  # np.save would add ".npy"
        np.save(handle, inputs)
    np.save(tmp_path / "y.npy", labels)
    (tmp_path / "d.csv").write_text(
        "a,b,label\n" + "".join(f"{a:g},{b:g},{y}\n" for (a, b), y in zip(inputs, labels))
    )
    client = make_client("client", data=None)
    assert [second_field(name) for name in ("d.npz", "x.NPY", " d.csv ", "d.txt")] == [
        None,
        "labels",
        "label_column",
        None,
    ]  # which field the data row shows beside

    client.load_data(str(tmp_path / "x.NPY"))  # no labels file yet: a hint, not an error
    assert client.view.data == f"{tmp_path / 'x.NPY'}: now give its labels file (.npy)"
    client.load_data(str(tmp_path / "x.NPY"), labels=str(tmp_path / "none.npy"))
    main_thread.run_until(lambda: client.status != INITIAL_STATUS)
    assert client.status == f"The labels file {tmp_path / 'none.npy'} does not exist."
    assert client.data is None
    described = "5 samples, 2 features, classes 0: 1, 1: 3, 2: 1"
    for path, extra in (
        ("x.NPY", {"labels": str(tmp_path / "y.npy")}),
        ("d.csv", {"label_column": "label"}),
    ):
        client.load_data(str(tmp_path / path), **extra)
        main_thread.run_until(lambda: client.view.data == f"{path}: {described}")
        assert client.status == INITIAL_STATUS  # the error shown before is gone
    # A field that does not apply to the file is not read: a .csv ignores a labels file.
    client.load_data(str(tmp_path / "d.csv"), labels="ignored.npy", label_column="2")
    main_thread.run_until(
        lambda: (
            main_thread.queue.empty()
            and client._loader is not None
            and not client._loader.is_alive()
        )
    )
    main_thread.run_pending()
    assert client.view.data == f"d.csv: {described}"


def test_a_file_that_does_not_fit_the_model_is_a_status_and_a_corrected_one_trains(
    make_server, make_client, main_thread, tmp_path
):
    """The server trains XOR (two features); the client's first file has three."""
    np.savez(
        tmp_path / "wide.npz", inputs=np.ones((4, 3), np.float32), outputs=XOR_TEST_DATA.outputs
    )
    np.savez(tmp_path / "xor.npz", inputs=XOR_TEST_DATA.inputs, outputs=XOR_TEST_DATA.outputs)
    port = listen(make_server(seed=1))
    client = make_client("client", data=None, seed=1, ga=GAConfig(num_generations=20))
    for path, outcome in (("wide.npz", "inputs have shape"), ("xor.npz", "Training is done")):
        client.load_data(str(tmp_path / path))
        main_thread.run_until(lambda: client.view.data.startswith(path))
        client.create()
        client.connect("127.0.0.1", port)
        main_thread.run_until(lambda: enabled(client) == {"train", "close"})
        client.train()
        assert client.data_in_use  # the data row is locked while training reads it
        main_thread.run_until(lambda: outcome in client.status)
        if path == "wide.npz":
            assert client.status == (
                f"{tmp_path / 'wide.npz'}: inputs have shape (4, 3), but "
                "the model expects (samples, 2)."
            )
            assert enabled(client) == {"close"}
            client.close()
            assert not client.data_in_use
    assert client.status == "Training is done: accuracy 1.00"
    assert client.view.losses and all(loss > 0 for _, loss in client.view.losses)
    generations = [generation for generation, _ in client.view.losses]
    assert generations == sorted(generations)  # the current round's, in order


# ---- the server's setup fields -------------------------------------------------------------


def test_the_aggregation_choices_are_the_one_list_the_flag_reads(make_server):
    spinner = {f.name: f for f in make_server().setup_fields()}["aggregation"]
    flag = next(a for a in server_parser()._actions if a.dest == "aggregation")
    assert spinner.choices == tuple(flag.choices) == tuple(AGGREGATIONS)
    assert spinner.text == "running-best"


def test_setup_fields_are_filled_from_the_flags_and_show_when_they_apply(make_server):
    server = make_server(
        test_data="t.csv",
        test_label_column="y",
        target_accuracy=0.9,
        patience=5,
        num_generations=30,
        aggregation="fedavg",
    )
    texts = {f.name: f.text for f in server.setup_fields()}
    assert texts == {
        "model": "",
        "test_data": "t.csv",
        "test_labels": "",
        "test_label_column": "y",
        "target_accuracy": "0.9",
        "federation": "weights",
        "aggregation": "fedavg",
        "secure_aggregation": "off",
        "secagg_threshold": "",  # two thirds of each secure round's clients
        "server_learning_rate": "",  # the rule's own
        "server_momentum": "",
        "beta1": "",
        "beta2": "",
        "tau": "",
        "byzantine": "",
        "clip_norm": "",
        "max_claimed_samples": "",
        "min_clients": "",  # 2, or 3 with secure aggregation
        "patience": "5",
        "step_patience": "",  # left to the model
        "num_generations": "30",
        "num_parents_mating": "4",
        "mutation_percent_genes": "5",
        "operators": "scaled",
        "mutation_step": "0.3",
        "stop_fitness": "",
    }
    shown = {name for name in texts if server.applies(name, texts)}
    assert {"test_label_column", "min_clients"} <= shown and "test_labels" not in shown
    texts |= {"test_data": "t.NPY", "aggregation": "running-average"}
    shown = {name for name in texts if server.applies(name, texts)}
    assert "test_labels" in shown and not {"test_label_column", "min_clients"} & shown
    texts |= {"federation": "fitness"}  # the aggregation is weights mode's; min clients not
    shown = {name for name in texts if server.applies(name, texts)}
    assert "min_clients" in shown and "aggregation" not in shown
    assert "secagg_threshold" not in shown  # secure aggregation is off


def test_the_secure_aggregation_switch_greys_what_cannot_run_with_it(make_server):
    server = make_server(
        secure_aggregation=True, aggregation="fedadam", min_clients=4, secagg_threshold=3
    )
    fields = {f.name: f for f in server.setup_fields()}
    assert (fields["secure_aggregation"].caption, fields["secure_aggregation"].choices) == (
        "Secure aggregation",
        ("off", "on"),
    )
    texts = {name: spec.text for name, spec in fields.items()}
    assert (texts["secure_aggregation"], texts["secagg_threshold"]) == ("on", "3")
    for aggregation in ("fedavg", "norm-bounded", "trimmed-mean", "running-best"):
        texts["aggregation"] = aggregation
        shown = {name for name in texts if server.applies(name, texts)}
        assert {"secagg_threshold", "min_clients", "aggregation"} <= shown
        # Updates and their counts are masked: no setting that must see them on their own.
        assert not {"byzantine", "clip_norm", "max_claimed_samples"} & shown
    texts |= {"secure_aggregation": "off", "aggregation": "norm-bounded"}
    shown = {name for name in texts if server.applies(name, texts)}
    assert {"clip_norm", "max_claimed_samples"} <= shown and "secagg_threshold" not in shown


def test_turning_secure_aggregation_on_chooses_its_defaults_unless_given(make_server):
    server = make_server()  # no flags: running-best, and min clients left empty (AUTO)
    texts = {f.name: f.text for f in server.setup_fields()}
    assert (texts["aggregation"], texts["min_clients"]) == ("running-best", "")
    assert server.follows("secure_aggregation", texts) == {}  # off
    texts["secure_aggregation"] = "on"
    assert server.follows("secure_aggregation", texts) == {"aggregation": "fedavg"}
    texts |= {"aggregation": "fedyogi"}  # chosen: kept
    assert server.follows("secure_aggregation", texts) == {}
    assert server.follows("aggregation", texts) == {}
    # The empty min clients is resolved at Listen: 3 with secure aggregation, 2 without.
    assert parse_texts({"min_clients": ""}) == {"min_clients": AUTO}
    for secure, min_clients in ((True, 3), (False, 2)):
        training = ServerConfig.of(secure_aggregation=secure, min_clients=AUTO).training
        assert training.resolved().min_clients == min_clients


def test_secure_aggregation_from_the_fields_reaches_the_server(make_server, main_thread):
    server = make_server(max_claimed_samples=100.0)  # as flags would: greyed, then not used
    listen(
        server,
        secure_aggregation="on",
        aggregation="fedavg",
        min_clients="4",
        secagg_threshold="3",
    )
    training = server.config.training
    assert (training.secure_aggregation, training.secagg_threshold) == (True, 3)
    assert training.max_claimed_samples is AUTO
    assert server.global_model.secure_aggregation and server.view.secure
    assert server.view.note == "secure aggregation: the server sees only each round's sum"
    server.close()
    listen(server, secure_aggregation="off", secagg_threshold="3")  # greyed when off
    assert server.config.training.secagg_threshold is AUTO and server.view.note == ""


def test_the_federation_choices_are_the_flags_and_reach_the_server(make_server, main_thread):
    server = make_server()
    spinner = {f.name: f for f in server.setup_fields()}["federation"]
    flag = next(a for a in server_parser()._actions if a.dest == "federation")
    assert spinner.choices == tuple(flag.choices) == ("weights", "fitness")
    assert spinner.text == "weights"
    server.create()
    server.bind("127.0.0.1", "0")
    wait_listening(server, federation="fitness", byzantine="1", min_clients="3")
    assert server.listener.federation.byzantine == 1  # fitness mode's, whatever the rule


def test_an_aggregations_settings_show_for_the_rules_that_take_them(make_server):
    server = make_server(aggregation="fedyogi", tau=0.01)
    texts = {f.name: f.text for f in server.setup_fields()}
    assert (texts["tau"], texts["beta1"]) == ("0.01", "")
    settings = tuple(SETTINGS)
    cap = "max_claimed_samples"
    for aggregation, expected in [
        ("fedavg", {cap}),
        ("running-best", set()),
        ("median", set()),
        ("trimmed-mean", {"byzantine"}),
        ("krum", {"byzantine"}),
        ("multi-krum", {"byzantine"}),
        ("norm-bounded", {"clip_norm", cap}),
        ("fedavgm", {"server_learning_rate", "server_momentum", cap}),
        ("fedadam", {"server_learning_rate", "beta1", "beta2", "tau", cap}),
        ("fedyogi", {"server_learning_rate", "beta1", "beta2", "tau", cap}),
    ]:
        texts["aggregation"] = aggregation
        assert {name for name in settings if server.applies(name, texts)} == expected


def test_the_aggregations_settings_reach_its_rule_and_greyed_ones_are_left_out(
    make_server, main_thread
):
    server = make_server(aggregation="fedavgm", server_momentum=0.5)  # as flags would
    listen(
        server,
        aggregation="fedadam",
        server_learning_rate="0.05",
        server_momentum="0.5",  # greyed out for fedadam: not used
        beta1="",  # the rule's own
        beta2="0.9",
        tau="",
        min_clients="1",
    )
    rule = server.global_model.aggregation
    assert str(rule) == (
        "fedadam (server-learning-rate=0.05, beta1=0.9, beta2=0.9, tau=0.001, "
        "max-claimed-samples=3x the round's median claim)"
    )


@pytest.mark.parametrize(
    "texts, expected",
    [
        (
            {"aggregation": "norm-bounded", "clip_norm": "2", "max_claimed_samples": ""},
            "norm-bounded (clip-norm=2, max-claimed-samples=3x the round's median claim)",
        ),
        ({"aggregation": "krum", "byzantine": "0", "min_clients": "3"}, "krum (byzantine=0)"),
    ],
)
def test_the_defences_settings_reach_their_rule(make_server, main_thread, texts, expected):
    server = make_server()
    listen(server, **({"min_clients": "1"} | texts))
    assert str(server.global_model.aggregation) == expected


@pytest.mark.parametrize(
    "flags, texts, expected",
    [
        # empty: the tutorial XOR model's
        ({}, {"stop_fitness": "", "step_patience": ""}, (10.0, 0)),
        ({}, {"stop_fitness": "0", "step_patience": "4"}, (0.0, 4)),
        # emptied: left to the model, whatever the flags gave
        ({"stop_fitness": 5.0}, {"stop_fitness": "", "step_patience": ""}, (10.0, 0)),
        ({"stop_fitness": 5.0}, {}, (5.0, 0)),  # not read: the flags' value
        # test data of one's own: real data's (common.ga.REAL_DATA)
        ({}, {"test_data": "TEST", "stop_fitness": "", "step_patience": ""}, (0.0, 3)),
    ],
)
def test_the_settings_left_to_the_model_are_fields_too(
    make_server, main_thread, tmp_path, caplog, flags, texts, expected
):
    xor = tmp_path / "xor.npz"
    np.savez(xor, inputs=XOR_TEST_DATA.inputs, outputs=XOR_TEST_DATA.outputs)
    texts = {name: str(xor) if text == "TEST" else text for name, text in texts.items()}
    server = make_server(**flags)
    shown = {f.name: f.text for f in server.setup_fields()}
    assert (shown["stop_fitness"], shown["step_patience"]) == ("5" if flags else "", "")
    server.create()
    server.bind("127.0.0.1", "0")
    with caplog.at_level(logging.INFO):
        wait_listening(server, **texts)
    ga = server.global_model.ga
    assert (ga.stop_fitness, ga.step_patience) == expected
    stop_fitness, step_patience = expected
    assert f"stop-fitness={stop_fitness:g}, " in caplog.text  # the summary, resolved
    assert f"step-patience={step_patience}" in caplog.text


@pytest.mark.parametrize(
    "texts, status",
    [
        ({"target_accuracy": "high"}, "Target accuracy: 'high' is not a number."),
        ({"stop_fitness": "-1"}, "Stop fitness: -1 must be 0 or more."),
        ({"min_clients": "0"}, "Min clients: 0 must be greater than 0."),
        (
            {"aggregation": "fedavgm", "server_momentum": "-1"},
            "server-momentum must be at least 0 and below 1, not -1.",
        ),
        (
            {"aggregation": "norm-bounded", "clip_norm": "-1"},
            "clip-norm must be greater than 0, not -1.",
        ),
        ({"aggregation": "krum", "byzantine": "one"}, "Byzantine: 'one' is not a whole number."),
        (
            {"aggregation": "krum", "byzantine": "1", "min_clients": "4"},
            "With min-clients 4, krum cannot tolerate 1 attacker with 4 updates: it needs more "
            "than 2F + 2 = 4.",
        ),
        ({"aggregation": "fedadam", "beta1": "1"}, "beta1 must be at least 0 and below 1, not 1."),
        (
            {"secure_aggregation": "on", "aggregation": "median", "min_clients": "3"},
            "Secure aggregation shows the server only each round's sum, so it cannot run the "
            "median aggregation, which must see each update: choose fedavg, fedavgm, fedadam "
            "or fedyogi.",
        ),
        (
            {"secure_aggregation": "on", "aggregation": "fedavg", "min_clients": "2"},
            "Secure aggregation needs --min-clients of at least 3 (of two clients, each could "
            "read the other's update from the sum), not 2.",
        ),
        (
            {"secure_aggregation": "on", "secagg_threshold": "three"},
            "Secagg threshold: 'three' is not a whole number.",
        ),
        (
            {
                "secure_aggregation": "on",
                "aggregation": "fedavg",
                "min_clients": "4",
                "secagg_threshold": "2",
            },
            "The secure aggregation threshold must be at least 2, above half the 4 clients "
            "and at most 4, not 2.",
        ),
        (
            {"federation": "fitness", "byzantine": "1", "min_clients": "2"},
            "Fitness mode with --byzantine 1 needs --min-clients of at least 3, not 2: its "
            "scores drop 1 per side of every member's ranks.",
        ),
        (
            {"model": "missing.json", "test_data": "missing.npz"},
            "The data file missing.npz does not exist.",
        ),
        (
            {"model": "model.json"},
            "The model in model.json needs its own test set: add --test-data FILE.",
        ),
        (
            {"model": "bad.json", "test_data": "xor.npz"},
            "The model in bad.json is not one fedga trains: model_json is not a Functional or "
            "Sequential model.",
        ),
        (
            {"model": "model.json", "test_data": "wide.npz"},
            "wide.npz: outputs have shape (4, 5), but the model expects (samples, 2).",
        ),
    ],
)
def test_a_setup_mistake_is_a_status_before_any_client_is_served(
    make_server, main_thread, tmp_path, monkeypatch, texts, status
):
    monkeypatch.chdir(tmp_path)
    np.savez("xor.npz", inputs=XOR_TEST_DATA.inputs, outputs=XOR_TEST_DATA.outputs)
    np.savez("wide.npz", inputs=XOR_TEST_DATA.inputs, outputs=np.ones((4, 5), np.float32))
    Path("bad.json").write_text('{"class_name": "Lambda"}')
    Path("model.json").write_text(xor_model_json())
    server = make_server()
    server.create()
    server.bind("127.0.0.1", "0")
    port = server.socket.getsockname()[1]
    wait_listening(server, **texts)
    assert (server.status, enabled(server)) == (status, {"listen", "close"})
    assert server.listener is None and not server.settings_in_use
    with pytest.raises(ConnectionRefusedError):  # bound, never listening: nobody was served
        socket.create_connection(("127.0.0.1", port), timeout=WAIT).close()
    wait_listening(server, model="", test_data="", target_accuracy="1")  # corrected
    assert server.status.startswith("Socket is Listening")
    assert server.view.model == "The tutorial's XOR model (2 features -> 2 outputs, 22 parameters)"


def test_a_run_on_real_data_from_the_fields_then_the_three_saves(
    make_server, make_client, main_thread, iris, tmp_path
):
    # Keras first, here: on a busy machine its import alone can outlast a wait below.
    keras = load_keras()
    server = make_server(seed=1)
    port = listen(
        server,
        test_data=str(iris / "server_test.npz"),
        aggregation="fedavg",
        min_clients="2",
        target_accuracy="0.9",
        num_generations="30",
    )
    assert server.settings_in_use  # every field is locked while the server listens
    assert server.view.model == (
        "No model file: a default Dense model sized to the test data "
        "(4 features -> 3 outputs, 131 parameters)"
    )
    assert server.actions == {
        "stop": True,
        "save_model": False,
        "save_history": False,
        "save_plot": False,
    }
    clients = [make_client(f"site{n}", data=None, seed=n) for n in (1, 2)]
    for n, client in enumerate(clients, 1):
        client.load_data(str(iris / f"client_{n}.npz"))
        client.create()
        client.connect("127.0.0.1", port)
    main_thread.run_until(
        lambda: all(enabled(c) == {"train", "close"} and c.data is not None for c in clients)
    )
    for n, client in enumerate(clients, 1):
        assert re.fullmatch(
            rf"client_{n}.npz: \d+ samples, 4 features, classes "
            r"0: \d+, 1: \d+, 2: \d+",
            client.view.data,
        ), client.view.data
        client.train()
    main_thread.run_until(lambda: server.view.summary.startswith("Training done"))
    model = server.global_model
    assert server.view.best_round == model.best.round and model.best.accuracy >= 0.9
    rows = {row.name: row for row in server.view.clients.values()}
    assert sorted(rows) == ["site1", "site2"]
    for n, row in enumerate((rows["site1"], rows["site2"]), 1):
        assert row.samples == len(clients[n - 1].data)  # as the client reported it
        assert row.round == model.round and 0 <= row.accuracy <= 1  # scored in its round
    main_thread.run_until(lambda: all(row.state.startswith("done") for row in rows.values()))
    assert server.actions == {
        "stop": False,
        "save_model": True,
        "save_history": True,
        "save_plot": True,
    }

    for kind, name in (("model", "best"), ("history", "history.csv"), ("plot", "history.png")):
        server.save(kind, str(tmp_path / name))
        assert not any(server.actions.values())  # one save at a time
        main_thread.run_until(lambda: not server.status.startswith("Saving"))
        assert server.status.startswith("Saved ") and server.actions["save_model"]
        if kind == "model":
            best = model.best
            assert server.status == (
                f"Saved the best model (round {best.round}, accuracy "
                f"{best.accuracy:.4f}) to {tmp_path / 'best.keras'}"
            )
    saved = keras.saving.load_model(tmp_path / "best.keras")  # the suffix was added
    test = np.load(iris / "server_test.npz")
    scored = np.mean(
        np.argmax(saved.predict(test["inputs"], verbose=0), axis=1)
        == np.argmax(test["outputs"], axis=1)
    )
    assert scored == pytest.approx(model.best.accuracy)
    with open(tmp_path / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["round"]) for row in rows] == list(range(1, model.round + 1))
    assert (tmp_path / "history.png").read_bytes()[:4] == b"\x89PNG"
    server.save("history", str(tmp_path / "no such folder" / "h.csv"))
    main_thread.run_until(lambda: not server.status.startswith("Saving"))
    assert server.status == (
        f"Cannot save the history to {tmp_path / 'no such folder' / 'h.csv'}"
        ": No such file or directory."
    )


def test_stop_training_answers_clients_done_and_keeps_the_best(
    make_server, make_client, main_thread
):
    server = make_server(seed=1, target_accuracy=2.0)  # never done: it trains until stopped
    port = listen(server, aggregation="fedavg", min_clients="1")
    client = make_client(seed=1, ga=GAConfig(num_generations=10))
    client.create()
    client.connect("127.0.0.1", port)
    main_thread.run_until(lambda: enabled(client) == {"train", "close"})
    client.train()
    main_thread.run_until(lambda: len(server.view.history) >= 3)
    server.stop_training()
    main_thread.run_until(
        lambda: (
            server.view.summary.startswith("Stopped")
            and client.status.startswith("The server's training was stopped")
        )
    )
    model = server.global_model
    assert model.outcome is Outcome.STOPPED
    assert server.view.summary == (
        f"Stopped after {model.round} rounds: best global accuracy {model.best.accuracy:.2f}"
    )
    # the client says how training ended, not that it is done
    assert client.status == (
        f"The server's training was stopped by request: accuracy {model.accuracy:.2f}"
    )
    assert server.actions == {
        "stop": False,
        "save_model": True,
        "save_history": True,
        "save_plot": True,
    }
    assert enabled(server) == {"close"}  # still listening: late clients are told done


def test_close_then_listen_builds_the_model_anew_from_the_fields(make_server, main_thread):
    server = make_server(seed=1)
    listen(server)
    first = server.global_model
    server.close()
    assert not server.settings_in_use and server.global_model is first  # kept, to be saved
    listen(server, target_accuracy="0.75", patience="3")
    assert server.global_model is not first
    assert (server.global_model.target_accuracy, server.global_model.patience) == (0.75, 3)


def test_the_client_table_marks_a_client_whose_updates_the_rule_cuts(
    make_server, main_thread, iris_split, caplog
):
    """Multi-krum leaves out the update furthest from the others each round: an attacker's
    every time, so its row says what the rule did and turns suspicious; the honest ones not."""
    test_file, parts = iris_split
    server = make_server(
        test_data=test_file,
        aggregation="multi-krum",
        min_clients=5,
        round_timeout=60.0,
        max_rounds=8,
        target_accuracy=2.0,
        seed=1,
    )
    port = int(listen(server))
    attacker = ClientConfig(
        host="127.0.0.1", port=port, name="attacker", seed=5, attack=AttackConfig("noise")
    )
    configs = [
        ClientConfig(host="127.0.0.1", port=port, name=f"honest{n}", seed=n) for n in (1, 2, 3, 4)
    ]
    threads = [
        RecvThread(
            config.buffer_size,
            config.recv_timeout,
            sock=connect("127.0.0.1", port, timeout=10),
            data=data,
            config=config,
        )
        for config, data in zip([*configs, attacker], parts)
    ]
    for thread in threads:
        thread.start()
    try:
        main_thread.run_until(lambda: server.view.summary.startswith("Gave up"))
    finally:
        for thread in threads:
            thread.stop()
            thread.join(10)
    rows = {row.name: row for row in server.view.clients.values()}
    assert rows["attacker"].suspicious and rows["attacker"].verdict.startswith("excluded")
    honest = [rows[f"honest{n}"] for n in (1, 2, 3, 4)]
    assert not any(row.suspicious for row in honest)
    assert all(row.verdict.startswith("used") for row in honest)
    assert "client attacker looks suspicious: 6 of its last 6 updates excluded" in caplog.text


def test_a_full_client_table_keeps_the_suspicious_rows_and_then_the_newest():
    rows = [ClientRow(f"c{n}") for n in range(8)]
    for _ in range(6):
        rows[1].actions.append(EXCLUDED)
    assert [row.name for row in rows_shown(rows, 4)] == ["c1", "c5", "c6", "c7"]
    assert [row.name for row in rows_shown(rows[:3], 4)] == ["c0", "c1", "c2"]


def test_a_secure_run_through_the_window_controllers_shows_only_the_rounds_sums(
    make_server, make_client, main_thread
):
    """XOR with the secure aggregation switch turned on (its defaults follow: fedavg, min
    clients 3): two clients first, for whom the round waits, then a third. The Training tab
    says what the server sees; the client table that each client's own count and accuracy
    are masked, marking no one; each client that its update goes masked."""
    server = make_server(seed=1, round_timeout=2.0)
    texts = {f.name: f.text for f in server.setup_fields()} | {"secure_aggregation": "on"}
    port = listen(server, **(texts | server.follows("secure_aggregation", texts)))
    training = server.config.training.resolved()
    assert (training.aggregation, training.min_clients) == ("fedavg", 3)
    assert server.view.note == "secure aggregation: the server sees only each round's sum"
    summaries: list[str] = []
    server.on_change = lambda: summaries.append(server.view.summary)
    clients = [
        make_client("client1", seed=1),
        make_client("client2", seed=2),
        make_client("client3", data=CLIENT_DATA["client1"], seed=3),
    ]
    statuses = [record_statuses(client) for client in clients]
    for client in clients[:2]:
        client.create()
        client.connect("127.0.0.1", port)
    main_thread.run_until(lambda: all(enabled(c) == {"train", "close"} for c in clients[:2]))
    for client in clients[:2]:
        client.train()
    main_thread.run_until(lambda: server.view.summary.endswith("waiting for more"))
    assert server.view.summary == "Round 1: 2 of 3 clients ready (Min clients); waiting for more"
    clients[2].create()
    clients[2].connect("127.0.0.1", port)
    main_thread.run_until(lambda: enabled(clients[2]) == {"train", "close"})
    clients[2].train()

    main_thread.run_until(
        lambda: (
            server.view.summary.startswith("Training done")
            and all(c.status.startswith("Training is done") for c in clients)
        )
    )
    assert server.view.summary.startswith("Training done: global accuracy 1.00 after")
    assert any(summary.startswith("Round 1: global accuracy") for summary in summaries)
    rows = list(server.view.clients.values())
    assert len(rows) == 3
    for row in rows:
        cells = server.view.cells(row)
        # Plain str, as a Kivy label needs (it calls type(text)('\n'): an enum's refuses).
        assert all(type(cell) is str for cell in cells), cells
        name, samples, _, accuracy, verdict, state = cells
        assert (samples, accuracy, verdict) == ("masked", "masked", "")
        assert not row.suspicious and "suspicious" not in state
    for shown in statuses:
        assert any(
            re.fullmatch(
                r"Training the model of round \d+ \(secure aggregation: its update goes masked\)",
                status,
            )
            for status in shown
        ), shown
        assert any(
            re.fullmatch(
                r"Sent round \d+'s update masked: the server sees only the sum; waiting for "
                r"the server",
                status,
            )
            for status in shown
        ), shown
        assert shown[-1] == "Training is done: accuracy 1.00"
