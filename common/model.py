"""The Keras model: building it, weights <-> flat vectors, forward passes and accuracy.

A flat vector holds every weight array of ``model.get_weights()`` raveled in order, which
for Dense stacks is also the order of ``pygad.kerasga``, so tutorial peers read our vectors.

Keras, and TensorFlow under it (seconds to import, half a gigabyte), loads only where it is
needed (``load_keras``): a ``.keras`` file, or a model that is not a plain Dense chain. A
Dense chain, the tutorial's XOR model among them, is described, initialised, trained and
evaluated with NumPy alone, on the server as on the clients, and saved without Keras.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.atomic import replacing
from common.errors import ModelFileError
from common.modelspec import DEFAULT_MAX_PARAMS, dense_chain, dense_chain_json

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

XOR_LAYERS = [(4, "relu"), (2, "softmax")]  # the tutorial's model: Input(2) -> these


def load_keras():
    """Import Keras, its TensorFlow libraries bound to their own symbols (``RTLD_DEEPBIND``).

    TensorFlow's libraries carry a copy of LLVM. Loaded after Mesa's OpenGL driver (a Kivy
    window), the dynamic linker binds that copy's start-up code to Mesa's LLVM, loaded first,
    and the process dies (SIGSEGV in ``DebugInfoMetadata.cpp``'s static initialiser).
    Binding TensorFlow to itself makes the order harmless; ``common/__init__.py`` covers the
    other order. Every Keras import of ours goes through here."""
    if "keras" not in sys.modules:
        flags = sys.getdlopenflags()
        sys.setdlopenflags(flags | getattr(os, "RTLD_DEEPBIND", 0))  # glibc only
        try:
            import keras  # noqa: F401
        finally:
            sys.setdlopenflags(flags)
    return sys.modules["keras"]


def xor_model_json() -> str:
    """The tutorial's model as Keras's ``to_json()`` describes it, without Keras."""
    return dense_chain_json(2, XOR_LAYERS)


def build_xor_model() -> keras.Model:
    """The tutorial's model built by Keras: Input(2) -> Dense(4, relu) -> Dense(2, softmax)."""
    return model_from_json(xor_model_json())


def model_from_json(model_json: str) -> keras.Model:
    return load_keras().models.model_from_json(model_json)


def load_model_file(path: str, seed: int | None = None) -> Network:
    """A model from a ``.keras`` file (with its weights) or a Keras JSON architecture
    (initialised as Keras would, from ``seed``), its description checked
    (``common.modelspec``) before anything is built from it. Keras loads for a ``.keras``
    file or a model that is not a Dense chain."""
    from common.modelspec import ModelRefused, count_params

    file = Path(path)
    try:
        if file.suffix != ".keras":
            return Network.from_json(file.read_text(), seed)
        with zipfile.ZipFile(file) as archive:
            count_params(archive.read("config.json").decode())
        keras = load_keras()
        return Network.from_keras(keras.saving.load_model(file, compile=False, safe_mode=True))
    except ModelRefused as exc:
        raise ModelFileError(f"The model in {path} is not one fedga trains: {exc}.") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFileError(
            f"Cannot read the model file {path}: {getattr(exc, 'strerror', None) or exc}."
        ) from None


@dataclass(frozen=True)
class Network:
    """A model as the server holds it: the ``model_json`` it sends, the forward pass it
    evaluates with, and its initial weights as a flat vector."""

    model_json: str
    forward: ForwardPass
    initial_vector: np.ndarray

    @classmethod
    def from_keras(cls, model: keras.Model) -> Network:
        return cls(model.to_json(), ForwardPass(model), weights_to_vector(model.get_weights()))

    @classmethod
    def from_json(
        cls, model_json: str, seed: int | None = None, max_params: int = DEFAULT_MAX_PARAMS
    ) -> Network:
        """Raises ``ModelRefused`` for a description ``common.modelspec`` refuses."""
        forward = ForwardPass.from_json(model_json, max_params)
        if forward.model is not None:
            return cls(model_json, forward, weights_to_vector(forward.model.get_weights()))
        return cls(model_json, forward, glorot_vector(forward.shapes, seed))

    def save(self, vector: np.ndarray, path: str) -> None:
        """Write the model with these weights as a ``.keras`` file, atomically. A Dense chain
        held without Keras is written as Keras writes it, without importing TensorFlow (which
        takes seconds, up to 15 on a busy machine: longer than a stopped container waits)."""
        weights = vector_to_weights(vector, self.forward.shapes)
        with replacing(path) as temp:
            if self.forward.model is None:
                write_dense_keras(self.model_json, weights, temp)
            else:
                self.forward.model.set_weights(weights)
                self.forward.model.save(temp)


def write_dense_keras(model_json: str, weights: list[np.ndarray], path: str) -> None:
    """A ``.keras`` archive of a Dense chain (``common.modelspec.dense_chain``) with these
    weights, laid out as Keras 3 writes one: its JSON as ``config.json``, and the kernel and
    bias of the K-th Dense layer as ``vars/0`` and ``1`` under ``layers/dense_K`` (``dense``
    for the first) of ``model.weights.h5``: Keras files weights by class and order, not by the
    layer's name, which it keeps as an attribute."""
    # Here, not at the top: importlib.metadata pulls in email and with it socket, which code
    # that never touches one does not load (tests/test_errors.py).
    import importlib.metadata

    import h5py  # Keras's own dependency; it imports in a moment

    layers = json.loads(model_json)["config"]["layers"]
    names = [layer["config"]["name"] for layer in layers if layer["class_name"] == "Dense"]
    weights_file = io.BytesIO()
    with h5py.File(weights_file, "w") as store:
        remaining = iter(weights)
        chain = dense_chain(model_json)
        assert chain is not None, "a model without Keras is a Dense chain (ForwardPass.from_json)"
        for index, (name, (_, _, use_bias, _)) in enumerate(zip(names, chain)):
            group = store.create_group(f"layers/dense{f'_{index}' if index else ''}/vars")
            group.attrs["name"] = name
            group["0"] = next(remaining)
            if use_bias:
                group["1"] = next(remaining)
    metadata = {
        "keras_version": importlib.metadata.version("keras"),
        "date_saved": time.strftime("%Y-%m-%d@%H:%M:%S"),
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps(metadata))
        archive.writestr("config.json", model_json)
        archive.writestr("model.weights.h5", weights_file.getvalue())


def xor_network(seed: int | None = None) -> Network:
    return Network.from_json(xor_model_json(), seed)


def glorot_vector(shapes: list[tuple[int, ...]], seed: int | None = None) -> np.ndarray:
    """Keras's Dense defaults as one vector: kernels Glorot-uniform, biases zero."""
    # A stream of its own: the server draws its populations from ``seed`` itself.
    rng = np.random.default_rng(None if seed is None else [seed, 1])
    parts = []
    for shape in shapes:
        if len(shape) == 2:
            limit = math.sqrt(6.0 / (shape[0] + shape[1]))
            parts.append(rng.uniform(-limit, limit, size=shape).ravel())
        else:
            parts.append(np.zeros(shape))
    return np.concatenate(parts).astype(np.float32)


def weights_to_vector(weights: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(w) for w in weights]).astype(np.float32, copy=False)


def vector_to_weights(vector: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    weights, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        weights.append(np.reshape(vector[offset : offset + size], shape))
        offset += size
    return weights


def is_multiclass(labels: np.ndarray) -> bool:
    """More than two outputs: categorical metric and loss. Two (the tutorial's XOR): binary."""
    return labels.shape[-1] > 2


def binary_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Keras's BinaryAccuracy (threshold 0.5) over the last two axes: one value per solution."""
    return np.mean((probabilities > 0.5) == (labels > 0.5), axis=(-2, -1))


def categorical_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Keras's CategoricalAccuracy: share of samples whose top output is the true class."""
    return np.mean(np.argmax(probabilities, axis=-1) == np.argmax(labels, axis=-1), axis=-1)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The metric that decides ``done``: categorical for multi-class labels, else binary."""
    metric = categorical_accuracy if is_multiclass(labels) else binary_accuracy
    return metric(probabilities, labels)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # same values as 1/(1+e^-x), never overflows


def _softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "softmax": _softmax,
}


def _dense_stack(model: keras.Model) -> list[tuple[int, int, bool, str]] | None:
    """(fan_in, units, use_bias, activation) per layer if the model is only Dense layers."""
    keras = load_keras()

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return None
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if type(layer) is not keras.layers.Dense:
            return None
        activation = keras.activations.serialize(layer.activation)
        name = (
            activation if isinstance(activation, str) else activation.get("config", {}).get("name")
        )
        if name not in _ACTIVATIONS:
            return None
        layers.append((layer.kernel.shape[0], layer.units, layer.use_bias, name))
    return layers or None


class ForwardPass:
    """Output probabilities of one model architecture for many weight vectors at once.

    Stacks of Dense layers run as batched NumPy matrix products over a leading solutions
    axis; any other model falls back to one Keras call per vector (and mutates ``model``).
    """

    _dense: list[tuple[int, int, bool, str]] | None  # (fan_in, units, use_bias, activation)

    def __init__(self, model: keras.Model):
        self.model = model
        self._describe(
            [tuple(w.shape) for w in model.weights],
            model.inputs[0].shape[-1],
            model.outputs[0].shape[-1],
            _dense_stack(model),
        )
        if self._dense is not None and not self._agrees_with_keras():
            self._dense = None  # e.g. a Dense layer applied twice: the layer list misleads
        if self._dense is None:
            log.info("model is not a plain Dense stack: evaluating one solution at a time")

    @classmethod
    def from_json(cls, model_json: str, max_params: int) -> ForwardPass:
        """The forward pass of a model description, checked by ``common.modelspec`` first
        (``ModelRefused``). A plain Dense chain needs no Keras model: its JSON says it all."""
        from common.modelspec import dense_chain

        chain = dense_chain(model_json, max_params)
        if chain is None:
            return cls(model_from_json(model_json))
        forward = cls.__new__(cls)
        forward.model = None
        shapes = [
            shape
            for fan_in, units, use_bias, _ in chain
            for shape in ([(fan_in, units), (units,)] if use_bias else [(fan_in, units)])
        ]
        forward._describe(shapes, chain[0][0], chain[-1][1], chain)
        return forward

    def _describe(
        self,
        shapes: list[tuple[int, ...]],
        num_features: int,
        num_outputs: int,
        dense: list[tuple[int, int, bool, str]] | None,
    ) -> None:
        self.shapes, self.num_features, self.num_outputs = shapes, num_features, num_outputs
        self.num_params = sum(math.prod(s) for s in shapes)
        self._dense = dense

    def __call__(self, vectors: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        """Probabilities of shape (solutions, samples, outputs) for vectors (solutions, params)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self._dense is None:
            return np.stack([self._keras_forward(v, inputs) for v in vectors])
        count = len(vectors)
        h = np.broadcast_to(np.asarray(inputs, dtype=np.float32), (count, *np.shape(inputs)))
        offset = 0
        for fan_in, units, use_bias, activation in self._dense:
            kernel = vectors[:, offset : offset + fan_in * units].reshape(count, fan_in, units)
            offset += fan_in * units
            h = np.matmul(h, kernel)
            if use_bias:
                h = h + vectors[:, None, offset : offset + units]
                offset += units
            h = _ACTIVATIONS[activation](h)
        return h

    def _agrees_with_keras(self) -> bool:
        """Run the batched path once beside Keras on the model's own weights."""
        keras = load_keras()
        assert self._dense is not None  # asked only of a Dense stack
        probe = np.random.default_rng(0).standard_normal((4, self._dense[0][0])).astype(np.float32)
        expected = keras.ops.convert_to_numpy(self.model(probe, training=False))
        vector = weights_to_vector(self.model.get_weights())
        ours = self(vector[None, :], probe)[0]
        return ours.shape == expected.shape and np.allclose(ours, expected, rtol=1e-4, atol=1e-5)

    def _keras_forward(self, vector: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        keras = load_keras()

        self.model.set_weights(vector_to_weights(vector, self.shapes))
        return keras.ops.convert_to_numpy(self.model(inputs, training=False))

    def accuracy(self, vector: np.ndarray, inputs: np.ndarray, labels: np.ndarray) -> float:
        return float(accuracy(self(vector[None, :], inputs)[0], labels))
