"""The model's vectors, its batched forward pass and accuracy, and its saved file, against
Keras itself."""

from __future__ import annotations

import io
import os
import zipfile

import h5py
import keras
import numpy as np
import pytest

from common.data import XOR_TEST_DATA
from common.model import (
    ForwardPass,
    Network,
    binary_accuracy,
    build_xor_model,
    vector_to_weights,
    weights_to_vector,
)


def test_tutorial_model_shape():
    model = build_xor_model()
    assert [layer.units for layer in model.layers[1:]] == [4, 2]
    assert ForwardPass(model).num_params == 2 * 4 + 4 + 4 * 2 + 2


def test_vector_round_trip_matches_kerasga_order():
    import pygad.kerasga

    model = build_xor_model()
    vector = weights_to_vector(model.get_weights())
    np.testing.assert_allclose(vector, pygad.kerasga.model_weights_as_vector(model))
    for ours, theirs in zip(
        vector_to_weights(vector, [w.shape for w in model.get_weights()]), model.get_weights()
    ):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("seed", range(3))
def test_batched_forward_pass_equals_keras(seed):
    model = build_xor_model()
    forward = ForwardPass(model)
    vectors = np.random.default_rng(seed).normal(0, 3, size=(5, forward.num_params))
    batched = forward(vectors, XOR_TEST_DATA.inputs)
    for vector, probabilities in zip(vectors, batched):
        model.set_weights(vector_to_weights(vector.astype(np.float32), forward.shapes))
        expected = keras.ops.convert_to_numpy(model(XOR_TEST_DATA.inputs))
        np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def test_non_dense_models_fall_back_to_keras():
    inputs = keras.Input(shape=(2,))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Dropout(0.1)(inputs))
    model = keras.Model(inputs, outputs)
    forward = ForwardPass(model)
    vectors = np.random.default_rng(0).normal(size=(3, forward.num_params))
    result = forward(vectors, XOR_TEST_DATA.inputs)
    assert result.shape == (3, 4, 2)
    np.testing.assert_allclose(result.sum(axis=-1), 1, atol=1e-6)


def test_binary_accuracy_matches_keras_metric():
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]], dtype=np.float32)
    metric = keras.metrics.BinaryAccuracy()
    metric.update_state(XOR_TEST_DATA.outputs, probabilities)
    assert binary_accuracy(probabilities, XOR_TEST_DATA.outputs) == pytest.approx(
        float(metric.result())
    )


@pytest.mark.parametrize(
    "build",
    [
        build_xor_model,  # Functional, as the server describes it without Keras
        lambda: keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(5, activation="tanh"),
                keras.layers.Dense(3, activation="softmax", use_bias=False),
            ]
        ),
    ],
    ids=["Functional", "Sequential without a bias"],
)
def test_a_dense_chain_is_saved_without_keras_as_keras_saves_it(tmp_path, build):
    network = Network.from_json(build().to_json())
    assert network.forward.model is None  # the path that does not import Keras
    vector = np.random.default_rng(0).normal(size=network.forward.num_params).astype(np.float32)
    network.save(vector, str(tmp_path / "ours.keras"))
    assert os.listdir(tmp_path) == ["ours.keras"]  # written whole, no temporary file left

    loaded = keras.saving.load_model(tmp_path / "ours.keras")
    inputs = np.random.default_rng(1).normal(size=(6, network.forward.num_features))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(inputs)),
        network.forward(vector[None, :], inputs)[0],
        atol=1e-6,
    )
    # The same archive Keras writes: its files, and its weights at the same paths.
    theirs = build()
    theirs.set_weights(vector_to_weights(vector, network.forward.shapes))
    theirs.save(tmp_path / "theirs.keras")
    archives = [zipfile.ZipFile(tmp_path / name) for name in ("ours.keras", "theirs.keras")]
    with archives[0], archives[1]:
        assert [a.namelist() for a in archives] == [archives[1].namelist()] * 2
        stores = [h5py.File(io.BytesIO(a.read("model.weights.h5"))) for a in archives]
    with stores[0], stores[1]:
        paths = [_datasets(store) for store in stores]
        assert paths[0].keys() == paths[1].keys()
        for path, value in paths[0].items():
            np.testing.assert_array_equal(value, paths[1][path])


def _datasets(store) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    store.visititems(
        lambda path, item: (
            found.update({path: item[()]}) if isinstance(item, h5py.Dataset) else None
        )
    )
    return found
