"""A secure round's setup and the messages of its stages, as plain frozen dataclasses of
ints, bytes and NumPy arrays (the wire layer maps each to a message of its own).

In the order they travel (``U1 ⊇ U2 ⊇ U3`` are the clients still in after each stage)::

    server -> all      RoundSetup       round, client ids, vector length, ring, threshold t
    client -> server   KeysAdvertised   its two public keys
    server -> U1       KeyList          every KeysAdvertised the server got in time (U1)
    client -> server   SharesSent       one EncryptedShare for each other client of U1
    server -> each     SharesRelayed    the EncryptedShares addressed to it, from U2
    client -> server   MaskedInput      its masked ring vector (length + 1 elements)
    server -> U3       UnmaskRequest    survivors (U3) and dropped (U2 minus U3)
    client -> server   Reveal           self-seed shares of the survivors, mask-key shares
                                        of the dropped, never both for one client
    server             RoundResult      weighted sum, summed count, who was in

Client ids are positive integers the server assigns (any, not necessarily 1..n); every
message names its round, and a message from another round is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from common.auto import AUTO, Auto
from common.errors import ConfigError
from common.secagg.ring import (
    DEFAULT_BITS,
    DEFAULT_CLIPPING_RANGE,
    DEFAULT_MAX_WEIGHT,
    RingSpec,
)

__all__ = [
    "EncryptedShare",
    "KeyList",
    "KeysAdvertised",
    "MaskedInput",
    "Reveal",
    "RoundResult",
    "RoundSetup",
    "SharesRelayed",
    "SharesSent",
    "UnmaskRequest",
    "check_threshold",
    "default_threshold",
    "round_threshold",
]


def default_threshold(clients: int) -> int:
    """The default t for ``clients`` clients: ceil(2n/3), never below 2."""
    return max(2, math.ceil(2 * clients / 3))


def round_threshold(threshold: int | Auto, clients: int) -> int:
    """The t of a round of ``clients`` clients: ``threshold`` if given, else the default."""
    return default_threshold(clients) if isinstance(threshold, Auto) else threshold


def check_threshold(threshold: int, clients: int) -> None:
    """Refuse (``ConfigError``) a threshold below 2, above n, or not above n/2 (with half or
    fewer, a server telling two halves different stories could collect both a client's
    shares)."""
    if not (2 <= threshold <= clients and 2 * threshold > clients):
        raise ConfigError(
            f"The secure aggregation threshold must be at least 2, above half the {clients} "
            f"clients and at most {clients}, not {threshold}."
        )


@dataclass(frozen=True)
class RoundSetup:
    """What every party of a round agrees on before it starts: the round number, the ids of
    the clients invited (sorted), the length of an update, the ring and the threshold t."""

    round: int
    clients: tuple[int, ...]
    length: int
    ring: RingSpec
    threshold: int

    def __post_init__(self) -> None:
        ids = self.clients
        if list(ids) != sorted(set(ids)) or not ids or ids[0] < 1 or ids[-1] >= 2**63:
            raise ValueError(f"client ids must be distinct positive integers, sorted: {ids}")
        if self.round < 0 or self.length < 1:
            raise ValueError(f"bad round {self.round} or length {self.length}")
        if self.ring.clients < len(ids):
            raise ValueError(f"the ring is sized for {self.ring.clients} clients, not {len(ids)}")
        check_threshold(self.threshold, len(ids))

    @classmethod
    def create(
        cls,
        round: int,
        clients: list[int] | tuple[int, ...],
        length: int,
        *,
        threshold: int | Auto = AUTO,
        clipping_range: float = DEFAULT_CLIPPING_RANGE,
        max_weight: int = DEFAULT_MAX_WEIGHT,
        bits: int = DEFAULT_BITS,
    ) -> RoundSetup:
        """A setup whose ring is sized for these clients, with the default threshold unless
        one is given."""
        ids = tuple(sorted(clients))
        return cls(
            round=round,
            clients=ids,
            length=length,
            ring=RingSpec(len(ids), clipping_range, max_weight, bits),
            threshold=round_threshold(threshold, len(ids)),
        )


@dataclass(frozen=True)
class KeysAdvertised:
    """Stage 1, client to server: the raw bytes of its two X25519 public keys."""

    round: int
    sender: int
    share_key: bytes
    mask_key: bytes


@dataclass(frozen=True)
class KeyList:
    """Stage 1, server to each client of U1: every client's advertised keys, by sender."""

    round: int
    keys: tuple[KeysAdvertised, ...]


@dataclass(frozen=True)
class EncryptedShare:
    """A sealed share (``keys.seal``) of the sender's mask key and self-mask seed, only the
    receiver can open."""

    sender: int
    receiver: int
    sealed: bytes


@dataclass(frozen=True)
class SharesSent:
    """Stage 2, client to server: one EncryptedShare for each other client of U1."""

    round: int
    sender: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class SharesRelayed:
    """Stage 2, server to a client of U2: the shares addressed to it by the others of U2."""

    round: int
    receiver: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Stage 3, client to server: ``RoundSetup.length + 1`` ring elements (the update, then
    the count), masked."""

    round: int
    sender: int
    vector: np.ndarray


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 4, server to each client of U3: who sent a masked input (``survivors``, U3) and
    who of U2 did not (``dropped``)."""

    round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class Reveal:
    """Stage 4, client to server: its encoded share (``shamir.Share.encode``) of each
    survivor's self-mask seed and of each dropped client's mask key, by that client's id."""

    round: int
    sender: int
    self_seed_shares: Mapping[int, bytes]
    mask_key_shares: Mapping[int, bytes]


@dataclass(frozen=True, eq=False)
class RoundResult:
    """The server's answer: ``sum(update_i * count_i)`` over the survivors (float64, counts
    capped at the ring's max weight), the summed ``count``, who was in, and ``bound``, the
    largest error of ``mean`` against the plain weighted mean (``ring.error_bound``)."""

    round: int
    weighted_sum: np.ndarray
    count: float
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    bound: float
    mean: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", self.weighted_sum / self.count)
