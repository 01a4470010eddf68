"""Aggregation rules: how clients' updates fold into the global model. Pure NumPy on flat
weight vectors: no sockets, no Keras, no server state beyond a rule's own.

A rule is an ``Aggregation``, the way Flower's ``Strategy`` owns ``aggregate_train``:
``aggregate`` turns the global vector and a round's updates into the next global vector,
and ``per_update`` says what a round is: each update as it comes (the tutorial's running
average), or else the updates gathered until ``--min-clients`` arrived or ``--round-timeout``
passed. ``GlobalModel`` (common.server) gathers the rounds, scores and commits the result.
``AGGREGATIONS`` finds the rules by name: the ``--aggregation`` choices, the Flower run
config's check and the server window's spinner all read it.

``model_averaging`` is the tutorial's running average; the functions below it are the
round-based rules over lists of vectors, the mean-based ones built on it as a streaming
weighted mean. Adding a rule is one class plus its test, e.g. FedAvg with server momentum
(Hsu et al., 2019), which keeps a velocity of its own across rounds::

    @register
    class FedAvgM(Aggregation):
        name = "fedavgm"

        def __init__(self, momentum: float = 0.9):
            self.momentum, self.velocity = momentum, 0.0

        def aggregate(self, global_vector, updates):
            step = FedAvg().aggregate(global_vector, updates) - global_vector
            self.velocity = self.momentum * self.velocity + step
            return global_vector + self.velocity

and in tests/test_aggregate.py a test of what it returns for a few updates. Registered, it is
a choice of ``--aggregation``, of the window's spinner and (being round-based) of Flower.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


def model_averaging(
    global_vector: np.ndarray, update_vector: np.ndarray, update_weight: float = 0.5
) -> np.ndarray:
    """The tutorial's running average: with the default weight, the mean of the two."""
    return global_vector + update_weight * (update_vector - global_vector)


def fedavg(
    updates: Sequence[np.ndarray], sample_counts: Sequence[float] | None = None
) -> np.ndarray:
    """Mean of the updates weighted by each client's sample count (1 each when unknown)."""
    counts = [1.0] * len(updates) if sample_counts is None else list(sample_counts)
    mean, total = np.asarray(updates[0], dtype=np.float64), counts[0]
    for update, count in zip(updates[1:], counts[1:]):
        total += count
        mean = model_averaging(mean, update, count / total)
    return mean


def median(updates: Sequence[np.ndarray]) -> np.ndarray:
    """Coordinate-wise median: a minority of wild updates cannot move it far."""
    return np.median(np.stack(updates), axis=0)


def trimmed_mean(updates: Sequence[np.ndarray], trim: float = 0.2) -> np.ndarray:
    """Coordinate-wise mean after dropping the ``trim`` share of highest and lowest values."""
    ordered = np.sort(np.stack(updates), axis=0)
    cut = int(len(updates) * trim)
    return fedavg(list(ordered[cut : len(updates) - cut]))


@dataclass(frozen=True)
class Update:
    """One client's best weights, as a rule sees them."""

    vector: np.ndarray
    num_samples: int = 1  # its client's sample count; 1 when the client sent none
    reached_target: bool = False  # it alone scored the target accuracy on the test data
    client: str = ""  # who sent it, for a rule that remembers clients


# The server's scoring of candidate models, stacked as rows: (reaches the target, loss) each.
Scores = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class Aggregation(ABC):
    """A rule that folds a round's updates into the global model; see the module's text."""

    name: ClassVar[str]  # its --aggregation name
    # True: every update is a round of its own, folded in as it comes; False: a round
    # gathers --min-clients updates, or those that came within --round-timeout.
    per_update: ClassVar[bool] = False

    @abstractmethod
    def aggregate(self, global_vector: np.ndarray, updates: Sequence[Update]) -> np.ndarray:
        """The next global vector from the current one and a round's updates (one if
        ``per_update``); the inputs are left as they are."""

    # Optional hooks, so not abstract: most rules need neither.
    def bind(self, scores: Scores) -> None:  # noqa: B027
        """Receive the server's scoring, for a rule that chooses among candidates."""

    def forget(self, client: str) -> None:  # noqa: B027
        """A client left: a rule that remembers clients drops it."""

    def describe(self) -> str:
        """What the last ``aggregate`` chose, for the log ("" when there is nothing to say)."""
        return ""


AGGREGATIONS: dict[str, type[Aggregation]] = {}  # every rule a server can run, by name


def register(rule: type[Aggregation]) -> type[Aggregation]:
    """Make ``rule`` a choice of ``--aggregation`` (a class decorator)."""
    AGGREGATIONS[rule.name] = rule
    return rule


def round_based() -> list[str]:
    """The names of the rules that gather rounds: those an engine running its own rounds
    (Flower) can use."""
    return [name for name, rule in AGGREGATIONS.items() if not rule.per_update]


def aggregation_named(name: str) -> Aggregation:
    """A new instance of the rule ``name`` (rules may keep state across rounds)."""
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {name!r}")
    return AGGREGATIONS[name]()


@register
class RunningAverage(Aggregation):
    """The tutorial's rule: an update that reaches the target becomes the global model, any
    other is averaged in, half and half, as it comes."""

    name = "running-average"
    per_update = True

    def aggregate(self, global_vector, updates):
        (update,) = updates
        if update.reached_target:
            return update.vector
        return model_averaging(global_vector, update.vector)


# How far toward an update running-best steps besides all the way; 1/2 is the tutorial's.
RUNNING_STEPS = (0.125, 0.25, 0.5)


def running_candidates(
    global_vector: np.ndarray, update_vector: np.ndarray, latest_updates: Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """The models running-best scores for one update, by name: ``update`` itself, ``step S``
    for the tutorial's running average moved a share S toward it, and ``clients' mean``, the
    mean of every client's latest update (FedAvg without waiting for a round)."""
    candidates = {"update": update_vector}
    for step in RUNNING_STEPS:
        candidates[f"step {step:g}"] = model_averaging(global_vector, update_vector, step)
    candidates["clients' mean"] = fedavg(latest_updates)
    return candidates


@register
class RunningBest(Aggregation):
    """Each update as it comes, keeping of ``running_candidates`` and the current model the
    one the server scores best on its test data: one that reaches the target (the lowest
    loss among such), else the lowest loss, the current model on a tie. An update that would
    make the model worse leaves it as it was, so clients that overfit their own share (the
    tutorial's GA on half of XOR) cannot drag it back and forth. Remembers each connected
    client's latest update."""

    name = "running-best"
    per_update = True

    def __init__(self) -> None:
        self.latest: dict[str, np.ndarray] = {}
        self._scores: Scores | None = None
        self._chosen = ""

    def bind(self, scores):
        self._scores = scores

    def forget(self, client):
        self.latest.pop(client, None)

    def describe(self):
        return f"took={self._chosen}"

    def aggregate(self, global_vector, updates):
        if self._scores is None:
            raise RuntimeError("running-best chooses by the server's scores: bind() them first")
        (update,) = updates
        self.latest[update.client] = update.vector
        candidates = {
            "current model": global_vector,
            **running_candidates(global_vector, update.vector, list(self.latest.values())),
        }
        vectors = np.stack(list(candidates.values())).astype(np.float32)
        reached, losses = self._scores(vectors)
        # Reaching the target first, then the lowest loss; a stable sort keeps the current
        # model on a tie, so only a strictly better candidate replaces it.
        best = int(np.lexsort((losses, ~reached))[0])
        self._chosen = list(candidates)[best]
        return vectors[best].copy()


@register
class FedAvg(Aggregation):
    """The updates' mean weighted by their clients' sample counts."""

    name = "fedavg"

    def aggregate(self, global_vector, updates):
        return fedavg([u.vector for u in updates], [u.num_samples for u in updates])


@register
class Median(Aggregation):
    """The updates' coordinate-wise median."""

    name = "median"

    def aggregate(self, global_vector, updates):
        return median([u.vector for u in updates])


@register
class TrimmedMean(Aggregation):
    """The updates' coordinate-wise mean without the highest and lowest fifth."""

    name = "trimmed-mean"

    def aggregate(self, global_vector, updates):
        return trimmed_mean([u.vector for u in updates])
