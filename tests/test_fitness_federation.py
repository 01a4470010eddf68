"""Fitness mode (``--federation fitness``): clients score the server's GA members on their own
data and share only losses. Real servers and clients on loopback, real PyGAD."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from scipy.special import softmax

from bench.plain_peers import plain_recv, plain_send
from common import checkpoint
from common.data import CLIENT_DATA, Dataset
from common.fitness_federation import FITNESS, digest
from common.ga import GAConfig, SharedFitnessGA, build_ga
from common.model import xor_network
from common.modelspec import dense_chain_json
from common.client import ClientOutcome
from common.protocol.messages import (
    PROTOCOL_VERSION,
    RoundStart,
    Scores,
    ScoreRequest,
    encode,
)
from tests.conftest import WAIT, raw_connection, standardised_iris

ROUNDS = 3
GENERATIONS = 6


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    """Iris, standardised: the server's test file, all 120 training samples, and the same
    samples over three clients that each hold a different mix of the labels."""
    inputs, labels = standardised_iris()
    folder = tmp_path_factory.mktemp("iris")
    np.savez(folder / "test.npz", inputs=inputs[:30], outputs=labels[:30])
    training = Dataset(inputs[30:], labels[30:])
    by_label = np.argsort(training.outputs, kind="stable")  # skewed: mostly one class each
    parts = [
        Dataset(training.inputs[rows], training.outputs[rows])
        for rows in np.array_split(by_label, [35, 80])
    ]
    return str(folder / "test.npz"), training, parts


def _generations(events) -> list:
    return [e for e in events.all() if e.kind == "generation"]


def _run(server_factory, client_factory, datasets, **settings):
    """A fitness-mode run of ROUNDS rounds to its end; the server and its events."""
    server, events = server_factory(
        federation=FITNESS,
        max_rounds=ROUNDS,
        target_accuracy=2,  # never: every run has ROUNDS rounds
        num_generations=GENERATIONS,
        round_timeout=WAIT,  # nobody is left out on a busy machine
        **settings,
    )
    clients = [
        client_factory(server.server_address, data=data, name=f"site{n}")[0]
        for n, data in enumerate(datasets, 1)
    ]
    events.wait_for(lambda e: e.kind == "gave_up")
    for client in clients:
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE, client.error
        # An echo, then one message a generation of under 1 KiB, whatever the model's size.
        assert client.bytes_sent <= 1024 * (1 + ROUNDS * (GENERATIONS + 1))
    return server, events


def test_a_fitness_mode_run_is_the_central_run(iris, server_factory, client_factory):
    """One client holding all the data, or three holding it split by label: the same members
    scored in every generation (bit for bit) and the same fitness, up to the order in which
    the clients' float64 mean losses are added (tolerance 1e-9 relative)."""
    test_file, everything, parts = iris
    settings = dict(test_data=test_file, seed=7)
    central, central_events = _run(
        server_factory, client_factory, [everything], min_clients=1, **settings
    )
    split, split_events = _run(server_factory, client_factory, parts, min_clients=3, **settings)
    expected, got = _generations(central_events), _generations(split_events)
    assert len(expected) == ROUNDS * GENERATIONS
    assert [(e.round, e.generation, e.detail) for e in got] == [
        (e.round, e.generation, e.detail) for e in expected
    ]
    np.testing.assert_allclose([e.fitness for e in got], [e.fitness for e in expected], rtol=1e-9)
    np.testing.assert_array_equal(split.global_model.vector, central.global_model.vector)


def test_fitness_mode_runs_the_weights_mode_central_ga(iris, server_factory, client_factory):
    """Weights mode with one client holding all the data (fedavg of one update, the client
    seeded as the server) is the GA a fitness-mode federation runs: the same global model,
    bit for bit."""
    test_file, everything, parts = iris
    seed = 11
    fitness_mode, _ = _run(
        server_factory, client_factory, parts, min_clients=3, test_data=test_file, seed=seed
    )
    server, events = server_factory(
        aggregation="fedavg",
        min_clients=1,
        max_rounds=ROUNDS,
        target_accuracy=2,
        num_generations=GENERATIONS,
        test_data=test_file,
        seed=seed,
    )
    client, _ = client_factory(server.server_address, data=everything, name="all", seed=seed)
    events.wait_for(lambda e: e.kind == "gave_up")
    client.join(WAIT)
    np.testing.assert_array_equal(server.global_model.vector, fitness_mode.global_model.vector)
    assert server.global_model.round == fitness_mode.global_model.round == ROUNDS


def test_server_and_client_draw_the_same_offspring_from_one_seed():
    """The mirror a client runs: the same parents (population and fitness) and seed give
    bit-identical offspring, generation after generation."""
    network = xor_network(3)
    population = np.random.default_rng(1).normal(size=(10, network.forward.num_params))
    fitness_by_generation = np.random.default_rng(2).random((GENERATIONS + 1, 10))

    def run() -> list[bytes]:
        seen = []

        def score(ga, members, known):
            seen.append(members.tobytes())
            return fitness_by_generation[ga.generations_completed]

        ga = build_ga(
            population,
            network.forward.shapes,
            GAConfig(num_generations=GENERATIONS, stop_fitness=0),
            score,
            seed=5,
            ga_type=SharedFitnessGA,
        )
        ga.run()
        return seen

    first, second = run(), run()
    assert len(first) == GENERATIONS + 1 and first == second
    assert len(set(first)) == len(first)  # the GA moved: every generation differs


def test_a_client_joining_mid_round_gets_the_round_whole_and_scores(
    server_factory, client_factory, caplog
):
    server, events = server_factory(
        federation=FITNESS, min_clients=1, num_generations=40, stop_fitness=0, seed=2
    )
    first, _ = client_factory(server.server_address, data=CLIENT_DATA["client1"], name="first")
    events.wait_for(lambda e: e.kind == "generation" and e.generation >= 5)
    late, late_events = client_factory(
        server.server_address, data=CLIENT_DATA["client2"], name="late"
    )
    model = late_events.wait_for(lambda e: e.kind == "model")
    scored = late_events.wait_for(lambda e: e.kind == "generation")
    assert scored.round == model.round and scored.generation > 5  # replayed up to the others
    assert events.wait_for(lambda e: e.kind == "done").accuracy == 1.0
    for client in (first, late):
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE, client.error
    assert "every member is scored again" in caplog.text  # its data joined the scores


def test_a_client_whose_connection_broke_reconnects_and_carries_on(server_factory, client_factory):
    server, events = server_factory(
        federation=FITNESS, min_clients=1, num_generations=40, stop_fitness=0, seed=4
    )
    steady, _ = client_factory(server.server_address, data=CLIENT_DATA["client1"], name="steady")
    cut, cut_events = client_factory(
        server.server_address, data=CLIENT_DATA["client2"], name="cut", reconnect=True
    )
    cut_events.wait_for(lambda e: e.kind == "generation" and e.generation >= 3)
    local = "%s:%d" % cut.connection.sock.getsockname()[:2]
    (handler,) = [h for h in server.handlers if h.peer == local]
    handler.stop()  # the server's end of its connection closes mid-round
    cut_events.wait_for(lambda e: e.kind == "connecting")
    before = {id(event) for event in cut_events.all()}
    # Whether its resent scores still count or the others moved on and it gets the round
    # whole (the next test), it scores on.
    cut_events.wait_for(lambda e: e.kind == "generation" and id(e) not in before)
    server.global_model.stop()
    for client in (steady, cut):
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE, client.error


def _fitness_peer(address):
    """A raw fitness-mode peer: its socket and the server's first ``score`` request."""
    sock = raw_connection(address)
    hello = {"best_model_weights_vector": None, "protocol_version": 2, "client_id": "raw"}
    plain_send(sock, "echo", hello)
    return sock, plain_recv(sock)["data"]


def _scores(request, digest_text, generation=None):
    return {
        "losses": np.full(len(request["population_weights"]), 0.5),
        "num_samples": 4,
        "digest": digest_text,
        "round": request["round"],
        "generation": request["generation"] if generation is None else generation,
        "attempt": request["attempt"],
        "client_id": "raw",
        "protocol_version": 2,
    }


def test_stale_or_mismatched_scores_get_the_round_whole_then_the_members(server_factory, caplog):
    listener, _ = server_factory(federation=FITNESS, min_clients=1)
    sock, first = _fitness_peer(listener.server_address)
    with sock:
        assert first["generation"] == 0 and first["all_members"]
        assert "population_weights" in first and "members" not in first
        plain_send(sock, "fitness", _scores(first, first["digest"], generation=7))
        resent = plain_recv(sock)["data"]  # scores for a generation that is not open
        assert "population_weights" in resent and "fitness" not in resent
        assert "which is over: sending it the round whole" in caplog.text
        plain_send(sock, "fitness", _scores(first, "not-the-digest"))
        again = plain_recv(sock)["data"]
        assert "population_weights" in again and "members" not in again
        plain_send(sock, "fitness", _scores(first, "still-not-the-digest"))
        explicit = plain_recv(sock)["data"]  # twice wrong: the members themselves
        np.testing.assert_array_equal(explicit["members"], explicit["population_weights"])
        assert digest(explicit["members"]) == explicit["digest"]


def leave_mid_generation(server_factory, client_factory, caplog, stayers, **settings):
    """Clients holding ``stayers``' data and one more that leaves in its third generation:
    the others must finish; the server's log lines."""
    server, events = server_factory(
        federation=FITNESS, num_generations=30, stop_fitness=0, seed=5, **settings
    )
    staying = [
        client_factory(server.server_address, data=CLIENT_DATA[name], name=f"{name}-{n}")[0]
        for n, name in enumerate(stayers)
    ]
    leaver, leaver_events = client_factory(
        server.server_address, data=CLIENT_DATA["client2"], name="leaver"
    )
    leaver_events.wait_for(lambda e: e.kind == "generation" and e.generation >= 2)
    leaver.stop()
    assert events.wait_for(lambda e: e.kind == "done").accuracy == 1.0
    for client in staying:
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE, client.error
    return leaver, [r.getMessage() for r in caplog.records if r.name == "common.fitness_federation"]


def test_a_client_leaving_mid_generation_leaves_the_others_going(
    server_factory, client_factory, caplog
):
    leaver, said = leave_mid_generation(
        server_factory, client_factory, caplog, ["client1", "client2"], min_clients=2
    )
    # The log says whose data went missing: in the generation it left, or in the next one.
    assert any(
        leaver.client_id in line and ("left:" in line or "the last by" in line) for line in said
    )
    assert any("every member is scored again" in line for line in said)


def test_below_min_clients_a_generation_waits_and_is_scored_again(
    server_factory, client_factory, caplog
):
    server, events = server_factory(
        federation=FITNESS, min_clients=2, num_generations=30, stop_fitness=0, seed=6
    )
    stayer, _ = client_factory(server.server_address, data=CLIENT_DATA["client1"], name="stayer")
    leaver, leaver_events = client_factory(
        server.server_address, data=CLIENT_DATA["client2"], name="leaver"
    )
    leaver_events.wait_for(lambda e: e.kind == "generation" and e.generation >= 2)
    leaver.stop()
    waiting = events.wait_for(lambda e: e.kind == "waiting" and e.detail == "1 of 2 clients")
    replacement, _ = client_factory(
        server.server_address, data=CLIENT_DATA["client2"], name="replacement"
    )
    resumed = events.wait_for(
        lambda e: (
            e.kind == "generation"
            and (e.round, e.generation) >= (waiting.round, waiting.generation)
        )
    )
    assert resumed.round == waiting.round  # no generation was lost: the round went on
    assert events.wait_for(lambda e: e.kind == "done").accuracy == 1.0
    for client in (stayer, replacement):
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE, client.error
    assert "every member is scored again" in caplog.text  # the replacement's data counts


def test_a_plain_pickle_peer_is_refused_and_the_others_finish(
    server_factory, client_factory, caplog
):
    server, events = server_factory(federation=FITNESS, min_clients=2, seed=1)
    with raw_connection(server.server_address) as plain:
        plain_send(plain, "echo", {"best_model_weights_vector": None})
        with pytest.raises((ConnectionError, EOFError, OSError)):
            plain_recv(plain)
    disconnected = events.wait_for(lambda e: e.kind == "disconnected")
    assert "fitness mode" in disconnected.detail and "protocol_version" in disconnected.detail
    clients = [
        client_factory(server.server_address, name=name)[0] for name in ("client1", "client2")
    ]
    assert events.wait_for(lambda e: e.kind == "done").accuracy == 1.0
    for client in clients:
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE
    assert "dropping client" in caplog.text


def test_resume_from_a_checkpoint_mid_run(iris, server_factory, client_factory, tmp_path):
    test_file, everything, _ = iris
    path = tmp_path / "state.npz"
    settings = dict(
        federation=FITNESS,
        test_data=test_file,
        checkpoint=str(path),
        min_clients=1,
        num_generations=GENERATIONS,
        target_accuracy=2,
        seed=3,
    )
    first, first_events = server_factory(max_rounds=50, **settings)
    client, _ = client_factory(first.server_address, data=everything, name="site")
    first_events.wait_for(lambda e: e.kind == "update" and e.round == 2)
    first.shutdown()  # mid-run, a round being scored
    client.join(WAIT)
    saved = checkpoint.load(path, first.global_model.num_params)
    assert 2 <= saved.round < 50
    resumed, resumed_events = server_factory(max_rounds=saved.round + 2, resume=True, **settings)
    np.testing.assert_array_equal(resumed.global_model.vector, saved.vector)
    again, _ = client_factory(resumed.server_address, data=everything, name="site")
    assert resumed_events.wait_for(lambda e: e.kind == "update").round == saved.round + 1
    assert resumed_events.wait_for(lambda e: e.kind == "gave_up").round == saved.round + 2
    again.join(WAIT)
    assert again.outcome is ClientOutcome.DONE, again.error


def test_a_generation_costs_under_1_kib_each_way_whatever_the_model_size():
    """What a client sends and receives per generation at 10 members: no weights."""
    losses = np.random.default_rng(0).random(10)
    scores = Scores(losses, 1_000_000, digest(np.zeros((10, 5))), 1000, 49, 0, "site1-0123abcd")
    request = ScoreRequest(
        1000, 50, 0, False, digest(np.zeros((8, 5))), 1 / losses, None, None, 0.5
    )
    assert len(encode(scores.to_message())) <= 1024
    assert len(encode(request.to_message())) <= 1024


def test_score_messages_round_trip():
    start = RoundStart(
        "{}", np.ones((3, 4), np.float32), 9, {"num_generations": 5}, np.full((2, 3), 0.5)
    )
    request = ScoreRequest(2, 2, 1, True, "ab", np.arange(3.0), start, None, 0.25)
    data = request.to_message().data
    back = ScoreRequest.from_data(data)
    assert (back.round, back.generation, back.attempt, back.all_members) == (2, 2, 1, True)
    np.testing.assert_array_equal(back.start.population_weights, start.population_weights)
    np.testing.assert_array_equal(back.start.fitness_history, start.fitness_history)
    assert back.start.seed == 9 and dict(back.start.ga_settings) == {"num_generations": 5}
    scores = Scores(np.array([0.1, 0.2]), 5, "cd", 2, 3, 0, "me")
    again = Scores.from_data(scores.to_message().data)
    assert again.client_id == "me" and again.num_samples == 5
    assert scores.to_message().data["protocol_version"] == PROTOCOL_VERSION


def test_a_curious_server_reads_a_clients_label_mix_off_its_losses(iris, client_factory):
    """What SECURITY.md warns of: the server chooses the members a client scores. Members
    whose output is a constant probability vector p score the loss -sum_k pi_k log p_k, a
    linear function of the client's label shares pi: ten of them give the shares exactly."""
    _, _, parts = iris
    data = parts[1]
    classes = 3
    model_json = dense_chain_json(4, [(16, "relu"), (classes, "softmax")])
    num_params = 4 * 16 + 16 + 16 * classes + classes
    constants = softmax(np.random.default_rng(0).normal(size=(10, classes)), axis=1)
    population = np.zeros((10, num_params), np.float32)
    population[:, -classes:] = np.log(constants)  # zero weights: the output is the bias
    with socket.create_server(("127.0.0.1", 0)) as listening:
        client, _ = client_factory(listening.getsockname(), data=data, name="victim")
        connection, _ = listening.accept()
        with connection:
            assert plain_recv(connection)["subject"] == "echo"
            request = ScoreRequest(
                1,
                0,
                0,
                True,
                digest(population),
                start=RoundStart(
                    model_json, population, 1, {"num_generations": 1}, np.empty((0, 10))
                ),
            )
            plain_send(connection, "score", request.to_message().data)
            losses = plain_recv(connection)["data"]["losses"]
            plain_send(connection, "done", {})
    client.join(WAIT)
    shares, *_ = np.linalg.lstsq(-np.log(constants), losses, rcond=None)
    true_shares = np.bincount(data.outputs.astype(int), minlength=classes) / len(data)
    np.testing.assert_allclose(shares, true_shares, atol=1e-5)
