"""Peers that speak only the tutorial's protocol: plain pickle.dumps, no framing, and reads
that retry pickle.loads on accumulated 1024-byte chunks. Written independently of common/,
for the tests (a plain peer must work against ours, both ways) and the benchmarks (the
tutorial's baselines)."""

from __future__ import annotations

import pickle
import socket
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

TUTORIAL_BUFFER_SIZE = 1024


class DidNotFinish(Exception):
    """A baseline ran past its cap; the table says so instead of waiting for it."""


def plain_recv(
    sock: socket.socket, buffer_size: int = TUTORIAL_BUFFER_SIZE, cap: float | None = None
):
    """The tutorial's receive loop: append each chunk and try ``pickle.loads`` on the whole
    buffer until it succeeds, which is quadratic in the message size. ``cap`` seconds
    bound a benchmark's patience (DidNotFinish), not the loop's behaviour."""
    stop_at = None if cap is None else time.perf_counter() + cap
    received = b""
    while True:
        chunk = sock.recv(buffer_size)
        if not chunk:
            raise ConnectionError("peer closed the connection in the middle of a message")
        received += chunk
        try:
            return pickle.loads(received)
        except Exception:  # the tutorial's way: not complete yet, keep reading
            if stop_at is not None and time.perf_counter() > stop_at:
                raise DidNotFinish(f"after {len(received)} bytes") from None


def plain_send(sock: socket.socket, subject: str, data) -> None:
    sock.sendall(pickle.dumps({"subject": subject, "data": data}))


def _fitness(probabilities: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """The tutorial's 1 / (BCE + 1e-8), BCE clipped as Keras clips it; one value per
    solution when ``probabilities`` holds several."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    bce = -np.mean(outputs * np.log(p) + (1 - outputs) * np.log(1 - p), axis=(-2, -1))
    return 1.0 / (bce + 1e-8)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _batched_forward(model: keras.Model):
    """``(solutions, inputs) -> probabilities`` for a Dense chain of relu and softmax layers
    (the tutorial's model), in float32 as Keras computes it."""
    layers = [
        (layer.get_weights()[0].shape, layer.activation.__name__)
        for layer in model.layers
        if layer.weights
    ]
    activations = {"relu": _relu, "softmax": _softmax}

    def forward(solutions: np.ndarray, inputs: np.ndarray) -> np.ndarray:
        solutions = np.asarray(solutions, dtype=np.float32)
        h, offset = np.broadcast_to(inputs, (len(solutions), *inputs.shape)), 0
        for (fan_in, units), activation in layers:
            kernel = solutions[:, offset : offset + fan_in * units].reshape(-1, fan_in, units)
            offset += fan_in * units
            h = activations[activation](h @ kernel + solutions[:, None, offset : offset + units])
            offset += units
        return h

    return forward


def plain_client(
    address,
    inputs: np.ndarray,
    outputs: np.ndarray,
    *,
    max_requests: int = 50,
    seed: int | None = None,
    batched: bool = False,
):
    """The tutorial's client loop with its GA settings (PyGAD's defaults: random mutation of
    5% of the genes by U(-1, 1), 20 generations, 4 parents mating, the population as
    received) and its fitness; returns the final reply. Keras scores each solution, or with
    ``batched`` a NumPy forward pass scores them all at once (same values, float32)."""
    import keras  # here: the protocol helpers above stay free of TensorFlow for bench.transfer
    import pygad
    import pygad.kerasga

    with socket.create_connection(address, timeout=60) as sock:
        subject, best, model_json = "echo", None, None
        for request in range(max_requests):
            plain_send(sock, subject, {"best_model_weights_vector": best})
            reply = plain_recv(sock)
            if reply["subject"] == "done":
                return reply
            data = reply["data"]
            if data["model_json"] != model_json:  # the same every round: build it once
                model_json = data["model_json"]
                model = keras.models.model_from_json(model_json)
                forward = _batched_forward(model) if batched else None
            population = np.array(data["population_weights"]).copy()
            if batched:
                scoring = {
                    "fitness_func": lambda ga, solutions, indices: _fitness(
                        forward(solutions, inputs), outputs
                    ),
                    "fitness_batch_size": len(population),
                }
            else:

                def fitness_func(ga, solution, index):
                    model.set_weights(pygad.kerasga.model_weights_as_matrix(model, solution))
                    return _fitness(keras.ops.convert_to_numpy(model(inputs)), outputs)

                scoring = {"fitness_func": fitness_func}
            ga = pygad.GA(
                num_generations=20,
                num_parents_mating=4,
                initial_population=population,
                mutation_percent_genes=5,
                random_seed=None if seed is None else seed + request,
                suppress_warnings=True,
                **scoring,
            )
            ga.run()
            best, _, _ = ga.best_solution()
            subject = "model"
        raise AssertionError("the server never said done")


def plain_server(listening: socket.socket, rounds: int) -> list[dict]:
    """Serve one client the tutorial's way for ``rounds`` model replies, then ``done``."""
    import keras
    import pygad.kerasga

    inputs = keras.Input(shape=(2,))
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    keras_ga = pygad.kerasga.KerasGA(model=model, num_solutions=10)
    received = []
    connection, _ = listening.accept()
    with connection:
        for _ in range(rounds):
            received.append(plain_recv(connection))
            plain_send(
                connection,
                "model",
                {
                    "population_weights": keras_ga.population_weights,
                    "model_json": model.to_json(),
                    "num_solutions": 10,
                },
            )
        received.append(plain_recv(connection))
        plain_send(connection, "done", None)
    return received
