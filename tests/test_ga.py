"""The GA's fitness against Keras's own loss, and training that improves on its start."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from common.data import CLIENT_DATA, XOR_TEST_DATA
from common.ga import GAConfig, fitness, train
from common.model import (
    ForwardPass,
    build_xor_model,
    vector_to_weights,
    weights_to_vector,
    xor_network,
)
from common.global_model import GlobalModel
from common.modelspec import DEFAULT_MAX_PARAMS
from common.server_config import TrainingConfig
from common.training import LocalTrainer


@pytest.mark.parametrize("seed", range(3))
def test_fitness_is_inverse_bce_of_the_models_probabilities(seed):
    model = build_xor_model()
    forward = ForwardPass(model)
    vectors = np.random.default_rng(seed).normal(0, 2, size=(4, forward.num_params))
    ours = fitness(forward(vectors, XOR_TEST_DATA.inputs), XOR_TEST_DATA.outputs)
    for vector, value in zip(vectors, ours):
        model.set_weights(vector_to_weights(vector.astype(np.float32), forward.shapes))
        # NumPy probabilities: Keras must not see a tensor tagged with its logits
        probabilities = keras.ops.convert_to_numpy(model(XOR_TEST_DATA.inputs))
        reference = float(keras.losses.BinaryCrossentropy()(XOR_TEST_DATA.outputs, probabilities))
        assert 1 / value - 1e-8 == pytest.approx(reference, rel=1e-4, abs=1e-6)


def test_training_keeps_or_beats_the_first_member():
    model = build_xor_model()
    forward = ForwardPass(model)
    start = weights_to_vector(model.get_weights())
    rng = np.random.default_rng(1)
    population = np.vstack([start, start + rng.uniform(-1, 1, size=(9, start.size))])
    data = CLIENT_DATA["client1"]
    generations = []
    result = train(
        forward,
        population,
        data,
        GAConfig(stop_fitness=0),
        seed=1,
        on_generation=lambda g, f: generations.append(g),
    )
    start_fitness = fitness(forward(start[None], data.inputs), data.outputs)[0]
    assert result.best_fitness >= start_fitness
    assert result.best_vector.shape == start.shape and result.best_vector.dtype == np.float32
    assert generations == list(range(1, 51))


def test_training_stops_when_asked():
    model = build_xor_model()
    forward = ForwardPass(model)
    population = np.random.default_rng(2).normal(size=(10, forward.num_params))
    result = train(
        forward, population, CLIENT_DATA["client2"], GAConfig(), should_stop=lambda: True
    )
    assert result.generations == 1


def test_training_stops_once_the_local_loss_is_small():
    model = build_xor_model()
    forward = ForwardPass(model)
    population = np.random.default_rng(4).normal(0, 2, size=(10, forward.num_params))
    data = CLIENT_DATA["client1"]
    best = []
    result = train(
        forward,
        population,
        data,
        GAConfig(stop_fitness=10.0),
        seed=4,
        on_generation=lambda g, f: best.append(f),
    )
    assert result.best_fitness >= 10.0 and best[-1] >= 10.0
    assert all(f < 10.0 for f in best[:-1])  # it went on exactly until the threshold
    assert result.generations == len(best) < GAConfig().num_generations


def test_multiclass_fitness_is_inverse_categorical_crossentropy():
    inputs = keras.Input(shape=(4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    forward = ForwardPass(model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 20)]
    vectors = rng.normal(size=(3, forward.num_params))
    for vector, value in zip(vectors, fitness(forward(vectors, x), y)):
        model.set_weights(vector_to_weights(vector.astype(np.float32), forward.shapes))
        probabilities = keras.ops.convert_to_numpy(model(x))
        reference = float(keras.losses.CategoricalCrossentropy()(y, probabilities))
        assert 1 / value - 1e-8 == pytest.approx(reference, rel=1e-4, abs=1e-6)
        metric = keras.metrics.CategoricalAccuracy()
        metric.update_state(y, probabilities)
        assert forward.accuracy(vector, x, y) == pytest.approx(float(metric.result()))


def test_a_seeded_client_draws_anew_each_round_and_repeats_as_a_whole():
    request = GlobalModel(xor_network(1), XOR_TEST_DATA, TrainingConfig(seed=1)).reply_to_echo()

    def two_rounds(seed: int) -> list[np.ndarray]:
        trainer = LocalTrainer(
            CLIENT_DATA["client1"],
            "client1",
            max_params=DEFAULT_MAX_PARAMS,
            ga=GAConfig(num_generations=20, stop_fitness=0),
            seed=seed,
        )
        return [trainer.train(request).best_vector for _ in range(2)]

    first, second = two_rounds(7)
    assert not np.array_equal(first, second)  # the same request, the round's own draws
    again = two_rounds(7)
    np.testing.assert_array_equal(first, again[0])
    np.testing.assert_array_equal(second, again[1])
