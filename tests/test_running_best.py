"""running-best, the default rule: of steps toward each update and the mean of every
client's latest update, the server keeps what scores best on its test data, the current
model included, so an update that would make it worse (an overfit or poisoned one) is left
out, and a client that left is left out of the mean."""

from __future__ import annotations

import numpy as np

from bench.plain_peers import plain_recv, plain_send
from common.aggregate import running_candidates
from common.data import XOR_TEST_DATA
from common.global_model import GlobalModel
from common.model import xor_network
from common.protocol import ClientUpdate
from common.server_config import TrainingConfig
from tests.conftest import raw_connection
from tests.test_best_model import _xor_solution

# Each alone answers one class for every input (accuracy 0.5); their mean solves XOR.
SOLUTION = _xor_solution()
SHIFT = np.zeros_like(SOLUTION)
SHIFT[-2:] = (20, -20)  # the output biases
ALWAYS_FIRST, ALWAYS_SECOND = SOLUTION + SHIFT, SOLUTION - SHIFT


def _global_model(**settings) -> GlobalModel:
    return GlobalModel(xor_network(1), XOR_TEST_DATA, TrainingConfig(seed=1, **settings))


def _reaching_target(model: GlobalModel, update, latest) -> list[str]:
    candidates = running_candidates(model.vector, update, latest)
    return [
        name
        for name, vector in candidates.items()
        if model.forward.accuracy(
            vector.astype(np.float32), XOR_TEST_DATA.inputs, XOR_TEST_DATA.outputs
        )
        == 1.0
    ]


def test_an_update_that_scores_worse_leaves_the_model_as_it_was(caplog):
    model = _global_model(target_accuracy=2.0)  # out of reach: training goes on
    before = model.vector.copy()
    model.apply_update(ClientUpdate(np.full_like(before, 1e3)), "peer")  # every step saturates
    assert model.round == 1  # counted as a round all the same
    np.testing.assert_array_equal(model.vector, before)
    assert "took=current model" in caplog.text


def test_an_update_that_reaches_the_target_is_taken_as_is():
    model = _global_model()
    model.apply_update(ClientUpdate(SOLUTION), "peer")
    assert model.reached_target
    np.testing.assert_array_equal(model.vector, SOLUTION)


def test_the_clients_mean_is_taken_when_only_it_reaches_the_target(caplog):
    model = _global_model()
    model.apply_update(ClientUpdate(ALWAYS_FIRST), "a")
    assert not model.finished.is_set()
    assert _reaching_target(model, ALWAYS_SECOND, [ALWAYS_FIRST, ALWAYS_SECOND]) == [
        "clients' mean"
    ]
    model.apply_update(ClientUpdate(ALWAYS_SECOND), "b")
    assert model.reached_target
    np.testing.assert_array_equal(model.vector, SOLUTION)
    assert "took=clients' mean" in caplog.text


def test_a_client_that_left_is_left_out_of_the_mean():
    model = _global_model()
    model.apply_update(ClientUpdate(ALWAYS_FIRST), "a")
    model.forget("a")
    assert _reaching_target(model, ALWAYS_SECOND, [ALWAYS_SECOND]) == []
    model.apply_update(ClientUpdate(ALWAYS_SECOND), "b")
    assert not model.finished.is_set()


def test_the_server_forgets_a_client_when_its_connection_closes(server_factory):
    listener, events = server_factory(seed=1)  # the model of _global_model()
    with raw_connection(listener.server_address) as sock:
        plain_send(sock, "echo", {"best_model_weights_vector": None})
        plain_recv(sock)
        plain_send(sock, "model", {"best_model_weights_vector": ALWAYS_FIRST})
        plain_recv(sock)
    events.wait_for(lambda e: e.kind == "disconnected")
    with raw_connection(listener.server_address) as sock:
        plain_send(sock, "echo", {"best_model_weights_vector": None})
        plain_recv(sock)
        plain_send(sock, "model", {"best_model_weights_vector": ALWAYS_SECOND})
        assert plain_recv(sock)["subject"] == "model"  # no mean with the first: not done
    assert listener.global_model.round == 2 and not listener.global_model.finished.is_set()
