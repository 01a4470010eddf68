"""The server's side of poisoning defences: per-update rules share the rounds among the
connected clients, so one that answers at once cannot take them while the others train."""

from __future__ import annotations

import csv
import logging
import re

import numpy as np
import pytest

from bench.attacks import RECOMMENDED
from common.attacks import AttackConfig

from common.data import XOR_TEST_DATA
from common.errors import ConfigError
from common.fitness_federation import FitnessFederation, rank_fitness
from common.global_model import OVER_SHARE, GlobalModel
from common.model import xor_network
from common.protocol import ClientUpdate
from common.server_config import TrainingConfig


def _per_update_model(events: list, round_timeout: float = 600.0) -> GlobalModel:
    # running-average applies every update it gets: whether one is applied shows in the round.
    training = TrainingConfig(
        seed=1, aggregation="running-average", target_accuracy=2.0, round_timeout=round_timeout
    )
    return GlobalModel(xor_network(1), XOR_TEST_DATA, training, on_event=events.append)


def _over_share(events: list) -> list[str]:
    """The clients whose updates were answered without being applied, in order."""
    return [e.peer for e in events if e.kind == "judged" and e.detail == OVER_SHARE]


def _update(model: GlobalModel, value: float) -> ClientUpdate:
    return ClientUpdate(np.full(model.num_params, value, dtype=np.float32))


def test_a_fast_client_gets_one_in_k_applied_updates_and_is_answered_at_once():
    events: list = []
    model = _per_update_model(events)
    model.join("fast")
    model.join("slow")
    model.apply_update(_update(model, 1.0), "fast")
    assert model.round == 1
    before = model.vector.copy()
    reply = model.apply_update(_update(model, -5.0), "fast")  # before "slow" had its turn
    assert model.round == 1
    np.testing.assert_array_equal(model.vector, before)
    np.testing.assert_array_equal(reply.population_weights[0], before)  # the current model
    assert _over_share(events) == ["fast"]
    model.apply_update(_update(model, 0.5), "slow")
    model.apply_update(_update(model, -5.0), "fast")  # every other client had its turn
    assert model.round == 3


def test_the_share_holds_only_for_round_timeout_so_a_silent_client_stalls_no_one():
    events: list = []
    model = _per_update_model(events, round_timeout=1e-9)  # passed before the next update
    model.join("fast")
    model.join("silent")
    model.apply_update(_update(model, 1.0), "fast")
    model.apply_update(_update(model, 2.0), "fast")
    assert model.round == 2
    assert not _over_share(events)


def test_a_client_that_left_no_longer_holds_the_others_back():
    events: list = []
    model = _per_update_model(events)
    model.join("fast")
    model.join("gone")
    model.apply_update(_update(model, 1.0), "fast")
    model.forget("gone")
    model.apply_update(_update(model, 2.0), "fast")
    assert model.round == 2


def test_rank_fitness_drops_a_liar_that_reverses_the_order():
    honest = [np.array([0.1, 0.5, 0.9, 0.3]) * scale for scale in (1.0, 2.0, 0.5)]
    liar = 1.0 - honest[0]  # reports the worst member as the best
    fitness = rank_fitness([*honest, liar], byzantine=1)
    np.testing.assert_array_equal(fitness, rank_fitness(honest, byzantine=0))
    np.testing.assert_array_equal(fitness, [4, 2, 1, 3])  # members less the mean rank: >= 1


def test_fitness_mode_refuses_a_byzantine_it_cannot_outvote():
    model = GlobalModel(xor_network(1), XOR_TEST_DATA, TrainingConfig(seed=1))
    with pytest.raises(ConfigError, match="needs --min-clients of at least 3"):
        FitnessFederation(model, min_clients=2, round_timeout=5.0, byzantine=1)


def _attacked_run(server_factory, client_factory, iris_split, rule, history, caplog):
    """Four honest clients and one flipping its change ten times over (``--attack sign-flip
    --attack-strength 10``), 8 rounds of ``rule``:
    the global model's final accuracy, and the history CSV's rows."""
    test_file, parts = iris_split
    server, events = server_factory(
        test_data=test_file,
        aggregation=rule,
        min_clients=5,
        round_timeout=60.0,
        max_rounds=8,
        target_accuracy=2.0,  # out of reach: every run has its 8 rounds
        seed=1,
        history=str(history),
    )
    for n, part in enumerate(parts[:4], 1):
        client_factory(server.server_address, data=part, name=f"honest{n}", seed=n)
    client_factory(
        server.server_address,
        data=parts[4],
        name="attacker",
        seed=5,
        attack=AttackConfig("sign-flip", 10.0),
    )
    events.wait_for(lambda e: e.kind == "gave_up")
    with history.open() as file:
        return server.global_model.accuracy, list(csv.DictReader(file))


def test_an_attacker_wrecks_fedavg_and_shows_as_excluded_by_the_recommended_rule(
    server_factory, client_factory, iris_split, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="common.global_model")
    wrecked, _ = _attacked_run(
        server_factory, client_factory, iris_split, "fedavg", tmp_path / "fedavg.csv", caplog
    )
    caplog.clear()
    defended, rows = _attacked_run(
        server_factory, client_factory, iris_split, RECOMMENDED, tmp_path / "defended.csv", caplog
    )
    assert wrecked < 0.6 < 0.8 <= defended
    # Every round: the attacker's update cut, the honest clients' used, in the CSV and the log.
    assert len(rows) == 8
    for row in rows:
        cut = row["excluded"] + row["clipped"]
        assert "attacker-" in cut and "honest" not in cut, row
        assert row["used"].count("honest") >= 3, row
    assert re.search(r"client=attacker-[0-9a-f]{8} in round \d+: (excluded|clipped)", caplog.text)


def test_a_round_too_small_for_the_rule_closes_short_and_does_not_count():
    events: list = []
    training = TrainingConfig(
        seed=1, aggregation="krum", min_clients=5, round_timeout=0.2, target_accuracy=2.0
    )
    model = GlobalModel(xor_network(1), XOR_TEST_DATA, training, on_event=events.append)
    before = model.vector.copy()
    reply = model.apply_update(_update(model, 3.0), "lone")  # the round times out with 1
    assert model.round == 0
    np.testing.assert_array_equal(model.vector, before)
    np.testing.assert_array_equal(reply.population_weights[0], before)
    (short,) = [e for e in events if e.kind == "short"]
    assert short.detail == (
        "krum cannot tolerate 1 attacker with 1 update: it needs more than 2F + 2 = 4."
    )
