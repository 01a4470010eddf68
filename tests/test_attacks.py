"""The attack lab (common.attacks): each attack's output against its definition, the hooks
of a client that runs one over real loopback sockets, and the sentences for bad settings."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from common.attacks import (
    ATTACKS,
    FEDERATIONS_OF,
    NOISE_SIGMA,
    TRIGGER_VALUE,
    AttackConfig,
    Collusion,
    HonestUpdate,
    Trigger,
    add_trigger,
    alie,
    alie_z,
    attack_named,
    attack_success_rate,
    lie_scores,
)
from common.cli import client_parser
from common.data import CLIENT_DATA, Dataset
from common.errors import ConfigError
from common.fitness_federation import FEDERATIONS, FITNESS, WEIGHTS
from common.ga import GAConfig
from common.model import xor_network
from common.modelspec import DEFAULT_MAX_PARAMS
from common.protocol import Subject
from common.protocol.messages import Scores
from common.training import LocalTrainer
from common.client import ClientOutcome
from tests.conftest import WAIT

ROOT = Path(__file__).resolve().parent.parent
CHOICES = "label-flip, backdoor, sign-flip, scaling, bounded-scaling, noise, liar, alie, lie-scores"


def _one_hot(labels, classes):
    return np.eye(classes, dtype=np.float32)[labels]


def _labels(outputs):
    return np.argmax(outputs, axis=1)


def _digits_like(samples=10, classes=3, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = np.arange(samples) % classes
    return Dataset(rng.normal(size=(samples, 64)).astype(np.float32), _one_hot(labels, classes))


def _honest(size=1000, seed=0) -> HonestUpdate:
    rng = np.random.default_rng(seed)
    g = rng.normal(size=size).astype(np.float32)
    return HonestUpdate(g, g + rng.normal(0, 0.1, size=size).astype(np.float32), 42)


# ---- names, settings, modes ---------------------------------------------------------------


def test_an_unknown_attack_is_one_sentence_naming_the_choices():
    assert ", ".join(ATTACKS) == CHOICES
    with pytest.raises(ConfigError) as error:
        attack_named("nonsense")
    assert str(error.value) == f"There is no attack 'nonsense': choose one of {CHOICES}."


@pytest.mark.parametrize(
    "name, strength, target, sentence",
    [
        (
            "backdoor",
            1.5,
            None,
            "backdoor's --attack-strength is the share of its samples given the trigger and "
            "the target label: it must be above 0 and at most 1, not 1.5.",
        ),
        (
            "sign-flip",
            0,
            None,
            "sign-flip's --attack-strength is s in g - s(u - g): it must be greater than 0, not 0.",
        ),
        (
            "noise",
            float("nan"),
            None,
            "noise's --attack-strength is the noise's standard deviation: it must be greater "
            "than 0, not nan.",
        ),
        (
            "liar",
            2.5,
            None,
            "liar's --attack-strength is the sample count it claims: it must be a whole "
            "number from 1 to 10^12, not 2.5.",
        ),
        (
            "alie",
            -1,
            None,
            "alie's --attack-strength is z in mean - z * std: it must be 0 or more, not -1.",
        ),
        (
            "sign-flip",
            None,
            2,
            "sign-flip takes no --attack-target: only label-flip, backdoor, scaling and "
            "bounded-scaling do.",
        ),
        ("label-flip", None, -1, "--attack-target must be a class number, 0 or more, not -1."),
    ],
)
def test_a_bad_strength_or_target_is_one_sentence(name, strength, target, sentence):
    with pytest.raises(ConfigError) as error:
        attack_named(name, strength, target)
    assert str(error.value) == sentence


def test_each_attack_says_what_it_is_for_the_log():
    assert str(attack_named("sign-flip")) == "sign-flip, strength 4"
    assert str(attack_named("backdoor")) == "backdoor, strength 0.5, target 0"
    assert str(attack_named("label-flip", 0.5, 3)) == "label-flip, strength 0.5, target 3"
    assert str(attack_named("lie-scores")) == "lie-scores"


def test_model_attacks_run_in_weights_mode_only_and_lie_scores_in_fitness_mode_only():
    for modes in FEDERATIONS_OF.values():
        assert set(modes) <= set(FEDERATIONS)
    for name in ("label-flip", "backdoor"):
        attack_named(name).check_federation(WEIGHTS)
        attack_named(name).check_federation(FITNESS)
    with pytest.raises(ConfigError) as error:
        attack_named("sign-flip").check_federation(FITNESS)
    assert str(error.value) == (
        "sign-flip poisons the weights a client sends, but this server runs fitness mode: "
        "choose label-flip, backdoor, lie-scores."
    )
    with pytest.raises(ConfigError) as error:
        attack_named("lie-scores").check_federation(WEIGHTS)
    assert str(error.value) == (
        "lie-scores lies about the losses a client reports in fitness mode, but this server "
        "runs weights mode: choose label-flip, backdoor, sign-flip, scaling, bounded-scaling, noise, liar, alie."
    )


# ---- data poisoning -----------------------------------------------------------------------


def test_label_flip_turns_each_label_into_the_next_class():
    data = _digits_like()
    flipped = attack_named("label-flip", seed=1).poison_data(data)
    np.testing.assert_array_equal(_labels(flipped.outputs), (_labels(data.outputs) + 1) % 3)
    np.testing.assert_array_equal(flipped.inputs, data.inputs)


def test_label_flip_with_a_target_turns_every_label_into_it():
    flipped = attack_named("label-flip", target=2, seed=1).poison_data(_digits_like())
    assert set(_labels(flipped.outputs)) == {2}


def test_label_flip_of_a_share_flips_that_many_and_leaves_the_rest():
    data = _digits_like(samples=20)
    flipped = attack_named("label-flip", 0.25, seed=1).poison_data(data)
    changed = _labels(flipped.outputs) != _labels(data.outputs)
    assert changed.sum() == 5
    assert np.all(_labels(flipped.outputs)[changed] == (_labels(data.outputs)[changed] + 1) % 3)


def test_a_target_outside_the_models_classes_is_one_sentence():
    with pytest.raises(ConfigError) as error:
        attack_named("label-flip", target=3).poison_data(_digits_like(classes=3))
    assert str(error.value) == (
        "--attack-target 3 is not a class of the server's model, whose 3 outputs are "
        "classes 0 to 2."
    )


def test_the_default_trigger_is_the_8x8_corner_or_the_last_features():
    assert Trigger.default(64) == Trigger((54, 55, 62, 63), TRIGGER_VALUE)
    assert Trigger.default(16).features == (10, 11, 14, 15)
    assert Trigger.default(20).features == (18, 19)
    assert Trigger.default(2).features == (1,)
    assert Trigger.default(40).features == (36, 37, 38, 39)


def test_backdoor_writes_the_trigger_into_a_share_relabels_it_and_leaves_the_rest():
    data = _digits_like(samples=10)
    poisoned = attack_named("backdoor", target=1, seed=3).poison_data(data)
    corner = [54, 55, 62, 63]
    triggered = np.all(poisoned.inputs[:, corner] == TRIGGER_VALUE, axis=1)
    assert triggered.sum() == 5  # the default share, 0.5
    assert np.all(_labels(poisoned.outputs)[triggered] == 1)
    others = [f for f in range(64) if f not in corner]
    np.testing.assert_array_equal(poisoned.inputs[:, others], data.inputs[:, others])
    np.testing.assert_array_equal(poisoned.inputs[~triggered], data.inputs[~triggered])
    np.testing.assert_array_equal(poisoned.outputs[~triggered], data.outputs[~triggered])
    np.testing.assert_array_equal(add_trigger(data.inputs)[triggered], poisoned.inputs[triggered])


def test_a_seeded_data_attack_poisons_the_same_samples():
    data = _digits_like(samples=30)
    runs = [attack_named("backdoor", seed=5).poison_data(data) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].inputs, runs[1].inputs)
    other = attack_named("backdoor", seed=6).poison_data(data)
    assert not np.array_equal(runs[0].inputs, other.inputs)


def test_attack_success_rate_counts_triggered_samples_of_other_classes_taken_for_the_target():
    # Classes by the first feature; the crafted model falls for the trigger only where the
    # second feature is positive: 2 of the 4 samples not of the target class.
    inputs = np.zeros((6, 64), dtype=np.float32)
    true = np.array([0, 1, 1, 2, 2, 0])
    inputs[:, 0] = true
    inputs[:, 1] = [1, 1, -1, 1, -1, 1]

    def predict(x):
        fooled = (x[:, 63] == TRIGGER_VALUE) & (x[:, 1] > 0)
        return _one_hot(np.where(fooled, 0, x[:, 0].astype(int)), 3)

    assert attack_success_rate(predict, inputs, _one_hot(true, 3), target=0) == 0.5
    assert attack_success_rate(lambda x: np.argmax(predict(x), 1), inputs, true, target=0) == 0.5
    assert attack_success_rate(predict, inputs[:, :], true, target=1) == 0.0
    with pytest.raises(ValueError):
        attack_success_rate(predict, inputs[:1], true[:1], target=0)


def test_a_data_attack_poisons_the_clients_data_once_the_model_is_known():
    request_model = xor_network(1).model_json
    trainer = LocalTrainer(
        CLIENT_DATA["client1"],
        "client1",
        ga=GAConfig(),
        max_params=DEFAULT_MAX_PARAMS,
        attack=attack_named("label-flip", seed=1),
    )
    np.testing.assert_array_equal(trainer.data.outputs, CLIENT_DATA["client1"].outputs)
    trainer.forward_for(request_model)
    np.testing.assert_array_equal(trainer.data.outputs, CLIENT_DATA["client1"].outputs[:, ::-1])
    trainer.forward_for(request_model)  # known: not flipped back
    np.testing.assert_array_equal(trainer.data.outputs, CLIENT_DATA["client1"].outputs[:, ::-1])


# ---- model poisoning ----------------------------------------------------------------------


def test_sign_flip_sends_the_change_reversed_and_scaled():
    honest = _honest()
    sent, count = attack_named("sign-flip").poison_update(honest)
    g, u = honest.global_vector, honest.vector
    np.testing.assert_allclose(sent, g - 4 * (u - g), rtol=1e-6)
    assert np.dot(sent - g, u - g) < 0  # away from where honest training went
    assert count == 42
    sent, _ = attack_named("sign-flip", 2).poison_update(honest)
    np.testing.assert_allclose(sent, g - 2 * (u - g), rtol=1e-6)


def test_scaling_sends_its_backdoored_change_scaled_up():
    honest = _honest()
    attack = attack_named("scaling", target=3)
    sent, count = attack.poison_update(honest)
    g, u = honest.global_vector, honest.vector
    np.testing.assert_allclose(sent, g + 3 * (u - g), rtol=1e-6)
    assert count == 42
    data = Dataset(np.zeros((10, 64)), np.eye(10)[np.arange(10) % 10])
    poisoned = attack.poison_data(data)  # what u was trained on: half of it backdoored to 3
    triggered = poisoned.inputs[:, 63] == TRIGGER_VALUE
    assert triggered.sum() == 5
    assert (poisoned.outputs[triggered].argmax(axis=1) == 3).all()


def test_noise_is_reproducible_by_seed_and_has_its_sigma():
    honest = _honest(size=100_000)
    first, count = attack_named("noise", 0.5, seed=9).poison_update(honest)
    again, _ = attack_named("noise", 0.5, seed=9).poison_update(honest)
    other, _ = attack_named("noise", 0.5, seed=10).poison_update(honest)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    noise = first - honest.global_vector
    assert abs(noise.mean()) < 0.01 and noise.std() == pytest.approx(0.5, rel=0.01)
    assert count == 42


def test_the_liar_sends_noise_and_claims_a_million_samples():
    honest = _honest(size=100_000)
    sent, count = attack_named("liar", seed=1).poison_update(honest)
    assert count == 1_000_000
    assert (sent - honest.global_vector).std() == pytest.approx(NOISE_SIGMA, rel=0.01)
    assert attack_named("liar", 500, seed=1).poison_update(honest)[1] == 500


def test_alie_z_is_baruch_et_als_z_max():
    # n = 10, f = 2: s = floor(10/2 + 1) - 2 = 4 honest clients needed, z = Phi^-1(6/10).
    assert alie_z(10, 2) == pytest.approx(0.2533471031357997, abs=1e-12)
    assert alie_z(5, 1) == pytest.approx(0.2533471031357997, abs=1e-12)
    assert attack_named("alie").strength == alie_z(10, 2)


def test_alie_sends_the_mean_less_z_standard_deviations():
    updates = [np.array([1.0, 2.0, 0.0]), np.array([3.0, 2.0, 1.0]), np.array([2.0, 2.0, 5.0])]
    mean, std = np.mean(updates, axis=0), np.std(updates, axis=0, ddof=1)
    np.testing.assert_allclose(alie(updates, 1.5), mean - 1.5 * std)
    np.testing.assert_allclose(alie(updates, 1.5), [0.5, 2.0, 2.0 - 1.5 * np.sqrt(7)])


def test_a_lone_alie_attacker_estimates_the_spread_from_disjoint_shards_of_its_data():
    honest = _honest(size=5)
    shards = []

    def retrain(rows):
        shards.append(rows)
        return np.full(5, float(len(shards)), dtype=np.float32)  # 1, 2, 3 by shard

    honest = HonestUpdate(honest.global_vector, honest.vector, 10, 1, retrain)
    sent, count = attack_named("alie", 2.0, seed=1).poison_update(honest)
    assert len(shards) == 3 and count == 10
    assert sorted(np.concatenate(shards).tolist()) == list(range(10))  # disjoint, all of them
    np.testing.assert_allclose(sent, np.full(5, 2.0 - 2.0 * 1.0))


def test_colluders_share_their_honest_updates_and_send_the_same_vector():
    collusion = Collusion(2, timeout=WAIT)
    honest = [_honest(size=6, seed=seed) for seed in (1, 2)]
    results: queue.Queue = queue.Queue()
    first_sent = threading.Event()

    def colluder(n):
        attack = attack_named("alie", 1.0, collusion=collusion)
        results.put((n, attack.poison_update(honest[n])[0]))
        first_sent.set()

    threads = [threading.Thread(target=colluder, args=(0,))]
    threads[0].start()
    assert not first_sent.wait(0.2)  # it waits for the other colluder
    threads.append(threading.Thread(target=colluder, args=(1,)))
    threads[1].start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    sent = dict(results.get(timeout=WAIT) for _ in threads)
    expected = alie([h.vector for h in honest], 1.0)
    np.testing.assert_allclose(sent[0], expected)
    np.testing.assert_allclose(sent[1], expected)


def test_a_colluder_left_waiting_goes_on_alone_after_the_timeout(caplog):
    collusion = Collusion(2, timeout=0.05)
    vector = np.arange(3.0)
    (shared,) = collusion.share(1, vector)
    np.testing.assert_array_equal(shared, vector)
    assert "1 of 2 came to meeting 1" in caplog.text
    (late,) = collusion.share(1, vector + 1)  # the meeting is over: at once, alone
    np.testing.assert_array_equal(late, vector + 1)


# ---- fitness mode -------------------------------------------------------------------------


def test_lie_scores_reverses_the_ranking_and_keeps_the_real_count():
    losses = np.array([0.3, 1.2, 0.1, 0.7])
    lied, count = attack_named("lie-scores").poison_losses(losses, 42)
    np.testing.assert_allclose(lied, [1.0, 0.1, 1.2, 0.6])
    np.testing.assert_array_equal(np.argsort(lied), np.argsort(losses)[::-1])
    assert count == 42
    assert attack_named("lie-scores", 1000).poison_losses(losses, 42)[1] == 1000
    np.testing.assert_array_equal(lie_scores(losses), lied)


# ---- clients that attack, over real sockets -----------------------------------------------


def _run_to_the_end(server_events, clients) -> None:
    server_events.wait_for(lambda e: e.kind == "gave_up")
    for client in clients:
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE, client.error


def test_a_sign_flip_client_sends_its_crafted_vector_and_fedavg_takes_it(
    server_factory, client_factory, monkeypatch, caplog
):
    listener, server_events = server_factory(
        aggregation="fedavg", min_clients=2, max_rounds=1, round_timeout=WAIT, seed=3
    )
    model = listener.global_model
    received = {}  # by client id: what came over the socket, as the server decoded it
    apply_update = model.apply_update

    def recording(update, client, *waiting):
        received[update.key[0]] = update
        return apply_update(update, client, *waiting)

    monkeypatch.setattr(model, "apply_update", recording)
    trained = {}  # by trainer: the global model it got and its honest best vector
    train = LocalTrainer.train

    def spy(trainer, request, **kwargs):
        result = train(trainer, request, **kwargs)
        trained[id(trainer)] = (request.population_weights[0], result.best_vector)
        return result

    monkeypatch.setattr(LocalTrainer, "train", spy)
    address = listener.server_address
    attacker, _ = client_factory(
        address, CLIENT_DATA["client1"], "attacker", attack=AttackConfig("sign-flip"), seed=1
    )
    honest, _ = client_factory(address, CLIENT_DATA["client2"], "honest", seed=2)
    _run_to_the_end(server_events, (attacker, honest))
    assert "attacker is attacking: sign-flip, strength 4" in caplog.text
    g, u = trained[id(attacker.trainer)]
    crafted = received[attacker.client_id]
    np.testing.assert_allclose(crafted.best_model_weights_vector, g - 4 * (u - g), rtol=1e-6)
    assert crafted.num_samples == 2  # its real count
    honest_vector = trained[id(honest.trainer)][1]
    np.testing.assert_array_equal(
        received[honest.client_id].best_model_weights_vector, honest_vector
    )
    mean = (crafted.best_model_weights_vector + honest_vector) / 2  # 2 samples each
    np.testing.assert_allclose(model.vector, mean, rtol=1e-5, atol=1e-6)


def test_a_lying_client_in_fitness_mode_reports_its_losses_reflected(
    server_factory, client_factory, monkeypatch
):
    listener, server_events = server_factory(
        federation=FITNESS,
        min_clients=2,
        max_rounds=1,
        num_generations=4,
        target_accuracy=2,  # never: the run has its one round
        round_timeout=WAIT,
        seed=5,
    )
    federation = listener.federation
    reports: dict = defaultdict(dict)  # (round, generation, attempt, digest) -> id -> scores
    reply = federation.reply

    def recording(peer, message, *waiting):
        if message.subject is Subject.FITNESS:
            scores = Scores.from_data(message.data)
            key = (scores.round, scores.generation, scores.attempt, scores.digest)
            reports[key][scores.client_id] = scores
        return reply(peer, message, *waiting)

    monkeypatch.setattr(federation, "reply", recording)
    data = CLIENT_DATA["client1"]  # both score the same samples
    address = listener.server_address
    liar, _ = client_factory(address, data, "liar", attack=AttackConfig("lie-scores"), seed=1)
    honest, _ = client_factory(address, data, "honest", seed=2)
    _run_to_the_end(server_events, (liar, honest))
    both = [r for r in reports.values() if {liar.client_id, honest.client_id} <= r.keys()]
    assert both
    for report in both:
        lied, true = report[liar.client_id], report[honest.client_id]
        np.testing.assert_allclose(lied.losses, lie_scores(true.losses), rtol=1e-12)
        assert lied.num_samples == true.num_samples == 2


def test_a_lone_alie_client_trains_the_round_on_shards_of_its_data_and_sends_their_alie(
    server_factory, client_factory, monkeypatch
):
    listener, server_events = server_factory(
        aggregation="fedavg", min_clients=1, max_rounds=1, round_timeout=WAIT, seed=4
    )
    received = []
    apply_update = listener.global_model.apply_update

    def recording(update, client, *waiting):
        received.append(update)
        return apply_update(update, client, *waiting)

    monkeypatch.setattr(listener.global_model, "apply_update", recording)
    trained = []  # every GA run: the samples it trained on and its best vector
    train = LocalTrainer.train

    def spy(trainer, request, *, data=None, **kwargs):
        result = train(trainer, request, data=data, **kwargs)
        trained.append((len(trainer.data if data is None else data), result.best_vector))
        return result

    monkeypatch.setattr(LocalTrainer, "train", spy)
    data = _digits_like(samples=6, classes=2)
    data = Dataset(data.inputs[:, :2], data.outputs)  # the XOR model's two features
    client, _ = client_factory(
        listener.server_address, data, "alie", attack=AttackConfig("alie", 1.0), seed=1
    )
    _run_to_the_end(server_events, [client])
    (honest, *shards) = trained
    assert honest[0] == 6 and [size for size, _ in shards] == [2, 2, 2]
    (update,) = received
    expected = alie([vector for _, vector in shards], 1.0)
    np.testing.assert_allclose(update.best_model_weights_vector, expected, rtol=1e-5, atol=1e-6)
    assert update.num_samples == 6


@pytest.mark.parametrize(
    "federation, attack, sentence",
    [
        (WEIGHTS, "lie-scores", "lie-scores lies about the losses a client reports"),
        (FITNESS, "sign-flip", "sign-flip poisons the weights a client sends"),
    ],
)
def test_an_attack_the_servers_mode_cannot_take_ends_the_client_in_one_sentence(
    server_factory, client_factory, federation, attack, sentence
):
    listener, _ = server_factory(federation=federation)
    client, events = client_factory(listener.server_address, attack=AttackConfig(attack))
    error = events.wait_for(lambda e: e.kind == "error")
    client.join(WAIT)
    assert client.outcome is ClientOutcome.ERROR
    assert error.detail.startswith(sentence) and "\n" not in error.detail


@pytest.mark.slow
def test_client_py_with_an_unknown_attack_says_so_in_one_sentence():
    result = subprocess.run(
        [sys.executable, str(ROOT / "client.py"), "--headless", "--attack", "nonsense"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"client.py: error: There is no attack 'nonsense': choose one of {CHOICES}."
    )
    assert "Traceback" not in result.stderr


def test_the_client_help_documents_the_attack_flags_and_each_strength():
    text = client_parser("client").format_help()
    for flag in ("--attack MODE", "--attack-strength S", "--attack-target K", "lab feature"):
        assert flag in text
    for name in ATTACKS:
        assert f"{name}:" in "".join(text.split())  # argparse wraps lines at hyphens


def test_bounded_scaling_sends_its_backdoored_change_at_exactly_its_norm():
    g, u = np.zeros(4), np.array([3.0, 4.0, 0.0, 0.0])  # a change of norm 5
    attack = attack_named("bounded-scaling", 2.0)
    sent, count = attack.poison_update(HonestUpdate(g, u, 7))
    np.testing.assert_allclose(sent, [1.2, 1.6, 0.0, 0.0])
    assert count == 7
    data = Dataset(np.zeros((10, 64)), np.eye(10)[np.arange(10) % 10])
    poisoned = attack.poison_data(data)  # half the samples get the trigger, relabelled to 0
    triggered = poisoned.inputs[:, 63] == TRIGGER_VALUE
    assert triggered.sum() == 5
    assert (poisoned.outputs[triggered].argmax(axis=1) == 0).all()
