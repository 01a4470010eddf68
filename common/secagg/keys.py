"""Key agreement and the encryption of shares, all from ``cryptography``.

Each client makes two X25519 key pairs a round: a *share key*, whose agreement with a peer's
gives the AEAD key for the shares it sends that peer, and a *mask key*, whose agreement with a
peer's is the pair's mask seed (and whose private half is secret-shared, so the survivors can
rebuild a dropped client's pairwise masks). A public key travels as its 32 raw bytes.

Shares travel through the server sealed with ChaCha20-Poly1305 under HKDF-SHA256 of the
pair's share-key agreement, a random 96-bit nonce in front of the ciphertext. The associated
data names the round, the sender and the receiver, so a relaying server cannot hand a share
to another client, pass it off as another sender's, or replay it in another round: opening
it then fails (``SecAggRefused``).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.errors import SecAggRefused

KEY_BYTES = 32
_NONCE_BYTES = 12
_SHARE_KEY_LABEL = b"fedga secagg share key v1"
_SHARE_AD_LABEL = b"fedga secagg share v1"


def new_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key."""
    return X25519PrivateKey.generate()


def public_bytes(private: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``private``'s public key."""
    return private.public_key().public_bytes_raw()


def private_bytes(private: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``private`` (what is secret-shared)."""
    return private.private_bytes_raw()


def private_from_bytes(data: bytes) -> X25519PrivateKey:
    """The private key whose raw bytes are ``data``."""
    return X25519PrivateKey.from_private_bytes(data)


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The 32-byte X25519 shared secret of ``private`` and a peer's raw public key; a public
    key that is malformed or of small order (all-zero secret) is refused."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise SecAggRefused(
            f"A peer's public key cannot be used ({str(exc).rstrip('.')})."
        ) from exc


def share_cipher_key(shared_secret: bytes) -> bytes:
    """The AEAD key for shares between the two clients of ``shared_secret``."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SHARE_KEY_LABEL).derive(
        shared_secret
    )


def _associated_data(round: int, sender: int, receiver: int) -> bytes:
    return _SHARE_AD_LABEL + b"".join(n.to_bytes(8, "big") for n in (round, sender, receiver))


def seal(key: bytes, plaintext: bytes, *, round: int, sender: int, receiver: int) -> bytes:
    """``plaintext`` encrypted and bound to ``round``, ``sender`` and ``receiver``."""
    nonce = os.urandom(_NONCE_BYTES)
    ad = _associated_data(round, sender, receiver)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def open_sealed(key: bytes, sealed: bytes, *, round: int, sender: int, receiver: int) -> bytes:
    """The plaintext of ``seal``'s output, if it was sealed under ``key`` for exactly this
    round, sender and receiver; else ``SecAggRefused``."""
    nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    try:
        return ChaCha20Poly1305(key).decrypt(
            nonce, ciphertext, _associated_data(round, sender, receiver)
        )
    except InvalidTag:
        raise SecAggRefused(
            f"The share from client {sender} to client {receiver} in round {round} "
            "fails its authentication."
        ) from None
