"""Masks: ring vectors expanded from 32-byte seeds by a cryptographic stream, and the signs
that make the pairwise ones cancel in the sum.

``expand`` keys ChaCha20 with HKDF-SHA256 of the WHOLE seed and a context label, and reads
its keystream as ring elements. Flower 1.42 (``secaggplus_utils.pseudo_rand_gen``) instead
folds a seed to 32 bits and expands it with NumPy's ``RandomState``: a curious server could
try all 2^32 seeds against a masked vector. Here guessing a mask means guessing 256 bits.

A client ``u`` adds to its quantised update its self mask (``expand`` of its self-mask seed)
and, for every peer ``v`` of the round, ``+`` the pairwise mask of their shared seed when
``v > u`` and ``-`` it when ``v < u``: each pair's two masks cancel in the sum. The server
removes the survivors' self masks and, for a client that dropped after the masks were set,
the pairwise masks the survivors added toward it (``pair_sign`` says with which sign).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_BYTES = 32
_LABEL = b"fedga secagg mask v1: "
# Each stream key is derived for one seed and one context, so a fixed nonce never repeats
# under one key.
_NONCE = bytes(16)


def expand(seed: bytes, length: int, dtype: type[np.unsignedinteger], context: bytes) -> np.ndarray:
    """``length`` ring elements of ``dtype`` from ChaCha20 keyed by HKDF-SHA256 of ``seed``
    (all 32 bytes) under ``context``; the same arguments give the same vector."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes, not {len(seed)}")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL + context).derive(seed)
    width = np.dtype(dtype).itemsize
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(length * width)) + encryptor.finalize()
    return np.frombuffer(stream, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


# What a mask is for: a secure round's number, or a name for one masking under the same keys
# (fitness mode masks every generation's scores under one set of keys: common.secagg.scores).
Context = int | str


def self_mask(
    seed: bytes, length: int, dtype: type[np.unsignedinteger], round: Context
) -> np.ndarray:
    """A client's self mask for ``round``."""
    return expand(seed, length, dtype, b"self, round " + str(round).encode())


def pair_mask(
    seed: bytes, length: int, dtype: type[np.unsignedinteger], round: Context
) -> np.ndarray:
    """The pairwise mask two clients derive from their shared seed for ``round``."""
    return expand(seed, length, dtype, b"pair, round " + str(round).encode())


def pair_sign(owner: int, peer: int) -> int:
    """+1 when ``owner`` adds the pair's mask (toward a higher id), -1 when it subtracts it."""
    return 1 if peer > owner else -1


def add_signed(total: np.ndarray, mask: np.ndarray, sign: int) -> None:
    """``total += sign * mask`` in the ring, in place."""
    (np.add if sign > 0 else np.subtract)(total, mask, out=total)


def masked(
    quantised: np.ndarray,
    *,
    owner: int,
    self_seed: bytes,
    pair_seeds: Mapping[int, bytes],
    round: Context,
) -> np.ndarray:
    """A client's masked input: ``quantised`` plus its self mask plus, for each peer, its
    pairwise mask signed by ``pair_sign``."""
    dtype = quantised.dtype.type
    total = quantised + self_mask(self_seed, quantised.size, dtype, round)
    for peer, seed in pair_seeds.items():
        add_signed(total, pair_mask(seed, quantised.size, dtype, round), pair_sign(owner, peer))
    return total
