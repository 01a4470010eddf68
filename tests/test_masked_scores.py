"""Fitness mode with secure aggregation (``--federation fitness --secure-aggregation``): each
generation's losses reach the server masked (``common.secagg.scores``) and it learns only their
sum over the roster. The masking alone, then real servers and clients on loopback."""

from __future__ import annotations

import numpy as np
import pytest

from bench.plain_peers import plain_recv, plain_send
from common.errors import ConfigError, SecAggRefused
from common.fitness_federation import FITNESS, LARGEST_LOSS
from common.protocol.messages import (
    MASKED_SCORES_VERSION,
    MaskedScores,
    Roster,
    ScoreRequest,
    encode,
)
from common.secagg import ring
from common.secagg.scores import ScoreMasker, Scoring, score_ring, unmask_sum
from tests.conftest import raw_connection
from tests.test_fitness_federation import (  # noqa: F401 (iris: a fixture)
    GENERATIONS,
    ROUNDS,
    _generations,
    _run,
    iris,
    leave_mid_generation,
)
from tests.test_secagg import assert_one_sentence

SCORING = Scoring(1, 3, 7, 0)


def _roster(names, epoch=1):
    maskers = {name: ScoreMasker(epoch, name) for name in names}
    keys = tuple(sorted((name, m.public_key) for name, m in maskers.items()))
    for masker in maskers.values():
        masker.join(epoch, keys, LARGEST_LOSS)
    return maskers, keys


def test_the_unmasked_sum_is_the_weighted_mean_loss_within_its_bound():
    rng = np.random.default_rng(3)
    maskers, _ = _roster(["a", "b", "c", "d"])
    losses = {name: rng.uniform(0, 3, 30) for name in maskers}
    counts = {name: int(rng.integers(1, 5000)) for name in maskers}
    vectors = {name: m.mask(SCORING, losses[name], counts[name]) for name, m in maskers.items()}
    # What the server holds of one client looks like noise: no link to its losses.
    assert abs(np.corrcoef(vectors["a"][:-1].astype(float), losses["a"])[0, 1]) < 4 / np.sqrt(30)
    seeds = [maskers[name].reveal(SCORING) for name in sorted(maskers)]
    spec = score_ring(4, LARGEST_LOSS)
    sums, count = unmask_sum(spec, [vectors[n] for n in sorted(maskers)], seeds, SCORING)
    plain = sum(losses[n] * counts[n] for n in maskers) / sum(counts.values())
    assert count == sum(counts.values())
    bound = ring.error_bound(spec, 4, count)
    assert bound < 1e-8
    assert np.max(np.abs(sums / count - plain)) <= bound


def test_without_every_roster_clients_vector_nothing_unmasks():
    maskers, _ = _roster(["a", "b", "c"])
    losses = np.full(5, 0.5)
    vectors = [m.mask(SCORING, losses, 10) for m in maskers.values()]
    seeds = [m.reveal(SCORING) for m in maskers.values()]
    spec = score_ring(3, LARGEST_LOSS)
    sums, _ = unmask_sum(spec, vectors[:2], seeds[:2], SCORING)  # c's pairwise masks remain
    assert np.max(np.abs(sums)) > 1e6


@pytest.mark.parametrize(
    "why",
    ["two clients", "own key missing", "same key twice", "keys changed", "wrong epoch"],
)
def test_a_client_refuses_a_roster_that_would_expose_it(why):
    maskers, keys = _roster(["a", "b", "c"])
    fresh = ScoreMasker(1, "a")
    other = ScoreMasker(1, "z").public_key
    roster, epoch, masker = keys, 1, fresh
    if why == "two clients":
        roster = (("a", fresh.public_key), keys[1])
    elif why == "own key missing":
        roster = (("a", other), *keys[1:])
    elif why == "same key twice":
        roster = (("a", fresh.public_key), ("b", fresh.public_key), keys[2])
    elif why == "keys changed":
        masker, roster = maskers["a"], (keys[0], ("b", other), keys[2])
    else:
        epoch = 2
    with pytest.raises(SecAggRefused) as refused:
        masker.join(epoch, roster, LARGEST_LOSS)
    assert_one_sentence(str(refused.value))


def test_a_client_masks_each_scoring_once_and_reveals_only_the_one_it_just_masked():
    maskers, _ = _roster(["a", "b", "c"])
    masker = maskers["a"]
    masker.mask(SCORING, np.ones(3), 4)
    with pytest.raises(SecAggRefused):  # a second vector of one scoring
        masker.mask(SCORING, np.zeros(3), 4)
    with pytest.raises(SecAggRefused):  # another scoring's seed
        masker.reveal(Scoring(1, 3, 6, 0))
    masker.reveal(SCORING)
    with pytest.raises(SecAggRefused):  # twice
        masker.reveal(SCORING)


def test_masked_messages_round_trip_and_stay_small():
    """What masking does to a generation's traffic at 10 members: one more message each way
    (the self-mask seed, and the server's ask for it), each well under 1 KiB."""
    maskers, keys = _roster(["site1-0123abcd", "site2-4567ef01", "site3-89abcdef"])
    masker = maskers["site1-0123abcd"]
    vector = masker.mask(SCORING, np.random.default_rng(0).random(10), 1_000_000)
    masked = MaskedScores(SCORING, "d" * 32, vector, "site1-0123abcd")
    back = MaskedScores.from_data(masked.to_message().data)
    assert back.scoring == SCORING and np.array_equal(back.vector, vector)
    assert len(encode(masked.to_message())) <= 1024
    request = ScoreRequest(3, 7, 0, False, "d" * 32, roster=Roster(1, keys, LARGEST_LOSS))
    again = ScoreRequest.from_data(request.to_message().data)
    assert again.roster == request.roster and again.scoring == SCORING
    # The keys go once per roster; each generation after names it by its epoch.
    later = ScoreRequest(3, 8, 0, False, "d" * 32, np.ones(10), roster=Roster(1, (), 16.0))
    assert ScoreRequest.from_data(later.to_message().data).roster == later.roster
    assert len(encode(later.to_message())) <= 1024
    masker.join(1, (), LARGEST_LOSS)  # the roster it holds, named by its epoch


def test_masked_fitness_mode_runs_the_plain_fitness_run(iris, server_factory, client_factory):  # noqa: F811
    """Three clients of a label-skewed split: masked, the server scores the same members in
    every generation as in the clear, with fitness equal within the ring's quantisation."""
    test_file, _, parts = iris
    settings = dict(test_data=test_file, seed=7, min_clients=3)
    plain, plain_events = _run(server_factory, client_factory, parts, **settings)
    masked, masked_events = _run(
        server_factory, client_factory, parts, secure_aggregation=True, **settings
    )
    expected, got = _generations(plain_events), _generations(masked_events)
    assert len(got) == ROUNDS * GENERATIONS
    assert [(e.round, e.generation, e.detail) for e in got] == [
        (e.round, e.generation, e.detail) for e in expected
    ]
    np.testing.assert_allclose([e.fitness for e in got], [e.fitness for e in expected], rtol=1e-6)
    assert [e.samples for e in masked_events.all() if e.kind == "scored"] == [None] * (3 * ROUNDS)


def test_a_client_gone_mid_generation_is_rekeyed_out_and_the_others_finish(
    server_factory, client_factory, caplog
):
    _, said = leave_mid_generation(
        server_factory,
        client_factory,
        caplog,
        ["client1", "client2", "client1"],
        secure_aggregation=True,
        min_clients=3,
    )
    assert any("under roster 2" in line for line in said)  # new keys without the leaver


def test_a_fitness_client_that_cannot_mask_is_refused(server_factory, client_factory):
    server, events = server_factory(
        federation=FITNESS, secure_aggregation=True, min_clients=3, seed=1
    )
    with raw_connection(server.server_address) as older:
        plain_send(
            older,
            "echo",
            {"best_model_weights_vector": None, "protocol_version": MASKED_SCORES_VERSION - 1},
        )
        with pytest.raises((ConnectionError, EOFError, OSError)):
            plain_recv(older)
    disconnected = events.wait_for(lambda e: e.kind == "disconnected")
    assert "masked" in disconnected.detail and "in the clear" in disconnected.detail


@pytest.mark.parametrize(
    "settings",
    [{"min_clients": 2}, {"min_clients": 3, "secagg_threshold": 2}],
)
def test_what_masked_fitness_mode_cannot_run_is_refused_in_one_sentence(server_factory, settings):
    with pytest.raises(ConfigError) as refused:
        server_factory(federation=FITNESS, secure_aggregation=True, **settings)
    assert_one_sentence(str(refused.value))
