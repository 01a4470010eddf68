"""common.secagg, in memory: Shamir thresholds, masks that cancel, the ring's quantisation
and overflow check, the client's refusals, the AEAD's binding, and whole rounds with and
without dropouts against the plain sample-weighted mean."""

from __future__ import annotations

import itertools
import os
import re

import numpy as np
import pytest

from common.errors import ConfigError, RoundAbandoned, SchemaError, SecAggRefused
from common.secagg import (
    ClientStage,
    EncryptedShare,
    RingSpec,
    RoundSetup,
    SecAggClient,
    SecAggServer,
    ServerStage,
    SharesRelayed,
    SharesSent,
    UnmaskRequest,
    check_threshold,
    default_threshold,
    error_bound,
)
from common.secagg import keys, masks, ring, shamir


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


def test_the_threshold_defaults_to_two_thirds_and_is_checked():
    assert [default_threshold(n) for n in (2, 3, 4, 5, 6, 10, 30)] == [2, 2, 3, 4, 4, 7, 20]
    for n in range(2, 40):
        check_threshold(default_threshold(n), n)
    for threshold, clients in [(1, 2), (2, 4), (3, 6), (6, 5)]:
        with pytest.raises(ConfigError) as refused:
            check_threshold(threshold, clients)
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


# ---- whole rounds -----------------------------------------------------------------------

LENGTH = 300


def make_round(n=5, length=LENGTH, **setup):
    ids = [10 * (i + 1) for i in range(n)]  # ids need not be 1..n
    config = RoundSetup.create(7, ids, length, **setup)
    rng = np.random.default_rng(n)
    updates = {c: rng.normal(0, 0.5, length) for c in ids}
    counts = {c: int(rng.integers(20, 600)) for c in ids}
    clients = {c: SecAggClient(config, c) for c in ids}
    return config, SecAggServer(config), clients, updates, counts


def run_round(server, clients, updates, counts, gone_after=None):
    """Drive a round; ``gone_after`` maps a stage name (keys, shares, masked) to the clients
    that vanish after it (they send nothing more and their connection is reported lost)."""
    gone_after = gone_after or {}
    live = dict(clients)

    def vanish(stage):
        for client in gone_after.get(stage, ()):
            live.pop(client)
            server.drop(client)

    for client in live.values():
        server.receive_keys(client.advertise())
    vanish("keys")
    key_list = server.close_keys()
    for client in live.values():
        server.receive_shares(client.share(key_list))
    vanish("shares")
    relayed = server.close_shares()
    for c, client in live.items():
        server.receive_masked(client.masked_input(relayed[c], updates[c], counts[c]))
    vanish("masked")
    assert server.pending == set()
    request = server.close_masked()
    for client in live.values():
        server.receive_reveal(client.reveal(request))
    return server.close_reveals()


def plain_mean(updates, counts, ids):
    return sum(updates[c] * counts[c] for c in ids) / sum(counts[c] for c in ids)


def test_a_round_of_5_equals_the_plain_weighted_mean_within_the_bound():
    config, server, clients, updates, counts = make_round()
    result = run_round(server, clients, updates, counts)
    assert result.survivors == config.clients and result.dropped == ()
    assert result.count == sum(counts.values())
    assert result.bound == error_bound(config.ring, 5, sum(counts.values()))
    assert np.abs(result.mean - plain_mean(updates, counts, config.clients)).max() <= result.bound
    np.testing.assert_allclose(
        result.weighted_sum,
        sum(updates[c] * counts[c] for c in config.clients),
        atol=result.bound * result.count,
    )
    assert server.stage is ServerStage.DONE
    assert all(client.stage is ClientStage.DONE for client in clients.values())


def test_dropouts_after_keys_and_after_the_masked_input_leave_the_survivors_sum():
    # Two dropouts need t = 3 of 5: the default t = 4 tolerates one in all.
    config, server, clients, updates, counts = make_round(threshold=3)
    result = run_round(server, clients, updates, counts, gone_after={"keys": [20], "masked": [40]})
    summed = (10, 30, 40, 50)  # 40's masked input arrived before it vanished
    assert result.survivors == summed and result.dropped == ()
    assert result.count == sum(counts[c] for c in summed)
    assert np.abs(result.mean - plain_mean(updates, counts, summed)).max() <= result.bound


def test_a_dropout_at_every_stage_rebuilds_the_dropped_mask_key():
    config, server, clients, updates, counts = make_round(n=10)
    assert config.threshold == 7
    result = run_round(
        server, clients, updates, counts, gone_after={"keys": [30], "shares": [60], "masked": [90]}
    )
    summed = tuple(c for c in config.clients if c not in (30, 60))
    assert result.survivors == summed and result.dropped == (60,)
    assert np.abs(result.mean - plain_mean(updates, counts, summed)).max() <= result.bound


@pytest.mark.parametrize("stage", ["keys", "shares", "masked"])
def test_3_of_5_dropped_abandons_the_round(stage, caplog):
    config, server, clients, updates, counts = make_round()
    assert config.threshold == 4
    with pytest.raises(RoundAbandoned) as abandoned:
        run_round(server, clients, updates, counts, gone_after={stage: [10, 30, 50]})
    assert (abandoned.value.remaining, abandoned.value.threshold) == (2, 4)
    assert_one_sentence(str(abandoned.value))
    assert server.stage is ServerStage.ABANDONED
    assert [r.message for r in caplog.records if r.levelname == "WARNING"] == [
        f"secure round 7: {abandoned.value}"
    ]


def test_fewer_than_t_reveals_abandon_the_round():
    config, server, clients, updates, counts = make_round()
    with pytest.raises(RoundAbandoned) as abandoned:
        run_round(server, clients, updates, counts, gone_after={"masked": [10, 20]})
    assert abandoned.value.stage == ServerStage.REVEALS.value


class CuriousServer(SecAggServer):
    """An honest-but-curious server that keeps every masked input it is sent."""

    def __init__(self, setup):
        super().__init__(setup)
        self.seen = {}

    def receive_masked(self, message):
        self.seen[message.sender] = message.vector
        super().receive_masked(message)


def test_a_curious_server_sees_no_correlation_with_any_update():
    length = 10_000
    config, _, clients, updates, counts = make_round(length=length)
    server = CuriousServer(config)
    run_round(server, clients, updates, counts)
    for client, vector in server.seen.items():
        truth = ring.quantise(config.ring, updates[client], counts[client])[:-1]
        as_signed = truth.view(np.int32).astype(np.float64)
        assert np.corrcoef(as_signed, updates[client])[0, 1] > 0.99  # unmasked: ~1
        for reading in (vector[:-1], vector[:-1].view(np.int32)):
            r = np.corrcoef(reading.astype(np.float64), as_signed)[0, 1]
            assert abs(r) < 4 / np.sqrt(length), (client, r)


# ---- what a client refuses --------------------------------------------------------------


def at_masking(n=5):
    """A round whose shares have been relayed: (server, clients, updates, counts, relayed)."""
    _, server, clients, updates, counts = make_round(n=n)
    for client in clients.values():
        server.receive_keys(client.advertise())
    key_list = server.close_keys()
    for client in clients.values():
        server.receive_shares(client.share(key_list))
    return server, clients, updates, counts, server.close_shares()


def at_reveal(n=5):
    """A round where every client has sent its masked input: (server, clients, request)."""
    server, clients, updates, counts, relayed = at_masking(n)
    for c, client in clients.items():
        server.receive_masked(client.masked_input(relayed[c], updates[c], counts[c]))
    return server, clients, server.close_masked()


def revealed_both(answers):
    seeds = {peer for answer in answers for peer in answer.self_seed_shares}
    keys_ = {peer for answer in answers for peer in answer.mask_key_shares}
    return seeds & keys_


@pytest.mark.parametrize(
    "survivors, dropped",
    [
        ((10, 20, 30, 40, 50), (20,)),  # one client on both lists
        ((10, 20, 30, 40, 50), (10, 20, 30, 40, 50)),  # everyone on both
        ((10, 20, 30), (20, 40, 50)),
    ],
)
def test_a_request_for_both_shares_of_a_client_is_refused(survivors, dropped):
    _, clients, _ = at_reveal()
    client = clients[10]
    with pytest.raises(SecAggRefused, match="both shares") as refused:
        client.reveal(UnmaskRequest(7, survivors, dropped))
    assert_one_sentence(str(refused.value))
    assert client.stage is ClientStage.DONE
    # Refusing ends its round: not even an honest request gets an answer now.
    with pytest.raises(SecAggRefused):
        client.reveal(UnmaskRequest(7, (10, 20, 30, 40, 50), ()))


def test_a_server_asking_twice_with_other_lists_gets_one_answer():
    _, clients, request = at_reveal()
    client = clients[10]
    answers = [client.reveal(request)]
    flipped = UnmaskRequest(7, (10, 30, 40, 50), (20,))  # 20 now "dropped"
    with pytest.raises(SecAggRefused):
        answers.append(client.reveal(flipped))
    assert revealed_both(answers) == set()
    assert set(answers[0].self_seed_shares) == {10, 20, 30, 40, 50}


@pytest.mark.parametrize(
    "request_",
    [
        UnmaskRequest(7, (10, 20, 30), ()),  # leaves clients unnamed
        UnmaskRequest(7, (20, 30, 40, 50), (10,)),  # calls this client dropped
        UnmaskRequest(7, (10, 20, 30), (40, 50)),  # fewer survivors than t
        UnmaskRequest(8, (10, 20, 30, 40, 50), ()),  # another round
        UnmaskRequest(7, (10, 20, 30, 40, 50, 60), ()),  # a client not in the round
    ],
)
def test_a_request_that_does_not_fit_the_round_is_refused(request_):
    _, clients, _ = at_reveal()
    with pytest.raises(SecAggRefused):
        clients[10].reveal(request_)


def test_a_client_asked_to_reveal_before_its_masked_input_never_sends_it():
    server, clients, updates, counts, relayed = at_masking()
    with pytest.raises(SecAggRefused):
        clients[10].reveal(UnmaskRequest(7, (20, 30, 40, 50), (10,)))
    with pytest.raises(SecAggRefused):
        clients[10].masked_input(relayed[10], updates[10], counts[10])


def test_a_share_relayed_to_the_wrong_client_is_refused():
    server, clients, updates, counts, relayed = at_masking()
    # A server handing client 30 the share 10 sealed for 20, relabelled.
    meant_for_20 = next(s for s in relayed[20].shares if s.sender == 10)
    swapped = tuple(
        EncryptedShare(10, 30, meant_for_20.sealed) if s.sender == 10 else s
        for s in relayed[30].shares
    )
    with pytest.raises(SecAggRefused, match="authentication"):
        clients[30].masked_input(SharesRelayed(7, 30, swapped), updates[30], counts[30])
    assert clients[30].stage is ClientStage.DONE


def test_a_key_list_without_the_client_s_own_keys_is_refused():
    config, server, clients, *_ = make_round()
    advertised = [client.advertise() for client in clients.values()]
    for message in advertised:
        server.receive_keys(message)
    key_list = server.close_keys()
    forged = type(key_list)(7, (advertised[1],) + key_list.keys[1:])  # 10's keys replaced
    with pytest.raises(SecAggRefused):
        clients[10].share(forged)


# ---- what the server refuses ------------------------------------------------------------


def test_the_server_refuses_late_repeated_and_foreign_messages():
    config, server, clients, *_ = make_round()
    first = clients[10].advertise()
    server.receive_keys(first)
    with pytest.raises(SecAggRefused, match="twice"):
        server.receive_keys(first)
    with pytest.raises(SecAggRefused, match="round"):
        server.receive_keys(type(first)(8, 20, os.urandom(32), os.urandom(32)))
    with pytest.raises(SecAggRefused, match="already advertised"):
        server.receive_keys(type(first)(7, 20, first.share_key, os.urandom(32)))
    with pytest.raises(SchemaError):
        server.receive_keys(type(first)(7, 20, b"short", os.urandom(32)))
    for c in (20, 30, 40):
        server.receive_keys(clients[c].advertise())
    assert server.pending == {50}
    server.drop(50)
    assert server.pending == set()
    server.close_keys()
    with pytest.raises(SecAggRefused):  # 50 is late: out for the round
        server.receive_keys(clients[50].advertise())
    with pytest.raises(SecAggRefused, match="not in it"):
        server.receive_shares(SharesSent(7, 50, ()))


def test_a_client_refuses_nan_and_its_round_ends():
    server, clients, updates, counts, relayed = at_masking()
    bad = updates[10].copy()
    bad[3] = np.nan
    with pytest.raises(SecAggRefused, match="NaN"):
        clients[10].masked_input(relayed[10], bad, counts[10])


def test_a_masked_input_late_for_its_stage_never_counts():
    server, clients, updates, counts, relayed = at_masking()
    late = clients[50].masked_input(relayed[50], updates[50], counts[50])
    for c in (10, 20, 30, 40):
        server.receive_masked(clients[c].masked_input(relayed[c], updates[c], counts[c]))
    request = server.close_masked()
    assert request.dropped == (50,)
    with pytest.raises(SecAggRefused, match="came when the server is at the unmasking round"):
        server.receive_masked(late)
    with pytest.raises(SecAggRefused):  # listed dropped: it takes no part in unmasking
        clients[50].reveal(request)
    for c in (10, 20, 30, 40):
        server.receive_reveal(clients[c].reveal(request))
    result = server.close_reveals()
    summed = (10, 20, 30, 40)
    assert result.survivors == summed and result.dropped == (50,)
    assert np.abs(result.mean - plain_mean(updates, counts, summed)).max() <= result.bound
