"""The client core against a tutorial-style server stub and against servers that fail."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from bench.plain_peers import plain_recv, plain_server
from common import protocol
from common.client import ClientOutcome, ConnectError, connect
from common.data import XOR_TEST_DATA
from common.events import Outcome
from common.ga import GAConfig
from common.global_model import GlobalModel
from common.model import xor_network
from common.protocol import Message, Subject
from common.server_config import TrainingConfig
from tests.conftest import WAIT, client_error_against


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
    # its done has no data: training is done, as the tutorial's server means it
    assert (client.outcome, client.server_outcome) == (ClientOutcome.DONE, Outcome.DONE)
    assert events.wait_for(lambda e: e.kind == "done").detail == "training is done"
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


def test_server_closing_early_is_reported(client_factory):
    error = client_error_against(lambda connection: connection.recv(1024), client_factory)
    assert error.detail == "The server closed the connection before training was done."


def test_stop_ends_a_waiting_client(listening, client_factory):
    client, events = client_factory(listening.getsockname())  # connected, nobody answers
    events.wait_for(lambda e: e.kind == "connected")
    client.stop()
    client.join(WAIT)
    assert not client.is_alive() and client.outcome is ClientOutcome.STOPPED


def _take_the_first_update(connection, received: list[dict]) -> bytes:
    """Answer the echo with a model and take the first update; return the model's bytes."""
    model = GlobalModel(xor_network(1), XOR_TEST_DATA, TrainingConfig(seed=1)).reply_to_echo()
    payload = protocol.encode(model.to_message())
    received.append(plain_recv(connection))
    connection.sendall(payload)
    received.append(plain_recv(connection))
    return payload


def _answer_done(listening, received: list[dict]) -> None:
    """A second connection gets ``done`` for whatever it sends."""
    connection, _ = listening.accept()
    with connection:
        received.append(plain_recv(connection))
        connection.sendall(protocol.encode(Message(Subject.DONE, {"accuracy": 1.0})))


def _hang_up_on_the_first_update(listening, then_listen: bool) -> list[dict]:
    """A server that answers the echo, takes the first update and dies without answering;
    if ``then_listen``, a second connection gets ``done`` for whatever it sends."""
    received: list[dict] = []
    connection, _ = listening.accept()
    with connection:
        _take_the_first_update(connection, received)
    if not then_listen:
        listening.close()  # refused from now on
        return received
    _answer_done(listening, received)
    return received


def test_a_lost_server_is_reconnected_and_the_unanswered_update_resent(listening, client_factory):
    received = []
    stub = threading.Thread(
        target=lambda: received.extend(_hang_up_on_the_first_update(listening, then_listen=True))
    )
    stub.start()
    client, events = client_factory(listening.getsockname(), reconnect=True, retries=3)
    client.join(WAIT)
    stub.join(WAIT)
    assert client.outcome is ClientOutcome.DONE
    echo, update, resent = received
    assert echo["subject"] == "echo" and "sequence" not in echo["data"]
    assert update["subject"] == resent["subject"] == "model"
    assert update["data"]["sequence"] == resent["data"]["sequence"] == 1
    assert update["data"]["client_id"] == resent["data"]["client_id"] == client.client_id
    np.testing.assert_array_equal(
        update["data"]["best_model_weights_vector"], resent["data"]["best_model_weights_vector"]
    )
    assert [e.kind for e in events.all()].count("connected") == 2


def _stall_mid_reply_to_the_first_update(listening) -> list[dict]:
    """A server that answers the echo, takes the first update, sends the first bytes of its
    reply and then nothing, without closing, until the client goes; a second connection
    gets ``done`` for whatever it sends."""
    received: list[dict] = []
    connection, _ = listening.accept()
    with connection:
        payload = _take_the_first_update(connection, received)
        connection.sendall(payload[:50])
        connection.settimeout(WAIT)
        while connection.recv(1024):  # until the client gives up on this connection
            pass
    _answer_done(listening, received)
    return received


def test_a_read_that_times_out_is_a_lost_connection_and_reconnected(
    listening, client_factory, caplog
):
    received = []
    stub = threading.Thread(
        target=lambda: received.extend(_stall_mid_reply_to_the_first_update(listening))
    )
    stub.start()
    client, events = client_factory(
        listening.getsockname(), reconnect=True, retries=3, recv_timeout=0.5
    )
    client.join(WAIT)
    stub.join(WAIT)
    assert client.outcome is ClientOutcome.DONE
    _, update, resent = received
    assert update["data"]["sequence"] == resent["data"]["sequence"] == 1
    assert any(
        "lost the server (no data for 0.5 s in the middle of a message); reconnecting"
        in r.getMessage()
        for r in caplog.records
    )
    assert [e.kind for e in events.all()].count("connected") == 2


def test_reconnecting_gives_up_after_the_retries(listening, client_factory, caplog):
    stub = threading.Thread(target=_hang_up_on_the_first_update, args=(listening, False))
    stub.start()
    client, events = client_factory(listening.getsockname(), reconnect=True, retries=2)
    error = events.wait_for(lambda e: e.kind == "error")
    client.join(WAIT)
    stub.join(WAIT)
    assert client.outcome is ClientOutcome.ERROR
    assert error.detail.startswith(
        "Lost the server and gave up after 2 reconnect attempts "
        "(--retries). The server at 127.0.0.1:"
    )
    failures = [r.getMessage() for r in caplog.records if " failed: " in r.getMessage()]
    assert [m.split(":")[0] for m in failures] == [
        "reconnect attempt 1 of 2 failed",
        "reconnect attempt 2 of 2 failed",
    ]


def test_client_ids_differ_between_runs_of_one_name(listening, client_factory):
    first, _ = client_factory(listening.getsockname(), name="client1")
    second, _ = client_factory(listening.getsockname(), name="client1")
    assert first.client_id.startswith("client1-") and second.client_id.startswith("client1-")
    assert first.client_id != second.client_id


def test_ga_settings_come_from_the_server_unless_the_client_overrides(
    server_factory, client_factory
):
    listener, _ = server_factory(
        num_generations=3, mutation_percent_genes=10, target_accuracy=2.0
    )  # never done: we only watch one round
    plain, plain_events = client_factory(listener.server_address)
    insisting, insisting_events = client_factory(
        listener.server_address, ga_overrides={"num_generations": 2}, ga=GAConfig(stop_fitness=0)
    )
    first_round_generations = {}
    for name, events in (("plain", plain_events), ("insisting", insisting_events)):
        # A fast first client may be answered before the second connects: the second's
        # first model then comes from round 1, not 0.
        first = events.wait_for(lambda e: e.kind == "model").round
        events.wait_for(lambda e: e.kind == "sent")
        first_round_generations[name] = [
            e.generation for e in events.all() if e.kind == "generation" and e.round == first
        ]
    assert max(first_round_generations["plain"]) <= 3
    assert max(first_round_generations["insisting"]) == 2


def test_insane_ga_settings_from_a_server_are_refused():
    with pytest.raises(protocol.SchemaError, match="num_parents_mating"):
        protocol.check_ga_settings({"num_parents_mating": 50}, num_solutions=10)
    with pytest.raises(protocol.SchemaError, match="num_generations"):
        protocol.check_ga_settings({"num_generations": True}, num_solutions=10)
    with pytest.raises(protocol.SchemaError, match="operators"):
        protocol.check_ga_settings({"operators": "sideways"}, num_solutions=10)
    with pytest.raises(protocol.SchemaError, match="mutation_step"):
        protocol.check_ga_settings({"mutation_step": -0.1}, num_solutions=10)
    assert protocol.check_ga_settings({"mutation_percent_genes": 5}, 10) == {
        "mutation_percent_genes": 5
    }
    assert protocol.check_ga_settings({"operators": "tutorial", "mutation_step": 0.5}, 10) == {
        "operators": "tutorial",
        "mutation_step": 0.5,
    }
