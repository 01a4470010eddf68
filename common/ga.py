"""The GA of a round: PyGAD evolves a population, on a client's own data (weights mode,
``train``), or at a fitness-mode server and in each client's mirror of it, scored by the
clients (``SharedFitnessGA``; common.fitness_federation). ``build_ga`` makes both.

The whole population is scored in one batched call (``fitness_batch_size``), with the
tutorial's fitness ``1 / (BCE + 1e-8)`` computed in NumPy on output probabilities, and
mutated by ``common.operators`` (steps sized to each layer, in NumPy).

Two sets of defaults, because the two kinds of problem want opposite things (measured in
docs/performance.md, "Settings by problem"). The tutorial's XOR (``GAConfig()``) is a search
for a lucky combination: big fixed steps, and a round ends once the local loss is small
(PyGAD's ``stop_criteria``), since past that two samples are overfitted and the weights only
drift from the global model. A real data set (``REAL_DATA``) converges: every generation
counts (a loss of 0.1 is far from fitted with ten classes), and the server shrinks the step
as its test loss stops falling. Each setting in the other's defaults costs: XOR with the
shrinking step, 1.35 s median to done instead of 0.32 s; digits with the early stop, 0.922
held-out accuracy instead of 0.962.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import pygad
from threadpoolctl import threadpool_limits

from common.auto import AUTO, Auto
from common.data import Dataset
from common.model import ForwardPass, is_multiclass
from common.operators import SCALED, TUTORIAL, ScaledMutation, step_scales

EPSILON = 1e-7  # probability clipping, as Keras's binary cross-entropy does


@dataclass(frozen=True)
class GAConfig:
    """The GA's settings: the server sends all but ``step_patience`` with each model. A
    server's config leaves ``stop_fitness`` and ``step_patience`` to the model unless given
    (``AUTO``, ``LEFT_TO_MODEL``); what runs, and a client's, is resolved."""

    num_generations: int = 50  # at most; see stop_fitness
    num_parents_mating: int = 4
    mutation_percent_genes: float = 5
    # Stop a round once a member reaches this fitness (BCE <= 0.1 at 10); 0: never.
    stop_fitness: float | Auto = 10.0
    # common.operators: "scaled" steps per layer, or the tutorial's (PyGAD's U(-1, 1)).
    operators: str = SCALED
    mutation_step: float = 0.3  # scaled: a step's sigma as a share of its layer's scale
    # The server halves mutation_step after this many rounds without a lower test loss (down
    # to a tenth of it); 0: a fixed step.
    step_patience: int | Auto = 0

    def for_model(self, defaults: GAConfig) -> GAConfig:
        """These settings with each one left to the model (``AUTO``) taken from
        ``defaults``, the model's (``GAConfig()`` or ``REAL_DATA``)."""
        return replace(
            self,
            **{
                f.name: getattr(defaults, f.name)
                for f in fields(self)
                if getattr(self, f.name) is AUTO
            },
        )


# Defaults for any model but the tutorial's XOR; see the module's docstring.
REAL_DATA = GAConfig(stop_fitness=0, step_patience=3)
# A server's GA settings until given: those the two kinds of problem want differently (the
# module's docstring) left to the model, the rest the tutorial's.
LEFT_TO_MODEL = GAConfig(stop_fitness=AUTO, step_patience=AUTO)


def one_blas_thread() -> None:
    """Let this process's BLAS (the fitness pass's matrix products) use one thread, unless the
    user chose a number (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``).

    Why (``bench.fitness``, docs/performance.md): a client shares its machine with the server,
    other clients and whatever else runs there, and OpenBLAS's threads then wait for each other:
    a 784-128-10 generation took 22-35 ms with two threads at load 2-3, 6 ms with one. On an
    idle machine two threads make the fitness pass ~1.4x faster, and a generation no faster
    than that.
    """
    if not {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"} & os.environ.keys():
        threadpool_limits(1, user_api="blas")


@dataclass(frozen=True)
class TrainingResult:
    best_vector: np.ndarray
    best_fitness: float
    generations: int


# Losses are summed in float64: a fitness-mode server adds clients' mean losses weighted by
# their sample counts, and that must equal the mean over all their data to ~1e-15, not to
# float32's ~1e-7, or a split would change which members the GA keeps.
def binary_crossentropy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean BCE over the last two axes: one loss per solution."""
    p = np.clip(probabilities, EPSILON, 1 - EPSILON)
    terms = labels * np.log(p) + (1 - labels) * np.log(1 - p)
    return -np.asarray(np.mean(terms, axis=(-2, -1), dtype=np.float64))


def categorical_crossentropy(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean CCE over samples: one loss per solution."""
    p = np.clip(probabilities, EPSILON, 1 - EPSILON)
    return -np.asarray(np.mean(np.sum(labels * np.log(p), axis=-1), axis=-1, dtype=np.float64))


def loss(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """BCE for two outputs (the tutorial's), CCE for more: one value per solution."""
    rule = categorical_crossentropy if is_multiclass(labels) else binary_crossentropy
    return rule(probabilities, labels)


def fitness(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The tutorial's ``1 / (loss + 1e-8)``."""
    return 1.0 / (loss(probabilities, labels) + 1e-8)


class _GA(pygad.GA):
    """``pygad.GA`` without two Python loops over every gene, which cost more than the batched
    fitness pass itself; each computes what PyGAD's does, in NumPy.

    - Each generation PyGAD's ``cal_pop_fitness`` finds the members it scored before (the
      elite and the parents: same genes, same fitness) by hashing ``tuple(member)`` for every
      member, parent and elite: 4 ms a generation at 2,410 genes, ~190 ms at 101,770. Here
      row comparisons find the same members in the same order of preference. The history
      caches (``save_solutions``, ``save_best_solutions``), which ``train`` never turns on,
      stay PyGAD's.
    - Its constructor copies the initial population into Python objects to check that each
      value is a number: 0.2-0.8 s a round at 101,770 genes. A float array holds numbers only.
    - Its ``steady_state_selection`` (the parents, and the elite) copies the chosen members
      three times; once is enough (~0.3 ms a generation at 101,770 genes, ``bench.fitness``).
    - It copies the mutated offspring to give them the genes' type they already have, and
      hands the members to score to the fitness function as ``population[indices]``, another
      copy, where those are one run of rows (all but the cached elite) that a slice shows
      as they are: ~0.25 and ~0.4 ms a generation at 101,770 genes.
    """

    def prepare_operator_output(self, population, build_initial_pop=False):
        if (
            self.allow_duplicate_genes
            and self.gene_type_single
            and self.gene_type[1] is None  # no rounding
            and isinstance(population, np.ndarray)
            and population.dtype == self._get_gene_storage_dtype(self.gene_type[0])
        ):
            return population
        return super().prepare_operator_output(population, build_initial_pop)

    def _score(self, indices: list[int]) -> list:
        """PyGAD's ``_evaluate_fitness(self.population, indices)``, given a slice when the
        rows are one run that fits one batch (``train``'s fitness only reads it)."""
        first = indices[0] if indices else 0
        if (
            self.parallel_processing is None
            and self.fitness_batch_size not in (None, 1)  # PyGAD's test for batches
            and 0 < len(indices) <= self.fitness_batch_size
            and indices == list(range(first, first + len(indices)))
        ):
            values = self.fitness_func(self, self.population[first : first + len(indices)], indices)
            self.num_fitness_evaluations += len(indices)
            if len(values) != len(indices):
                raise ValueError(
                    f"The batched fitness function returned {len(values)} values for "
                    f"{len(indices)} solutions."
                )
            return [
                self._validate_fitness_value(value, f"fitness_func for solution {index}")
                for index, value in zip(indices, values)
            ]
        return self._evaluate_fitness(self.population, indices)

    def steady_state_selection(self, fitness, num_parents):
        if self.gene_type_single and self.population.dtype == self._get_gene_storage_dtype(
            self.gene_type[0]
        ):  # PyGAD's parents have the genes' type: so do these
            indices = np.array(self.sort_solutions_nsga2(fitness=fitness)[:num_parents])
            return self.population[indices], indices  # fancy indexing copies, once
        return super().steady_state_selection(fitness, num_parents)

    def _validate_initial_population_shape(self, initial_population, sol_per_pop, num_genes):
        if not (
            isinstance(initial_population, np.ndarray)
            and initial_population.ndim == 2
            and initial_population.dtype.kind == "f"
            and initial_population.size
        ):
            return super()._validate_initial_population_shape(
                initial_population, sol_per_pop, num_genes
            )
        self.sol_per_pop, self.num_genes = self.pop_size = initial_population.shape
        return initial_population.copy()

    def _known_fitness(self) -> np.ndarray:
        """Each member's fitness if it was scored before (the elite and the parents kept from
        last generation: same genes, same fitness), else NaN."""
        known = np.full(len(self.population), np.nan)
        cached = []  # (earlier members, their indices last generation), elite first as PyGAD
        if self.keep_elitism > 0 and self.last_generation_elitism is not None:
            cached.append((self.last_generation_elitism, self.last_generation_elitism_indices))
        if self.keep_parents != 0 and self.last_generation_parents is not None:
            cached.append((self.last_generation_parents, self.last_generation_parents_indices))
        if not cached:
            return known
        members = np.concatenate([rows for rows, _ in cached])
        previous = np.concatenate([indices for _, indices in cached])
        # A few spread-out genes rule out most pairs before a full compare; NaN equals
        # nothing, as in PyGAD's tuples.
        probe = np.linspace(0, self.num_genes - 1, num=min(64, self.num_genes), dtype=np.intp)
        maybe = np.all(self.population[:, None, probe] == members[None, :, probe], axis=2)
        for index, member in zip(*np.nonzero(maybe)):  # first match wins, as in PyGAD
            if np.isnan(known[index]) and np.array_equal(self.population[index], members[member]):
                known[index] = self._validate_fitness_value(
                    self.previous_generation_fitness[previous[member]], "cached fitness"
                )
        return known

    def cal_pop_fitness(self):
        if (
            self.save_solutions
            or self.save_best_solutions
            or not getattr(self, "_fitness_run_active", False)
        ):  # outside run(): PyGAD's
            return super().cal_pop_fitness()
        pop_fitness = self._known_fitness()
        missing = np.flatnonzero(np.isnan(pop_fitness)).tolist()
        pop_fitness[missing] = self._score(missing)
        return pop_fitness


class SharedFitnessGA(_GA):
    """A ``_GA`` whose generations are scored elsewhere, all members at once: its
    ``fitness_func(ga, population, known)`` gets the whole population and ``known``, the
    fitness of the members scored before (NaN for the others), and returns every member's
    fitness. It may change known values: a fitness-mode server does when the clients whose
    data scored them changed, since values from two sets of data do not compare.
    """

    def cal_pop_fitness(self):
        known = (
            self._known_fitness()
            if getattr(self, "_fitness_run_active", False)
            else np.full(len(self.population), np.nan)
        )
        fitness = np.asarray(self.fitness_func(self, self.population, known), dtype=np.float64)
        self.num_fitness_evaluations += int(np.count_nonzero(np.isnan(known)))
        return fitness


def build_ga(
    population: np.ndarray,
    shapes: list[tuple[int, ...]],
    config: GAConfig,
    fitness_func: Callable,
    *,
    on_generation: Callable | None = None,
    seed: int | None = None,
    ga_type: type[_GA] = _GA,
) -> _GA:
    """The GA a round runs from ``population`` (solutions x params) with ``config``: a
    weights-mode client's, and in fitness mode the server's and each client's mirror of it,
    which must draw the same members from the same seed."""
    mutation: str | ScaledMutation
    if config.operators == TUTORIAL:
        mutation = "random"  # PyGAD's: U(-1, 1) added to the chosen genes
    else:
        mutation = ScaledMutation(step_scales(population[0], shapes), config.mutation_step)
    return ga_type(
        num_generations=config.num_generations,
        num_parents_mating=config.num_parents_mating,
        # float32 genes, as the model's weights: the forward pass takes them without a copy
        initial_population=np.array(population, dtype=np.float32),
        gene_type=np.float32,
        fitness_func=fitness_func,
        fitness_batch_size=len(population),
        mutation_type=mutation,
        mutation_percent_genes=config.mutation_percent_genes,
        on_generation=on_generation,
        stop_criteria=f"reach_{config.stop_fitness:g}" if config.stop_fitness else None,
        random_seed=seed,
        suppress_warnings=True,
    )


class RoundSeeds:
    """Each round's GA seed, drawn from one run seed: a seeded run repeats, and its rounds
    differ. One seed for every round would repeat the same random draws (which genes mutate,
    by how much) round after round, a bias that averaging piles up. Without a run seed the
    seeds are fresh entropy; there is always one, since fitness mode sends it to clients."""

    def __init__(self, seed: int | None):
        self._seeds = np.random.default_rng(seed)

    def next(self) -> int:
        return int(self._seeds.integers(2**32))


def train(
    forward: ForwardPass,
    population: np.ndarray,
    data: Dataset,
    config: GAConfig,
    *,
    on_generation: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed: int | None = None,
) -> TrainingResult:
    """Run the GA from ``population`` (solutions x params); return its best solution."""

    def batch_fitness(ga, solutions, indices):
        return fitness(forward(solutions, data.inputs), data.outputs)

    def generation_done(ga):
        if on_generation is not None:
            on_generation(ga.generations_completed, float(np.max(ga.last_generation_fitness)))
        if should_stop is not None and should_stop():
            return "stop"
        return None

    ga = build_ga(
        population,
        forward.shapes,
        config,
        batch_fitness,
        on_generation=generation_done,
        seed=seed,
    )
    ga.run()
    best, best_fitness, _ = ga.best_solution(pop_fitness=ga.last_generation_fitness)
    return TrainingResult(
        np.asarray(best, dtype=np.float32), float(best_fitness), ga.generations_completed
    )
