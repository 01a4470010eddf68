"""Many concurrent clients against one server: every update is counted exactly once, or
answered without being counted because its client was beyond its share of the rounds (a
per-update rule gives each connected client one in K applied updates)."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

from common import protocol
from common.aggregate import model_averaging
from common.data import CLIENT_DATA
from common.global_model import OVER_SHARE
from common.protocol import Connection, Message, Subject
from common.client import ClientOutcome
from tests.conftest import WAIT, raw_connection

CLIENTS = 20
UPDATES_EACH = 5


def _client(address, index: int, start: threading.Barrier, results: queue.Queue) -> None:
    """Echo, then send UPDATES_EACH distinct vectors, recording each reply against its update."""
    try:
        connection = Connection(raw_connection(address), recv_timeout=WAIT, idle_timeout=WAIT)
        try:
            connection.send(Message(Subject.ECHO, {"best_model_weights_vector": None}))
            first = connection.receive(protocol.SERVER_TO_CLIENT)
            num_params = first.data["population_weights"].shape[1]
            rng = np.random.default_rng(index)
            start.wait(WAIT)  # all clients send their updates at the same moment
            for _ in range(UPDATES_EACH):
                update = rng.normal(0, 1, num_params).astype(np.float32)
                connection.send(Message(Subject.MODEL, {"best_model_weights_vector": update}))
                reply = connection.receive(protocol.SERVER_TO_CLIENT)
                results.put((update, reply))
        finally:
            connection.close()
    except Exception as exc:  # the test thread reports it
        results.put(exc)


def test_concurrent_updates_are_each_counted_once_in_a_replayable_order(server_factory):
    listener, events = server_factory(aggregation="running-average")  # replayed below
    gm = listener.global_model
    gm.target_accuracy = 2.0  # never reached: every update is averaged in, none ends training
    initial = gm.vector.copy()
    results: queue.Queue = queue.Queue()
    start = threading.Barrier(CLIENTS)
    threads = [
        threading.Thread(target=_client, args=(listener.server_address, i, start, results))
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    replies = [results.get(timeout=WAIT) for _ in range(CLIENTS * UPDATES_EACH)]
    for thread in threads:
        thread.join(WAIT)
    errors = [r for r in replies if isinstance(r, Exception)]
    assert not errors

    # Each applied update got its own round number, no round was skipped or repeated, and
    # replaying them in round order gives the server's model; every reply was built from the
    # model right after its own update, or (beyond its client's share) from the current one.
    over_share = sum(e.detail == OVER_SHARE for e in events.all() if e.kind == "judged")
    by_round: dict[int, list] = {}
    for update, reply in replies:
        assert reply.subject is Subject.MODEL
        by_round.setdefault(reply.data["round"], []).append((update, reply))
    assert sorted(by_round) == list(range(1, CLIENTS * UPDATES_EACH - over_share + 1))
    assert gm.round == CLIENTS * UPDATES_EACH - over_share
    vector = initial
    for round_ in sorted(by_round):
        replied = [reply.data["population_weights"][0] for _, reply in by_round[round_]]
        applied = [
            update
            for update, _ in by_round[round_]
            if np.array_equal(model_averaging(vector, update), replied[0])
        ]
        assert len(applied) == 1  # the one update this round applied
        vector = model_averaging(vector, applied[0])
        for population_first in replied:
            np.testing.assert_array_equal(population_first, vector)
    np.testing.assert_array_equal(gm.vector, vector)

    def departures():
        return [e for e in events.seen if e.kind == "disconnected"]

    events.wait_for(lambda e: len(departures()) == CLIENTS)
    assert [e.detail for e in departures()] == [""] * CLIENTS  # clean ends, no dropped client
    assert sum(e.kind == "update" for e in events.all()) == CLIENTS * UPDATES_EACH - over_share


@pytest.mark.slow  # about 3 s
def test_many_training_clients_all_finish_and_no_update_is_lost(server_factory, client_factory):
    listener, events = server_factory(max_rounds=300)  # bounds the run even if it never converges
    names = list(CLIENT_DATA)
    clients = [
        client_factory(listener.server_address, data=CLIENT_DATA[names[i % 2]], name=f"client{i}")
        for i in range(CLIENTS)
    ]
    for client, client_events in clients:
        client_events.wait_for(lambda e: e.kind in ("done", "error"))
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE, client.error
    assert listener.wait_all_answered(WAIT)

    sent = [sum(e.kind == "sent" for e in client_events.all()) for _, client_events in clients]
    server_events = events.all()
    received = sum(e.kind == "request" and e.detail == "model" for e in server_events)
    counted = sum(e.kind == "update" for e in server_events)
    assert received == sum(sent)  # every update sent arrived
    assert counted == listener.global_model.round
    # Once frozen, an update is answered done uncounted: that is each sender's last update,
    # except the one that froze the model, which was counted; before, those beyond their
    # client's share were answered uncounted.
    senders = sum(n > 0 for n in sent)
    over_share = sum(e.kind == "judged" and e.detail == OVER_SHARE for e in server_events)
    assert counted == sum(sent) - senders + 1 - over_share
    assert not [e for e in server_events if e.kind == "disconnected" and e.detail]
