"""The server core over real loopback sockets: full runs, plain peers, and hostile peers."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import pickle
import socket
import struct
import subprocess
import time
import tracemalloc
import threading

import numpy as np
import pytest

from bench.plain_peers import plain_client, plain_recv, plain_send
from common import protocol
from common.aggregate import SETTINGS
from common.auto import AUTO
from common.client import ClientOutcome
from common.data import XOR_TEST_DATA
from common.events import Outcome
from common.global_model import GlobalModel
from common.model import xor_network
from common.operators import step_scales
from common.server import ListenThread
from common.server_config import ServerConfig, TrainingConfig
from tests.conftest import WAIT, raw_connection


def test_the_moved_names_are_still_importable_from_common_server():
    """The tutorial's ``from common.server import GlobalModel``, and every name callers
    imported from there before the configuration and the model had modules of their own."""
    import common.global_model
    import common.server
    import common.server_config

    for home, names in (
        (common.server_config, ["SECURE_REFUSED"]),
        (common.server_config, ["NetworkConfig", "SecurityConfig", "TrainingConfig"]),
        (common.server_config, ["OutputConfig", "ServerConfig"]),
        (common.global_model, ["GlobalModel", "OVER_SHARE"]),
    ):
        for name in names:
            assert getattr(common.server, name) is getattr(home, name), name
            assert name in common.server.__all__, name


def _assert_all_stopped(server):
    server.shutdown()
    assert not server.is_alive()
    assert not any(handler.is_alive() for handler in server.handlers)


def test_federated_run_reaches_accuracy_one(server, client_factory):
    listener, events = server
    client1, events1 = client_factory(listener.server_address, name="client1")
    client2, events2 = client_factory(listener.server_address, name="client2")
    done = events.wait_for(lambda e: e.kind == "done")
    assert done.accuracy == 1.0
    for client, client_events in ((client1, events1), (client2, events2)):
        heard = client_events.wait_for(lambda e: e.kind == "done")
        assert (heard.accuracy, heard.detail) == (1.0, "training is done: accuracy 1.00")
        client.join(WAIT)
        assert (client.outcome, client.server_outcome) == (ClientOutcome.DONE, Outcome.DONE)
    assert listener.wait_all_answered(WAIT)
    assert listener.global_model.reached_target
    assert listener.global_model.accuracy == 1.0
    _assert_all_stopped(listener)


def test_rounds_build_on_the_global_model(server_factory):
    listener, _ = server_factory(aggregation="running-average")  # always moves the model
    gm = listener.global_model
    first = gm.reply_to_echo().population_weights
    np.testing.assert_array_equal(first[0], gm.vector)
    update = first[3].copy()
    reply = gm.apply_update(protocol.ClientUpdate(update), "test")
    assert gm.round == 1
    if reply.subject is protocol.Subject.MODEL:  # the population now starts from the new model
        np.testing.assert_array_equal(reply.population_weights[0], gm.vector)
        assert not np.array_equal(gm.vector, first[0])


@pytest.mark.parametrize("operators", ["scaled", "tutorial"])
def test_the_operator_settings_travel_with_each_model_and_shape_its_spread(
    server_factory, operators
):
    listener, _ = server_factory(operators=operators, mutation_step=0.7, seed=1)
    with raw_connection(listener.server_address) as sock:
        plain_send(sock, "echo", {"best_model_weights_vector": None})
        data = plain_recv(sock)["data"]
    assert protocol.check_ga_settings(data, data["num_solutions"]) == {
        "num_generations": 50,
        "num_parents_mating": 4,
        "mutation_percent_genes": 5,
        "operators": operators,
        "mutation_step": 0.7,
        "stop_fitness": 10,
    }
    global_weights, members = data["population_weights"][0], data["population_weights"][1:]
    spread = members - global_weights
    if operators == "tutorial":  # U(-s, s), s = max(1, mean |w|)
        scale = max(1.0, float(np.mean(np.abs(global_weights))))
        assert 0.5 * scale < np.max(np.abs(spread)) <= scale * (1 + 1e-6)
    else:  # Gaussian, 0.7 times each layer's scale
        scales = step_scales(global_weights, listener.global_model.forward.shapes)
        assert np.std(spread / (0.7 * scales)) == pytest.approx(1.0, rel=0.2)


@pytest.mark.slow  # 1-4 s: the tutorial's client runs one Keras call per solution
def test_plain_pickle_client_trains_our_server_to_done(server):
    listener, events = server
    reply = plain_client(listener.server_address, XOR_TEST_DATA.inputs, XOR_TEST_DATA.outputs)
    assert reply["subject"] == "done"
    assert events.wait_for(lambda e: e.kind == "done").accuracy == 1.0


def test_done_is_only_a_reply_and_every_request_gets_one(server):
    listener, _ = server
    gm = listener.global_model
    gm.target_accuracy = 0.0  # the next update finishes training
    with raw_connection(listener.server_address) as sock:
        plain_send(sock, "echo", {"best_model_weights_vector": None})
        model = plain_recv(sock)
        assert model["subject"] == "model"
        best = model["data"]["population_weights"][0]
        for _ in range(3):  # after done, every request is still answered, with done
            plain_send(sock, "model", {"best_model_weights_vector": best})
            assert plain_recv(sock)["subject"] == "done"
        sock.settimeout(0.2)
        with pytest.raises(socket.timeout):  # and nothing is ever pushed unasked
            sock.recv(1)
    assert listener.wait_all_answered(WAIT)


def test_max_rounds_gives_up_and_answers_done_saying_so(server_factory, client_factory, caplog):
    listener, events = server_factory(max_rounds=2)
    listener.global_model.target_accuracy = 2.0  # unreachable
    client, client_events = client_factory(listener.server_address, name="client1")
    assert events.wait_for(lambda e: e.kind == "gave_up").round == 2
    client.join(WAIT)
    assert (client.outcome, client.server_outcome) == (ClientOutcome.DONE, Outcome.GAVE_UP)
    assert listener.global_model.outcome is Outcome.GAVE_UP
    assert not listener.global_model.reached_target
    heard = client_events.wait_for(lambda e: e.kind == "done")
    said = f"the server gave up after its round limit: accuracy {heard.accuracy:.2f}"
    assert heard.detail == said
    assert any(
        r.levelname == "WARNING" and r.getMessage() == f"client1: {said}" for r in caplog.records
    )


def test_a_plain_client_takes_done_with_its_outcome(server_factory):
    listener, _ = server_factory(max_rounds=1)
    listener.global_model.target_accuracy = 2.0  # unreachable: the first update gives up
    with raw_connection(listener.server_address) as sock:
        plain_send(sock, "echo", {"best_model_weights_vector": None})
        best = plain_recv(sock)["data"]["population_weights"][0]
        plain_send(sock, "model", {"best_model_weights_vector": best})
        done = plain_recv(sock)  # as the tutorial's client reads it: plain pickle, no classes
    assert done["subject"] == "done"
    assert done["data"]["outcome"] == "gave_up" and type(done["data"]["outcome"]) is str


# ---- hostile and broken peers -----------------------------------------------------------

VALID_ECHO = pickle.dumps({"subject": "echo", "data": {"best_model_weights_vector": None}})


MARKER = "/tmp/fedga-pwned"


class _Call:
    """Pickles as a call of ``func(*args)``: what an attacker's pickle looks like."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _nested(depth):
    # PROTO 4, ``depth`` EMPTY_LISTs, then APPENDs folding each into the one below it.
    return b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + b"."


def _send(payload):
    def behave(sock, stop):
        sock.sendall(payload)

    return behave


def _send_then_close(payload):
    def behave(sock, stop):
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    return behave


def _silent(sock, stop):
    stop.wait(WAIT)


def _trickle(sock, stop):
    """A slowloris: one byte per 100 ms (10 B/s). No gap reaches --recv-timeout, so the
    inactivity limit alone would serve it for ever; it is cut because it runs far below the
    floor rate (--min-rate, 8 KiB/s) once the grace of --recv-timeout (1 s here) is spent."""
    for byte in VALID_ECHO:
        if stop.wait(0.1):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


BAD_PEERS = {
    "garbage": (_send(b"\x00\xffnot a pickle at all" * 10), "undecodable"),
    "truncated": (_send_then_close(VALID_ECHO[:20]), "middle of a message"),
    "wrong subject": (_send(pickle.dumps({"subject": "hello", "data": {}})), "unexpected subject"),
    "no subject": (
        _send(pickle.dumps({"data": {"best_model_weights_vector": None}})),
        "no 'subject'",
    ),
    "wrong length": (
        _send(
            pickle.dumps({"subject": "model", "data": {"best_model_weights_vector": np.zeros(5)}})
        ),
        "shape",
    ),
    "os.system": (_send(pickle.dumps(_Call(os.system, f"touch {MARKER}"))), "not allowed"),
    "subprocess.Popen": (
        _send(pickle.dumps(_Call(subprocess.Popen, ["touch", MARKER]))),
        "not allowed",
    ),
    "eval": (_send(pickle.dumps(_Call(eval, f"open({MARKER!r}, 'w')"))), "not allowed"),
    "getattr": (_send(pickle.dumps(_Call(getattr, 0, "real"))), "not allowed"),
    "deeply nested": (_send(_nested(100_000)), "not a dict"),
    "NaN vector": (
        _send(
            pickle.dumps(
                {"subject": "model", "data": {"best_model_weights_vector": np.full(22, np.nan)}}
            )
        ),
        "NaN",
    ),
    "list vector": (
        _send(
            pickle.dumps({"subject": "model", "data": {"best_model_weights_vector": [0.0] * 22}})
        ),
        "not a numeric NumPy array",
    ),
    "huge bytes": (_send(b"\x80\x04\x8e" + struct.pack("<Q", 2**40)), "more than"),
    "silent": (_silent, "no message within"),
    "trickling": (_trickle, "slower than 8 KiB/s (--min-rate)"),
}
SHORT_DEADLINES = {"silent": {"idle_timeout": 1.0}, "trickling": {"recv_timeout": 1.0}}


@pytest.mark.parametrize("name", BAD_PEERS)
def test_bad_peer_is_dropped_while_a_good_client_trains(
    name, server_factory, client_factory, caplog
):
    behave, reason = BAD_PEERS[name]
    # Short deadlines only where they are the point: decoding a hostile message takes CPU,
    # and on a busy machine 1 s can pass before its real reason is found.
    listener, events = server_factory(**SHORT_DEADLINES.get(name, {}))
    stop = threading.Event()
    with raw_connection(listener.server_address) as bad:
        peer = "%s:%d" % bad.getsockname()
        misbehave = threading.Thread(target=behave, args=(bad, stop))
        misbehave.start()
        good, good_events = client_factory(listener.server_address, data=XOR_TEST_DATA)
        dropped = events.wait_for(lambda e: e.kind == "disconnected" and e.peer == peer)
        stop.set()
        misbehave.join(WAIT)
    assert reason in dropped.detail
    assert any(
        r.levelno == logging.WARNING and f"dropping client {peer}: " in r.getMessage()
        for r in caplog.records
    )
    assert good_events.wait_for(lambda e: e.kind == "done").accuracy == 1.0
    assert not os.path.exists(MARKER)
    _assert_all_stopped(listener)


def test_hundreds_of_megabytes_are_cut_at_the_budget(server_factory, client_factory):
    listener, events = server_factory()
    budget = protocol.default_max_message_bytes(22, 10)
    huge = pickle.dumps(
        {"subject": "model", "data": {"best_model_weights_vector": np.zeros(300 * 2**20 // 8)}}
    )  # a real 300 MB message
    tracemalloc.start()
    try:
        with raw_connection(listener.server_address) as bad:
            peer = "%s:%d" % bad.getsockname()
            sender = threading.Thread(target=_send_until_refused, args=(bad, huge))
            sender.start()
            dropped = events.wait_for(lambda e: e.kind == "disconnected" and e.peer == peer)
            sender.join(WAIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"more than {budget} bytes" in dropped.detail
    assert peak < 2 * budget + 2**20  # the server held at most about one budget's worth
    good, good_events = client_factory(listener.server_address, data=XOR_TEST_DATA)
    assert good_events.wait_for(lambda e: e.kind == "done").accuracy == 1.0


def _send_until_refused(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server closed the connection, as it should


def test_a_slow_listener_delays_no_other_clients_reply():
    """The global model's events reach its listener after the lock, in order: while the
    listener sleeps a second on each of client a's events, client b's update is answered in
    a fraction of that second, and every event still arrives, in the order of the rounds."""
    delay = 1.0  # the listener's, per event
    delivered, listening, all_delivered = [], threading.Event(), threading.Event()

    def slow_listener(event) -> None:
        delivered.append((event.kind, event.round, event.peer))
        listening.set()
        time.sleep(delay)  # the slowness under test, not a wait for something
        if len(delivered) == 6:
            all_delivered.set()

    model = GlobalModel(
        xor_network(1),
        XOR_TEST_DATA,
        TrainingConfig(target_accuracy=2.0),  # never done
        on_event=slow_listener,
    )
    update = model.vector + 0.1
    with (
        ListenThread(model, ServerConfig.of(host="127.0.0.1", port=0)) as server,
        raw_connection(server.server_address) as a,
        raw_connection(server.server_address) as b,
    ):
        plain_send(a, "model", {"best_model_weights_vector": update})
        assert listening.wait(WAIT)  # a's first event is being delivered, slowly
        sent = time.monotonic()
        plain_send(b, "model", {"best_model_weights_vector": update})
        reply = plain_recv(b)
        latency = time.monotonic() - sent
        assert reply["subject"] == "model" and reply["data"]["round"] == 2
        assert latency < delay / 2, f"b's reply took {latency:.2f} s beside a {delay} s listener"
        assert all_delivered.wait(WAIT) and plain_recv(a)["subject"] == "model"
    kinds, rounds, peers = zip(*delivered)
    assert kinds == ("scored", "judged", "update") * 2 and rounds == (1, 1, 1, 2, 2, 2)
    assert len(set(peers[:3])) == len(set(peers[3:])) == 1 and peers[0] != peers[3]


def test_settings_by_flat_name_fill_their_groups_and_read_back():
    config = ServerConfig.of(
        port=0,
        secret_file="secret.txt",
        num_generations=7,
        save_model="best.keras",
        stop_fitness=AUTO,
    )
    assert (
        config.network.port,
        config.security.secret_file,
        config.training.ga.num_generations,
        config.outputs.save_model,
    ) == (0, "secret.txt", 7, "best.keras")
    settings = config.settings()
    assert (settings["num_generations"], settings["stop_fitness"]) == (7, AUTO)
    assert settings["step_patience"] is AUTO  # not given: still left to the model
    given = config.with_settings(stop_fitness=5)
    assert given.settings()["step_patience"] is AUTO
    assert given.settings()["stop_fitness"] == given.training.resolved().ga.stop_fitness == 5
    with pytest.raises(TypeError, match="not a server setting: colour"):
        config.with_settings(colour="blue")


def test_auto_is_one_readable_value_however_copied():
    assert repr(AUTO) == "AUTO" and type(AUTO)() is AUTO
    assert copy.deepcopy(AUTO) is pickle.loads(pickle.dumps(AUTO)) is AUTO
    assert copy.deepcopy(ServerConfig()) == ServerConfig()  # its GA settings left to the model


def test_a_setting_left_to_the_run_is_auto_and_none_is_only_no_such_thing():
    """One way to say "unset": None only where nothing of the kind is given (no file, no
    seed, no secret, no count to wait for); each setting the run decides is AUTO, and
    resolving leaves AUTO only what the rule and each secure round decide."""
    settings = ServerConfig().settings()
    nothing = {name for name, value in settings.items() if value is None}
    assert nothing == {
        *("model", "test_data", "test_labels", "test_label_column", "checkpoint"),
        *("save_model", "history", "plot", "secret", "secret_file", "tls_cert", "tls_key"),
        *("seed", "expected_clients"),
    }
    assert {name for name, value in settings.items() if value is AUTO} == {
        *SETTINGS,
        *("aggregation", "min_clients", "secagg_threshold", "max_message_bytes"),
        *("stop_fitness", "step_patience"),
    }
    for secure in (False, True):
        resolved = ServerConfig.of(secure_aggregation=secure).training.resolved()
        left = {f.name for f in dataclasses.fields(resolved) if getattr(resolved, f.name) is AUTO}
        assert left == {*SETTINGS, "secagg_threshold"}
        assert AUTO not in vars(resolved.ga).values()


def test_the_summary_names_each_setting_in_effect_as_its_flag():
    summary = ServerConfig.of(
        test_data="test.npz", aggregation="fedavgm", min_clients=4, num_generations=7
    ).training.summary()
    assert summary.startswith(
        "settings in effect: aggregation=fedavgm (server-learning-rate=0.1, server-momentum=0.9"
    )
    assert "min-clients=4, round-timeout=5, num-solutions=10, target-accuracy=1" in summary
    assert summary.endswith(  # the GA's for a model of one's own: common.ga.REAL_DATA
        "; GA: num-generations=7, num-parents-mating=4, mutation-percent-genes=5, "
        "stop-fitness=0, operators=scaled, mutation-step=0.3, step-patience=3"
    )
