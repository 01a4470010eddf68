"""Peers that speak only the tutorial's protocol: plain pickle.dumps, no framing, and reads
that retry pickle.loads on accumulated 1024-byte chunks. Written independently of common/."""
from __future__ import annotations

import pickle
import socket

import keras
import numpy as np
import pygad
import pygad.kerasga


def plain_recv(sock: socket.socket):
    received = b""
    while True:
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError("peer closed")
        received += chunk
        try:
            return pickle.loads(received)
        except Exception:  # the tutorial's way: not complete yet, keep reading
            continue


def plain_send(sock: socket.socket, subject: str, data) -> None:
    sock.sendall(pickle.dumps({"subject": subject, "data": data}))


def plain_client(address, inputs: np.ndarray, outputs: np.ndarray, max_requests: int = 50):
    """The tutorial's client loop with Keras per-solution fitness; returns the final reply."""
    with socket.create_connection(address, timeout=60) as sock:
        subject, best = "echo", None
        for _ in range(max_requests):
            plain_send(sock, subject, {"best_model_weights_vector": best})
            reply = plain_recv(sock)
            if reply["subject"] == "done":
                return reply
            data = reply["data"]
            model = keras.models.model_from_json(data["model_json"])

            def fitness_func(ga, solution, index):
                model.set_weights(pygad.kerasga.model_weights_as_matrix(model, solution))
                p = np.clip(keras.ops.convert_to_numpy(model(inputs)), 1e-7, 1 - 1e-7)
                bce = -np.mean(outputs * np.log(p) + (1 - outputs) * np.log(1 - p))
                return 1.0 / (bce + 1e-8)

            ga = pygad.GA(num_generations=20, num_parents_mating=4,
                          initial_population=np.array(data["population_weights"]).copy(),
                          fitness_func=fitness_func, mutation_percent_genes=5,
                          suppress_warnings=True)
            ga.run()
            best, _, _ = ga.best_solution()
            subject = "model"
        raise AssertionError("the server never said done")


def plain_server(listening: socket.socket, rounds: int) -> list[dict]:
    """Serve one client the tutorial's way for ``rounds`` model replies, then ``done``."""
    inputs = keras.Input(shape=(2,))
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    keras_ga = pygad.kerasga.KerasGA(model=model, num_solutions=10)
    received = []
    connection, _ = listening.accept()
    with connection:
        for _ in range(rounds):
            received.append(plain_recv(connection))
            plain_send(connection, "model", {"population_weights": keras_ga.population_weights,
                                             "model_json": model.to_json(), "num_solutions": 10})
        received.append(plain_recv(connection))
        plain_send(connection, "done", None)
    return received
