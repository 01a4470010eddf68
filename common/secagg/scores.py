"""Masked scores: fitness mode's per-generation losses summed so that the server learns only
the sum over a fixed set of clients (a *roster*), never one client's losses.

Fitness mode asks every client, each generation, for its mean loss of each member and its
sample count. Masked, a client sends instead ``quantise(losses, count)`` (``common.secagg.
ring``, a 64-bit ring) plus, for every other client of the roster, a pairwise mask (+ toward
a later client of the roster, - toward an earlier one) and a fresh self mask of its own, all
expanded by ``common.secagg.masks`` for this one scoring (``context``). Only when every
client of the roster sent its vector does the server ask each for its self-mask seed; the
pairwise masks cancel in the sum, the self masks come off, and the server reads the summed
``loss x count`` and summed count: the sample-weighted mean loss, as plain fitness mode.

Keys: a roster's clients each make one X25519 mask key, whose agreements are the pairwise
seeds for every scoring of that roster (a different ``context`` each time). Nothing is
secret-shared: a client that does not answer is not recovered from shares, the scoring is
abandoned instead and the clients still there make new keys (a new roster) and score again.
That keeps a generation two round trips (masked scores, then the self-mask seed) instead
of a secure round's four, at the cost of one key exchange after each change of clients.

Why a self mask at all, when nobody's pairwise seed is ever revealed: without it, a slow
client's vector for an abandoned scoring, arriving after the new roster's sum, would
complete the old sum, and the two sums would differ by that client's losses. A client
gives its self-mask seed only for the scoring it just masked, once (``ScoreMasker``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import SecAggRefused
from common.secagg import keys, masks, ring

SMALLEST_ROSTER = 3  # of two clients, each could read the other's losses from the sum
# The ring's count cap (``max_weight``): sample counts above it are capped, and logged.
MAX_WEIGHT = ring.DEFAULT_MAX_WEIGHT


def score_ring(clients: int, largest_loss: float) -> ring.RingSpec:
    """The ring a roster of ``clients`` masks its losses in: 64 bits, so the quantisation
    step is ~2^-40 of ``largest_loss`` (the clipping range: a loss cannot exceed it)."""
    return ring.RingSpec(clients, clipping_range=largest_loss, max_weight=MAX_WEIGHT, bits=64)


def context(round: int, generation: int, attempt: int) -> str:
    """The masks' context of one scoring: unique within a roster, as each scoring is."""
    return f"fitness r{round} g{generation} a{attempt}"


def roster_ids(roster: Sequence[str]) -> dict[str, int]:
    """Each client's id for the masks' signs: its place (from 1) in the sorted roster."""
    return {client: place for place, client in enumerate(sorted(roster), start=1)}


@dataclass(frozen=True)
class Scoring:
    """One scoring a client masks: which generation's attempt, under which roster's keys."""

    epoch: int
    round: int
    generation: int
    attempt: int

    @property
    def order(self) -> tuple[int, int, int, int]:
        return self.epoch, self.round, self.generation, self.attempt


class ScoreMasker:
    """A client's masking of its scores under one roster's keys (``epoch``): ``public_key``
    to advertise, ``join`` the roster the server announces, ``mask`` each scoring once, and
    ``reveal`` the self-mask seed of the scoring just masked, once. Any step the server asks
    out of turn raises ``SecAggRefused``."""

    def __init__(self, epoch: int, client_id: str):
        self.epoch, self.client_id = epoch, client_id
        self._mask_key = keys.new_private_key()
        self.public_key = keys.public_bytes(self._mask_key)
        self._roster: tuple[tuple[str, bytes], ...] = ()
        self._pair_seeds: dict[int, bytes] | None = None
        self._me = 0
        self._spec: ring.RingSpec | None = None
        self._last: Scoring | None = None  # the latest scoring masked
        self._self_seed: bytes | None = None  # its self-mask seed, until revealed

    def join(self, epoch: int, roster: Sequence[tuple[str, bytes]], largest_loss: float) -> None:
        """Take the roster the server announces: every client's mask key, this one's among
        them, unchanged, no key twice, at least ``SMALLEST_ROSTER`` clients. Once taken, the
        server names it by ``epoch`` alone (``roster`` empty) or sends the same again."""
        self._check(epoch == self.epoch, f"its keys are for roster {self.epoch}, not {epoch}")
        if self._pair_seeds is not None:
            self._check(
                not roster or tuple(sorted(roster)) == self._roster, "the roster changed its keys"
            )
            return
        named = dict(roster)
        self._check(len(named) == len(roster), "the roster names a client twice")
        self._check(
            named.get(self.client_id) == self.public_key,
            "the roster does not hold this client's own key",
        )
        self._check(len(set(named.values())) == len(named), "two clients have the same key")
        self._check(
            len(named) >= SMALLEST_ROSTER,
            f"a roster of {len(named)} clients would let each read the others' losses",
        )
        self._roster = tuple(sorted(roster))
        ids = roster_ids(list(named))
        self._me = ids[self.client_id]
        self._pair_seeds = {
            ids[peer]: keys.agree(self._mask_key, key)
            for peer, key in named.items()
            if peer != self.client_id
        }
        self._spec = score_ring(len(named), largest_loss)

    def mask(self, scoring: Scoring, losses: np.ndarray, count: int) -> np.ndarray:
        """This client's masked ``losses`` and ``count`` for ``scoring``, each scoring once."""
        self._check(self._pair_seeds is not None, "it has no roster to mask under")
        self._check(scoring.epoch == self.epoch, f"scoring under roster {scoring.epoch}")
        self._check(
            self._last is None or scoring.order > self._last.order,
            "it already masked this scoring, or a later one",
        )
        assert self._pair_seeds is not None and self._spec is not None
        self._last, self._self_seed = scoring, os.urandom(masks.SEED_BYTES)
        return masks.masked(
            ring.quantise(self._spec, losses, count),
            owner=self._me,
            self_seed=self._self_seed,
            pair_seeds=self._pair_seeds,
            round=context(scoring.round, scoring.generation, scoring.attempt),
        )

    def reveal(self, scoring: Scoring) -> bytes:
        """The self-mask seed of ``scoring``, if it is the one just masked, once."""
        self._check(
            scoring == self._last and self._self_seed is not None,
            "it is asked to unmask a scoring it did not just mask",
        )
        seed, self._self_seed = self._self_seed, None
        assert seed is not None
        return seed

    def _check(self, ok: bool, why: str) -> None:
        if not ok:
            raise SecAggRefused(f"Client {self.client_id} refuses to mask its scores: {why}.")


def unmask_sum(
    spec: ring.RingSpec,
    vectors: Sequence[np.ndarray],
    self_seeds: Sequence[bytes],
    scoring: Scoring,
) -> tuple[np.ndarray, int]:
    """The summed ``loss x count`` of each member and the summed count, from every roster
    client's masked vector and self-mask seed (pairwise masks cancel: all are there)."""
    total = ring.ring_sum(spec, list(vectors))
    where = context(scoring.round, scoring.generation, scoring.attempt)
    for seed in self_seeds:
        masks.add_signed(total, masks.self_mask(seed, total.size, spec.dtype, where), -1)
    return ring.dequantise(spec, total)
