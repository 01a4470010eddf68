"""Aggregation rules are pure functions; robust ones resist a client sending huge weights.
Each rule is a class in one registry by name, and a new rule is one class."""

import textwrap

import numpy as np
import pytest

from common import aggregate
from common.aggregate import (
    AGGREGATIONS,
    FedAvg,
    RunningAverage,
    Update,
    fedavg,
    median,
    model_averaging,
    round_based,
    running_candidates,
    trimmed_mean,
)
from common.data import XOR_TEST_DATA
from common.model import ForwardPass, build_xor_model
from common.protocol import ClientUpdate


def test_model_averaging_is_the_mean_and_pure():
    a, b = np.array([0.0, 2.0, -4.0]), np.array([2.0, 2.0, 4.0])
    np.testing.assert_array_equal(model_averaging(a, b), [1.0, 2.0, 0.0])
    np.testing.assert_array_equal(a, [0.0, 2.0, -4.0])


def test_fedavg_weights_by_sample_count():
    updates = [np.array([0.0, 0.0]), np.array([3.0, 6.0])]
    np.testing.assert_allclose(fedavg(updates, [1, 2]), [2.0, 4.0])
    np.testing.assert_allclose(fedavg(updates), [1.5, 3.0])  # peers that send no count: 1 each


def test_median_and_trimmed_mean():
    updates = [
        np.array([1.0]),
        np.array([2.0]),
        np.array([3.0]),
        np.array([100.0]),
        np.array([-50.0]),
    ]
    assert median(updates)[0] == 2.0
    assert trimmed_mean(updates, trim=0.2)[0] == pytest.approx(2.0)


def test_one_huge_update_wrecks_fedavg_but_not_median():
    forward = ForwardPass(build_xor_model())
    rng = np.random.default_rng(0)
    good = _solving_model()  # and three honest clients near it
    honest = [good + rng.normal(0, 0.01, good.size).astype(np.float32) for _ in range(3)]
    poisoned = honest + [np.full(good.size, 1e6, np.float32)]

    def accuracy(vector):
        return forward.accuracy(
            vector.astype(np.float32), XOR_TEST_DATA.inputs, XOR_TEST_DATA.outputs
        )

    assert accuracy(median(poisoned)) == 1.0
    assert accuracy(trimmed_mean(poisoned, trim=0.25)) == 1.0
    assert accuracy(fedavg(poisoned)) < 1.0


def _solving_model():
    """Hidden units h1 = relu(a+b), h2 = relu(a+b-1): XOR = h1 - 2*h2."""
    kernel1 = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], np.float32)
    bias1 = np.array([0, -1, 0, 0], np.float32)
    kernel2 = np.array([[-5, 5], [10, -10], [0, 0], [0, 0]], np.float32)
    bias2 = np.array([2.5, -2.5], np.float32)
    return np.concatenate([kernel1.ravel(), bias1, kernel2.ravel(), bias2])


def test_the_registry_holds_the_rules_by_name_the_tutorials_first():
    assert list(AGGREGATIONS) == [
        "running-average",
        "running-best",
        "fedavg",
        "median",
        "trimmed-mean",
    ]
    assert round_based() == ["fedavg", "median", "trimmed-mean"]  # what Flower can run


def test_the_running_average_takes_an_update_that_reached_the_target_as_is():
    global_vector, update = np.array([0.0, 2.0]), np.array([2.0, 4.0])
    rule = RunningAverage()
    np.testing.assert_array_equal(rule.aggregate(global_vector, [Update(update)]), [1.0, 3.0])
    taken = rule.aggregate(global_vector, [Update(update, reached_target=True)])
    np.testing.assert_array_equal(taken, update)


def test_the_fedavg_rule_weights_by_the_updates_sample_counts():
    updates = [Update(np.array([0.0, 0.0]), 1), Update(np.array([3.0, 6.0]), 2)]
    np.testing.assert_allclose(FedAvg().aggregate(np.zeros(2), updates), [2.0, 4.0])


def test_a_new_rule_is_one_class_found_by_name_everywhere():
    """The module docstring's example, run as written there: registered, it is a choice of
    the flag and of Flower, and the server runs it by name."""
    from common.cli import server_parser
    from common.data import XOR_TEST_DATA
    from common.model import xor_network
    from common.server import GlobalModel, TrainingConfig

    example = aggregate.__doc__.split("::\n")[1].split("\nand in ")[0]
    exec(textwrap.dedent(example), vars(aggregate).copy())  # registers FedAvgM
    try:
        flag = next(a for a in server_parser()._actions if a.dest == "aggregation")
        assert "fedavgm" in flag.choices and "fedavgm" in round_based()
        model = GlobalModel(
            xor_network(1),
            XOR_TEST_DATA,
            TrainingConfig(aggregation="fedavgm", min_clients=1, target_accuracy=2.0),
        )
        start = model.vector.copy()
        model.apply_update(ClientUpdate(start + 1), "a")  # a step of 1: velocity 1
        model.apply_update(ClientUpdate(model.vector + 1), "a")  # another: velocity 0.9 * 1 + 1
        np.testing.assert_allclose(model.vector, start + 1 + 1.9, rtol=1e-6)
        assert model.round == 2
    finally:
        del AGGREGATIONS["fedavgm"]


def test_running_candidates_are_steps_toward_the_update_and_the_clients_mean():
    current, update = np.array([0.0, 8.0]), np.array([8.0, 0.0])
    latest = [update, np.array([0.0, 0.0]), np.array([4.0, 4.0])]
    candidates = running_candidates(current, update, latest)
    assert list(candidates) == ["update", "step 0.125", "step 0.25", "step 0.5", "clients' mean"]
    np.testing.assert_array_equal(candidates["update"], update)
    np.testing.assert_array_equal(candidates["step 0.125"], [1.0, 7.0])
    np.testing.assert_array_equal(candidates["step 0.5"], model_averaging(current, update))
    np.testing.assert_allclose(candidates["clients' mean"], [4.0, 4 / 3])
    np.testing.assert_array_equal(current, [0.0, 8.0])  # pure
