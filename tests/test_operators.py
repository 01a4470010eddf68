"""The GA's operators (common.operators) on a real pygad.GA: which genes a mutation moves, how
far, from which seed; and our pygad.GA subclass computes what PyGAD computes."""

from __future__ import annotations

import math
import threading

import numpy as np
import pygad
import pytest

from common.data import CLIENT_DATA
from common.ga import _GA, GAConfig, train
from common.model import ForwardPass, build_xor_model, weights_to_vector
from common.operators import ScaledMutation, spread_population, step_scales

# A Dense 64-32-10 stack: kernel, bias, kernel, bias (ForwardPass.shapes' layout).
SHAPES = [(64, 32), (32,), (32, 10), (10,)]
NUM_GENES = sum(math.prod(shape) for shape in SHAPES)
STEP = 0.3


def layers(values: np.ndarray) -> list[np.ndarray]:
    """``values`` (..., genes) split per weight array along the last axis."""
    bounds = np.cumsum([math.prod(shape) for shape in SHAPES])[:-1]
    return np.split(values, bounds, axis=-1)


def weights(rng: np.random.Generator) -> np.ndarray:
    """A model mid-training: a large first kernel, a second kernel below its floor (1 /
    sqrt(32)), biases at Keras's initial zero."""
    return np.concatenate(
        [rng.normal(0, 0.5, 64 * 32), np.zeros(32), rng.normal(0, 0.02, 32 * 10), np.zeros(10)]
    ).astype(np.float32)


def real_ga(mutation, percent: float = 5, seed: int | None = 0, num_genes: int = NUM_GENES):
    """A pygad.GA as ``train`` builds one; the operators read their settings from it."""
    return pygad.GA(
        num_generations=1,
        num_parents_mating=4,
        sol_per_pop=10,
        num_genes=num_genes,
        fitness_func=lambda ga, s, i: 0.0,
        mutation_type=mutation,
        mutation_percent_genes=percent,
        random_seed=seed,
        gene_type=np.float32,
        suppress_warnings=True,
    )


def mutate(
    offspring: np.ndarray,
    percent: float = 5,
    seed: int | None = 0,
    vector: np.ndarray | None = None,
) -> np.ndarray:
    mutation = ScaledMutation(step_scales(offspring[0] if vector is None else vector, SHAPES), STEP)
    return mutation(offspring.copy(), real_ga(mutation, percent, seed, offspring.shape[1]))


def test_mutation_moves_the_configured_share_of_genes_and_leaves_the_rest_bit_identical():
    offspring = np.tile(weights(np.random.default_rng(0)), (9, 1))
    mutated = mutate(offspring, percent=5)
    assert mutated.shape == offspring.shape and mutated.dtype == np.float32
    moved = offspring.view(np.uint32) != mutated.view(np.uint32)  # bits, not values
    assert moved.sum(axis=1).tolist() == [int(0.05 * NUM_GENES)] * 9
    assert len({tuple(np.flatnonzero(row)) for row in moved}) == 9  # each draws its own genes


def test_every_gene_is_as_likely_to_move():
    offspring = np.tile(weights(np.random.default_rng(0)), (2000, 1))
    moved = (offspring != mutate(offspring, percent=5)).mean(axis=0)  # each gene's share
    # Binomial(2000, 0.05) per gene: sd 0.0049; a gene never (or always) drawn would be 10 sd out
    assert np.all(np.abs(moved - 0.05) < 0.025)
    assert all(abs(layer.mean() - 0.05) < 0.005 for layer in layers(moved))


def test_step_scale_follows_each_layer_with_a_floor_from_its_fan_in():
    vector = weights(np.random.default_rng(1))
    offspring = np.tile(vector, (200, 1))
    steps = mutate(offspring, percent=100, seed=1) - offspring
    kernel, bias, small_kernel, output_bias = (np.std(layer) for layer in layers(steps))
    assert kernel == pytest.approx(STEP * 0.5, rel=0.05)  # the layer's own scale
    assert bias == pytest.approx(STEP / math.sqrt(64), rel=0.05)  # zeros still move
    assert small_kernel == pytest.approx(STEP / math.sqrt(32), rel=0.05)  # floored
    assert output_bias == pytest.approx(STEP / math.sqrt(32), rel=0.05)
    assert bias > 0 and output_bias > 0


@pytest.mark.parametrize("rows", [9, 500])  # steps drawn one by one; a slice of the table
def test_the_same_seed_mutates_alike_and_another_seed_does_not(rows):
    offspring = np.tile(weights(np.random.default_rng(2)), (rows, 1))
    first, again = mutate(offspring, seed=7), mutate(offspring, seed=7)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, mutate(offspring, seed=8))


@pytest.mark.parametrize("magnitude", [0.0, 1e-30, 1e30, 3e38])
def test_mutation_and_spread_never_give_nan_or_infinity(magnitude):
    vector = np.full(NUM_GENES, magnitude, dtype=np.float32)
    mutated = mutate(np.tile(vector, (9, 1)), percent=100, vector=vector)
    spread = spread_population(vector, SHAPES, 10, np.random.default_rng(0))
    assert np.all(np.isfinite(mutated)) and np.all(np.isfinite(spread))
    assert not np.array_equal(mutated[0], vector)  # even all-zero weights move


def test_the_spread_is_sized_per_layer_around_the_global_weights_first():
    vector = weights(np.random.default_rng(3))
    population = spread_population(vector, SHAPES, 2001, np.random.default_rng(3), step=STEP)
    assert population.dtype == np.float32 and np.array_equal(population[0], vector)
    spreads = [np.std(layer) for layer in layers(population[1:] - vector)]
    expected = [STEP * 0.5, STEP / 8, STEP / math.sqrt(32), STEP / math.sqrt(32)]
    assert spreads == pytest.approx(expected, rel=0.05)


def test_the_tutorial_spread_is_uniform_at_least_one_wide():
    vector = weights(np.random.default_rng(4))
    population = spread_population(vector, SHAPES, 50, np.random.default_rng(4), "tutorial")
    spread = population[1:] - vector
    assert np.array_equal(population[0], vector)
    assert 0.99 < np.max(np.abs(spread)) <= 1.0 + 1e-6


def test_clients_as_threads_repeat_a_seeded_run_each():
    forward = ForwardPass(build_xor_model())
    vector = weights_to_vector(forward.model.get_weights())
    population = spread_population(vector, forward.shapes, 10, np.random.default_rng(5))
    config = GAConfig(num_generations=10, stop_fitness=0)

    def run(seed: int):
        return train(forward, population, CLIENT_DATA["client1"], config, seed=seed).best_vector

    alone = run(11)
    results: dict[int, np.ndarray] = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, run(11 + i % 2)))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert np.array_equal(results[0], alone) and np.array_equal(results[2], alone)
    assert np.array_equal(results[1], results[3])


@pytest.mark.parametrize("mutation", ["random", "scaled", None])
def test_our_pygad_subclass_computes_what_pygad_computes(mutation):
    """Same seed, same operators: the same members scored (the elite and copied parents taken
    from the cache), the same fitness, the same populations, generation by generation."""
    rng = np.random.default_rng(6)
    population = rng.normal(0, 0.5, size=(10, NUM_GENES)).astype(np.float32)
    target = rng.normal(0, 0.5, size=NUM_GENES).astype(np.float32)

    def run(cls):
        scored, history = [], []

        def fitness(ga, solutions, indices):
            scored.append(list(indices))
            return 1.0 / (1e-3 + np.mean((solutions - target) ** 2, axis=1))

        operator = (
            ScaledMutation(step_scales(population[0], SHAPES), STEP)
            if mutation == "scaled"
            else mutation
        )
        ga = cls(
            num_generations=15,
            num_parents_mating=4,
            initial_population=population,
            gene_type=np.float32,
            fitness_func=fitness,
            fitness_batch_size=10,
            mutation_type=operator,
            mutation_percent_genes=5,
            random_seed=3,
            suppress_warnings=True,
            on_generation=lambda ga: history.append(
                (ga.population.copy(), ga.last_generation_fitness.copy())
            ),
        )
        initial = ga.population.copy()
        ga.run()
        return initial, scored, history

    ours, theirs = run(_GA), run(pygad.GA)
    assert np.array_equal(ours[0], theirs[0])
    assert ours[1] == theirs[1]
    assert any(len(indices) < 10 for indices in ours[1][1:])  # the cache was used
    for (population_a, fitness_a), (population_b, fitness_b) in zip(ours[2], theirs[2]):
        assert np.array_equal(population_a, population_b)
        assert np.array_equal(fitness_a, fitness_b)
    assert len(ours[2]) == len(theirs[2]) == 15
