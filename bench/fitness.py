"""Cost of one solution's fitness: the tutorial's ``model.predict``, ``pygad.kerasga.predict``,
and our batched NumPy forward pass, on the XOR model and on a 784-128-10 model.

    python -m bench.fitness [--repeats 5]

Every path computes the fitness ``1 / (loss + 1e-8)`` with the loss the project uses for that
model (``common.ga.loss``: BCE for two outputs, as the tutorial's XOR; CCE for more), for a
population of 10 solutions (the GA's population size), and is warmed up before it is timed.
The reference paths compute the loss with Keras's own loss classes. The three take turns, so
each ratio compares runs made under the same load. The losses of the three are compared too:
a fast path that computes something else would be no result, so the bench fails when any
path's loss differs from the batched one by more than LOSS_TOLERANCE.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import keras
import numpy as np
import pygad.kerasga

from bench.common import (interleaved, keras_loss, paired_ratio, print_header, print_table,
                          seconds, target, tutorial_fitness)
from common.data import XOR_TEST_DATA, Dataset
from common.ga import fitness
from common.model import ForwardPass, build_xor_model, weights_to_vector

NUM_SOLUTIONS = 10
LOSS_TOLERANCE = 1e-5
BATCHED = "batched NumPy"


def mnist_shaped_model() -> keras.Model:
    inputs = keras.Input(shape=(784,))
    hidden = keras.layers.Dense(128, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))


def mnist_shaped_data(samples: int = 100) -> Dataset:
    rng = np.random.default_rng(0)
    inputs = rng.random((samples, 784), dtype=np.float32)
    return Dataset(inputs, np.eye(10, dtype=np.float32)[rng.integers(0, 10, samples)])


def compare(name: str, model: keras.Model, data: Dataset, repeats: int, batched_calls: int,
            spread: float):
    """Per-solution seconds of each path (lists, one per turn), and each reference path's
    largest loss difference from the batched path, which it prints.

    The population is the model's weights plus U(-spread, spread): the tutorial's spread of 1
    saturates a 784-input softmax, where any two float32 implementations differ in the last
    bits of probabilities near 1 and so in the clipped loss."""
    forward = ForwardPass(model)
    start = weights_to_vector(model.get_weights())
    population = start + np.random.default_rng(1).uniform(
        -spread, spread, size=(NUM_SOLUTIONS, forward.num_params)).astype(np.float32)

    def tutorial():
        return [tutorial_fitness(model, s, data.inputs, data.outputs) for s in population]

    def kerasga():
        return [1.0 / (keras_loss(data.outputs, pygad.kerasga.predict(model, s, data.inputs))
                       + 1e-8) for s in population]

    def batched():
        for _ in range(batched_calls):
            values = fitness(forward(population, data.inputs), data.outputs)
        return values

    paths = {"tutorial model.predict": tutorial, "pygad.kerasga.predict": kerasga,
             BATCHED: batched}
    losses = {label: 1 / np.asarray(path()) - 1e-8 for label, path in paths.items()}  # warm-up
    differences = {label: float(np.max(np.abs(values - losses[BATCHED])))
                   for label, values in losses.items() if label != BATCHED}
    started = time.perf_counter()
    times = interleaved(paths, repeats)
    per_solution = {label: [t / (NUM_SOLUTIONS * (batched_calls if label == BATCHED else 1))
                            for t in values] for label, values in times.items()}
    print(f"{name}: {forward.num_params} parameters, {len(data)} samples, timed in "
          f"{time.perf_counter() - started:.1f} s; largest loss difference from batched: "
          + ", ".join(f"{label} {value:.1e}" for label, value in differences.items()), flush=True)
    return per_solution, differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="turns of every path")
    args = parser.parse_args(argv)
    print_header("bench.fitness: seconds per solution's fitness (median of interleaved turns)")

    results, differences = {}, {}
    for name, model, data, batched_calls, spread in [
            ("XOR 2-4-2", build_xor_model(), XOR_TEST_DATA, 300, 1.0),
            ("784-128-10", mnist_shaped_model(), mnist_shaped_data(), 5, 0.01)]:
        results[name], differences[name] = compare(name, model, data, args.repeats,
                                                   batched_calls, spread)
    print()
    rows, ratios = [], {}
    for name, per_solution in results.items():
        fast = per_solution[BATCHED]
        for label, values in per_solution.items():
            ratios[name, label] = paired_ratio(values, fast)
            rows.append([name, label, seconds(statistics.median(values)),
                         f"{ratios[name, label]:,.0f}x" if ratios[name, label] >= 10
                         else f"{ratios[name, label]:.1f}x"])
    print_table(["model", "path", "per solution", "batched is faster by"], rows)

    checks = [
        ("XOR batched vs model.predict", ("XOR 2-4-2", "tutorial model.predict"), 1000),
        ("XOR batched vs pygad.kerasga.predict", ("XOR 2-4-2", "pygad.kerasga.predict"), 100),
        ("784-128-10 batched vs pygad.kerasga.predict", ("784-128-10", "pygad.kerasga.predict"), 3),
    ]
    met = True
    for name, by_path in differences.items():  # the ratios below compare one computation only
        path, worst = max(by_path.items(), key=lambda item: item[1])
        met &= target(f"{name} loss of every path vs batched", f"{worst:.1e} ({path})",
                      f"<= {LOSS_TOLERANCE:.0e}", worst <= LOSS_TOLERANCE)
    for label, key, wanted in checks:
        met &= target(label, f"{ratios[key]:,.0f}x" if ratios[key] >= 10 else f"{ratios[key]:.1f}x",
                      f">= {wanted}x", ratios[key] >= wanted)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
