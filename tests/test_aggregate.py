"""Aggregation rules are pure functions; robust ones resist a client sending huge weights.
Each rule is a class in one registry by name, and a new rule is one class. The server
optimisers step as their papers and Flower's strategies do, keep their state across rounds,
and take checked settings. The defences' arithmetic on crafted updates, what each rule says
it did with each update (its verdicts), and the rounds it refuses."""

import textwrap

import numpy as np
import pytest

from common import aggregate
from common.aggregate import (
    AGGREGATIONS,
    CLIPPED,
    EXCLUDED,
    SETTINGS,
    USED,
    FedAvg,
    RunningAverage,
    Update,
    aggregation_named,
    capped_counts,
    fedavg,
    inspect,
    krum_scores,
    median,
    model_averaging,
    pairwise_distances,
    round_based,
    running_candidates,
    trimmed_mean,
)
from common.errors import ConfigError
from common.data import XOR_TEST_DATA
from common.model import ForwardPass, build_xor_model
from common.protocol import ClientUpdate


def test_model_averaging_is_the_mean_and_pure():
    a, b = np.array([0.0, 2.0, -4.0]), np.array([2.0, 2.0, 4.0])
    np.testing.assert_array_equal(model_averaging(a, b), [1.0, 2.0, 0.0])
    np.testing.assert_array_equal(a, [0.0, 2.0, -4.0])


def test_fedavg_weights_by_sample_count():
    updates = [np.array([0.0, 0.0]), np.array([3.0, 6.0])]
    np.testing.assert_allclose(fedavg(updates, [1, 2]), [2.0, 4.0])
    np.testing.assert_allclose(fedavg(updates), [1.5, 3.0])  # peers that send no count: 1 each


def test_median_and_trimmed_mean():
    updates = [
        np.array([1.0]),
        np.array([2.0]),
        np.array([3.0]),
        np.array([100.0]),
        np.array([-50.0]),
    ]
    assert median(updates)[0] == 2.0
    mean, dropped = trimmed_mean(updates, cut=1)
    assert mean[0] == pytest.approx(2.0)
    np.testing.assert_array_equal(dropped, [0, 0, 0, 1, 1])  # in every coordinate: the one


def test_one_huge_update_wrecks_fedavg_but_not_median():
    forward = ForwardPass(build_xor_model())
    rng = np.random.default_rng(0)
    good = _solving_model()  # and three honest clients near it
    honest = [good + rng.normal(0, 0.01, good.size).astype(np.float32) for _ in range(3)]
    poisoned = honest + [np.full(good.size, 1e6, np.float32)]

    def accuracy(vector):
        return forward.accuracy(
            vector.astype(np.float32), XOR_TEST_DATA.inputs, XOR_TEST_DATA.outputs
        )

    assert accuracy(median(poisoned)) == 1.0
    assert accuracy(trimmed_mean(poisoned, cut=1)[0]) == 1.0
    assert accuracy(fedavg(poisoned)) < 1.0


def _solving_model():
    """Hidden units h1 = relu(a+b), h2 = relu(a+b-1): XOR = h1 - 2*h2."""
    kernel1 = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], np.float32)
    bias1 = np.array([0, -1, 0, 0], np.float32)
    kernel2 = np.array([[-5, 5], [10, -10], [0, 0], [0, 0]], np.float32)
    bias2 = np.array([2.5, -2.5], np.float32)
    return np.concatenate([kernel1.ravel(), bias1, kernel2.ravel(), bias2])


def test_the_registry_holds_the_rules_by_name_the_tutorials_first():
    assert list(AGGREGATIONS) == [
        "running-average",
        "running-best",
        "fedavg",
        "median",
        "trimmed-mean",
        "krum",
        "multi-krum",
        "zeno",
        "norm-bounded",
        "fedavgm",
        "fedadam",
        "fedyogi",
    ]
    # What Flower can run
    assert round_based() == list(AGGREGATIONS)[2:]


def test_the_running_average_takes_an_update_that_reached_the_target_as_is():
    global_vector, update = np.array([0.0, 2.0]), np.array([2.0, 4.0])
    rule = RunningAverage()
    np.testing.assert_array_equal(rule.aggregate(global_vector, [Update(update)]), [1.0, 3.0])
    taken = rule.aggregate(global_vector, [Update(update, reached_target=True)])
    np.testing.assert_array_equal(taken, update)


def test_the_fedavg_rule_weights_by_the_updates_sample_counts():
    updates = [Update(np.array([0.0, 0.0]), 1), Update(np.array([3.0, 6.0]), 2)]
    np.testing.assert_allclose(FedAvg().aggregate(np.zeros(2), updates), [2.0, 4.0])


def test_a_new_rule_is_one_class_found_by_name_everywhere():
    """The module docstring's example, run as written there: registered, it is a choice of
    the flag and of Flower, and the server runs it by name with its setting."""
    from common.cli import server_parser
    from common.data import XOR_TEST_DATA
    from common.global_model import GlobalModel
    from common.model import xor_network
    from common.server_config import TrainingConfig

    example = aggregate.__doc__.split("::\n")[1].split("\nand in ")[0]
    exec(textwrap.dedent(example), vars(aggregate).copy())  # registers fedavg-step
    try:
        flag = next(a for a in server_parser()._actions if a.dest == "aggregation")
        assert "fedavg-step" in flag.choices and "fedavg-step" in round_based()
        model = GlobalModel(
            xor_network(1),
            XOR_TEST_DATA,
            TrainingConfig(
                aggregation="fedavg-step",
                server_learning_rate=0.25,
                min_clients=1,
                target_accuracy=2.0,
            ),
        )
        start = model.vector.copy()
        model.apply_update(ClientUpdate(start + 1), "a")  # a quarter of the way
        np.testing.assert_allclose(model.vector, start + 0.25, rtol=1e-6)
        assert model.round == 1
        assert str(model.aggregation) == "fedavg-step (server-learning-rate=0.25)"
    finally:
        del AGGREGATIONS["fedavg-step"]


# ---- server optimisers ------------------------------------------------------------------------


def _round(rule, global_vector, *updates):
    """One round of ``rule``: each update a (vector, sample count) pair."""
    return rule.aggregate(
        np.asarray(global_vector, dtype=np.float64),
        [Update(np.asarray(vector, dtype=np.float64), count) for vector, count in updates],
    )


def test_fedavgm_keeps_a_velocity_that_carries_on_after_the_clients_agree():
    rule = aggregation_named("fedavgm", server_learning_rate=0.5, server_momentum=0.9)
    # Round 1: the weighted mean of [2, 0] x1 and [2, 4] x3 is [2, 3]: velocity [2, 3].
    first = _round(rule, [0, 0], ([2, 0], 1), ([2, 4], 3))
    np.testing.assert_allclose(first, [1.0, 1.5])  # half the velocity
    # Round 2: a change of [1, -1]; velocity 0.9 * [2, 3] + [1, -1] = [2.8, 1.7].
    second = _round(rule, first, ([2.0, 0.5], 1))
    np.testing.assert_allclose(second, [1 + 1.4, 1.5 + 0.85])
    # Round 3: the update is the model itself, yet the velocity 0.9 * [2.8, 1.7] moves it.
    third = _round(rule, second, (second, 5))
    np.testing.assert_allclose(third, second + 0.5 * np.array([2.52, 1.53]))
    np.testing.assert_allclose(rule.state()["velocity"], [2.52, 1.53])
    assert rule.state()["rounds"] == 3


def test_fedavgm_without_momentum_and_a_whole_step_is_fedavg():
    rule = aggregation_named("fedavgm", server_learning_rate=1.0, server_momentum=0.0)
    updates = [Update(np.array([1.0, 5.0]), 2), Update(np.array([4.0, -1.0]), 1)]
    np.testing.assert_allclose(
        rule.aggregate(np.zeros(2), updates), FedAvg().aggregate(np.zeros(2), updates)
    )


def test_fedadam_moments_and_bias_corrected_step_over_three_rounds():
    eta, beta1, beta2, tau = 0.5, 0.5, 0.75, 0.25
    rule = aggregation_named("fedadam", server_learning_rate=eta, beta1=beta1, beta2=beta2, tau=tau)
    model, m, v = np.array([0.0]), 0.0, 0.0
    for rounds, change in enumerate([4.0, -2.0, 1.0], start=1):
        m = beta1 * m + (1 - beta1) * change  # 2, 0, 0.5
        v = beta2 * v + (1 - beta2) * change**2  # 4, 4, 3.25
        # Adam's bias correction, its exponent one ahead as in Flower (round + 1)
        rate = eta * np.sqrt(1 - beta2 ** (rounds + 1)) / (1 - beta1 ** (rounds + 1))
        expected = model + rate * m / (np.sqrt(v) + tau)
        model = _round(rule, model, (model + change, 1))
        np.testing.assert_allclose(model, expected, rtol=1e-12)
    assert rule.state()["m"] == pytest.approx(0.5) and rule.state()["v"] == pytest.approx(3.25)
    assert rule.state()["rounds"] == 3


def test_fedyogi_grows_its_second_moment_additively_and_shrinks_it_by_a_step():
    eta, beta1, beta2, tau = 0.5, 0.5, 0.75, 0.25
    rule = aggregation_named("fedyogi", server_learning_rate=eta, beta1=beta1, beta2=beta2, tau=tau)
    model, m = np.array([0.0]), 0.0
    # v: 0 -> 0.25 * 16 = 4 (below the square: up by a quarter of it) -> 4 - 0.25 * 1 = 3.75
    # (above: down by a quarter of it) -> 3.75 - 0.25 * 1 = 3.5
    for change, v in [(4.0, 4.0), (-1.0, 3.75), (1.0, 3.5)]:
        m = beta1 * m + (1 - beta1) * change
        expected = model + eta * m / (np.sqrt(v) + tau)  # no bias correction, as Flower's
        model = _round(rule, model, (model + change, 1))
        np.testing.assert_allclose(model, expected, rtol=1e-12)
    assert rule.state()["v"] == pytest.approx(3.5)


def test_fedadam_moves_each_weight_by_about_eta_whatever_the_scale_of_its_change():
    rule = aggregation_named("fedadam", tau=1e-9)
    step = _round(rule, [0.0, 0.0], ([100.0, 0.001], 1))
    eta = rule.settings.server_learning_rate
    rate = eta * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)  # the first round's bias correction
    np.testing.assert_allclose(step, [rate, rate], rtol=1e-5)


def _flowers_rounds(name, settings, rounds):
    """What Flower 1.42's flwr.serverapp.strategy code computes, transcribed line by line
    (FedAvgM.aggregate_train; FedOpt._compute_deltat_and_mt with FedAdam's or FedYogi's
    aggregate_train) on one array, for each round's (global, FedAvg mean)."""
    results, momentum_vector, m_t, v_t = [], None, None, None
    for server_round, (current, aggregated) in enumerate(rounds, start=1):
        if name == "fedavgm":
            pseudo_gradient = current - aggregated
            if momentum_vector is None:
                momentum_vector = pseudo_gradient
            else:
                momentum_vector = settings["server_momentum"] * momentum_vector + pseudo_gradient
            results.append(current - settings["server_learning_rate"] * momentum_vector)
            continue
        eta, beta_1, beta_2, tau = (settings[k] for k in ("eta", "beta_1", "beta_2", "tau"))
        delta_t = aggregated - current
        m_t = np.zeros_like(aggregated) if m_t is None else m_t
        m_t = beta_1 * m_t + (1 - beta_1) * delta_t
        v_t = np.zeros_like(aggregated) if v_t is None else v_t
        if name == "fedadam":
            v_t = beta_2 * v_t + (1 - beta_2) * (delta_t**2)
            eta_norm = (
                eta
                * np.sqrt(1 - np.power(beta_2, server_round + 1.0))
                / (1 - np.power(beta_1, server_round + 1.0))
            )
            results.append(current + eta_norm * m_t / (np.sqrt(v_t) + tau))
        else:
            v_t = v_t - (1.0 - beta_2) * (delta_t**2) * np.sign(v_t - delta_t**2)
            results.append(current + eta * m_t / (np.sqrt(v_t) + tau))
    return results


@pytest.mark.parametrize(
    "name, flowers_settings",
    [
        ("fedavgm", {"server_learning_rate": 0.7, "server_momentum": 0.9}),
        ("fedadam", {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
        ("fedyogi", {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    ],
)
def test_each_optimiser_gives_what_flowers_strategy_computes(name, flowers_settings):
    ours = {"eta": "server_learning_rate", "beta_1": "beta1", "beta_2": "beta2"}
    rule = aggregation_named(
        name, **{ours.get(key, key): value for key, value in flowers_settings.items()}
    )
    rng = np.random.default_rng(0)
    current, rounds, results = rng.normal(size=20), [], []
    for _ in range(4):
        updates = [current + rng.normal(0, 0.5, 20) for _ in range(3)]
        counts = [10, 30, 20]
        rounds.append((current, fedavg(updates, counts)))
        current = rule.aggregate(current, [Update(u, n) for u, n in zip(updates, counts)])
        results.append(current)
    for theirs, mine in zip(_flowers_rounds(name, flowers_settings, rounds), results):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12)


def _run(rule, model, rounds):
    for updates in rounds:
        model = rule.aggregate(model, updates)
    return model


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_a_restored_optimiser_carries_on_as_if_never_stopped(name):
    rng = np.random.default_rng(1)
    rounds = [[Update(rng.normal(size=6), n) for n in (1, 2)] for _ in range(3)]
    straight = _run(aggregation_named(name), np.zeros(6), rounds)
    stopped = aggregation_named(name)
    model = _run(stopped, np.zeros(6), rounds[:2])
    restarted = aggregation_named(name)
    restarted.restore(stopped.state())
    np.testing.assert_array_equal(_run(restarted, model, rounds[2:]), straight)
    fresh = _run(aggregation_named(name), model, rounds[2:])  # what a lost state gives
    assert not np.allclose(fresh, straight)


def test_each_rule_declares_its_settings_with_defaults():
    cap = {"max_claimed_samples": None}  # None: computed each round
    assert {name: aggregate.settings_of(name) for name in AGGREGATIONS} == {
        "running-average": {},
        "running-best": {},
        "fedavg": cap,
        "median": {},
        "trimmed-mean": {"byzantine": 1},
        "krum": {"byzantine": 1},
        "multi-krum": {"byzantine": 1},
        "zeno": {"byzantine": 1},
        "norm-bounded": {"clip_norm": None, **cap},
        "fedavgm": {"server_learning_rate": 0.1, "server_momentum": 0.9, **cap},
        "fedadam": {"server_learning_rate": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, **cap},
        "fedyogi": {"server_learning_rate": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3, **cap},
    }
    assert set(SETTINGS) == {
        setting for name in AGGREGATIONS for setting in aggregate.settings_of(name)
    }


@pytest.mark.parametrize(
    "name, settings, sentence",
    [
        ("fedavg", {"beta1": 0.5}, "fedavg takes no beta1 setting: it is for fedadam and fedyogi."),
        (
            "median",
            {"server_learning_rate": 0.5},
            "median takes no server-learning-rate setting: it is for fedavgm, fedadam and fedyogi.",
        ),
        (
            "fedadam",
            {"server_momentum": 0.5},
            "fedadam takes no server-momentum setting: it is for fedavgm.",
        ),
        (
            "fedavgm",
            {"server_momentum": 1.0},
            "server-momentum must be at least 0 and below 1, not 1.",
        ),
        ("fedadam", {"beta2": -0.1}, "beta2 must be at least 0 and below 1, not -0.1."),
        ("fedyogi", {"tau": 0.0}, "tau must be greater than 0, not 0."),
        (
            "fedadam",
            {"server_learning_rate": float("nan")},
            "server-learning-rate must be greater than 0, not nan.",
        ),
        ("fedadam", {"beta1": "0.9"}, "beta1 must be a number, not '0.9'."),
        ("norm-bounded", {"clip_norm": -1}, "clip-norm must be greater than 0, not -1."),
        ("norm-bounded", {"clip_norm": 0.0}, "clip-norm must be greater than 0, not 0."),
        (
            "fedavg",
            {"max_claimed_samples": 0},
            "max-claimed-samples must be greater than 0, not 0.",
        ),
        ("krum", {"byzantine": -1}, "byzantine must be 0 or more, not -1."),
        ("krum", {"byzantine": 1.5}, "byzantine must be a whole number, not 1.5."),
        ("fedadam", {"beta1": None}, "beta1 must be a number, not None."),
        (
            "median",
            {"byzantine": 1},
            "median takes no byzantine setting: it is for trimmed-mean, krum",
        ),
        (
            "trimmed-mean",
            {"clip_norm": 1.0},
            "trimmed-mean takes no clip-norm setting: it is for norm-bounded.",
        ),
        ("fedsgd", {}, "There is no aggregation 'fedsgd': choose one of"),
    ],
)
def test_a_bad_setting_is_one_plain_sentence(name, settings, sentence):
    with pytest.raises(ConfigError) as raised:
        aggregation_named(name, **settings)
    assert str(raised.value).startswith(sentence)


def test_running_candidates_are_steps_toward_the_update_and_the_clients_mean():
    current, update = np.array([0.0, 8.0]), np.array([8.0, 0.0])
    latest = [update, np.array([0.0, 0.0]), np.array([4.0, 4.0])]
    candidates = running_candidates(current, update, latest)
    assert list(candidates) == ["update", "step 0.125", "step 0.25", "step 0.5", "clients' mean"]
    np.testing.assert_array_equal(candidates["update"], update)
    np.testing.assert_array_equal(candidates["step 0.125"], [1.0, 7.0])
    np.testing.assert_array_equal(candidates["step 0.5"], model_averaging(current, update))
    np.testing.assert_allclose(candidates["clients' mean"], [4.0, 4 / 3])
    np.testing.assert_array_equal(current, [0.0, 8.0])  # pure


# ---- defences ---------------------------------------------------------------------------------


def _updates(*vectors, counts=None):
    """Updates of clients a, b, c, ... with the given vectors (and sample counts)."""
    counts = counts or [1] * len(vectors)
    return [
        Update(np.asarray(v, dtype=np.float64), n, client=chr(ord("a") + i))
        for i, (v, n) in enumerate(zip(vectors, counts))
    ]


def _actions(rule, global_vector, updates):
    return [(v.action, v.detail) for v in rule.verdicts(global_vector, updates)]


def test_krum_scores_sum_the_squared_distances_to_the_nearest_n_minus_f_minus_2():
    points = [[0.0], [1.0], [2.0], [4.0], [20.0]]  # n = 5, F = 1: the 2 nearest each
    distances = pairwise_distances(points)
    np.testing.assert_array_equal(distances[3], [4, 3, 2, 0, 16])
    # 0: 1 + 4; 1: 1 + 1; 2: 1 + 4; 4: 4 + 9; 20: 16**2 + 18**2
    np.testing.assert_array_equal(krum_scores(distances, 1), [5, 2, 5, 13, 580])
    same = pairwise_distances([[1.0], [1.0], [1.0], [9.0]])  # a twin is no nearer than itself
    np.testing.assert_array_equal(krum_scores(same, 0), [0, 0, 0, 128 + 0])


def test_krum_picks_from_the_honest_cluster_and_multi_krum_averages_it():
    rng = np.random.default_rng(3)
    honest = [np.ones(20) + rng.normal(0, 0.1, 20) for _ in range(5)]
    # Two attackers: one far, one halfway, each alone on its side of the cluster.
    attackers = [np.full(20, 30.0), np.full(20, -3.0)]
    updates = _updates(*honest[:2], attackers[0], *honest[2:], attackers[1])
    krum = aggregation_named("krum", byzantine=2)
    chosen = krum.aggregate(np.zeros(20), updates)
    assert any(np.array_equal(chosen, h) for h in honest)
    verdicts = krum.verdicts(np.zeros(20), updates)
    actions = [v.action for v in verdicts]
    used = actions.index(USED)
    assert actions.count(USED) == 1 and np.array_equal(chosen, updates[used].vector)
    assert verdicts[used].krum_score == min(v.krum_score for v in verdicts)
    assert actions[2] == actions[6] == EXCLUDED
    multi = aggregation_named("multi-krum", byzantine=2)  # m = n - F = 5: the honest ones
    np.testing.assert_allclose(multi.aggregate(np.zeros(20), updates), np.mean(honest, axis=0))
    actions = [v.action for v in multi.verdicts(np.zeros(20), updates)]
    assert actions == [USED, USED, EXCLUDED, USED, USED, USED, EXCLUDED]


def test_zeno_leaves_out_the_f_updates_the_server_scores_worst():
    # The server's loss of a vector, for this test: its first coordinate.
    def scores(vectors):
        return np.zeros(len(vectors), dtype=bool), vectors[:, 0].astype(np.float64)

    updates = _updates([0.5, 1.0], [3.0, 100.0], [0.1, 2.0], [0.2, 3.0], [9.0, 0.0])
    zeno = aggregation_named("zeno", byzantine=2)
    zeno.bind(scores)
    np.testing.assert_allclose(zeno.aggregate(np.zeros(2), updates), [0.8 / 3, 2.0])
    verdicts = zeno.verdicts(np.zeros(2), updates)
    assert [v.action for v in verdicts] == [USED, EXCLUDED, USED, USED, EXCLUDED]
    assert verdicts[4].detail == "loss 9"
    assert zeno.refusal(2) == (
        "zeno cannot tolerate 2 attackers with 2 updates: it needs more than F = 2."
    )


def test_multi_krum_ignores_sample_counts():
    points = [[0.0], [1.0], [2.0], [4.0], [20.0]]
    plain = aggregation_named("multi-krum").aggregate(np.zeros(1), _updates(*points))
    claimed = aggregation_named("multi-krum").aggregate(
        np.zeros(1), _updates(*points, counts=[1, 1, 1, 10**6, 1])
    )
    np.testing.assert_array_equal(plain, claimed)
    np.testing.assert_allclose(plain, [7 / 4])  # the 4 best: 1 (2), 0 (5), 2 (5), 4 (13)


def test_trimmed_mean_with_one_attacker_of_four_drops_it_in_every_coordinate():
    honest = [np.array([1.0, 2.0, 3.0]), np.array([1.2, 2.1, 2.9]), np.array([0.9, 1.8, 3.3])]
    attacker = np.array([100.0, -100.0, 100.0])  # at an extreme in each coordinate
    updates = _updates(honest[0], attacker, *honest[1:])
    rule = aggregation_named("trimmed-mean")  # byzantine 1: 1 a side though int(0.2 * 4) = 0
    result = rule.aggregate(np.zeros(3), updates)
    # Per coordinate the two middle values, all honest: 1.0 and 1.2; 1.8 and 2.0; 3.0 and 3.3
    np.testing.assert_allclose(result, [1.1, 1.9, 3.15])
    verdicts = rule.verdicts(np.zeros(3), updates)
    assert (verdicts[1].action, verdicts[1].detail) == (EXCLUDED, "trimmed in 100% of coordinates")
    # Each coordinate drops one honest value too, on the side away from the attacker.
    assert [v.detail for v in verdicts] == [
        "trimmed in 0% of coordinates",
        "trimmed in 100% of coordinates",
        "trimmed in 67% of coordinates",
        "trimmed in 33% of coordinates",
    ]
    assert [v.action for v in verdicts] == [USED, EXCLUDED, EXCLUDED, USED]


def test_trimmed_mean_trims_a_fifth_when_that_is_more_and_ignores_counts():
    values = [[float(v)] for v in range(10)]  # int(0.2 * 10) = 2 a side beats F = 1
    rule = aggregation_named("trimmed-mean")
    assert rule.aggregate(np.zeros(1), _updates(*values))[0] == pytest.approx(4.5)
    liar = _updates(*values, counts=[1] * 9 + [10**6])
    assert rule.aggregate(np.zeros(1), liar)[0] == pytest.approx(4.5)
    tutorial = aggregation_named("trimmed-mean", byzantine=0)  # the fifth alone: 0 of 4
    assert tutorial.aggregate(np.zeros(1), _updates([0.0], [1.0], [2.0], [9.0]))[0] == 3.0


def test_norm_bounding_leaves_a_small_change_and_scales_a_large_one_to_the_bound():
    rule = aggregation_named("norm-bounded", clip_norm=1.0)
    start = np.array([1.0, 1.0])
    small, large = start + [0.3, 0.4], start + [6.0, 8.0]  # changes of norm 0.5 and 10
    np.testing.assert_allclose(rule.aggregate(start, _updates(small)), small)
    np.testing.assert_allclose(rule.aggregate(start, _updates(large)), start + [0.6, 0.8])
    both = _updates(small, large, counts=[1, 3])  # then weighed by their counts
    np.testing.assert_allclose(
        rule.aggregate(start, both), start + ([0.3, 0.4] + 3 * np.array([0.6, 0.8])) / 4
    )
    assert _actions(rule, start, both) == [(USED, ""), (CLIPPED, "norm 10 -> 1")]


def test_norm_bounding_defaults_to_the_rounds_median_change_norm():
    rule = aggregation_named("norm-bounded")
    changes = [np.array([1.0, 0.0]), np.array([0.0, 2.0]), np.array([-10.0, 0.0])]
    result = rule.aggregate(np.zeros(2), _updates(*changes))
    np.testing.assert_allclose(result, (changes[0] + changes[1] + [-2.0, 0.0]) / 3)
    assert _actions(rule, np.zeros(2), _updates(*changes))[2] == (CLIPPED, "norm 10 -> 2")
    unchanged = _updates(np.zeros(2), np.zeros(2))  # a median of 0: nothing to scale
    np.testing.assert_array_equal(rule.aggregate(np.zeros(2), unchanged), np.zeros(2))


def test_a_claimed_sample_count_is_capped_at_three_times_the_rounds_median():
    np.testing.assert_array_equal(capped_counts([360, 350, 370, 10**6]), [360, 350, 370, 1095])
    np.testing.assert_array_equal(capped_counts([360, 350, 370, 10**6], cap=100), [100] * 4)
    honest = [np.array([1.0]), np.array([2.0]), np.array([3.0])]
    updates = _updates(*honest, np.array([-1000.0]), counts=[100, 100, 100, 10**6])
    rule = aggregation_named("fedavg")
    # The liar weighs 300, as much as the three others together.
    assert rule.aggregate(np.zeros(1), updates)[0] == pytest.approx((600 - 300_000) / 600)
    assert _actions(rule, np.zeros(1), updates) == [(USED, "")] * 3 + [
        (CLIPPED, "samples 1000000 -> 300")
    ]
    given = aggregation_named("fedavg", max_claimed_samples=50)  # every count 50: the mean
    assert given.aggregate(np.zeros(1), updates)[0] == pytest.approx(-994 / 4)
    # The server optimisers weigh their mean change the same way: a whole step is fedavg's.
    optimiser = aggregation_named("fedavgm", server_learning_rate=1.0, server_momentum=0.0)
    np.testing.assert_allclose(
        optimiser.aggregate(np.zeros(1), updates), rule.aggregate(np.zeros(1), updates)
    )
    assert _actions(optimiser, np.zeros(1), updates)[3] == (CLIPPED, "samples 1000000 -> 300")


def test_norm_bounded_caps_counts_and_clips_norms_in_one_verdict():
    rule = aggregation_named("norm-bounded", clip_norm=1.0)
    updates = _updates([0.5], [0.5], [0.5], [-4.0], counts=[10, 10, 10, 1000])
    np.testing.assert_allclose(rule.aggregate(np.zeros(1), updates), [(15 - 30) / 60])
    assert _actions(rule, np.zeros(1), updates)[3] == (
        CLIPPED,
        "samples 1000 -> 30, norm 4 -> 1",
    )


def test_inspect_gives_each_update_its_change_norm_and_mean_distance_to_the_others():
    updates = _updates([3.0, 4.0], [0.0, 0.0], [3.0, 0.0])
    verdicts = inspect(np.zeros(2), updates)
    assert [v.client for v in verdicts] == ["a", "b", "c"]
    assert [v.change_norm for v in verdicts] == [5.0, 0.0, 3.0]
    assert [v.distance for v in verdicts] == [(5 + 4) / 2, (5 + 3) / 2, (4 + 3) / 2]
    assert {(v.krum_score, v.action, v.detail) for v in verdicts} == {(None, USED, "")}
    (alone,) = inspect(np.zeros(2), updates[:1])
    assert np.isnan(alone.distance)
    # The rules that leave every update as it is say so: the median, a fair fedavg round.
    for name in ("median", "fedavg"):
        rule = aggregation_named(name)
        rule.aggregate(np.zeros(2), updates)
        assert rule.verdicts(np.zeros(2), updates) == verdicts


def test_running_best_excludes_an_update_when_it_keeps_the_current_model():
    rule = aggregation_named("running-best")
    rule.bind(lambda vectors: (np.zeros(len(vectors), bool), np.abs(vectors).sum(axis=1)))
    current = np.zeros(2)
    (worse,) = _updates([4.0, 4.0])  # every candidate has a higher loss than the current
    rule.aggregate(current, [worse])
    assert _actions(rule, current, [worse]) == [(EXCLUDED, "took=current model")]
    (better,) = _updates([0.0, 0.0])
    rule.aggregate(np.ones(2), [better])
    assert _actions(rule, np.ones(2), [better]) == [(USED, "took=update")]


@pytest.mark.parametrize(
    "name, settings, n, refusal",
    [
        (
            "krum",
            {},
            4,
            "krum cannot tolerate 1 attacker with 4 updates: it needs more than 2F + 2 = 4.",
        ),
        ("krum", {}, 5, ""),
        ("krum", {"byzantine": 0}, 3, ""),
        (
            "multi-krum",
            {"byzantine": 2},
            6,
            "multi-krum cannot tolerate 2 attackers with 6 updates: it needs more than 2F + 2 = 6.",
        ),
        (
            "trimmed-mean",
            {},
            2,
            "trimmed-mean cannot tolerate 1 attacker with 2 updates: it needs more than 2F = 2.",
        ),
        (
            "trimmed-mean",
            {"byzantine": 2},
            1,
            "trimmed-mean cannot tolerate 2 attackers with 1 update: it needs more than 2F = 4.",
        ),
        ("trimmed-mean", {}, 3, ""),
        ("trimmed-mean", {"byzantine": 0}, 1, ""),
        ("median", {}, 2, ""),
        ("norm-bounded", {}, 1, ""),
        ("fedavg", {}, 1, ""),
        ("running-best", {}, 1, ""),
    ],
)
def test_a_rule_refuses_a_round_too_small_for_its_attackers_in_one_sentence(
    name, settings, n, refusal
):
    rule = aggregation_named(name, **settings)
    assert rule.refusal(n) == refusal
    if refusal:  # and never aggregates such a round unprotected
        with pytest.raises(ValueError, match="cannot tolerate"):
            rule.aggregate(np.zeros(1), _updates(*[[float(i)] for i in range(n)]))


def test_a_rule_is_shown_without_the_settings_a_mode_makes_idle():
    """A secure server's start-up line: the claim cap does nothing to one summed count."""
    from common.server_config import SECURE_REFUSED

    assert str(aggregation_named("fedavg")) == (
        "fedavg (max-claimed-samples=3x the round's median claim)"
    )
    assert aggregation_named("fedavg").shown(SECURE_REFUSED) == "fedavg"
    assert aggregation_named("fedadam", tau=0.01).shown(SECURE_REFUSED) == (
        "fedadam (server-learning-rate=0.1, beta1=0.9, beta2=0.99, tau=0.01)"
    )
