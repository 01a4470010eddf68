"""Secure aggregation over real loopback sockets (``--secure-aggregation``): real servers,
real clients training XOR with PyGAD, and scripted clients that run the real protocol
(``SecAggClient``) over a real connection and stop after a chosen stage, as a killed client
stops. The server learns only each round's sum: its result is the plain FedAvg of the same
updates within the quantisation bound."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bench.plain_peers import plain_recv, plain_send
from common import protocol
from common.aggregate import fedavg
from common.auto import AUTO
from common.client import ClientConfig, RecvThread, open_connection
from common.data import CLIENT_DATA
from common.errors import ConfigError
from common.secagg import RingSpec, SecAggClient, error_bound
from common.client import ClientOutcome
from tests.conftest import WAIT, raw_connection
from tests.test_secagg import assert_one_sentence


class RecordingClient(RecvThread):
    """A real client that also keeps what it trained (vector, sample count), so a test can
    compute the plain FedAvg the server must not see."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trained: list[tuple[np.ndarray, int]] = []

    def _train(self, request):
        best = super()._train(request)
        self.trained.append(best)
        return best


class ScriptedPeer:
    """A client that runs the real protocol step by step on its own connection and then
    vanishes: ``run(last)`` sends its update through the stages up to ``last`` ("keys" or
    "masked") and closes the socket, without a word more."""

    def __init__(self, address, name: str, seed: int):
        config = ClientConfig(host=address[0], port=address[1])
        self.connection = open_connection(raw_connection(address), config, 1024, WAIT)
        self.client_id = name
        self.rng = np.random.default_rng(seed)
        self.update: np.ndarray | None = None
        self.count = int(self.rng.integers(2, 9))
        self.error: Exception | None = None

    def _exchange(self, payload_or_message, reply: bool = True):
        message = payload_or_message
        if not isinstance(message, protocol.Message):
            message = protocol.SecureMessage(message).to_message()
        self.connection.send(message)
        if reply:
            return protocol.server_reply(self.connection.receive(protocol.SERVER_TO_CLIENT))

    def run(self, last: str) -> None:
        try:
            model = self._exchange(protocol.Echo(self.client_id).to_message())
            assert model.secure_aggregation
            # Its "training": a step from the global model, different for every peer.
            global_vector = model.population_weights[0].astype(np.float64)
            self.update = global_vector + self.rng.normal(0, 0.5, global_vector.shape)
            invitation = self._exchange(protocol.Ready(model.round, self.client_id)).payload
            client = SecAggClient(invitation.setup, invitation.you)
            if last == "keys":
                self._exchange(client.advertise(), reply=False)
                return
            key_list = self._exchange(client.advertise()).payload
            relayed = self._exchange(client.share(key_list)).payload
            self._exchange(client.masked_input(relayed, self.update, self.count), reply=False)
        except Exception as exc:  # reported by the test, from its own thread
            self.error = exc
        finally:
            self.connection.close()

    def start(self, last: str) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(last,), name=f"peer-{self.client_id}")
        thread.start()
        return thread


def secure_server(server_factory, **settings):
    """A secure-aggregation server of one round unless told otherwise, whose stages wait as
    long as any test waits (a dropout is seen when its connection ends, not by a timeout)."""
    return server_factory(
        **{
            "secure_aggregation": True,
            "aggregation": "fedavg",
            "min_clients": 5,
            "max_rounds": 1,
            "target_accuracy": 2,  # never: a run ends at max_rounds
            "round_timeout": WAIT,
            "seed": 3,
        }
        | settings
    )


def real_clients(client_factory, address, names):
    return [
        client_factory(
            address,
            data=CLIENT_DATA["client1" if n % 2 else "client2"],
            name=name,
            thread_type=RecordingClient,
        )[0]
        for n, name in enumerate(names)
    ]


def assert_finished(clients):
    for client in clients:
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE, client.error


def test_a_secure_round_of_5_is_the_plain_fedavg_of_their_updates(
    server_factory, client_factory, caplog
):
    server, events = secure_server(server_factory)
    initial = server.global_model.vector.copy()
    clients = real_clients(client_factory, server.server_address, [f"site{n}" for n in range(5)])
    update = events.wait_for(lambda e: e.kind == "update")
    events.wait_for(lambda e: e.kind == "gave_up")
    assert_finished(clients)

    trained = [client.trained[0] for client in clients]  # one round: one update each
    counts = [count for _, count in trained]
    expected = fedavg([vector for vector, _ in trained], counts)
    bound = error_bound(RingSpec(5), 5, sum(counts))
    got = server.global_model.vector
    assert update.round == 1 and not np.array_equal(got, initial)
    assert np.abs(got - expected).max() <= bound + 1e-6  # and float32's rounding
    # No update travelled in the clear: no client sent a "model" message.
    subjects = {e.detail for e in events.all() if e.kind == "request"}
    assert "model" not in subjects and "secagg_masked" in subjects
    assert "summed 5 inputs (0 dropped, 5 revealed)" in caplog.text


def test_dropouts_after_the_keys_and_after_the_masked_input_leave_the_survivors_sum(
    server_factory, client_factory
):
    server, events = secure_server(server_factory, secagg_threshold=3)
    address = server.server_address
    after_keys, after_masked = ScriptedPeer(address, "gone1", 1), ScriptedPeer(address, "gone2", 2)
    peers = [after_keys.start("keys"), after_masked.start("masked")]
    clients = real_clients(client_factory, address, ["site0", "site1", "site2"])
    update = events.wait_for(lambda e: e.kind == "update")
    events.wait_for(lambda e: e.kind == "gave_up")
    assert_finished(clients)
    for peer, thread in zip((after_keys, after_masked), peers):
        thread.join(WAIT)
        assert peer.error is None, repr(peer.error)

    # The masked input that arrived counts; the client gone after its keys never masked one.
    vectors = [client.trained[0][0] for client in clients] + [after_masked.update]
    counts = [client.trained[0][1] for client in clients] + [after_masked.count]
    expected = fedavg(vectors, counts)
    bound = error_bound(RingSpec(5), 4, sum(counts))
    got = server.global_model.vector
    assert update.round == 1
    assert np.abs(got - expected).max() <= bound + 1e-6
    without = fedavg(vectors[:3], counts[:3])
    assert np.abs(got - without).max() > 100 * bound  # the masked-then-gone update is in it


def test_below_the_threshold_the_round_is_abandoned_and_training_goes_on(
    server_factory, client_factory, caplog
):
    server, events = secure_server(server_factory)  # t = 4 of 5
    address = server.server_address
    initial = server.global_model.vector.copy()
    peers = [ScriptedPeer(address, f"gone{n}", n) for n in range(3)]
    threads = [peer.start("keys") for peer in peers]
    stayers = real_clients(client_factory, address, ["site0", "site1"])
    short = events.wait_for(lambda e: e.kind == "short")
    assert "abandoned at the share round: 2 clients were left and it needs 4" in short.detail
    assert server.global_model.round == 0
    np.testing.assert_array_equal(server.global_model.vector, initial)
    abandoned = [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert len(abandoned) == 1, [r.getMessage() for r in abandoned]  # one log line says it
    for peer, thread in zip(peers, threads):
        thread.join(WAIT)
        assert peer.error is None, repr(peer.error)

    # The next round starts with those still connected, and whoever joins.
    newcomers = real_clients(client_factory, address, ["site2", "site3", "site4"])
    update = events.wait_for(lambda e: e.kind == "update")
    assert update.round == 1 and not np.array_equal(server.global_model.vector, initial)
    events.wait_for(lambda e: e.kind == "gave_up")
    assert_finished(stayers + newcomers)
    assert all(len(client.trained) == 2 for client in stayers)  # trained again after it


def test_a_client_cut_off_after_its_masked_input_is_summed_once_and_never_resends_it(
    server_factory, client_factory, caplog
):
    server, events = secure_server(server_factory)
    clients = real_clients(client_factory, server.server_address, [f"site{n}" for n in range(4)])
    cut, cut_events = client_factory(
        server.server_address,
        data=CLIENT_DATA["client1"],
        name="cut",
        reconnect=True,
        thread_type=RecordingClient,
    )
    first = "%s:%d" % cut.connection.sock.getsockname()[:2]
    events.wait_for(
        lambda e: e.kind == "request" and (e.peer, e.detail) == (first, "secagg_masked")
    )
    before = {h.peer for h in server.handlers}
    (handler,) = [h for h in server.handlers if h.peer == first]
    handler.stop()  # its connection ends while the server waits for the others' inputs
    cut_events.wait_for(lambda e: e.kind == "connecting")
    events.wait_for(lambda e: e.kind == "gave_up")
    assert_finished([*clients, cut])

    # On its new connection it asked afresh: its masked vector went once, on the first.
    (second,) = {e.peer for e in events.all() if e.kind == "connected"} - before
    asked = [e.detail for e in events.all() if e.kind == "request" and e.peer == second]
    assert asked[0] == "echo" and "secagg_masked" not in asked, asked
    # Dropped from the round, it did not reveal; its input arrived, so it is in the sum.
    assert "summed 5 inputs (0 dropped, 4 revealed)" in caplog.text
    trained = [client.trained[0] for client in [*clients, cut]]
    counts = [count for _, count in trained]
    expected = fedavg([vector for vector, _ in trained], counts)
    bound = error_bound(RingSpec(5), 5, sum(counts))
    assert np.abs(server.global_model.vector - expected).max() <= bound + 1e-6


@pytest.mark.parametrize(
    "hello",
    [
        {"best_model_weights_vector": None},  # the tutorial's client
        {"best_model_weights_vector": None, "protocol_version": 2, "client_id": "old"},
    ],
    ids=["plain-pickle", "older-fedga"],
)
def test_a_peer_that_cannot_mask_is_refused_and_the_others_finish(
    server_factory, client_factory, caplog, hello
):
    server, events = secure_server(server_factory, min_clients=3)
    with raw_connection(server.server_address) as plain:
        plain_send(plain, "echo", hello)
        with pytest.raises((ConnectionError, EOFError, OSError)):
            plain_recv(plain)
    disconnected = events.wait_for(lambda e: e.kind == "disconnected")
    assert "secure aggregation" in disconnected.detail
    assert "protocol_version 3" in disconnected.detail
    assert "in the clear" in disconnected.detail
    assert f"dropping client {disconnected.peer}" in caplog.text
    clients = real_clients(client_factory, server.server_address, ["site0", "site1", "site2"])
    events.wait_for(lambda e: e.kind == "gave_up")
    assert_finished(clients)
    assert server.global_model.round == 1


# ---- start-up: the flags ----------------------------------------------------------------


def _config(flags):
    from common.cli import server_parser
    from common.flags import server_config_from

    return server_config_from(server_parser().parse_args(flags))


def test_secure_aggregation_chooses_fedavg_and_3_clients_unless_given():
    training = _config(["--secure-aggregation"]).training.resolved()
    assert (training.aggregation, training.min_clients) == ("fedavg", 3)
    assert training.secure_aggregation and training.secagg_threshold is AUTO  # each round's
    given = _config(
        ["--secure-aggregation", "--aggregation", "fedadam", "--min-clients", "6"]
        + ["--secagg-threshold", "4"]
    ).training.resolved()
    assert (given.aggregation, given.min_clients, given.secagg_threshold) == ("fedadam", 6, 4)
    plain = _config([]).training.resolved()  # and without it, the defaults stay as they were
    assert (plain.aggregation, plain.min_clients, plain.secure_aggregation) == (
        "running-best",
        2,
        False,
    )


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--aggregation", "median"], "cannot run the median aggregation"),
        (["--aggregation", "krum"], "cannot run the krum aggregation"),
        (["--aggregation", "running-best"], "choose fedavg, fedavgm, fedadam or fedyogi"),
        (["--aggregation", "trimmed-mean", "--byzantine", "1"], "trimmed-mean"),
        (["--byzantine", "1"], "--byzantine cannot run with it"),
        (["--clip-norm", "1"], "--clip-norm cannot run with it"),
        (["--max-claimed-samples", "100"], "--max-claimed-samples cannot run with it"),
        (["--min-clients", "2"], "at least 3"),
        (["--federation", "fitness", "--secagg-threshold", "2"], "fitness mode masks"),
        (["--secagg-threshold", "2", "--min-clients", "4"], "above half the 4 clients"),
    ],
)
def test_what_cannot_run_with_secure_aggregation_is_refused_in_one_sentence(flags, says):
    with pytest.raises(ConfigError) as refused:
        _config(["--secure-aggregation", *flags])
    assert says in str(refused.value)
    assert_one_sentence(str(refused.value))


def test_a_threshold_without_secure_aggregation_is_refused():
    with pytest.raises(ConfigError, match="needs --secure-aggregation"):
        _config(["--secagg-threshold", "3"])
