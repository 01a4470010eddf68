"""The batched fitness path against Keras itself: the same losses for every solution over
random Dense models, a correct fallback for anything else, and one call per generation."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from common.data import CLIENT_DATA
from common.ga import GAConfig, binary_crossentropy, train
from common.model import ForwardPass, build_xor_model, vector_to_weights, weights_to_vector
from common.modelspec import DEFAULT_MAX_PARAMS, ModelRefused, dense_chain

ACTIVATIONS = ["relu", "sigmoid", "tanh", "softmax", "linear"]
SOLUTIONS = 6


def _dense(rng: np.random.Generator, activations: list[str], max_units: int):
    activation = str(rng.choice(activations))
    low = 2 if activation == "softmax" else 1  # Keras warns about a softmax over one unit
    return keras.layers.Dense(
        int(rng.integers(low, max_units + 1)), activation=activation, use_bias=bool(rng.integers(2))
    )


def random_dense_model(rng: np.random.Generator) -> keras.Model:
    """1-4 hidden Dense layers of any activation, with bias or none, and an output layer of
    probabilities (sigmoid or softmax) as binary cross-entropy needs. An unbounded output
    (relu, linear) near 1 would make the loss depend on the last bit of a float32, in Keras
    as much as here."""
    inputs = keras.Input(shape=(int(rng.integers(1, 6)),))
    h = inputs
    for _ in range(int(rng.integers(1, 5))):
        h = _dense(rng, ACTIVATIONS, 8)(h)
    outputs = _dense(rng, ["sigmoid", "softmax"], 3)(h)
    if rng.integers(2):
        return keras.Model(inputs, outputs)
    return keras.Sequential([layer for layer in keras.Model(inputs, outputs).layers])


def keras_reference(model, forward, vectors, inputs, labels):
    """Each solution's probabilities from the Keras model itself, and their losses."""
    probabilities, losses = [], []
    for vector in vectors:
        model.set_weights(vector_to_weights(vector, forward.shapes))
        # NumPy probabilities: Keras must not see a tensor tagged with its logits
        probabilities.append(keras.ops.convert_to_numpy(model(inputs, training=False)))
        losses.append(float(keras.losses.BinaryCrossentropy()(labels, probabilities[-1])))
    return np.stack(probabilities), np.array(losses)


def assert_same_as_keras(model, forward, vectors, inputs, labels):
    probabilities = forward(vectors, inputs)
    expected_probabilities, expected_losses = keras_reference(
        model, forward, vectors, inputs, labels
    )
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        binary_crossentropy(probabilities, labels), expected_losses, rtol=0, atol=1e-5
    )


def population_and_data(model, forward, rng):
    start = weights_to_vector(model.get_weights())
    vectors = (start + rng.normal(0, 0.5, size=(SOLUTIONS, forward.num_params))).astype(np.float32)
    samples = int(rng.integers(1, 9))
    inputs = rng.uniform(-1, 1, size=(samples, model.inputs[0].shape[1])).astype(np.float32)
    labels = rng.integers(0, 2, size=(samples, model.outputs[0].shape[1])).astype(np.float32)
    return vectors, inputs, labels


@pytest.mark.parametrize("seed", range(40))
def test_batched_losses_equal_keras_for_random_dense_models(seed, caplog):
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model = random_dense_model(rng)
    with caplog.at_level(logging.INFO, logger="common.model"):
        forward = ForwardPass(model)
    assert "one solution at a time" not in caplog.text  # a Dense stack takes the batched path
    assert_same_as_keras(model, forward, *population_and_data(model, forward, rng))


@pytest.mark.parametrize("seed", range(40))
def test_a_dense_chain_from_json_alone_equals_keras(seed):
    """What a client builds from the server's JSON without loading Keras: same outputs."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model = random_dense_model(rng)
    forward = ForwardPass.from_json(model.to_json(), DEFAULT_MAX_PARAMS)
    assert forward.model is None  # no Keras model was built
    assert forward.shapes == [tuple(w.shape) for w in model.weights]
    assert_same_as_keras(model, forward, *population_and_data(model, forward, rng))


def test_a_chain_with_other_allowed_layers_from_json_is_built_by_keras():
    keras.utils.set_random_seed(0)
    model = next(_non_dense_models())  # Dense, Dropout, Dense: allowed, but not a Dense chain
    assert dense_chain(model.to_json()) is None
    forward = ForwardPass.from_json(model.to_json(), DEFAULT_MAX_PARAMS)
    assert forward.model is not None
    assert_same_as_keras(
        forward.model,
        forward,
        *population_and_data(forward.model, forward, np.random.default_rng(0)),
    )


@pytest.mark.parametrize("index", [1, 2])  # a LayerNormalization; a Dense layer used twice
def test_models_modelspec_refuses_are_refused_from_json_before_keras_builds_them(index):
    model = list(_non_dense_models())[index]
    with pytest.raises(ModelRefused):
        ForwardPass.from_json(model.to_json(), DEFAULT_MAX_PARAMS)


@pytest.mark.slow  # 1.3-4 s: 2-4 s with the cores shared
def test_the_activation_and_bias_choices_are_all_exercised():
    seen_activations, seen_bias = set(), set()
    for seed in range(40):
        model = random_dense_model(np.random.default_rng(seed))
        for layer in (layer for layer in model.layers if isinstance(layer, keras.layers.Dense)):
            seen_activations.add(keras.activations.serialize(layer.activation))
            seen_bias.add(layer.use_bias)
    assert seen_activations == set(ACTIVATIONS) and seen_bias == {True, False}


def _non_dense_models():
    inputs = keras.Input(shape=(3,))
    hidden = keras.layers.Dense(5, activation="relu")(inputs)
    yield keras.Model(
        inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Dropout(0.3)(hidden))
    )
    yield keras.Model(
        inputs,
        keras.layers.Dense(2, activation="sigmoid")(keras.layers.LayerNormalization()(hidden)),
    )
    shared = keras.layers.Dense(3, activation="tanh")  # a Dense layer applied twice
    yield keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(shared(shared(inputs))))


@pytest.mark.parametrize("index", range(3))
def test_other_models_fall_back_with_a_note_and_stay_correct(index, caplog):
    keras.utils.set_random_seed(index)
    model = list(_non_dense_models())[index]
    with caplog.at_level(logging.INFO, logger="common.model"):
        forward = ForwardPass(model)
    assert "not a plain Dense stack: evaluating one solution at a time" in caplog.text
    assert_same_as_keras(
        model, forward, *population_and_data(model, forward, np.random.default_rng(index))
    )


def test_the_ga_scores_each_generation_in_one_batched_call():
    forward = ForwardPass(build_xor_model())
    batches = []

    class Recording:
        num_params, shapes = forward.num_params, forward.shapes

        def __call__(self, vectors, inputs):
            batches.append(len(vectors))
            return forward(vectors, inputs)

    population = np.random.default_rng(3).normal(size=(10, forward.num_params))
    train(Recording(), population, CLIENT_DATA["client1"], GAConfig(num_generations=5), seed=3)
    # PyGAD scores all 10 first, then the 9 new members: the elite's fitness is kept
    assert batches == [10] + [9] * 5
