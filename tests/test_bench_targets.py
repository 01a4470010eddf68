"""Each benchmark's check-targets on recorded results: small literal numbers, once meeting its
targets and once missing one, so a change to a bench cannot break its TARGET lines silently
and a target can be read without running the bench (which takes minutes to hours)."""

from __future__ import annotations

import math
import re

import pytest

from bench import attacks, default_model, fitness, real_data, scale, secagg, soak, startup
from bench import time_to_accuracy
from bench import transfer
from bench.common import HistoryRow, read_history, seconds_per_round

TARGET = re.compile(r"^TARGET (.+): measured (.+), target (.+), (met|missed)$")


def verdicts(capsys) -> dict[str, str]:
    """The TARGET lines printed since the last call: name -> met or missed."""
    lines = [m for m in map(TARGET.match, capsys.readouterr().out.splitlines()) if m]
    assert lines, "no TARGET line printed"
    return {m[1]: m[4] for m in lines}


def missed(capsys) -> list[str]:
    return [name for name, verdict in verdicts(capsys).items() if verdict == "missed"]


def test_transfer(capsys):
    def received(size_mb, raw, ours, tutorial):
        return transfer.Received(size_mb, size_mb * 10**6, raw, ours, tutorial, ours, 3.0)

    links = [transfer.SlowLink(1000, 4_070_000, 32.5, "32.5 s")]
    trained = transfer.Trained(1000, True, 36.0, "outcome done")
    good = [received(1, [1e-3] * 3, [1e-3] * 3, [0.05] * 3), received(10, [1.0], [1.1], [])]
    assert transfer.check_targets(good, links, trained)
    assert missed(capsys) == []
    slow = [received(1, [1e-3] * 3, [1e-3] * 3, [5e-3] * 3), received(10, [1.0], [2.0], [])]
    cut = [transfer.SlowLink(1000, 4_070_000, math.inf, "cut: too slow")]
    assert not transfer.check_targets(slow, cut, transfer.Trained(1000, False, 600, "error"))
    assert len(missed(capsys)) == 4  # 10 MB vs raw, 1 MB vs the tutorial, the link, training


def test_transfer_never_finished_tutorial_is_a_lower_bound(capsys):
    unfinished = transfer.Received(1, 10**6, [1e-3], [1e-3], [], [], 3.0)
    assert unfinished.vs_tutorial == pytest.approx(3000)
    assert transfer.check_targets([unfinished])
    assert verdicts(capsys) == {"receive at 1 MB vs tutorial loop": "met"}


def test_startup(capsys):
    quick = {"demo": {"fedga": [1.0, 1.2, 1.1], "Keras first": [3.0, 3.1, 3.2]}}
    assert startup.check_targets(quick)
    assert verdicts(capsys) == {"demo (median)": "met"}
    slow = {**quick, "server peak": {"fedga": [400.0], "Keras first": [500.0]}}
    assert not startup.check_targets(slow)
    assert missed(capsys) == ["server peak (median)"]


def test_scale(capsys):
    stats = {"rounds": 4, "update_events": 4, "model_requests": 5, "over_share": 0, "errors": []}
    good = scale.Results(2, 2, [], 5, 2, [0.01], [0.01], 1.0, stats)
    assert scale.check_targets(good)
    assert missed(capsys) == []
    lost = scale.Results(2, 1, ["c-1: reset"], 5, 2, [], [], 1.0, {**stats, "model_requests": 4})
    assert not scale.check_targets(lost)
    assert missed(capsys) == ["clients done", "errors", "lost updates (sent but not received)"]


def fitness_results(generation: float) -> fitness.Results:
    return fitness.Results(
        per_solution={
            "XOR 2-4-2": {
                "tutorial model.predict": [1.0, 1.1],
                "pygad.kerasga.predict": [0.2, 0.2],
                fitness.BATCHED: [1e-4, 1e-4],
            },
            "784-128-10": {"pygad.kerasga.predict": [1e-2], fitness.BATCHED: [1e-3]},
        },
        differences={"XOR 2-4-2": {"tutorial model.predict": 1e-7}},
        generations={
            "digits 64-32-10": {
                fitness.FITNESS_PASS: [1.0, 1.0],
                fitness.FLOOR: [3.0, 3.0],
                fitness.SCALED_OPERATORS: [generation, generation],
            }
        },
    )


def test_fitness(capsys):
    assert fitness.check_targets(fitness_results(1.5))
    assert len(verdicts(capsys)) == 5
    assert not fitness.check_targets(fitness_results(2.5))
    assert missed(capsys) == [
        "digits 64-32-10 generation (scaled operators) vs batched fitness pass"
    ]


def time_to_accuracy_results(tutorial_seconds: float) -> time_to_accuracy.Results:
    runs = [(True, 5, 0.2)] * 4
    return time_to_accuracy.Results(
        4, 4, {row.name: runs for row in time_to_accuracy.ROWS}, 2, 2, tutorial_seconds, []
    )


def test_time_to_accuracy(capsys):
    assert time_to_accuracy.check_targets(time_to_accuracy_results(20.0))  # 250x
    assert len(verdicts(capsys)) == 11
    assert not time_to_accuracy.check_targets(time_to_accuracy_results(0.4))  # 5x
    assert missed(capsys) == ["speed-up over the tutorial's settings"]


def test_soak(capsys):
    calm = [("latency", 1, 0, 0), ("kills", 0, -1, 5)]
    assert soak.check_targets(soak.Results(100.0, 102.0, calm, 0, 0, 0.95))
    assert len(verdicts(capsys)) == 4
    assert not soak.check_targets(soak.Results(100.0, 110.0, calm, 1, 0, 0.95))
    assert missed(capsys) == [
        "server RSS growth from the 25% mark to the end (medians)",
        "updates lost / applied twice",
    ]


def test_attacks(capsys):
    def results(under_sign_flip: float) -> dict[str, attacks.Results]:
        held_out = {
            ("fedavg", "none"): 0.90,
            ("fedavg", "sign-flip"): under_sign_flip,
            (attacks.RECOMMENDED, "none"): 0.90,
            (attacks.RECOMMENDED, "sign-flip"): 0.89,
        }
        return {
            "5": {key: [attacks.Outcome(value, None, 1.0, [])] for key, value in held_out.items()}
        }

    assert attacks.targets(results(0.40))
    assert len(verdicts(capsys)) == 3  # the bite, the recommended rule holds, its clean cost
    assert not attacks.targets(results(0.85))
    assert missed(capsys) == ["the attacks bite: fedavg under sign-flip"]


def test_real_data(capsys):
    def outcome(holdout: float) -> real_data.Outcome:
        return real_data.Outcome(holdout, 200, 10, 12.0, 0.5, 300.0, 100.0)

    def results(fedavg: float) -> real_data.Results:
        return real_data.Results(
            refs={"wine": {"logistic": [0.97], "adam": [0.96]}},
            outcomes={
                "wine": {real_data.TARGET_ROW: [outcome(fedavg)]},
                "synthetic": {
                    real_data.FITNESS_ROW: [outcome(0.800)],
                    real_data.CENTRAL_ROW: [outcome(0.805)],
                },
            },
            held_out={"wine": 45, "synthetic": 500},
        )

    assert real_data.check_targets(results(0.95))
    assert len(verdicts(capsys)) == 2  # wine against Adam, fitness mode against the central GA
    assert not real_data.check_targets(results(0.90))
    assert len(missed(capsys)) == 1


def test_secagg_round_time(capsys):
    row = secagg.Setting("digits", 10, None, 3)

    def measured(secure: bool, seconds: float) -> secagg.Measured:
        return secagg.Measured(secure, 2410, [seconds] * 3, {}, {}, 0.0)

    def results(secure_seconds: float) -> secagg.Results:
        turns = [measured(s, secure_seconds if s else 1.0) for _ in range(3) for s in (0, 1)]
        return secagg.Results(turns={row: turns}, timed=row)

    assert secagg.check_round_time(results(1.2))
    assert missed(capsys) == []
    assert not secagg.check_round_time(results(1.7))
    assert len(missed(capsys)) == 1


def test_history_rows_and_seconds_per_round(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("time,round,accuracy,loss\n100.0,1,0.5,0.7\n101.0,2,0.6,\n103.0,3,0.7,0.5\n")
    rows = read_history(path)
    assert rows[1] == HistoryRow(101.0, 2, 0.6, math.inf)
    assert seconds_per_round(rows) == 1.5
    assert read_history(tmp_path / "never-written.csv") == []
    assert math.isnan(seconds_per_round(rows[:1]))


def test_real_data_fitness_against_flower_within_one_standard_error(capsys):
    """MNIST-1D's held-out set (1,251 samples) cannot tell 0.554 from 0.568 (SE 1.4 points):
    met; 0.53 is more than one SE below: missed. A Flower row's score is its median run."""

    def outcome(holdout: float) -> real_data.Outcome:
        return real_data.Outcome(holdout, 60, 10, 12.0, 0.5, 300.0, 100.0)

    assert real_data.median_run([outcome(0.587), outcome(0.559), outcome(0.568)]).holdout == 0.568

    def results(fitness: float) -> real_data.Results:
        return real_data.Results(
            refs={},
            outcomes={
                "mnist1d": {
                    "fitness-tuned": [outcome(fitness)],
                    real_data.ISSUE_KERAS_ROW: [outcome(0.568)],
                }
            },
            held_out={"mnist1d": 1251},
        )

    assert real_data.check_targets(results(0.554))
    assert "target >= 0.568 - 0.014 = 0.554, met" in capsys.readouterr().out
    assert not real_data.check_targets(results(0.530))
    assert len(missed(capsys)) == 1


def test_default_model(capsys):
    def runs(model, reached, held_out):
        return [
            default_model.Run(data, federation, model, seed, seed <= reached, 5, held_out)
            for data in default_model.SETS
            for federation in ("fitness", "weights")
            for seed in range(1, 11)
        ]

    xor, dense = default_model.MODELS
    assert default_model.check_targets(runs(xor, 7, 0.94) + runs(dense, 10, 0.93))
    assert missed(capsys) == []  # 0.93 is within one held-out standard error of 0.94
    assert not default_model.check_targets(runs(xor, 10, 0.96) + runs(dense, 8, 0.90))
    assert len(missed(capsys)) == 8  # each set and federation: 8/10 reached, 0.90 held out
