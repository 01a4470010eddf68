"""Aggregation rules are pure functions; robust ones resist a client sending huge weights."""
import numpy as np
import pytest

from common.aggregate import fedavg, median, model_averaging, trimmed_mean
from common.data import XOR_TEST_DATA
from common.model import ForwardPass, build_xor_model


def test_model_averaging_is_the_mean_and_pure():
    a, b = np.array([0.0, 2.0, -4.0]), np.array([2.0, 2.0, 4.0])
    np.testing.assert_array_equal(model_averaging(a, b), [1.0, 2.0, 0.0])
    np.testing.assert_array_equal(a, [0.0, 2.0, -4.0])


def test_fedavg_weights_by_sample_count():
    updates = [np.array([0.0, 0.0]), np.array([3.0, 6.0])]
    np.testing.assert_allclose(fedavg(updates, [1, 2]), [2.0, 4.0])
    np.testing.assert_allclose(fedavg(updates), [1.5, 3.0])  # peers that send no count: 1 each


def test_median_and_trimmed_mean():
    updates = [np.array([1.0]), np.array([2.0]), np.array([3.0]), np.array([100.0]),
               np.array([-50.0])]
    assert median(updates)[0] == 2.0
    assert trimmed_mean(updates, trim=0.2)[0] == pytest.approx(2.0)


def test_one_huge_update_wrecks_fedavg_but_not_median():
    forward = ForwardPass(build_xor_model())
    rng = np.random.default_rng(0)
    good = _solving_model()  # and three honest clients near it
    honest = [good + rng.normal(0, 0.01, good.size).astype(np.float32) for _ in range(3)]
    poisoned = honest + [np.full(good.size, 1e6, np.float32)]
    accuracy = lambda v: forward.accuracy(v.astype(np.float32), XOR_TEST_DATA.inputs,  # noqa
                                          XOR_TEST_DATA.outputs)
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
