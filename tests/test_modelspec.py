"""Model descriptions are checked as plain JSON before Keras builds anything from them."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from bench.plain_peers import plain_recv, plain_send
from common.model import build_xor_model
from common.modelspec import ModelRefused, count_params, dense_chain
from tests.conftest import client_error_against


def _dense_chain(widths, sequential):
    if sequential:
        layers = [keras.Input(shape=(widths[0],))]
        layers += [keras.layers.Dense(w, activation="tanh") for w in widths[1:]]
        layers.insert(2, keras.layers.Dropout(0.1))
        return keras.Sequential(layers)
    inputs = x = keras.Input(shape=(widths[0],))
    for w in widths[1:]:
        x = keras.layers.Dense(w, activation="relu", use_bias=w % 2 == 0)(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("widths", [[2, 4, 2], [784, 128, 10], [5, 7, 3, 9, 1]])
@pytest.mark.parametrize("sequential", [True, False])
def test_counts_match_keras(widths, sequential):
    model = _dense_chain(widths, sequential)
    assert count_params(model.to_json()) == model.count_params()


def _xor_spec():
    return json.loads(build_xor_model().to_json())


def _layer(spec, index):
    return spec["config"]["layers"][index]


def _huge_units(spec):
    _layer(spec, 1)["config"]["units"] = 10**9


def _conv_layer(spec):
    _layer(spec, 1)["class_name"] = "Conv2D"


def _lambda_layer(spec):
    _layer(spec, 1)["class_name"] = "Lambda"


def _foreign_module(spec):
    _layer(spec, 1)["config"]["kernel_initializer"]["module"] = "os"


def _bad_activation(spec):
    _layer(spec, 2)["config"]["activation"] = {"class_name": "function", "config": "exec"}


def _lying_shape(spec):
    # The JSON claims the second Dense gets 2 inputs; Keras would use the real 10**6.
    _layer(spec, 1)["config"]["units"] = 10**6
    _layer(spec, 2)["inbound_nodes"][0]["args"][0]["config"]["shape"] = [None, 2]


@pytest.mark.parametrize(
    "mutate,match",
    [
        (_huge_units, "more than 5,000,000 parameters"),
        (_conv_layer, "'Conv2D' is not allowed"),
        (_lambda_layer, "'Lambda' is not allowed"),
        (_foreign_module, "module 'os'"),
        (_bad_activation, "activation"),
        (_lying_shape, "more than 5,000,000 parameters"),
    ],
)
def test_refusals(mutate, match):
    spec = _xor_spec()
    mutate(spec)
    with pytest.raises(ModelRefused, match=match):
        count_params(json.dumps(spec))


@pytest.mark.parametrize("text", ["not json", "[]", '{"class_name": "Functional"}', "null"])
def test_malformed_descriptions(text):
    with pytest.raises(ModelRefused):
        count_params(text)


def test_client_refuses_a_model_it_cannot_afford(client_factory):
    spec = _xor_spec()
    _huge_units(spec)

    def send_the_model(connection):
        plain_recv(connection)
        plain_send(
            connection,
            "model",
            {
                "population_weights": np.zeros((10, 22)),
                "model_json": json.dumps(spec),
                "num_solutions": 10,
            },
        )
        connection.recv(1)  # until the client hangs up

    error = client_error_against(send_the_model, client_factory)
    assert error.detail.startswith("Refused the server's model: the model has more than")


def test_the_xor_model_is_a_dense_chain_without_keras():
    assert dense_chain(build_xor_model().to_json()) == [
        (2, 4, True, "relu"),
        (4, 2, True, "softmax"),
    ]


@pytest.mark.parametrize(
    "change",
    [
        lambda layer: layer["config"].update(lora_rank=2),  # extra LoRA weights
        lambda layer: layer["config"].update(dtype="mixed_float16"),
        lambda layer: layer["config"].update(something_new=1),  # a setting we do not know
        lambda layer: layer["inbound_nodes"][0]["kwargs"].update(training=True),
    ],
)
def test_a_dense_layer_with_any_other_setting_is_left_to_keras(change):
    spec = _xor_spec()
    change(spec["config"]["layers"][2])
    assert dense_chain(json.dumps(spec)) is None


def test_a_model_whose_output_is_not_the_last_layer_is_left_to_keras():
    spec = _xor_spec()
    spec["config"]["output_layers"] = ["dense", 0, 0]
    assert dense_chain(json.dumps(spec)) is None
