"""The ring the masked vectors live in: unsigned integers modulo 2^bits that wrap (NumPy
``uint32`` or ``uint64``), and the quantisation of a client's weighted update into it.

A client's update ``x`` (``d`` floats) and sample count ``w`` become ``d + 1`` ring elements:

- element ``i < d``: ``round(clip(x_i, -c, c) * w' / W * levels / c)``, a signed integer in
  ``[-levels, levels]`` stored in two's complement; ``c`` is the clipping range, ``W`` the
  largest weight a count may carry (``max_weight``, as Flower's), ``w' = min(w, W)``;
- element ``d``: ``w'`` itself, an exact integer: the count is masked with the update, so
  the server learns only the round's summed count.

The server sums the survivors' elements in the ring, reads the sum as signed, multiplies by
``step * W`` (``step = c / levels``) for the weighted sum ``sum(x_i * w_i)`` and divides by the
summed count for the weighted mean.

The sum cannot overflow: ``RingSpec`` derives ``levels`` as the largest with
``clients * levels < 2^(bits - 1)`` and refuses (``ConfigError``) a ring whose summed count
``clients * max_weight`` would not fit. The clipping range never affects overflow, only the
step. The round trip is within ``error_bound`` (half a step of rounding per client, doubled
as a margin for float64 arithmetic, scaled by ``W / total count``); values outside
``[-c, c]`` are clipped first, which no bound covers: choose ``c`` above the model's weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_BITS = 32
DEFAULT_CLIPPING_RANGE = 8.0
DEFAULT_MAX_WEIGHT = 65_536
# In a 64-bit ring the levels stop here: float64 holds integers exactly only below 2^53, and
# 2^40 keeps its rounding error below 2^-12 of a step.
_LEVELS_CAP = 2**40
_DTYPES: dict[int, tuple[type[np.unsignedinteger], type[np.signedinteger]]] = {
    32: (np.uint32, np.int32),
    64: (np.uint64, np.int64),
}


@dataclass(frozen=True)
class RingSpec:
    """A ring wide enough for ``clients`` clients' sum; every party of a round uses the same.

    ``bits`` is 32 or 64 (the width each element takes on the wire); ``clipping_range`` the
    ``c`` of ``[-c, c]`` each update value is clipped to; ``max_weight`` the largest sample
    count a client's update is weighted by (larger ones are capped to it)."""

    clients: int
    clipping_range: float = DEFAULT_CLIPPING_RANGE
    max_weight: int = DEFAULT_MAX_WEIGHT
    bits: int = DEFAULT_BITS

    def __post_init__(self) -> None:
        if self.bits not in _DTYPES:
            raise ConfigError(
                f"The secure aggregation ring must be 32 or 64 bits, not {self.bits}."
            )
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise ConfigError(
                f"The clipping range must be a positive number, not {self.clipping_range}."
            )
        if self.max_weight < 1:
            raise ConfigError(f"The max weight must be at least 1, not {self.max_weight}.")
        if self.clients < 2:
            raise ConfigError(f"Secure aggregation needs at least 2 clients, not {self.clients}.")
        if self.clients * self.max_weight > self.signed_max:
            raise ConfigError(
                f"A {self.bits}-bit ring cannot hold the summed count of {self.clients} clients "
                f"of max weight {self.max_weight}: use at most "
                f"{self.signed_max // self.max_weight} clients, a smaller max weight or 64 bits."
            )

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """The NumPy type of a ring element (its arithmetic wraps modulo 2^bits)."""
        return _DTYPES[self.bits][0]

    @property
    def signed_max(self) -> int:
        """The largest sum the ring reads back as a non-negative signed integer."""
        return 2 ** (self.bits - 1) - 1

    @property
    def levels(self) -> int:
        """How many steps ``c`` spans: the most that ``clients`` sums of ``[-levels, levels]``
        fit in, so the sum never wraps."""
        return min(self.signed_max // self.clients, _LEVELS_CAP)

    @property
    def step(self) -> float:
        """The weighted update's quantisation step, ``c / levels``."""
        return self.clipping_range / self.levels


def capped_count(spec: RingSpec, count: int) -> int:
    """The weight a client's ``count`` carries: at most ``max_weight``, logged when capped."""
    if count > spec.max_weight:
        log.warning("sample count %d capped at the max weight %d", count, spec.max_weight)
        return spec.max_weight
    return count


def quantise(spec: RingSpec, update: np.ndarray, count: int) -> np.ndarray:
    """A client's ``update`` (finite floats) and ``count`` as ``len(update) + 1`` ring
    elements: the update clipped, weighted by the capped count over ``max_weight``, rounded to
    steps, then the capped count."""
    weight = capped_count(spec, count)
    values = np.asarray(update, dtype=np.float64)
    clipped = np.clip(values, -spec.clipping_range, spec.clipping_range)
    outside = int(np.count_nonzero(clipped != values))
    if outside:
        log.warning("%d of %d values clipped to +-%g", outside, values.size, spec.clipping_range)
    steps = np.rint(clipped * (weight / spec.max_weight) / spec.step).astype(np.int64)
    # int64 -> unsigned is two's complement, which is the ring's reading of a negative number.
    return np.append(steps, weight).astype(spec.dtype)


def ring_sum(spec: RingSpec, vectors: list[np.ndarray]) -> np.ndarray:
    """The elementwise sum of ring vectors, wrapping modulo 2^bits."""
    total = np.zeros_like(vectors[0], dtype=spec.dtype)
    for vector in vectors:
        np.add(total, vector, out=total)
    return total


def dequantise(spec: RingSpec, total: np.ndarray) -> tuple[np.ndarray, int]:
    """The weighted sum ``sum(x_i * w_i)`` (float64) and the summed count, read from the ring
    sum of the clients' ``quantise`` outputs (masks removed)."""
    signed = total.view(_DTYPES[spec.bits][1]).astype(np.int64)
    weighted_sum = signed[:-1].astype(np.float64) * (spec.step * spec.max_weight)
    return weighted_sum, int(signed[-1])


def error_bound(spec: RingSpec, clients: int, total_count: int) -> float:
    """The largest difference between the weighted mean read from ``clients`` clients' ring
    sum and the plain weighted mean of their clipped updates (with counts capped).

    Each client's rounding is at most half a step of ``x * w / W``; the bound allows a full
    step, the other half a wide margin for float64 arithmetic (under 2^-12 of a step). The
    mean multiplies the sum by ``W / total_count``, so small counts under a large max weight
    cost precision."""
    return clients * spec.step * spec.max_weight / total_count
