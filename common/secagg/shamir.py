"""Shamir secret sharing of 32-byte secrets, t of n, by pycryptodome's
``Crypto.Protocol.SecretSharing.Shamir`` (which shares 16-byte secrets in GF(2^128)).

A secret is split as two 16-byte halves, each with its own random polynomial, as Flower's
``crypto/shamir.py`` splits into chunks (no padding here: every secret is 32 bytes, an X25519
private key or a self-mask seed). A share is ``Share(index, value)``: ``value`` the two
halves' shares side by side; ``encode``/``decode`` give the 36 bytes that travel encrypted.
Any ``threshold`` shares (or more) rebuild the secret; fewer rebuild an unrelated value,
which the caller cannot tell from the right one without a check of its own (a public key).
"""

from __future__ import annotations

from dataclasses import dataclass

from Crypto.Protocol.SecretSharing import Shamir

SECRET_BYTES = 32
_HALF = 16
_INDEX_BYTES = 4
SHARE_BYTES = _INDEX_BYTES + SECRET_BYTES


@dataclass(frozen=True)
class Share:
    """One holder's share: its evaluation point ``index`` (1..n) and the 32-byte value."""

    index: int
    value: bytes

    def encode(self) -> bytes:
        return self.index.to_bytes(_INDEX_BYTES, "big") + self.value

    @classmethod
    def decode(cls, data: bytes) -> Share:
        if len(data) != SHARE_BYTES:
            raise ValueError(f"a share is {SHARE_BYTES} bytes, not {len(data)}")
        return cls(int.from_bytes(data[:_INDEX_BYTES], "big"), data[_INDEX_BYTES:])


def split(secret: bytes, threshold: int, holders: int) -> list[Share]:
    """``holders`` shares of ``secret`` (index 1..holders, in order), any ``threshold`` of
    which rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a shared secret is {SECRET_BYTES} bytes, not {len(secret)}")
    low, high = (
        Shamir.split(threshold, holders, secret[start : start + _HALF], ssss=False)
        for start in (0, _HALF)
    )
    return [Share(index, a + b) for (index, a), (_, b) in zip(low, high)]


def combine(shares: list[Share]) -> bytes:
    """The secret that ``shares`` (distinct indices, at least the threshold) rebuild."""
    halves = (
        Shamir.combine(
            [(share.index, share.value[start : start + _HALF]) for share in shares], ssss=False
        )
        for start in (0, _HALF)
    )
    return b"".join(halves)
