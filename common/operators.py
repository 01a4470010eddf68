"""How far the GA moves weights: the mutation PyGAD runs on a client, and the spread of the
population a server builds around the global weights. Pure NumPy over flat weight vectors
(``common.model``'s order), given the shapes of the model's weight arrays
(``ForwardPass.shapes``: a Dense layer's kernel ``(fan_in, units)``, then its bias ``(units,)``).

Two kinds, chosen by ``GAConfig.operators``:

- ``scaled`` (the default): Gaussian steps sized per weight array, ``step`` times the array's
  root mean square, never below ``step / sqrt(fan_in)`` (Keras biases start at zero and must
  still move; ``1 / sqrt(fan_in)`` is the classic initial weight scale for that fan-in).
  Measured: digits (64-32-10), 600 generations centrally, 0.947 test accuracy at step 0.3
  (0.929 at 0.2, 0.931 at 0.5); PyGAD's U(-1, 1) reached 0.321. PyGAD's random
  mutation adds U(-1, 1) whatever the weights, ~10x the weights of a model whose weights are
  ~0.1, and it runs in Python gene by gene; this one is a few array operations a generation.
- ``tutorial``: PyGAD's own random mutation, and the spread U(-s, s) with
  s = max(1, mean |w|), kept for comparison and for the benchmarks' "before" rows.
"""

from __future__ import annotations

import functools
import math

import numpy as np

SCALED, TUTORIAL = "scaled", "tutorial"
OPERATORS = (SCALED, TUTORIAL)
_LARGEST = float(np.finfo(np.float32).max)  # a step never leaves float32's finite range


def step_scales(vector: np.ndarray, shapes: list[tuple[int, ...]]) -> np.ndarray:
    """One scale per weight: its array's root mean square, floored at 1 / sqrt(fan_in)."""
    scales, offset, fan_in = np.empty(len(vector)), 0, 1
    for shape in shapes:
        size = math.prod(shape)
        if len(shape) >= 2:  # a kernel: its first axis is the layer's fan-in
            fan_in = shape[0]
        # A bias follows its kernel and shares its fan-in (an array before any kernel: 1).
        values = np.asarray(vector[offset : offset + size], dtype=np.float64)
        rms = float(np.sqrt(np.mean(np.square(values)))) if size else 0.0
        scales[offset : offset + size] = max(rms, 1.0 / math.sqrt(fan_in))
        offset += size
    return scales


def spread_population(
    vector: np.ndarray,
    shapes: list[tuple[int, ...]],
    num_solutions: int,
    rng: np.random.Generator,
    operators: str = SCALED,
    step: float = 0.3,
) -> np.ndarray:
    """``num_solutions`` members around ``vector``, the first being ``vector`` itself."""
    size = (num_solutions - 1, len(vector))
    if operators == TUTORIAL:
        # The tutorial spreads by U(-1, 1); once weights grow past that every member saturates
        # alike and training stalls, hence the mean magnitude as a lower bound.
        scale = max(1.0, float(np.mean(np.abs(vector))))
        spread = rng.uniform(-scale, scale, size=size)
    else:
        spread = rng.standard_normal(size) * (step * step_scales(vector, shapes))
    return np.vstack([vector, np.clip(vector + spread, -_LARGEST, _LARGEST).astype(np.float32)])


@functools.lru_cache(maxsize=8)
def _strata(num_genes: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first gene and the length of each of ``count`` runs that tile ``num_genes`` genes,
    their lengths differing by at most one."""
    edges = np.arange(count + 1, dtype=np.int64) * num_genes // count
    return edges[:-1], np.diff(edges)


# A noise table: Salimans et al.'s "shared noise table" (Evolution Strategies as a Scalable
# Alternative to Reinforcement Learning, 2017). A standard normal value costs ~9 ns to draw
# here, 0.45 ms a generation at 101,770 genes (a sixth of that model's fitness pass); a slice
# of values drawn once per process costs nothing. Below _NOISE_TABLE_FROM values a generation,
# drawing is cheaper than the table's 8 MiB.
_NOISE_TABLE_SIZE = 1 << 21
_NOISE_TABLE_FROM = 1 << 12
_NOISE_TABLE_SEED = 0  # any fixed seed: the same table in every process, so runs repeat


@functools.cache
def _noise_table() -> np.ndarray:
    rng = np.random.default_rng(_NOISE_TABLE_SEED)
    return rng.standard_normal(_NOISE_TABLE_SIZE, np.float32)


def _standard_normal(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` standard normal float32 values: from ``rng``, or a slice of the table at an
    offset drawn from ``rng``. Each value is N(0, 1) either way and a seed repeats its run;
    which genes the values move is drawn afresh each generation."""
    if _NOISE_TABLE_FROM <= count <= _NOISE_TABLE_SIZE // 4:
        offset = int(rng.integers(0, _NOISE_TABLE_SIZE - count + 1))
        return _noise_table()[offset : offset + count]
    return rng.standard_normal(count, np.float32)


class ScaledMutation:
    """A PyGAD mutation callable, ``(offspring, ga) -> offspring``: each offspring gets
    Gaussian steps of ``step * step_scales`` on exactly ``ga.mutation_num_genes`` distinct
    genes; every other gene is left as it was.

    The genes are drawn stratified: the vector is cut into that many runs of equal length (to
    one gene) and one gene is drawn in each, so every gene is as likely to move as with a
    uniform draw, and a layer gets its share of the steps. Drawing without replacement shuffles
    an index of the whole vector per offspring: 1 ms a generation at 101,770 genes, a third of
    the fitness pass (``bench.fitness``); this is two small array operations.

    Make one per ``pygad.GA``: its generator is seeded once from that GA's own seeded
    generator (so ``random_seed`` repeats a run). The offspring are changed in place, as
    PyGAD's own operators do (``pygad.GA`` copies them after; ``common.ga._GA`` need not).
    """

    def __init__(self, scales: np.ndarray, step: float):
        self.sigma = (step * np.asarray(scales)).astype(np.float32)  # float32, as the genes
        self._rng: np.random.Generator | None = None

    def __call__(self, offspring: np.ndarray, ga) -> np.ndarray:
        if self._rng is None:
            self._rng = np.random.default_rng(
                ga.numpy_random_generator.randint(0, 2**32, size=4, dtype=np.uint64)
            )
        rows, num_genes = offspring.shape
        starts, lengths = _strata(num_genes, int(ga.mutation_num_genes))
        # 16 random bits per gene: the choice within a run of ~20 is uniform to 1 in 3,000
        draws = np.frombuffer(self._rng.bytes(2 * rows * len(starts)), np.uint16)
        genes = starts + ((draws.reshape(rows, -1).astype(np.int64) * lengths) >> 16)
        mutated = np.ascontiguousarray(offspring)  # PyGAD's is already: no copy
        where = (genes + num_genes * np.arange(rows)[:, None]).ravel()
        flat = mutated.reshape(-1)
        noise = _standard_normal(self._rng, where.size)
        with np.errstate(over="ignore"):  # past float32's range: clipped back just below
            moved = flat[where] + self.sigma[genes.ravel()] * noise
        flat[where] = np.clip(moved, -_LARGEST, _LARGEST, out=moved)
        return mutated
