"""The GA settings by problem: the server halves the mutation step once its test loss stops
falling (real data), keeps it fixed for the tutorial's XOR, and sends what it uses."""

from __future__ import annotations

import numpy as np
import pytest

from common import datasets
from common.data import XOR_TEST_DATA, load_dataset
from common.ga import REAL_DATA, GAConfig
from common.global_model import GlobalModel
from common.model import xor_network
from common.protocol import ClientUpdate
from common.server_config import ServerConfig, TrainingConfig
from common.step_schedule import StepSchedule
from common.client import ClientOutcome
from tests.conftest import WAIT
from tests.test_best_model import _xor_solution

ROUND_LIMIT = 30  # the wine run below: 1-5 rounds to 0.9 over split seeds 1-3 in-process


def _sent_step(model: GlobalModel) -> float:
    return model.reply_to_echo().ga_settings["mutation_step"]


def test_the_step_halves_after_rounds_without_a_lower_loss_down_to_a_tenth():
    model = GlobalModel(
        xor_network(1),
        XOR_TEST_DATA,
        TrainingConfig(
            aggregation="fedavg",
            min_clients=1,
            target_accuracy=1.5,
            ga=GAConfig(mutation_step=0.4, step_patience=2),
        ),
    )
    solution = _xor_solution(0.2)  # every round below scores the same loss: no progress
    model.apply_round({"a": ClientUpdate(solution)})  # a lower loss than the initial model's
    steps = []
    for _ in range(12):
        model.apply_round({"a": ClientUpdate(solution)})
        steps.append(_sent_step(model))
    assert steps[:5] == pytest.approx([0.4, 0.2, 0.2, 0.1, 0.1])
    assert steps[-1] == pytest.approx(0.04) and min(steps) == pytest.approx(0.04)

    model.apply_round({"a": ClientUpdate(_xor_solution(1.0))})  # a lower loss: patience anew
    model.apply_round({"a": ClientUpdate(_xor_solution(1.0))})
    assert _sent_step(model) == pytest.approx(0.04)
    population = model.reply_to_echo().population_weights
    assert np.all(np.isfinite(population))


def test_the_schedule_halves_after_patience_rounds_and_waits_again():
    schedule = StepSchedule(0.4, patience=2, loss=1.0)
    halved = [schedule.after_round(loss, n) for n, loss in enumerate([0.9, 0.9, 0.95], 1)]
    assert halved == [False, False, True] and schedule.step == pytest.approx(0.2)
    assert not schedule.after_round(0.9, 4)  # patience runs again from round 3
    assert schedule.after_round(0.9, 5) and schedule.step == pytest.approx(0.1)
    assert not schedule.after_round(0.5, 9)  # a lower loss: patience from round 9
    assert [schedule.after_round(0.5, n) for n in (10, 11)] == [False, True]
    for n in range(12, 30, 2):
        schedule.after_round(0.5, n)
    assert schedule.step == pytest.approx(0.04)  # a tenth of the start at most
    assert not StepSchedule(0.4, patience=0, loss=1.0).after_round(2.0, 100)


def test_a_fixed_step_stays_as_set():
    model = GlobalModel(
        xor_network(1),
        XOR_TEST_DATA,
        TrainingConfig(
            aggregation="fedavg",
            min_clients=1,
            target_accuracy=1.5,
            ga=GAConfig(mutation_step=0.4),
        ),
    )
    for _ in range(6):
        model.apply_round({"a": ClientUpdate(_xor_solution(0.2))})
    assert _sent_step(model) == 0.4


def test_settings_left_open_follow_the_model_and_flags_win():
    xor = ServerConfig().training.resolved().ga
    assert (xor.stop_fitness, xor.step_patience) == (GAConfig().stop_fitness, 0)
    own = (
        ServerConfig.of(model="model.json", test_data="test.npz", mutation_step=0.2)
        .training.resolved()
        .ga
    )
    assert (own.stop_fitness, own.step_patience, own.mutation_step) == (
        REAL_DATA.stop_fitness,
        REAL_DATA.step_patience,
        0.2,
    )
    given = (
        ServerConfig.of(test_data="test.npz", stop_fitness=5, step_patience=0)
        .training.resolved()
        .ga
    )
    assert (given.stop_fitness, given.step_patience) == (5, 0)


def test_a_seeded_federated_run_on_wine_reaches_0_9(tmp_path, server_factory, client_factory):
    """Three clients with label-skewed wine over loopback, fedavg, the defaults a user gets.
    Rounds close on all three updates; the round timeout is only a bound for a busy machine."""
    assert (
        datasets.main(
            ["wine", "--clients", "3", "--dirichlet", "0.5", "--seed", "2", "--out", str(tmp_path)]
        )
        == 0
    )
    server, events = server_factory(
        model=str(tmp_path / "model.json"),
        seed=2,
        test_data=str(tmp_path / "server_test.npz"),
        aggregation="fedavg",
        min_clients=3,
        round_timeout=WAIT,
        target_accuracy=0.9,
        max_rounds=ROUND_LIMIT,
    )
    clients = [
        client_factory(
            server.server_address,
            name=f"client{n}",
            seed=n,
            data=load_dataset(str(tmp_path / f"client_{n}.npz")),
        )[0]
        for n in (1, 2, 3)
    ]
    done = events.wait_for(lambda e: e.kind in ("done", "gave_up"), timeout=WAIT * 3)
    assert done.kind == "done", f"accuracy {done.accuracy} after {done.round} rounds"
    for client in clients:
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE
