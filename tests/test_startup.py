"""Start-up without TensorFlow: the server describes, initialises, evaluates and checkpoints a
Dense chain with NumPy alone, and sends the JSON Keras itself writes for it; Keras loads only
for a ``.keras`` file (or a model that is not a Dense chain)."""

from __future__ import annotations

import contextlib
import os

import keras
import numpy as np
import pytest

from common.data import XOR_TEST_DATA
from common.model import glorot_vector, vector_to_weights, xor_model_json, xor_network
from common.modelspec import dense_chain_json
from common.ports import free_port
from tests.test_cli import ROOT, Script

# Python loads tests/heavy_imports/sitecustomize.py at start-up: it prints this line when a
# process first imports the module.
HEAVY_IMPORT = "heavy import: "
PROBED = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "heavy_imports")}


def _keras_chain(features: int, layers: list[tuple[int, str]]) -> keras.Model:
    """Built as the tutorial builds its model, with the names Keras gives in a fresh process."""
    inputs = keras.Input(shape=(features,), name="input_layer")
    x = inputs
    for index, (units, activation) in enumerate(layers):
        x = keras.layers.Dense(
            units, activation=activation, name="dense" if index == 0 else f"dense_{index}"
        )(x)
    return keras.Model(inputs=inputs, outputs=x, name="functional")


@pytest.mark.parametrize(
    "features, layers",
    [(2, [(4, "relu"), (2, "softmax")]), (64, [(32, "tanh"), (16, "linear"), (10, "sigmoid")])],
)
def test_the_json_sent_is_what_keras_writes_for_that_model(features, layers):
    ours = dense_chain_json(features, layers)
    assert ours == _keras_chain(features, layers).to_json()
    assert keras.models.model_from_json(ours).to_json() == ours  # a tutorial peer rebuilds it


def test_the_tutorials_model_is_a_dense_chain_of_its_layers():
    assert xor_model_json() == dense_chain_json(2, [(4, "relu"), (2, "softmax")])


def test_initial_weights_follow_kerass_dense_defaults():
    shapes = [(300, 100), (100,), (100, 10), (10,)]
    vector = glorot_vector(shapes, seed=4)
    kernel, bias = vector[:30_000], vector[30_000:30_100]
    limit = np.sqrt(6 / 400)  # Glorot uniform: U(-sqrt(6 / (fan_in + fan_out)), ...)
    assert vector.dtype == np.float32 and len(vector) == 30_000 + 100 + 1000 + 10
    assert np.all(np.abs(kernel) <= limit) and np.all(bias == 0) and np.all(vector[-10:] == 0)
    assert np.std(kernel) == pytest.approx(limit / np.sqrt(3), rel=0.02)
    np.testing.assert_array_equal(vector, glorot_vector(shapes, seed=4))
    assert not np.array_equal(vector, glorot_vector(shapes, seed=5))


def test_the_xor_network_loads_into_keras_and_computes_the_same():
    network = xor_network(seed=2)
    model = keras.models.model_from_json(network.model_json)
    model.set_weights(vector_to_weights(network.initial_vector, network.forward.shapes))
    expected = keras.ops.convert_to_numpy(model(XOR_TEST_DATA.inputs))
    ours = network.forward(network.initial_vector[None, :], XOR_TEST_DATA.inputs)[0]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def _heavy_imports(script: Script) -> list[str]:
    return [line.split(HEAVY_IMPORT, 1)[1].strip() for line in script.lines if HEAVY_IMPORT in line]


def _train(tmp_path, *server_flags: str) -> list[Script]:
    """A headless server with these flags and the tutorial's two clients, to the end."""
    port = str(free_port())
    flags = ("--headless", "--host", "127.0.0.1", "--port", port, "--seed", "1")
    with contextlib.ExitStack() as stack:
        scripts = [
            stack.enter_context(
                Script("server.py", *flags, "--expected-clients", "2", *server_flags, env=PROBED)
            )
        ]
        scripts += [
            stack.enter_context(Script(name, *flags, env=PROBED))
            for name in ("client1.py", "client2.py")
        ]
        codes = [script.finish() for script in scripts]
    assert codes == [0, 0, 0], "\n".join(script.output() for script in scripts)
    return scripts


def _xor_test_file(tmp_path) -> str:
    path = tmp_path / "xor.npz"
    np.savez(path, inputs=XOR_TEST_DATA.inputs, outputs=XOR_TEST_DATA.outputs)
    return str(path)


@pytest.mark.slow
def test_the_tutorials_run_imports_neither_keras_nor_tensorflow(tmp_path):
    checkpoint = tmp_path / "state.npz"
    scripts = _train(tmp_path, "--checkpoint", str(checkpoint))
    assert [_heavy_imports(script) for script in scripts] == [[], [], []]
    assert checkpoint.exists()


@pytest.mark.slow
def test_a_dense_json_model_is_served_without_tensorflow(tmp_path):
    model = tmp_path / "model.json"
    model.write_text(dense_chain_json(2, [(8, "tanh"), (2, "softmax")]))
    server, *_ = _train(
        tmp_path,
        "--model",
        str(model),
        "--test-data",
        _xor_test_file(tmp_path),
        "--target-accuracy",
        "0.75",
    )
    assert _heavy_imports(server) == []
    assert "done: accuracy=" in server.output()


@pytest.mark.slow
def test_a_keras_file_loads_keras_and_the_saved_model_scores_what_the_server_said(tmp_path):
    keras_file, saved = tmp_path / "model.keras", tmp_path / "final.keras"
    _keras_chain(2, [(8, "tanh"), (2, "softmax")]).save(keras_file)
    server, *_ = _train(
        tmp_path,
        "--model",
        str(keras_file),
        "--test-data",
        _xor_test_file(tmp_path),
        "--target-accuracy",
        "0.75",
        "--save-model",
        str(saved),
    )
    assert _heavy_imports(server) == ["keras", "tensorflow"]
    model = keras.saving.load_model(saved)
    probabilities = keras.ops.convert_to_numpy(model(XOR_TEST_DATA.inputs))
    assert np.mean((probabilities > 0.5) == (XOR_TEST_DATA.outputs > 0.5)) >= 0.75
