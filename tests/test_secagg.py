"""common.secagg's parts, in memory: Shamir thresholds, masks that cancel, the ring's
quantisation and overflow check, the AEAD's binding."""

from __future__ import annotations

import itertools
import os
import re

import numpy as np
import pytest

from common.errors import ConfigError, SecAggRefused
from common.secagg import keys, masks, ring, shamir
from common.secagg.ring import RingSpec, error_bound


def assert_one_sentence(message: str) -> None:
    assert message.endswith(".") and "\n" not in message, message
    assert not re.search(r"[.!?]\s+\S", message), message


# ---- Shamir -----------------------------------------------------------------------------


def test_any_t_shares_rebuild_the_secret_and_t_minus_1_do_not():
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=3, holders=5)
    assert [share.index for share in shares] == [1, 2, 3, 4, 5]
    for chosen in itertools.combinations(shares, 3):
        assert shamir.combine(list(chosen)) == secret
    assert shamir.combine(shares) == secret  # more than t too
    for chosen in itertools.combinations(shares, 2):
        assert shamir.combine(list(chosen)) != secret


def test_a_share_travels_as_36_bytes():
    share = shamir.split(os.urandom(32), 2, 3)[2]
    assert len(share.encode()) == shamir.SHARE_BYTES == 36
    assert shamir.Share.decode(share.encode()) == share


# ---- masks ------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 64])
def test_pairwise_masks_cancel_exactly_in_the_ring(bits):
    ids = [3, 7, 8, 20, 21, 40]
    spec = RingSpec(len(ids), bits=bits)
    rng = np.random.default_rng(1)
    pair_seed = {frozenset(pair): os.urandom(32) for pair in itertools.combinations(ids, 2)}
    self_seeds = {client: os.urandom(32) for client in ids}
    inputs = {
        client: ring.quantise(spec, rng.uniform(-1, 1, 500), int(rng.integers(1, 1000)))
        for client in ids
    }
    masked = [
        masks.masked(
            inputs[client],
            owner=client,
            self_seed=self_seeds[client],
            pair_seeds={
                peer: pair_seed[frozenset((client, peer))] for peer in ids if peer != client
            },
            round=4,
        )
        for client in ids
    ]
    total = ring.ring_sum(spec, masked)
    for client in ids:
        masks.add_signed(total, masks.self_mask(self_seeds[client], 501, spec.dtype, 4), -1)
    assert total.dtype == spec.dtype
    np.testing.assert_array_equal(total, ring.ring_sum(spec, list(inputs.values())))


def test_the_mask_stream_depends_on_every_byte_of_the_seed():
    seed = os.urandom(32)
    stream = masks.expand(seed, 64, np.uint32, b"ctx")
    np.testing.assert_array_equal(stream, masks.expand(seed, 64, np.uint32, b"ctx"))
    for i in range(32):
        flipped = bytearray(seed)
        flipped[i] ^= 0x01
        other = masks.expand(bytes(flipped), 64, np.uint32, b"ctx")
        assert np.count_nonzero(other == stream) < 4, f"byte {i}"
    # Flower folds a seed to 32 bits by XOR of its words: two seeds with the same fold give it
    # the same mask; here they do not.
    twin = bytearray(seed)
    for i in range(4):
        twin[i] ^= 0x5A
        twin[4 + i] ^= 0x5A
    assert np.count_nonzero(masks.expand(bytes(twin), 64, np.uint32, b"ctx") == stream) < 4
    assert np.count_nonzero(masks.expand(seed, 64, np.uint32, b"other") == stream) < 4


def test_the_pair_sign_is_plus_toward_a_higher_id():
    assert masks.pair_sign(2, 5) == 1 and masks.pair_sign(5, 2) == -1


# ---- the ring ---------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("clients", [2, 5, 30])
def test_the_quantisation_round_trip_is_within_its_bound(bits, clients):
    spec = RingSpec(clients, clipping_range=2.0, max_weight=1000, bits=bits)
    rng = np.random.default_rng(clients)
    updates = [rng.uniform(-2, 2, 2000) for _ in range(clients)]
    counts = [int(n) for n in rng.integers(1, 1500, clients)]  # some above the max weight
    total = ring.ring_sum(spec, [ring.quantise(spec, u, n) for u, n in zip(updates, counts)])
    weighted_sum, count = ring.dequantise(spec, total)
    capped = [min(n, 1000) for n in counts]
    assert count == sum(capped)
    plain = sum(u * n for u, n in zip(updates, capped)) / sum(capped)
    bound = error_bound(spec, clients, count)
    assert np.abs(weighted_sum / count - plain).max() <= bound
    assert bound < 1e-4


def test_values_outside_the_clipping_range_are_clipped():
    spec = RingSpec(2, clipping_range=1.0, max_weight=10)
    weighted_sum, count = ring.dequantise(spec, ring.quantise(spec, np.array([5.0, -5.0]), 10))
    np.testing.assert_allclose(weighted_sum / count, [1.0, -1.0], atol=error_bound(spec, 1, 10))


@pytest.mark.parametrize("clipping_range", [0.01, 8.0, 1e6])
@pytest.mark.parametrize("bits, max_weight", [(32, 65_536), (32, 1), (64, 2**40)])
def test_the_largest_ring_the_check_allows_does_not_overflow(bits, max_weight, clipping_range):
    most = (2 ** (bits - 1) - 1) // max_weight
    spec = RingSpec(most, clipping_range, max_weight, bits)
    c = clipping_range
    extreme = ring.quantise(spec, np.array([c, -c, c, -c / 2]), max_weight)
    # Every one of the `most` clients at the clipping range with the max weight.
    total = np.multiply(extreme, spec.dtype(most))
    weighted_sum, count = ring.dequantise(spec, total)
    assert count == most * max_weight
    bound = error_bound(spec, most, count)
    np.testing.assert_allclose(weighted_sum / count, [c, -c, c, -c / 2], rtol=0, atol=bound)
    assert bound == pytest.approx(spec.step)  # every count at the max weight: one step

    with pytest.raises(ConfigError) as refused:
        RingSpec(most + 1, clipping_range, max_weight, bits)
    assert_one_sentence(str(refused.value))
    assert f"at most {most} clients" in str(refused.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"bits": 16},
        {"clipping_range": 0.0},
        {"clipping_range": float("inf")},
        {"max_weight": 0},
        {"clients": 1},
    ],
)
def test_a_ring_that_cannot_work_is_refused_in_one_sentence(settings):
    with pytest.raises(ConfigError) as refused:
        RingSpec(**{"clients": 5, **settings})
    assert_one_sentence(str(refused.value))


# ---- the AEAD on shares -----------------------------------------------------------------


def test_a_sealed_share_opens_only_for_its_round_sender_and_receiver():
    a, b = keys.new_private_key(), keys.new_private_key()
    key_ab = keys.share_cipher_key(keys.agree(a, keys.public_bytes(b)))
    assert key_ab == keys.share_cipher_key(keys.agree(b, keys.public_bytes(a)))
    sealed = keys.seal(key_ab, b"shares", round=3, sender=1, receiver=2)
    assert keys.open_sealed(key_ab, sealed, round=3, sender=1, receiver=2) == b"shares"
    for wrong in [
        {"round": 3, "sender": 1, "receiver": 4},  # relayed to another client
        {"round": 4, "sender": 1, "receiver": 2},  # replayed in another round
        {"round": 3, "sender": 2, "receiver": 1},  # passed off as the other way round
    ]:
        with pytest.raises(SecAggRefused) as refused:
            keys.open_sealed(key_ab, sealed, **wrong)
        assert_one_sentence(str(refused.value))
    with pytest.raises(SecAggRefused):
        keys.open_sealed(
            key_ab, sealed[:-1] + bytes([sealed[-1] ^ 1]), round=3, sender=1, receiver=2
        )


def test_a_small_order_public_key_is_refused():
    with pytest.raises(SecAggRefused):
        keys.agree(keys.new_private_key(), bytes(32))
