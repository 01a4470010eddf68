"""Aggregation rules: pure NumPy on flat weight vectors, no sockets, no Keras, no state.

``model_averaging`` is the tutorial's running average. The round-based rules take a list of
updates; the mean-based ones are built on ``model_averaging`` as a streaming weighted mean.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def model_averaging(global_vector: np.ndarray, update_vector: np.ndarray,
                    update_weight: float = 0.5) -> np.ndarray:
    """The tutorial's running average: with the default weight, the mean of the two."""
    return global_vector + update_weight * (update_vector - global_vector)


def fedavg(updates: Sequence[np.ndarray], sample_counts: Sequence[float] | None = None
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


def _ignoring_counts(rule):
    return lambda updates, sample_counts=None: rule(updates)


def trimmed_mean(updates: Sequence[np.ndarray], trim: float = 0.2) -> np.ndarray:
    """Coordinate-wise mean after dropping the ``trim`` share of highest and lowest values."""
    ordered = np.sort(np.stack(updates), axis=0)
    cut = int(len(updates) * trim)
    return fedavg(list(ordered[cut:len(updates) - cut]))


# The round-based rules by their --aggregation names: (updates, sample_counts) -> vector.
AGGREGATIONS = {
    "fedavg": fedavg,
    "median": _ignoring_counts(median),
    "trimmed-mean": _ignoring_counts(trimmed_mean),
}

RUNNING_AVERAGE = "running-average"  # the tutorial's rule: each update averaged in as it comes
# Every rule a server can run, by name: what --aggregation accepts and the window offers.
AGGREGATION_NAMES = (RUNNING_AVERAGE, *AGGREGATIONS)
