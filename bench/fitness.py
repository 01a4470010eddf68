"""Cost of one solution's fitness: the tutorial's ``model.predict``, ``pygad.kerasga.predict``,
and our batched NumPy forward pass, on the XOR model and on a 784-128-10 model; then the cost
of one whole GA generation beside the batched fitness pass alone.

    python -m bench.fitness [--repeats 5] [--generations 20]

Every path computes the fitness ``1 / (loss + 1e-8)`` with the loss the project uses for that
model (``common.ga.loss``: BCE for two outputs, as the tutorial's XOR; CCE for more), for a
population of 10 solutions (the GA's population size), and is warmed up before it is timed.
The reference paths compute the loss with Keras's own loss classes. The three take turns, so
each ratio compares runs made under the same load. The losses of the three are compared too:
a fast path that computes something else would be no result, so the bench fails when any
path's loss differs from the batched one by more than LOSS_TOLERANCE.

A generation (PyGAD's parent selection, crossover, mutation, bookkeeping and the batched
fitness of the new members) is timed on the digits shape (64-32-10, 450 samples) and on
784-128-10 (100 samples), 10 solutions, as the median interval between PyGAD's
``on_generation`` calls (so a run's set-up is left out), beside the median of a few batched
fitness passes. Paths: before (``pygad.GA`` with its default operators, as ``train`` ran
it), ``train`` with ``--operators tutorial`` and with the default scaled operators, and
PyGAD's floor (an unmodified ``pygad.GA`` with do-nothing operators and a zero-cost
fitness). The target: a generation costs at most GENERATION_TARGET times the fitness pass.
NumPy's BLAS runs with the threads a client trains with (``common.ga.one_blas_thread``: one,
unless ``OPENBLAS_NUM_THREADS`` says otherwise); Keras keeps TensorFlow's own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import keras
import numpy as np
import pygad
import pygad.kerasga

from bench.common import (
    interleaved,
    keras_loss,
    paired_ratio,
    print_header,
    print_table,
    seconds,
    target,
    tutorial_fitness,
)
from common.data import XOR_TEST_DATA, Dataset
from common.ga import GAConfig, fitness, one_blas_thread, train
from common.model import ForwardPass, build_xor_model, weights_to_vector
from common.operators import TUTORIAL, spread_population

NUM_SOLUTIONS = 10
LOSS_TOLERANCE = 1e-5
BATCHED = "batched NumPy"
GENERATION_TARGET = 2.0
FITNESS_PASSES = 9  # per turn, their median: one pass alone is a short, noisy interval
FITNESS_PASS = "batched fitness pass (10 solutions)"
FLOOR = "pygad.GA floor: do-nothing operators, zero-cost fitness"
BEFORE = "before: pygad.GA, default operators"
TUTORIAL_OPERATORS = "train(), --operators tutorial"
SCALED_OPERATORS = "train(), scaled operators (default)"


def ten_class_model(features: int, hidden: int) -> keras.Model:
    """Input(features) -> Dense(hidden, relu) -> Dense(10, softmax)."""
    inputs = keras.Input(shape=(features,))
    hidden_layer = keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden_layer))


def ten_class_data(samples: int, features: int, standardised: bool) -> Dataset:
    """Random labels over random features: pixel-like in [0, 1) (784-128-10), or
    standardised, as a user's digits split would be."""
    rng = np.random.default_rng(0)
    inputs = (
        rng.standard_normal((samples, features), dtype=np.float32)
        if standardised
        else rng.random((samples, features), dtype=np.float32)
    )
    return Dataset(inputs, np.eye(10, dtype=np.float32)[rng.integers(0, 10, samples)])


def compare(
    name: str, model: keras.Model, data: Dataset, repeats: int, batched_calls: int, spread: float
):
    """Per-solution seconds of each path (lists, one per turn), and each reference path's
    largest loss difference from the batched path, which it prints.

    The population is the model's weights plus U(-spread, spread): the tutorial's spread of 1
    saturates a 784-input softmax, where any two float32 implementations differ in the last
    bits of probabilities near 1 and so in the clipped loss."""
    forward = ForwardPass(model)
    start = weights_to_vector(model.get_weights())
    population = start + np.random.default_rng(1).uniform(
        -spread, spread, size=(NUM_SOLUTIONS, forward.num_params)
    ).astype(np.float32)

    def tutorial():
        return [tutorial_fitness(model, s, data.inputs, data.outputs) for s in population]

    def kerasga():
        return [
            1.0 / (keras_loss(data.outputs, pygad.kerasga.predict(model, s, data.inputs)) + 1e-8)
            for s in population
        ]

    def batched():
        for _ in range(batched_calls):
            values = fitness(forward(population, data.inputs), data.outputs)
        return values

    paths = {"tutorial model.predict": tutorial, "pygad.kerasga.predict": kerasga, BATCHED: batched}
    losses = {label: 1 / np.asarray(path()) - 1e-8 for label, path in paths.items()}  # warm-up
    differences = {
        label: float(np.max(np.abs(values - losses[BATCHED])))
        for label, values in losses.items()
        if label != BATCHED
    }
    started = time.perf_counter()
    times = interleaved(paths, repeats)
    per_solution = {
        label: [t / (NUM_SOLUTIONS * (batched_calls if label == BATCHED else 1)) for t in values]
        for label, values in times.items()
    }
    print(
        f"{name}: {forward.num_params} parameters, {len(data)} samples, timed in "
        f"{time.perf_counter() - started:.1f} s; largest loss difference from batched: "
        + ", ".join(f"{label} {value:.1e}" for label, value in differences.items()),
        flush=True,
    )
    return per_solution, differences


def seconds_per_generation(run) -> float:
    """``run(on_generation)`` runs a GA; the median time between its generations' ends (on a
    shared machine single generations stall now and then, when another process takes the core)."""
    stamps = []
    run(lambda *_: stamps.append(time.perf_counter()))
    return statistics.median(np.diff(stamps))


def generation_costs(
    name: str,
    model: keras.Model,
    data: Dataset,
    repeats: int,
    generations: int,
    slow_generations: int,
) -> dict[str, list[float]]:
    """Seconds of each path per turn: the fitness pass, or one generation. PyGAD's default
    mutation takes seconds a generation on a large model: ``slow_generations`` of it
    (at least 2: a generation is the time between two ends)."""
    forward = ForwardPass(model)
    population = spread_population(
        weights_to_vector(model.get_weights()),
        forward.shapes,
        NUM_SOLUTIONS,
        np.random.default_rng(1),
    )

    def pygad_run(count, on_generation, **settings):
        pygad.GA(
            num_generations=count,
            num_parents_mating=GAConfig.num_parents_mating,
            initial_population=np.array(population, dtype=np.float64),
            fitness_batch_size=NUM_SOLUTIONS,
            on_generation=on_generation,
            mutation_percent_genes=GAConfig.mutation_percent_genes,
            random_seed=1,
            suppress_warnings=True,
            **settings,
        ).run()

    def our_run(count, on_generation, operators):
        train(
            forward,
            population,
            data,
            GAConfig(num_generations=count, stop_fitness=0, operators=operators),
            on_generation=on_generation,
            seed=1,
        )

    def batch_fitness(ga, solutions, indices):
        return fitness(forward(solutions, data.inputs), data.outputs)

    def do_nothing_fitness(ga, solutions, indices):
        return np.arange(len(solutions), dtype=np.float64) + ga.generations_completed

    paths = {
        FITNESS_PASS: lambda: fitness(forward(population, data.inputs), data.outputs),
        FLOOR: lambda: seconds_per_generation(
            lambda on_generation: pygad_run(
                generations,
                on_generation,
                fitness_func=do_nothing_fitness,
                parent_selection_type=lambda f, count, ga: (
                    ga.population[:count].copy(),
                    np.arange(count),
                ),
                crossover_type=lambda parents, size, ga: np.resize(parents, size),
                mutation_type=lambda offspring, ga: offspring,
            )
        ),
        BEFORE: lambda: seconds_per_generation(
            lambda on_generation: pygad_run(
                slow_generations, on_generation, fitness_func=batch_fitness
            )
        ),
        TUTORIAL_OPERATORS: lambda: seconds_per_generation(
            lambda on_generation: our_run(slow_generations, on_generation, TUTORIAL)
        ),
        SCALED_OPERATORS: lambda: seconds_per_generation(
            lambda on_generation: our_run(generations, on_generation, GAConfig.operators)
        ),
    }
    for path in paths.values():  # warm-up: first calls allocate and load
        path()
    costs: dict[str, list[float]] = {label: [] for label in paths}
    started = time.perf_counter()
    for _ in range(repeats):  # turns, so load drifts hit every path alike
        for label, path in paths.items():
            if label == FITNESS_PASS:
                passes = []
                for _ in range(FITNESS_PASSES):
                    begun = time.perf_counter()
                    path()
                    passes.append(time.perf_counter() - begun)
                costs[label].append(statistics.median(passes))
            else:
                costs[label].append(path())
    print(
        f"{name}: {forward.num_params} parameters, {len(data)} samples, timed in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return costs


def times(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


Timings = dict[str, dict[str, list[float]]]  # model -> path -> seconds, one per turn


@dataclass
class Results:
    """What a run recorded: plain numbers, for the tables and the targets."""

    per_solution: Timings  # each fitness path's seconds per solution
    differences: dict[str, dict[str, float]]  # model -> path -> largest loss difference
    generations: Timings  # a generation's seconds per path, and the batched fitness pass's

    def ratios(self, timings: Timings, baseline: str) -> dict[tuple[str, str], float]:
        """Each path's median turn-by-turn ratio to ``baseline``'s, by (model, path)."""
        return {
            (name, label): paired_ratio(values, by_path[baseline])
            for name, by_path in timings.items()
            for label, values in by_path.items()
        }


CHECKS = [
    ("XOR batched vs model.predict", ("XOR 2-4-2", "tutorial model.predict"), 1000),
    ("XOR batched vs pygad.kerasga.predict", ("XOR 2-4-2", "pygad.kerasga.predict"), 100),
    ("784-128-10 batched vs pygad.kerasga.predict", ("784-128-10", "pygad.kerasga.predict"), 3),
]


def collect(args: argparse.Namespace) -> Results:
    per_solution, differences = {}, {}
    for name, model, data, batched_calls, spread in [
        ("XOR 2-4-2", build_xor_model(), XOR_TEST_DATA, 300, 1.0),
        ("784-128-10", ten_class_model(784, 128), ten_class_data(100, 784, False), 5, 0.01),
    ]:
        per_solution[name], differences[name] = compare(
            name, model, data, args.repeats, batched_calls, spread
        )
    print(
        "\none GA generation beside the batched fitness pass (median of interleaved turns)",
        flush=True,
    )
    generations = {
        "digits 64-32-10": generation_costs(
            "digits 64-32-10",
            ten_class_model(64, 32),
            ten_class_data(450, 64, True),
            args.repeats,
            args.generations,
            args.generations,
        ),
        "784-128-10": generation_costs(
            "784-128-10",
            ten_class_model(784, 128),
            ten_class_data(100, 784, False),
            args.repeats,
            args.generations,
            3,
        ),
    }
    return Results(per_solution, differences, generations)


def report(results: Results) -> None:
    for timings, baseline, headers in (
        (results.per_solution, BATCHED, ["model", "path", "per solution", "batched is faster by"]),
        (results.generations, FITNESS_PASS, ["model", "path", "per generation", "x fitness pass"]),
    ):
        ratios = results.ratios(timings, baseline)
        print()
        print_table(
            headers,
            [
                [name, label, seconds(statistics.median(values)), times(ratios[name, label])]
                for name, by_path in timings.items()
                for label, values in by_path.items()
            ],
        )


def check_targets(results: Results) -> bool:
    met = True
    for name, by_path in results.differences.items():  # the ratios compare one computation only
        path, worst = max(by_path.items(), key=lambda item: item[1])
        met &= target(
            f"{name} loss of every path vs batched",
            f"{worst:.1e} ({path})",
            f"<= {LOSS_TOLERANCE:.0e}",
            worst <= LOSS_TOLERANCE,
        )
    ratios = results.ratios(results.per_solution, BATCHED)
    for label, key, wanted in CHECKS:
        met &= target(label, times(ratios[key]), f">= {wanted}x", ratios[key] >= wanted)
    ratios = results.ratios(results.generations, FITNESS_PASS)
    for name in results.generations:
        ratio = ratios[name, SCALED_OPERATORS]
        met &= target(
            f"{name} generation (scaled operators) vs batched fitness pass",
            f"{ratio:.2f}x",
            f"<= {GENERATION_TARGET:g}x (PyGAD's floor: {times(ratios[name, FLOOR])})",
            ratio <= GENERATION_TARGET,
        )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="turns of every path")
    parser.add_argument("--generations", type=int, default=20, help="per timed GA run")
    args = parser.parse_args(argv)
    one_blas_thread()  # the batched path runs as in a client (common.training)
    print_header("bench.fitness: seconds per solution's fitness (median of interleaved turns)")
    results = collect(args)
    report(results)
    return 0 if check_targets(results) else 1


if __name__ == "__main__":
    sys.exit(main())
