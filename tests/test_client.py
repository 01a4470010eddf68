"""The client core against a tutorial-style server stub and against servers that fail."""
from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from common.client import ConnectError, connect
from tests.conftest import WAIT
from tests.plain_peers import plain_server


@pytest.fixture
def listening():
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def test_our_client_trains_against_a_plain_pickle_server(listening, client_factory):
    received = []
    stub = threading.Thread(target=lambda: received.extend(plain_server(listening, rounds=3)))
    stub.start()
    client, events = client_factory(listening.getsockname())
    client.join(WAIT)
    stub.join(WAIT)
    assert client.outcome == "done"
    assert [m["subject"] for m in received] == ["echo", "model", "model", "model"]
    assert received[0]["data"]["best_model_weights_vector"] is None
    for message in received[1:]:
        vector = message["data"]["best_model_weights_vector"]
        assert isinstance(vector, np.ndarray) and vector.shape == (22,)
    assert [e.round for e in events.all() if e.kind == "sent"] == [0, 0, 0]


def test_unreachable_server_is_one_plain_sentence(listening):
    port = listening.getsockname()[1]
    listening.close()  # nothing listens there any more
    with pytest.raises(ConnectError, match=r"^The server at 127\.0\.0\.1:\d+ is unreachable"):
        connect("127.0.0.1", port, timeout=0.5)


def test_unknown_host_is_one_plain_sentence():
    with pytest.raises(ConnectError, match="not a known host name"):
        connect("no-such-host.invalid", 10000, timeout=0.5)


def test_server_closing_early_is_reported(listening, client_factory):
    def accept_and_close():
        connection, _ = listening.accept()
        connection.recv(1024)
        connection.close()

    stub = threading.Thread(target=accept_and_close)
    stub.start()
    client, events = client_factory(listening.getsockname())
    error = events.wait_for(lambda e: e.kind == "error")
    client.join(WAIT)
    stub.join(WAIT)
    assert client.outcome == "error"
    assert error.detail == "The server closed the connection before training was done."


def test_stop_ends_a_waiting_client(listening, client_factory):
    client, events = client_factory(listening.getsockname())  # connected, nobody answers
    events.wait_for(lambda e: e.kind == "connected")
    client.stop()
    client.join(WAIT)
    assert not client.is_alive() and client.outcome == "stopped"
