"""Round-based aggregation in the server: rounds close on --min-clients or --round-timeout,
every waiting client gets its reply (and, if it announced the protocol version, notices while
it waits), and median resists a poisoning client where fedavg fails."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bench.plain_peers import plain_recv, plain_send
from common import protocol
from common.data import XOR_TEST_DATA
from common.protocol import SERVER_TO_CLIENT, Connection, Message, Subject
from common.protocol.messages import WAITING_VERSION
from tests.conftest import WAIT, raw_connection


def test_fedavg_rounds_train_two_clients_to_done(server_factory, client_factory, caplog):
    listener, events = server_factory(aggregation="fedavg", min_clients=2, round_timeout=5)
    for name in ("client1", "client2"):
        client_factory(listener.server_address, name=name)
    assert events.wait_for(lambda e: e.kind == "done").accuracy == 1.0
    assert listener.wait_all_answered(WAIT)
    assert "fedavg of 2 updates" in caplog.text


def test_fedadam_rounds_train_two_clients_to_done(server_factory, client_factory, caplog):
    listener, events = server_factory(
        aggregation="fedadam", server_learning_rate=0.05, min_clients=2, round_timeout=5, seed=1
    )
    for _ in range(2):
        client_factory(listener.server_address, data=XOR_TEST_DATA)
    assert events.wait_for(lambda e: e.kind == "done").accuracy == 1.0
    assert listener.wait_all_answered(WAIT)
    assert "fedadam of 2 updates mean |change|=" in caplog.text
    assert listener.global_model.aggregation.state()["rounds"] == listener.global_model.round


def test_a_round_closes_at_its_timeout_with_fewer_clients(server_factory, client_factory):
    listener, events = server_factory(aggregation="median", min_clients=3, round_timeout=0.3)
    client, client_events = client_factory(listener.server_address, data=XOR_TEST_DATA)
    first = events.wait_for(lambda e: e.kind == "update")
    assert first.round == 1 and "+" not in first.peer  # closed with its one update
    assert client_events.wait_for(lambda e: e.kind == "done").accuracy == 1.0


def _poisoner(address, stop, rounds=30):
    """Answers every model with enormous weights: a malicious, authenticated-looking client."""
    with raw_connection(address) as sock:
        plain_send(sock, "echo", {"best_model_weights_vector": None})
        for _ in range(rounds):
            try:
                reply = plain_recv(sock)
            except OSError:  # ConnectionError too
                if stop.is_set():  # the test shut the server down while this one waited
                    return
                raise
            if reply["subject"] == "done" or stop.is_set():
                return
            plain_send(sock, "model", {"best_model_weights_vector": np.full(22, 1e6)})


@pytest.mark.slow  # about 5 s for fedavg
@pytest.mark.parametrize("aggregation", ["fedavg", "median"])
def test_one_poisoning_client_wrecks_fedavg_but_not_median(
    aggregation, server_factory, client_factory
):
    listener, events = server_factory(aggregation=aggregation, min_clients=3, round_timeout=5)
    stop = threading.Event()
    poisoner = threading.Thread(target=_poisoner, args=(listener.server_address, stop))
    poisoner.start()
    for _ in range(2):  # honest clients, each holding all four XOR samples
        client_factory(listener.server_address, data=XOR_TEST_DATA)
    events.wait_for(lambda e: e.kind == "update" and e.round == 1)
    largest_weight = float(np.max(np.abs(listener.global_model.vector)))
    if aggregation == "fedavg":
        assert largest_weight > 1e5  # one client's update dominates the mean
    else:
        # Each weight of the median lies between the two honest updates' values, so the
        # poisoner cannot pull the model away in any round it takes part in. (It still biases
        # the median toward the larger honest value, so reaching 1.0 here is likely, not sure.)
        for round_ in range(1, 11):
            assert largest_weight < 100, f"round {round_}"
            event = events.wait_for(
                lambda e: e.kind == "done" or (e.kind == "update" and e.round > round_)
            )
            if event.kind == "done":
                assert event.accuracy == 1.0
                break
            largest_weight = float(np.max(np.abs(listener.global_model.vector)))
    stop.set()
    listener.shutdown()
    poisoner.join(WAIT)


def test_only_clients_announcing_the_version_hear_that_their_round_waits(server_factory):
    """A round of --min-clients 3 gets two updates and closes at its timeout: the client that
    announced WAITING_VERSION hears notices every --notice-interval meanwhile, the plain
    pickle peer (the tutorial's client) only its reply."""
    listener, events = server_factory(
        aggregation="fedavg", min_clients=3, round_timeout=1.5, notice_interval=0.2
    )
    vector = {"best_model_weights_vector": np.zeros(22)}
    announced = {"protocol_version": WAITING_VERSION, "client_id": "ours-1"}
    with (
        raw_connection(listener.server_address) as plain,
        raw_connection(listener.server_address) as ours,
    ):
        plain_send(plain, "echo", {"best_model_weights_vector": None})
        assert "notice_interval" not in plain_recv(plain)["data"]
        connection = Connection(ours, idle_timeout=WAIT)
        connection.send(Message(Subject.ECHO, {**vector, **announced}))
        first = protocol.server_reply(connection.receive(SERVER_TO_CLIENT))
        assert first.notice_interval == 0.2  # the promise the client's patience is sized by

        plain_send(plain, "model", vector)
        connection.send(Message(Subject.MODEL, {**vector, **announced, "sequence": 1}))
        assert plain_recv(plain)["subject"] == "model"  # after the round closed, nothing before
        notices = []
        while (message := connection.receive(SERVER_TO_CLIENT)).subject is Subject.WAITING:
            notices.append(protocol.Waiting.from_data(message.data))
        assert message.subject is Subject.MODEL
    assert len(notices) >= 3  # 1.5 s of waiting, one every 0.2 s (fewer on a busy machine)
    assert {(n.round, n.missing) for n in notices} == {(1, 1)}
    closing = [n.closes_in for n in notices]
    assert closing == sorted(closing, reverse=True) and 0 < closing[-1] < closing[0] <= 1.5
    assert events.wait_for(lambda e: e.kind == "update").round == 1


def _announcing_peer(address, client_id: str) -> Connection:
    """A raw peer speaking our protocol version, past its echo: the model is in."""
    connection = Connection(raw_connection(address), idle_timeout=WAIT)
    connection.send(protocol.Echo(client_id).to_message())
    assert connection.receive(SERVER_TO_CLIENT).subject is Subject.MODEL
    return connection


def _send_update(connection: Connection, client_id: str, sequence: int, trained: int) -> None:
    update = protocol.ClientUpdate(np.zeros(22, np.float32), 1, (client_id, sequence), trained)
    connection.send(update.to_message())


def test_a_rounds_line_says_what_it_got_and_a_stale_update_is_refused(server_factory, caplog):
    listener, events = server_factory(aggregation="fedavg", min_clients=3, round_timeout=1.5)
    a, b, c = (_announcing_peer(listener.server_address, name) for name in "abc")
    try:
        _send_update(a, "a", 1, trained=0)
        events.wait_for(lambda e: e.kind == "scored")  # round 1 is open
        c.close()  # gone without an update
        events.wait_for(lambda e: e.kind == "disconnected")
        _send_update(b, "b", 1, trained=0)
        for peer in (a, b):
            assert protocol.server_reply(peer.receive(SERVER_TO_CLIENT)).round == 1
        assert (
            "round 1: 2 of 3 updates, 1 client gone, closed at --round-timeout (1.5 s); "
            "updates=a#1,b#1" in caplog.messages
        )
        # Trained on round 0's model, but round 1 closed: it is not averaged into round 2.
        _send_update(a, "a", 2, trained=0)
        assert protocol.server_reply(a.receive(SERVER_TO_CLIENT)).round == 1
    finally:
        for peer in (a, b, c):
            peer.close()
    refusal = [m for m in caplog.messages if "update=a#2 not applied" in m]
    assert len(refusal) == 1 and refusal[0].endswith(
        "not applied: trained for round 1, but round 2 is gathering; answered with the "
        "current model"
    )
    assert [e.round for e in events.all() if e.kind == "update"] == [1]
