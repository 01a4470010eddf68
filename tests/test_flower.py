"""The same training on Flower: a real simulation of the XOR task, and the records that carry
our messages checked as the socket path checks them."""

from __future__ import annotations

import csv
import logging
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="Flower is optional: pip install -r requirements-flower.txt")

from common import protocol  # noqa: E402  (after the skip: these import Flower)
from common.flower.records import (  # noqa: E402
    fit_content,
    fit_result,
    is_secure,
    request_content,
    request_from,
    request_from_fit,
    update_content,
    update_from,
)
from common.flower import deploy  # noqa: E402
from common.flower.deploy import DeploymentError, LocalDeployment, live_members  # noqa: E402
from common.flower.server_app import (  # noqa: E402
    ENGINE_KEYS,
    RUN_CONFIG_KEYS,
    ConfigError,
    server_config,
)
from common.auto import AUTO  # noqa: E402
from common.ga import GAConfig, TrainingResult  # noqa: E402
from common.protocol import ModelRequest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Each Flower test has one time limit, pytest-timeout's (pytest.ini's 120 s is the others').
# Measured on this 2-core machine while other test runs shared it (load 3-8), then with one
# more core kept busy beside them ("busy"), and once with three busy loops (load 14):
# - The simulation needed ~22 s of CPU: 8-9 s in the driver (Flower, Ray, and then
#   TensorFlow for the server's model, which it no longer loads), ~2.4 s per Ray worker (~8 s
#   before keep_tensorflow_out), ~4 s in Ray's daemons; then 0.1-0.5 s per round, 2-66
#   rounds to done (once 254: the nodes' GA is not seeded). Launch to exit: 25-35 s; busy
#   63-87 s (Python to Ray 30-34 s, Ray 16-22 s, its workers 10-16 s, rounds 1-4 s, Ray's
#   shutdown 10 s); three loops 170-230 s.
SIMULATION_TIMEOUT = 300
# - The deployment: its processes serve 4-13 s after launch, the ServerApp starts 15-20 s
#   after `flwr run`, a round takes 6-10 s (a SuperNode polls every 3 s and starts a
#   ClientApp process), stopping 3-4 s. 31-37 s; busy 54-67 s; three loops 62-74 s.
DEPLOYMENT_TIMEOUT = 240


def _history(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file))


def _simulate_xor(tmp_path: Path, *flags: str) -> tuple[str, list[dict]]:
    """``python -m common.flower simulate`` with ``flags`` to XOR's end: its output and
    history rows."""
    history = tmp_path / "history.csv"
    run = subprocess.run(
        [sys.executable, "-m", "common.flower", "simulate", *flags, "--seed", "3"]
        + ["--history", str(history)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    return output, _history(history)


@pytest.mark.timeout(SIMULATION_TIMEOUT)
def test_simulation_of_two_nodes_trains_xor_to_done_with_our_ga_and_fedavg(tmp_path):
    output, rows = _simulate_xor(tmp_path, "--nodes", "2")
    assert float(rows[-1]["accuracy"]) == 1.0  # evaluated by common.model on the test set
    assert [int(row["round"]) for row in rows] == list(range(1, len(rows) + 1))
    # Every round aggregated both nodes' answers with common.aggregate's fedavg ...
    assert output.count("fedavg of 2 updates") == len(rows), output
    # ... and each answer came from our GA on the node: PyGAD's generations and fitness.
    trained = [line for line in output.splitlines() if "2 nodes trained" in line]
    assert len(trained) == len(rows), output
    assert "done: accuracy=1.0000 reached the target" in output


@pytest.mark.timeout(SIMULATION_TIMEOUT)
def test_a_secure_simulation_of_three_nodes_trains_xor_to_done_through_flowers_secaggplus(
    tmp_path,
):
    """Every round's model is the sum SecAgg+ unmasked: the workflow calls the strategy's
    aggregate_fit only after its unmask stage, with that sum in place of each node's
    weights. Sums of masks that did not cancel would be noise, and XOR would not train."""
    output, rows = _simulate_xor(tmp_path, "--nodes", "3", "--secure-aggregation")
    assert float(rows[-1]["accuracy"]) == 1.0
    assert output.count("the secure sum of 3 nodes (SecAgg+)") == len(rows), output
    assert {row["client"] for row in rows} == {"secure sum of 3 nodes"}  # no node's own
    assert "nodes trained" not in output  # no per-node metrics reach the server


def test_a_secure_rounds_request_and_answer_cross_flowers_legacy_layout():
    """What SecAggPlusWorkflow sends (FitIns, the mod's config added) and what its mod masks
    (FitRes): our request and our answer, unchanged."""
    from flwr.app import ConfigRecord
    from flwr.common import parameters_to_ndarrays
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.compat.common import recorddict_compat as compat

    population = np.random.default_rng(0).standard_normal((10, 22)).astype(np.float32)
    request = ModelRequest("{}", population, {"num_generations": 50}, round=3, accuracy=0.75)
    content = compat.fitins_to_recorddict(fit_content(request), keep_input=True)
    assert not is_secure(content)
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({"stage": "collect"})
    assert is_secure(content) and not is_secure(request_content(request))
    received = request_from_fit(content)
    np.testing.assert_array_equal(received.population_weights, population)
    assert (received.round, received.accuracy, dict(received.ga_settings)) == (
        3,
        0.75,
        {"num_generations": 50},
    )
    best = population[4]
    fit = compat.recorddict_to_fitres(fit_result(TrainingResult(best, 2.0, 50), 7), True)
    (sent,) = parameters_to_ndarrays(fit.parameters)
    np.testing.assert_array_equal(sent, best)
    assert (fit.num_examples, fit.metrics) == (7, {})


@pytest.mark.parametrize(
    "flags, sentence",
    [
        (
            ["--nodes", "2"],
            "Secure aggregation needs --min-clients of at least 3 (of two clients, each could "
            "read the other's update from the sum), not 2.",
        ),
        (
            ["--nodes", "3", "--aggregation", "median"],
            "Secure aggregation shows the server only each round's sum, so it cannot run the "
            "median aggregation, which must see each update: choose fedavg, fedavgm, fedadam "
            "or fedyogi.",
        ),
    ],
)
def test_a_secure_run_flower_cannot_make_is_refused_in_one_sentence(flags, sentence, capsys):
    from common.flower.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["simulate", "--secure-aggregation", *flags])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {sentence}")


@pytest.mark.timeout(DEPLOYMENT_TIMEOUT)
def test_a_deployment_here_runs_our_apps_in_flowers_processes_and_stops_them_all(tmp_path):
    """A SuperLink and two SuperNodes on free ports with their own FLWR_HOME, `flwr run` on
    this project, two rounds; then every process group the test started is gone. (Rounds to
    accuracy 1.0 vary too much for a test: the simulation above trains to done.)"""
    history = tmp_path / "history.csv"
    with LocalDeployment(2, tmp_path) as deployment:
        code = deployment.run({"max-rounds": 2, "history": str(history)})
        sessions = {process.pid for process in deployment.processes}
    output = (tmp_path / "run.log").read_text()
    assert code == 0, output
    assert 1 <= len(_history(history)) <= 2, output  # done early, or gave up after 2 rounds
    assert "2 nodes trained" in output and "fedavg of 2 updates" in output, output
    assert "[node " in (tmp_path / "supernode-1.log").read_text()  # our ClientApp's own log
    assert live_members(sessions) == []


def test_a_superlink_that_cannot_serve_is_named_with_its_log_and_nothing_is_left(
    tmp_path, monkeypatch
):
    """Its port is taken: the SuperLink exits, and the deployment says so in one sentence,
    starts no SuperNode and no `flwr run`, and leaves no process running."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        monkeypatch.setattr(deploy, "free_port", lambda: taken.getsockname()[1])
        deployment = LocalDeployment(2, tmp_path)
        with pytest.raises(DeploymentError) as raised, deployment:
            pytest.fail("the deployment came up on a port that was taken")
    log_file = tmp_path / "superlink.log"
    assert re.fullmatch(
        rf"The SuperLink exited with code \d+ before it came up; see "
        rf"{re.escape(str(log_file))}\.",
        str(raised.value),
    )
    assert "address already in use" in log_file.read_text()
    assert len(deployment.processes) == 1  # the SuperLink alone
    assert live_members({deployment.processes[0].pid}) == []


def test_a_simulation_worker_loads_flowers_actor_and_our_clientapp_without_tensorflow():
    """What ``keep_tensorflow_out`` leaves each Ray worker of a simulation: Flower's actor
    module and our ClientApp import, and TensorFlow is never loaded."""
    code = (
        "import sys; from common.flower import keep_tensorflow_out; keep_tensorflow_out(); "
        "import flwr.simulation.ray_transport.ray_actor, common.flower.client_app; "
        "print([name for name in ('tensorflow', 'keras') if sys.modules.get(name)])"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", run.stdout + run.stderr


def test_a_request_crosses_flower_records_unchanged():
    population = np.random.default_rng(0).standard_normal((10, 22)).astype(np.float32)
    request = ModelRequest("{}", population, {"num_generations": 50}, round=3, accuracy=0.75)
    received = request_from(request_content(request))
    np.testing.assert_array_equal(received.population_weights, population)
    assert (received.model_json, dict(received.ga_settings), received.round, received.accuracy) == (
        "{}",
        {"num_generations": 50},
        3,
        0.75,
    )


def test_an_update_is_checked_like_a_socket_clients():
    best = np.linspace(-1, 1, 22, dtype=np.float32)
    content = update_content(TrainingResult(best, 12.5, 7), num_samples=2)
    update, metrics = update_from(content, num_params=22)
    np.testing.assert_array_equal(update.best_model_weights_vector, best)
    assert update.num_samples == 2 and metrics["generations"] == 7
    with pytest.raises(protocol.SchemaError, match="shape"):
        update_from(content, num_params=23)
    best[4] = np.nan
    with pytest.raises(protocol.SchemaError, match="NaN"):
        update_from(update_content(TrainingResult(best, 1.0, 1), 2), num_params=22)


def test_run_config_names_server_flags_and_refuses_others():
    config = server_config(
        {"target-accuracy": 0.75, "max-rounds": 30, "data": "nodes/", "aggregation": "median"}
    )
    training = config.training
    assert (training.target_accuracy, training.max_rounds, training.aggregation) == (
        0.75,
        30,
        "median",
    )
    with pytest.raises(ConfigError, match="'port' is not a setting"):
        server_config({"port": 9000})
    with pytest.raises(ConfigError, match="aggregation must be one of"):
        server_config({"aggregation": "running-average"})


@pytest.mark.parametrize(
    "run_config, expected",
    [
        ({"stop-fitness": "", "step-patience": ""}, (GAConfig().stop_fitness, 0)),  # XOR's
        ({"test-data": "test.npz", "stop-fitness": "", "step-patience": ""}, (0, 3)),
        ({"test-data": "test.npz", "stop-fitness": 5, "step-patience": 0}, (5, 0)),
    ],
)
def test_an_empty_run_config_value_leaves_the_ga_setting_to_the_model(run_config, expected):
    config = server_config(run_config)
    settings = config.settings()
    for key in ("stop-fitness", "step-patience"):
        if run_config[key] == "":
            assert settings[key.replace("-", "_")] is AUTO
    ga = config.training.resolved().ga
    assert (ga.stop_fitness, ga.step_patience) == expected
    assert f"stop-fitness={expected[0]:g}" in config.training.summary()


def test_the_servers_settings_in_effect_are_logged_before_its_rounds(caplog, monkeypatch):
    from common.app import build_global_model
    from common.flower import server_app

    rounds = []  # the rounds are another test's: here, that the summary comes before them
    monkeypatch.setattr(server_app, "train_until_done", lambda *args: rounds.append(caplog.text))
    config = server_config({})
    with caplog.at_level(logging.INFO, logger="fedga.flower"):
        server_app.run(None, None, config, build_global_model(config))
    [logged] = rounds
    assert "settings in effect: aggregation=fedavg (max-claimed-samples=3x" in logged
    assert "min-clients=2, round-timeout=120, num-solutions=10, target-accuracy=1" in logged
    assert "stop-fitness=10, operators=scaled, mutation-step=0.3, step-patience=0" in logged


def test_pyproject_declares_every_server_setting_with_the_servers_defaults():
    with (ROOT / "pyproject.toml").open("rb") as file:
        declared = tomllib.load(file)["tool"]["flwr"]["app"]["config"]
    assert set(declared) - set(ENGINE_KEYS) == set(RUN_CONFIG_KEYS)
    assert server_config(declared) == server_config({})


def test_the_aggregations_settings_come_from_the_run_config_and_are_checked():
    config = server_config(
        {"aggregation": "fedadam", "server-learning-rate": 0.02, "beta1": "", "tau": 0.01}
    )
    rule = config.training.aggregation_rule()
    assert str(rule) == (
        "fedadam (server-learning-rate=0.02, beta1=0.9, beta2=0.99, tau=0.01, "
        "max-claimed-samples=3x the round's median claim)"
    )
    with pytest.raises(ConfigError, match=r"^fedavg takes no tau setting: it is for fedadam"):
        server_config({"tau": 0.01})  # Flower's default aggregation, fedavg
    with pytest.raises(ConfigError, match=r"^server-momentum must be at least 0 and below 1"):
        server_config({"aggregation": "fedavgm", "server-momentum": 1.5})
    with pytest.raises(ConfigError, match=r"^clip-norm must be greater than 0, not -1\.$"):
        server_config({"aggregation": "norm-bounded", "clip-norm": -1})
    with pytest.raises(ConfigError, match=r"^With min-clients 2, krum cannot tolerate 1 attacker"):
        server_config({"aggregation": "krum"})  # Flower's default min-clients, 2


def test_the_aggregation_setting_flags_of_python_m_common_flower_reach_the_run_config():
    from common.flags import server_config_from
    from common.flower.__main__ import parser, run_config

    args = parser().parse_args(["deploy", "--aggregation", "fedyogi", "--beta2", "0.5"])
    config = server_config_from(args, min_clients=args.nodes)
    sent = run_config(config)
    assert (sent["aggregation"], sent["beta2"], sent["tau"]) == ("fedyogi", 0.5, "")
    assert server_config(sent).training == config.training  # as the ServerApp reads it


def _reply(node: int, vector: np.ndarray, samples: int):
    """A node's train reply as Flower's strategies read it: arrays and num-examples."""
    from flwr.app import ArrayRecord, MetricRecord, RecordDict

    content = {"arrays": ArrayRecord([vector]), "metrics": MetricRecord({"num-examples": samples})}
    return _message(node, RecordDict(content))


def _message(node: int, content):
    """A train reply from ``node`` carrying ``content``."""
    from flwr.app import Message, Metadata

    metadata = Metadata(
        run_id=1,
        message_id=str(node),
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type="train",
    )
    return Message(content, metadata=metadata)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_each_server_optimiser_steps_as_flowers_own_strategy(name):
    """Flower's strategy itself, given the same global model and replies for four rounds,
    with the settings' names translated and fedavgm's momentum given (Flower's is 0)."""
    from flwr.app import ArrayRecord
    from flwr.serverapp import strategy as flower

    from common.aggregate import Update, aggregation_named

    rule = aggregation_named(name)
    settings = rule.settings
    theirs = {
        "fedavgm": lambda: flower.FedAvgM(
            server_learning_rate=settings.server_learning_rate,
            server_momentum=settings.server_momentum,
        ),
        "fedadam": flower.FedAdam,
        "fedyogi": flower.FedYogi,
    }[name]()
    rng = np.random.default_rng(2)
    model = rng.normal(size=30)
    theirs.current_arrays = ArrayRecord([model])  # what configure_train keeps
    for server_round in range(1, 5):
        updates = [model + rng.normal(0, 0.3, 30) for _ in range(3)]
        if name != "fedavgm":  # FedOpt keeps what each round sent; FedAvgM its own result
            theirs.current_arrays = {k: a.numpy() for k, a in ArrayRecord([model]).items()}
        replies = [_reply(node, u, n) for node, (u, n) in enumerate(zip(updates, [5, 1, 3]), 1)]
        arrays, _ = theirs.aggregate_train(server_round, replies)
        model = rule.aggregate(model, [Update(u, n) for u, n in zip(updates, [5, 1, 3])])
        np.testing.assert_allclose(model, arrays.to_numpy_ndarrays()[0], rtol=1e-12, atol=1e-12)


def test_the_optimisers_defaults_are_flowers_but_fedavgms():
    """Flower's FedAvgM defaults to no momentum at a rate of 1, which is FedAvg; ours are
    Hsu et al.'s momentum at the rate that keeps FedAvg's effective step."""
    import inspect

    from flwr.serverapp import strategy as flower

    from common.aggregate import settings_of

    ours = {"server_learning_rate": "eta", "beta1": "beta_1", "beta2": "beta_2", "tau": "tau"}
    for name, theirs in (("fedadam", flower.FedAdam), ("fedyogi", flower.FedYogi)):
        defaults = inspect.signature(theirs).parameters
        assert {k: defaults[v].default for k, v in ours.items()} == {
            k: settings_of(name)[k] for k in ours
        }
    defaults = inspect.signature(flower.FedAvgM).parameters
    flowers = (defaults["server_learning_rate"].default, defaults["server_momentum"].default)
    assert flowers == (1.0, 0.0)
    rate, momentum = (
        settings_of("fedavgm")[k] for k in ("server_learning_rate", "server_momentum")
    )
    assert (rate, momentum) == (0.1, 0.9) and rate / (1 - momentum) == pytest.approx(1.0)


@pytest.mark.parametrize("name, byzantine", [("krum", 1), ("multi-krum", 1), ("multi-krum", 2)])
def test_krum_and_multi_krum_choose_as_flowers_multikrum(name, byzantine):
    """Flower's MultiKrum, selecting 1 (Krum) or n - F updates, on replies of equal counts
    (Flower weighs the chosen by their counts, ours ignore them)."""
    from flwr.serverapp import strategy as flower

    from common.aggregate import Update, aggregation_named

    rng = np.random.default_rng(4)
    model = rng.normal(size=30)
    updates = [model + rng.normal(0, 0.3, 30) + (4.0 if i in (1, 5) else 0.0) for i in range(8)]
    selected = 1 if name == "krum" else len(updates) - byzantine
    theirs = flower.MultiKrum(num_malicious_nodes=byzantine, num_nodes_to_select=selected)
    arrays, _ = theirs.aggregate_train(1, [_reply(i + 1, u, 1) for i, u in enumerate(updates)])
    ours = aggregation_named(name, byzantine=byzantine).aggregate(
        model, [Update(u, 1) for u in updates]
    )
    np.testing.assert_allclose(ours, arrays.to_numpy_ndarrays()[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "flags, kept",
    [
        (["--aggregation", "krum", "--byzantine", "1"], "one honest update"),
        (["--aggregation", "multi-krum", "--byzantine", "1"], "the honest mean"),
        (["--aggregation", "norm-bounded", "--clip-norm", "0.5"], "a clipped attacker"),
    ],
)
def test_flowers_aggregation_takes_the_round_based_defences(flags, kept):
    """``python -m common.flower``'s --aggregation and the ServerApp's run config accept each
    defence with its settings, and a Flower round goes through it: of five nodes, the one
    sending a far vector is left out or clipped."""
    from common.aggregate import Update
    from common.app import build_global_model
    from common.flags import server_config_from
    from common.flower.__main__ import parser, run_config
    from common.flower.server_app import GAStrategy

    args = parser().parse_args(["simulate", "--nodes", "5", *flags])
    config = server_config_from(args, min_clients=args.nodes)
    sent = run_config(config)
    assert server_config(sent).training == config.training  # as the ServerApp reads it
    strategy = GAStrategy(build_global_model(server_config(sent)), min_nodes=5)
    start = strategy.global_model.vector.copy()
    rng = np.random.default_rng(5)
    vectors = [start + rng.normal(0, 0.05, start.size).astype(np.float32) for _ in range(4)]
    vectors.append(start + np.float32(50))  # the attacker
    replies = [
        _message(node, update_content(TrainingResult(vector, 1.0, 3), num_samples=10))
        for node, vector in enumerate(vectors, start=1)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    rule = config.training.aggregation_rule()
    expected = rule.aggregate(start, [Update(v, 10) for v in vectors])
    np.testing.assert_allclose(strategy.global_model.vector, expected, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(strategy.global_model.vector - start) < 1.0, kept
