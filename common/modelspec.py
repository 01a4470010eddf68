"""Checks a Keras model description (``model_json``) before Keras builds anything from it.

A peer's JSON can ask Keras for any layer and any size: ``"units": 10**9`` alone makes Keras
allocate gigabytes. So the JSON is read as plain data first: the model and layer classes
must be on an allowlist, every ``module`` must be Keras's own, the layers must form a chain
of known widths, and the parameter count computed from the config must stay under a cap.
"""

from __future__ import annotations

import json
from typing import Any

from common.errors import ModelRefused

DEFAULT_MAX_PARAMS = 5_000_000  # 20 MB of float32 weights; a population is ten times that
MODEL_CLASSES = frozenset({"Functional", "Sequential"})
LAYER_CLASSES = frozenset({"InputLayer", "Dense", "Dropout", "Activation"})
ACTIVATIONS = frozenset({"linear", "relu", "sigmoid", "tanh", "softmax"})


def _check_modules(node) -> None:
    if isinstance(node, dict):
        module = node.get("module")
        if module is not None and not (module == "keras" or str(module).startswith("keras.")):
            raise ModelRefused(f"model_json names the module {module!r}")
        for value in node.values():
            _check_modules(value)
    elif isinstance(node, list):
        for value in node:
            _check_modules(value)


def _width(shape) -> int:
    if not (
        isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0
    ):
        raise ModelRefused(f"layer input shape {shape!r} is not (batch, features)")
    return shape[1]


def _input_width(layer: dict, widths: dict[Any, int], previous: int | None) -> int:
    """The width feeding ``layer``: from the layer it names (Functional) or the one before
    (Sequential). Never from a shape the JSON claims, which need not be the real one."""
    nodes = layer.get("inbound_nodes")
    if not nodes:
        if previous is None:
            raise ModelRefused("the model has no InputLayer with a known width")
        return previous
    try:
        (node,) = nodes
        (tensor,) = node["args"]
        producer = tensor["config"]["keras_history"][0]
        return widths[producer]
    except (KeyError, TypeError, ValueError, IndexError):
        raise ModelRefused(f"layer {layer.get('name')!r} is not fed by one earlier layer") from None


DENSE_CONFIG_KEYS = frozenset(
    {  # Keras 3's Dense settings that do not change its outputs
        "name",
        "trainable",
        "dtype",
        "units",
        "activation",
        "use_bias",
        "kernel_initializer",
        "bias_initializer",
        "kernel_regularizer",
        "bias_regularizer",
        "activity_regularizer",
        "kernel_constraint",
        "bias_constraint",
        "quantization_config",
        "lora_rank",
        "lora_alpha",
    }
)


def _load(model_json: str) -> dict:
    try:
        spec = json.loads(model_json)
    except (TypeError, ValueError) as exc:
        raise ModelRefused(f"model_json is not JSON: {exc}") from None
    if not isinstance(spec, dict) or spec.get("class_name") not in MODEL_CLASSES:
        raise ModelRefused("model_json is not a Functional or Sequential model")
    _check_modules(spec)
    layers = spec.get("config", {}).get("layers")
    if not isinstance(layers, list) or not layers:
        raise ModelRefused("model_json has no layers")
    return spec


def _walk(layers: list, max_params: int) -> list[tuple[dict, int, int]]:
    """(layer, input width, output width) per layer, checked and counted against the cap."""
    total, width, walked = 0, None, []
    widths: dict[Any, int] = {}  # by each layer's name, as the JSON gives it: any JSON value
    for layer in layers:
        if not isinstance(layer, dict):
            raise ModelRefused("model_json has a layer that is not an object")
        kind, config = layer.get("class_name"), layer.get("config", {})
        if kind not in LAYER_CLASSES:
            raise ModelRefused(
                f"layer type {kind!r} is not allowed (allowed: {', '.join(sorted(LAYER_CLASSES))})"
            )
        if kind == "InputLayer":
            width = widths[layer.get("name")] = _width(
                config.get("batch_shape") or config.get("batch_input_shape")
            )
            walked.append((layer, width, width))
            continue
        fan_in = _input_width(layer, widths, width)
        activation = config.get("activation", "linear")
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ModelRefused(f"activation {activation!r} is not allowed")
        width = fan_in
        if kind == "Dense":
            units = config.get("units")
            if not isinstance(units, int) or units <= 0:
                raise ModelRefused(f"Dense units {units!r} is not a positive integer")
            total += fan_in * units + (units if config.get("use_bias", True) else 0)
            width = units
            if total > max_params:
                raise ModelRefused(
                    f"the model has more than {max_params:,} parameters, "
                    "more than this side accepts (--max-params)"
                )
        widths[layer.get("name")] = width
        walked.append((layer, fan_in, width))
    return walked


def count_params(model_json: str, max_params: int = DEFAULT_MAX_PARAMS) -> int:
    """Return the parameter count of ``model_json``, or raise ModelRefused."""
    walked = _walk(_load(model_json)["config"]["layers"], max_params)
    return sum(
        fan_in * layer["config"]["units"]
        + (layer["config"]["units"] if layer["config"].get("use_bias", True) else 0)
        for layer, fan_in, _ in walked
        if layer["class_name"] == "Dense"
    )


def dense_chain(
    model_json: str, max_params: int = DEFAULT_MAX_PARAMS
) -> list[tuple[int, int, bool, str]] | None:
    """(fan_in, units, use_bias, activation) per layer when ``model_json`` is one InputLayer
    followed by float32 Dense layers, each fed by the one before and the last the output;
    else None. Such a model's outputs follow from this list alone, without Keras.
    Raises ModelRefused as ``count_params`` does."""
    spec = _load(model_json)
    config, layers = spec["config"], spec["config"]["layers"]
    walked = _walk(layers, max_params)
    if layers[0].get("class_name") != "InputLayer" or len(layers) < 2:
        return None
    chain = []
    for previous, (layer, fan_in, _) in zip(layers, walked[1:]):
        settings = layer.get("config", {})
        if (
            layer.get("class_name") != "Dense"
            or not DENSE_CONFIG_KEYS.issuperset(settings)
            or settings.get("quantization_config")
            or settings.get("lora_rank")
            or _dtype_name(settings.get("dtype")) not in (None, "float32")
        ):
            return None
        nodes = layer.get("inbound_nodes")
        if spec["class_name"] == "Functional" and not _fed_by(nodes, previous.get("name")):
            return None
        chain.append(
            (
                fan_in,
                settings["units"],
                bool(settings.get("use_bias", True)),
                settings.get("activation", "linear"),
            )
        )
    if spec["class_name"] == "Functional" and (
        _first(config.get("input_layers")) != layers[0].get("name")
        or _first(config.get("output_layers")) != layers[-1].get("name")
    ):
        return None
    return chain


def _dtype_name(dtype) -> str | None:
    return dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype


def _fed_by(nodes, producer: str | None) -> bool:
    """The layer is called once, on the output of ``producer``."""
    try:
        (node,) = nodes
        (tensor,) = node["args"]
        return tensor["config"]["keras_history"][0] == producer and not node.get("kwargs")
    except (KeyError, TypeError, ValueError, IndexError):
        return False


def _first(names):
    """The layer name of a Functional config's ``input_layers``/``output_layers``, which Keras
    writes as [name, 0, 0] or as [[name, 0, 0]]; None if there is not exactly one."""
    if isinstance(names, list) and len(names) == 1 and isinstance(names[0], list):
        names = names[0]
    if isinstance(names, list) and len(names) == 3 and isinstance(names[0], str):
        return names[0]
    return None


def dense_chain_json(num_features: int, layers: list[tuple[int, str]]) -> str:
    """The JSON Keras's ``model.to_json()`` writes for ``Input(shape=(num_features,))``
    followed by ``Dense(units, activation)`` per ``layers`` entry, as a Functional model
    with Keras's default names and initializers. Built without Keras, so a server can send
    the tutorial's model without importing TensorFlow; tutorial peers rebuild it with Keras."""

    def tensor(width: int, producer: str) -> dict:
        return {
            "class_name": "__keras_tensor__",
            "config": {
                "shape": [None, width],
                "dtype": "float32",
                "keras_history": [producer, 0, 0],
            },
        }

    def initializer(class_name: str, config: dict) -> dict:
        return {
            "module": "keras.initializers",
            "class_name": class_name,
            "config": config,
            "registered_name": None,
        }

    spec: list[dict] = [
        {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "config": {
                "batch_shape": [None, num_features],
                "dtype": "float32",
                "sparse": False,
                "ragged": False,
                "name": "input_layer",
                "optional": False,
            },
            "registered_name": None,
            "name": "input_layer",
            "inbound_nodes": [],
        }
    ]
    width = num_features
    for index, (units, activation) in enumerate(layers):
        name = "dense" if index == 0 else f"dense_{index}"
        spec.append(
            {
                "module": "keras.layers",
                "class_name": "Dense",
                "config": {
                    "name": name,
                    "trainable": True,
                    "dtype": {
                        "module": "keras",
                        "class_name": "DTypePolicy",
                        "config": {"name": "float32"},
                        "registered_name": None,
                    },
                    "units": units,
                    "activation": activation,
                    "use_bias": True,
                    "kernel_initializer": initializer(
                        "GlorotUniform", {"seed": None, "input_axes": None, "output_axes": None}
                    ),
                    "bias_initializer": initializer("Zeros", {}),
                    "kernel_regularizer": None,
                    "bias_regularizer": None,
                    "kernel_constraint": None,
                    "bias_constraint": None,
                    "quantization_config": None,
                },
                "registered_name": None,
                "build_config": {"input_shape": [None, width]},
                "name": name,
                "inbound_nodes": [{"args": [tensor(width, spec[-1]["name"])], "kwargs": {}}],
            }
        )
        width = units
    return json.dumps(
        {
            "module": "keras.src.models.functional",
            "class_name": "Functional",
            "config": {
                "name": "functional",
                "trainable": True,
                "layers": spec,
                "input_layers": ["input_layer", 0, 0],
                "output_layers": [spec[-1]["name"], 0, 0],
            },
            "registered_name": "Functional",
            "build_config": {"input_shape": None},
            "compile_config": {},
        }
    )
