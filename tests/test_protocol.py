"""Messages over a real socket pair: round-trips, plain-pickle compatibility, and refusals."""

from __future__ import annotations

import copyreg
import os
import pickle
import re
import socket
import struct
import threading
import tracemalloc

import numpy as np
import pytest

from common import protocol
from common.events import Outcome
from common.protocol import connection
from common.protocol import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Connection, Message, Subject
from common.secagg import MaskedInput, RoundSetup, SecAggClient, SecAggServer


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    receiver = Connection(left, recv_timeout=5, idle_timeout=5, max_message_bytes=2**20)
    yield receiver, right
    receiver.close()
    right.close()


VECTOR = np.linspace(-1, 1, 22, dtype=np.float32)
MESSAGES = [
    (Message(Subject.ECHO, {"best_model_weights_vector": None}), CLIENT_TO_SERVER),
    (
        Message(
            Subject.ECHO,
            {"best_model_weights_vector": VECTOR, "client_id": "c1", "protocol_version": 1},
        ),
        CLIENT_TO_SERVER,
    ),
    (
        Message(Subject.MODEL, {"best_model_weights_vector": VECTOR.astype(np.float64)}),
        CLIENT_TO_SERVER,
    ),
    (
        Message(
            Subject.MODEL,
            {
                "population_weights": np.tile(VECTOR, (10, 1)),
                "model_json": '{"class_name": "Functional"}',
                "num_solutions": 10,
                "round": 3,
                "accuracy": 0.75,
            },
        ),
        SERVER_TO_CLIENT,
    ),
    (Message(Subject.DONE, {"accuracy": 1.0}), SERVER_TO_CLIENT),
    (Message(Subject.WAITING, {"round": 12, "missing": 2, "closes_in": 4.5}), SERVER_TO_CLIENT),
]


def _assert_same(a, b):
    assert a.subject is b.subject and a.data.keys() == b.data.keys()
    for key, value in a.data.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == b.data[key].dtype
            np.testing.assert_array_equal(value, b.data[key])
        else:
            assert value == b.data[key]


@pytest.mark.parametrize("message,schemas", MESSAGES, ids=lambda m: getattr(m, "subject", ""))
def test_round_trip_of_every_message_shape(pair, message, schemas):
    receiver, sender = pair
    sender.sendall(protocol.encode(message) * 2)  # two back to back: each read stops at STOP
    _assert_same(receiver.receive(schemas), message)
    _assert_same(receiver.receive(schemas), message)


@pytest.mark.parametrize("message,schemas", MESSAGES, ids=lambda m: getattr(m, "subject", ""))
def test_plain_pickle_peers_read_what_we_send(message, schemas):
    decoded = pickle.loads(protocol.encode(message))
    assert decoded["subject"] == message.subject.value
    assert decoded["data"].keys() == message.data.keys()


def test_typed_messages_round_trip_through_their_wire_dicts(pair):
    receiver, sender = pair
    update = protocol.ClientUpdate(VECTOR, num_samples=7, key=("c1-ab", 3), round=4)
    request = protocol.ModelRequest(
        '{"class_name": "Functional"}',
        np.tile(VECTOR, (10, 1)),
        {"num_generations": 5, "operators": "tutorial"},
        round=3,
        accuracy=0.75,
        notice_interval=2.5,
    )
    done = protocol.Done(round=4, accuracy=0.5, outcome=Outcome.GAVE_UP)
    waiting = protocol.Waiting(round=12, missing=2, closes_in=4.5)
    for typed in (update, request, done, waiting):
        sender.sendall(protocol.encode(typed.to_message()))
    received = protocol.ClientUpdate.from_data(receiver.receive(CLIENT_TO_SERVER).data, 22)
    np.testing.assert_array_equal(received.best_model_weights_vector, VECTOR)
    assert (received.num_samples, received.key, received.round) == (7, ("c1-ab", 3), 4)
    received = protocol.server_reply(receiver.receive(SERVER_TO_CLIENT))
    np.testing.assert_array_equal(received.population_weights, request.population_weights)
    assert (
        received.model_json,
        dict(received.ga_settings),
        received.round,
        received.accuracy,
        received.num_solutions,
        received.notice_interval,
    ) == (request.model_json, request.ga_settings, 3, 0.75, 10, 2.5)
    assert protocol.server_reply(receiver.receive(SERVER_TO_CLIENT)) == done
    assert done.describe() == "the server gave up after its round limit: accuracy 0.50"
    assert protocol.Waiting.from_data(receiver.receive(SERVER_TO_CLIENT).data) == waiting
    assert waiting.describe() == "round 12: waiting for 2 more clients (at most 5 s)"


@pytest.mark.parametrize("client_id", ["c1-ab", None])
def test_an_echo_round_trips_and_is_the_tutorials_dict_plus_our_keys(pair, client_id):
    receiver, sender = pair
    echo = protocol.Echo(client_id)
    sender.sendall(protocol.encode(echo.to_message()))
    assert protocol.Echo.from_data(receiver.receive(CLIENT_TO_SERVER).data) == echo
    # The bytes as before Echo was a class: the keys in this order, client_id only if set.
    data = {"best_model_weights_vector": None, "protocol_version": protocol.PROTOCOL_VERSION}
    if client_id is not None:
        data["client_id"] = client_id
    wire = {"subject": "echo", "data": data}
    assert protocol.encode(echo.to_message()) == pickle.dumps(wire, protocol=4)


@pytest.mark.parametrize("client_id", [None, 7, "", "x" * 257])
def test_a_plain_peers_echo_or_one_with_a_bad_id_is_an_echo_without_one(client_id):
    data = {"best_model_weights_vector": None}
    if client_id is not None:
        data["client_id"] = client_id
    message = protocol.validate({"subject": "echo", "data": data}, CLIENT_TO_SERVER)
    assert protocol.Echo.from_data(message.data) == protocol.Echo()


@pytest.mark.parametrize("outcome", list(Outcome))
def test_a_done_round_trips_with_each_outcome(pair, outcome):
    receiver, sender = pair
    for done in (protocol.Done(4, 0.5, outcome), protocol.Done(outcome=outcome)):
        sender.sendall(protocol.encode(done.to_message()))
        assert protocol.Done.from_data(receiver.receive(SERVER_TO_CLIENT).data) == done


@pytest.mark.parametrize(
    "data,match",
    [
        ({"round": 1, "missing": -1, "closes_in": 1.0}, "missing -1 is not a count"),
        ({"round": 1, "missing": 1, "closes_in": float("nan")}, "closes_in nan is not a number"),
        ({"round": True, "missing": 1, "closes_in": 1.0}, "round True is not a count"),
        ({"round": 1, "missing": 1, "closes_in": "soon"}, "closes_in 'soon' is not a number"),
    ],
)
def test_a_bad_waiting_notice_is_refused_in_one_sentence(data, match):
    with pytest.raises(protocol.SchemaError, match=match):
        protocol.Waiting.from_data(data)


@pytest.mark.parametrize("outcome", ["won", 3, ["done"]])
def test_a_done_of_no_known_outcome_is_refused_in_one_sentence(outcome):
    with pytest.raises(protocol.SchemaError, match="is none of 'done', 'gave_up'"):
        protocol.server_reply(Message(Subject.DONE, {"outcome": outcome}))


def test_a_plain_peers_update_and_the_tutorials_done_become_typed_messages():
    plain = {"best_model_weights_vector": VECTOR.astype(np.float64)}  # no count, no sequence
    update = protocol.ClientUpdate.from_data(plain, 22)
    assert (update.num_samples, update.key, update.best_model_weights_vector.dtype) == (
        None,
        None,
        np.float32,
    )
    assert protocol.server_reply(Message(Subject.DONE, {})) == protocol.Done(outcome=Outcome.DONE)
    with pytest.raises(protocol.SchemaError, match="shape"):
        protocol.ClientUpdate.from_data(plain, 23)
    with pytest.raises(protocol.SchemaError, match="model_json"):
        protocol.ModelRequest.from_data(
            {"model_json": 3, "population_weights": np.ones((2, 3)), "num_solutions": 2}
        )


@pytest.mark.parametrize("pickle_protocol", [2, 3, 4, 5])
def test_plain_pickle_of_every_protocol_is_read(pair, pickle_protocol):
    receiver, sender = pair
    plain = {
        "subject": "model",
        "data": {"best_model_weights_vector": VECTOR.astype(np.float64), "score": np.float64(0.5)},
    }
    sender.sendall(pickle.dumps(plain, protocol=pickle_protocol))
    message = receiver.receive(CLIENT_TO_SERVER)
    np.testing.assert_array_equal(message.data["best_model_weights_vector"], VECTOR)
    assert "score" not in message.data  # unknown keys are ignored


def test_tutorial_done_with_no_data_is_read(pair):
    receiver, sender = pair
    sender.sendall(pickle.dumps({"subject": "done", "data": None}))
    assert receiver.receive(SERVER_TO_CLIENT) == Message(Subject.DONE, {})


class _Exploit:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _exploits(marker):
    command = f"touch {marker}"
    yield pickle.dumps(_Exploit(os.system, command))
    yield pickle.dumps(_Exploit(eval, f"__import__('os').system({command!r})"), protocol=0)
    yield pickle.dumps({"subject": "echo", "data": _Exploit(os.system, command)}, protocol=4)
    # numpy.ndarray itself is allowed only as _reconstruct's argument, never as a callable
    yield b"\x80\x04cnumpy\nndarray\n(J\x00\xe1\xf5\x05\x85tR."
    # an object-dtype array: the shape that turns a small pickle into a huge allocation
    yield pickle.dumps(np.array([None, 1], dtype=object))


@pytest.mark.parametrize("index", range(5))
def test_pickles_naming_anything_else_are_refused_and_do_not_run(pair, tmp_path, index):
    receiver, sender = pair
    marker = tmp_path / "ran"
    sender.sendall(list(_exploits(marker))[index])
    with pytest.raises(protocol.DecodeError):
        receiver.receive(CLIENT_TO_SERVER)
    assert not marker.exists()


def test_extension_registry_goes_through_the_same_table(pair, tmp_path):
    receiver, sender = pair
    copyreg.add_extension("os", "system", 0xF00D)
    try:
        sender.sendall(b"\x80\x02\x83\x0d\xf0" + b"X\x01\x00\x00\x00x\x85R.")  # EXT2 0xF00D
        with pytest.raises(protocol.ForbiddenGlobal):
            receiver.receive(CLIENT_TO_SERVER)
    finally:
        copyreg.remove_extension("os", "system", 0xF00D)


def test_huge_declared_bytes_are_refused_before_allocating(pair):
    receiver, sender = pair
    # PROTO 4, BINBYTES8 declaring 64 GiB: 11 bytes that ask the C unpickler for 64 GiB.
    sender.sendall(b"\x80\x04\x8e" + struct.pack("<Q", 64 * 2**30))
    tracemalloc.start()
    try:
        with pytest.raises(protocol.MessageTooLarge):
            receiver.receive(CLIENT_TO_SERVER)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_message_over_the_budget_is_refused(pair):
    receiver, sender = pair
    big = {"subject": "model", "data": {"best_model_weights_vector": np.zeros(2**18)}}
    # The refusal leaves most of the 2 MiB unread, so send it from a thread that the close ends.
    writer = threading.Thread(target=_send_until_closed, args=(sender, pickle.dumps(big)))
    writer.start()
    with pytest.raises(protocol.MessageTooLarge):
        receiver.receive(CLIENT_TO_SERVER)
    receiver.close()
    writer.join(5)
    assert not writer.is_alive()


def _send_until_closed(sock, data):
    try:
        sock.sendall(data)
    except OSError:
        pass  # the receiver closed on us, as intended


@pytest.mark.parametrize(
    "payload,error",
    [
        (b"GET / HTTP/1.1\r\n\r\n", protocol.DecodeError),
        (pickle.dumps({"subject": "hello", "data": {}}), protocol.SchemaError),
        (pickle.dumps({"data": {"best_model_weights_vector": None}}), protocol.SchemaError),
        (pickle.dumps(["subject", "echo"]), protocol.SchemaError),
        (pickle.dumps({"subject": "model", "data": {}}), protocol.SchemaError),
        (pickle.dumps({"subject": "model", "data": None}), protocol.SchemaError),
    ],
    ids=["garbage", "wrong subject", "no subject", "not a dict", "missing key", "no data"],
)
def test_bad_messages_raise_protocol_errors(pair, payload, error):
    receiver, sender = pair
    sender.sendall(payload)
    with pytest.raises(error):
        receiver.receive(CLIENT_TO_SERVER)


def test_truncated_message_is_a_lost_connection(pair):
    receiver, sender = pair
    sender.sendall(protocol.encode(MESSAGES[3][0])[:100])
    sender.shutdown(socket.SHUT_WR)
    with pytest.raises(protocol.ConnectionLost, match="middle of a message"):
        receiver.receive(SERVER_TO_CLIENT)


def test_close_between_messages_is_a_clean_end(pair):
    receiver, sender = pair
    sender.shutdown(socket.SHUT_WR)
    with pytest.raises(protocol.PeerClosed):
        receiver.receive(CLIENT_TO_SERVER)


def test_silent_peer_hits_the_idle_timeout():
    left, right = socket.socketpair()
    with left, right:
        receiver = Connection(left, recv_timeout=5, idle_timeout=0.2)
        with pytest.raises(protocol.ReceiveTimeout, match="no message within"):
            receiver.receive(CLIENT_TO_SERVER)


def _drip(sock: socket.socket, payload: bytes, size: int, every: float, stop: threading.Event):
    """Send ``payload`` in pieces of ``size`` bytes, one per ``every`` seconds."""
    for at in range(0, len(payload), size):
        if stop.wait(every):
            return
        try:
            sock.sendall(payload[at : at + size])
        except OSError:
            return  # the receiver gave up on us, as it may


def _receive_while_dripping(receiver, sender, payload, size, every):
    stop = threading.Event()
    thread = threading.Thread(target=_drip, args=(sender, payload, size, every, stop))
    thread.start()
    try:
        return receiver.receive(CLIENT_TO_SERVER)
    finally:
        stop.set()
        thread.join()


def test_trickling_peer_is_cut_below_the_floor_rate():
    """One byte per 50 ms (20 B/s): each gap is well inside --recv-timeout, so only the
    floor rate (8 KiB/s) cuts it, once the grace of --recv-timeout is spent."""
    left, right = socket.socketpair()
    with left, right:
        receiver = Connection(left, recv_timeout=0.5, idle_timeout=5, min_rate=8)
        with pytest.raises(protocol.ReceiveTimeout, match=r"slower than 8 KiB/s \(--min-rate\)"):
            _receive_while_dripping(receiver, right, protocol.encode(MESSAGES[1][0]), 1, 0.05)


@pytest.mark.slow
def test_a_slow_link_above_the_floor_gets_its_message_whole():
    """48 KiB at about 24 KiB/s take 2 s, four times --recv-timeout: each KiB that arrives
    extends the deadline by 1/8 s, so the message is received whole (the fixed deadline of
    before cut it at 0.5 s)."""
    vector = np.arange(12 * 1024, dtype=np.float32)  # 48 KiB
    message = Message(Subject.ECHO, {"best_model_weights_vector": vector})
    left, right = socket.socketpair()
    with left, right:
        receiver = Connection(left, recv_timeout=0.5, idle_timeout=5, max_message_bytes=2**20)
        received = _receive_while_dripping(receiver, right, protocol.encode(message), 3072, 0.125)
    np.testing.assert_array_equal(received.data["best_model_weights_vector"], vector)


def test_a_stall_in_the_middle_of_a_message_hits_the_inactivity_limit():
    left, right = socket.socketpair()
    with left, right:
        receiver = Connection(left, recv_timeout=0.3, idle_timeout=5)
        right.sendall(protocol.encode(MESSAGES[1][0])[:40])  # then nothing, and no close
        with pytest.raises(protocol.ReceiveTimeout, match=r"no data for 0.3 s in the middle"):
            receiver.receive(CLIENT_TO_SERVER)


def _population_message(size: int) -> Message:
    population = np.zeros((10, size // 40), dtype=np.float32)
    data = {"population_weights": population, "model_json": "{}", "num_solutions": 10}
    return Message(Subject.MODEL, data)


def _small_buffers(*socks: socket.socket) -> None:
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)


def test_a_peer_that_reads_nothing_cuts_a_send_at_the_inactivity_limit():
    left, right = socket.socketpair()
    _small_buffers(left, right)
    with left, right:
        sender = Connection(left, recv_timeout=0.3, idle_timeout=5)
        with pytest.raises(protocol.ConnectionLost, match=r"it took nothing for 0.3 s"):
            sender.send(_population_message(2**20))
        assert 0 < sender.bytes_sent < 2**20  # what the buffers took, counted


def test_a_peer_that_reads_below_the_floor_cuts_a_send():
    """The reader drains 16 KiB every 100 ms (160 KiB/s): never silent for --recv-timeout,
    but below a floor of 512 KiB/s, so the send is cut once the buffers' worth is spent."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        left = socket.create_connection(listening.getsockname())
        right, _ = listening.accept()
    _small_buffers(left, right)
    stop = threading.Event()

    def drain():
        right.settimeout(5)
        while not stop.wait(0.1):
            if not right.recv(16 * 1024):
                return

    reader = threading.Thread(target=drain)
    with left, right:
        sender = Connection(left, recv_timeout=0.5, idle_timeout=5, min_rate=512)
        reader.start()
        try:
            with pytest.raises(protocol.ConnectionLost, match=r"slower than 512 KiB/s"):
                sender.send(_population_message(8 * 2**20))
        finally:
            stop.set()
            left.shutdown(socket.SHUT_RDWR)
            reader.join()


def test_every_connection_has_tcp_keepalive_on_both_sides(server, client_factory):
    listener, events = server
    client, _ = client_factory(listener.server_address)
    events.wait_for(lambda e: e.kind == "connected")
    (handler,) = listener.handlers
    for sock in (handler.connection.sock, client.connection.sock):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        for name, value in (
            ("TCP_KEEPIDLE", connection.KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", connection.KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", connection.KEEPALIVE_COUNT),
        ):
            if hasattr(socket, name):
                assert sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name)) == value


@pytest.mark.parametrize(
    "vector,match",
    [
        (np.zeros(21), "shape"),
        (np.zeros((22, 1)), "shape"),
        (np.full(22, np.nan), "NaN"),
        ([0.0] * 22, "NumPy"),
        (np.array(["a"] * 22), "NumPy"),
    ],
)
def test_weights_vector_checks(vector, match):
    with pytest.raises(protocol.SchemaError, match=match):
        protocol.check_weights_vector(vector, 22)


def test_population_checks():
    good = np.zeros((10, 22))
    assert protocol.check_population(good, 10, 22).dtype == np.float32
    assert protocol.check_population(list(good), 10, 22).shape == (10, 22)  # kerasga's list form
    with pytest.raises(protocol.SchemaError):
        protocol.check_population(good, 9, 22)
    with pytest.raises(protocol.SchemaError):
        protocol.check_population(good, 10**9, 22)


@pytest.mark.parametrize("pickle_protocol", [2, 3, 4, 5])
def test_large_arrays_decode_as_pickle_does_and_stay_shared_where_the_pickle_shares_them(
    pair, pickle_protocol
):
    receiver, sender = pair
    rng = np.random.default_rng(0)
    population = rng.standard_normal((10, 3000)).astype(np.float32)  # 120 KB: a large read
    fortran = np.asfortranarray(rng.standard_normal((100, 100)))
    swapped = rng.standard_normal(2000).astype(">f8")
    data = {
        "population_weights": population,
        "model_json": "{}",
        "num_solutions": 10,
        "round": population,
        "accuracy": [fortran, swapped],
    }  # population twice: memoized
    payload = pickle.dumps({"subject": "model", "data": data}, protocol=pickle_protocol)
    thread = threading.Thread(target=sender.sendall, args=(payload,))  # more than a socket holds
    thread.start()
    try:
        message = receiver.receive(SERVER_TO_CLIENT)
    finally:
        thread.join(5)
    expected = pickle.loads(payload)["data"]
    received = message.data["population_weights"]
    assert message.data["round"] is received
    assert received.flags.writeable
    for ours, theirs in zip(
        [received, *message.data["accuracy"]],
        [expected["population_weights"], *expected["accuracy"]],
    ):
        assert ours.dtype == theirs.dtype and ours.flags.f_contiguous == theirs.flags.f_contiguous
        np.testing.assert_array_equal(ours, theirs)


# ---- secure rounds' messages ------------------------------------------------------------


def _secure_round_messages() -> list:
    """One of each secure-round message, as a real round of three clients makes them."""
    setup = RoundSetup.create(5, [3, 7, 9], len(VECTOR))
    clients = {c: SecAggClient(setup, c) for c in setup.clients}
    server = SecAggServer(setup)
    advertised = [client.advertise() for client in clients.values()]
    for keys in advertised:
        server.receive_keys(keys)
    key_list = server.close_keys()
    shares = [client.share(key_list) for client in clients.values()]
    for sent in shares:
        server.receive_shares(sent)
    relayed = server.close_shares()
    masked = clients[3].masked_input(relayed[3], VECTOR, 4)
    for c in (7, 9):
        server.receive_masked(clients[c].masked_input(relayed[c], VECTOR, 2))
    server.receive_masked(masked)
    request = server.close_masked()
    reveal = clients[3].reveal(request)
    return [
        (protocol.Ready(2, "c1-ab"), CLIENT_TO_SERVER),
        (protocol.Invitation(setup, 7), SERVER_TO_CLIENT),
        (advertised[0], CLIENT_TO_SERVER),
        (key_list, SERVER_TO_CLIENT),
        (shares[0], CLIENT_TO_SERVER),
        (relayed[9], SERVER_TO_CLIENT),
        (masked, CLIENT_TO_SERVER),
        (request, SERVER_TO_CLIENT),
        (reveal, CLIENT_TO_SERVER),
    ]


def test_secure_round_messages_round_trip_through_the_restricted_unpickler(pair):
    receiver, sender = pair
    sent = _secure_round_messages()
    for payload, _ in sent:
        sender.sendall(protocol.encode(protocol.SecureMessage(payload).to_message()))
    for payload, schemas in sent:
        message = receiver.receive(schemas)
        assert message.data["protocol_version"] == protocol.PROTOCOL_VERSION
        received = protocol.SecureMessage.from_message(message).payload
        if isinstance(payload, MaskedInput):
            assert (received.round, received.sender) == (payload.round, payload.sender)
            assert received.vector.dtype == np.uint32
            np.testing.assert_array_equal(received.vector, payload.vector)
        else:
            assert received == payload
    assert all(  # the server's reach a client as typed replies
        protocol.server_reply(protocol.SecureMessage(p).to_message()).payload == p
        for p, schemas in sent
        if schemas is SERVER_TO_CLIENT
    )


@pytest.mark.parametrize(
    "payload_type, key, value, match",
    [
        ("Invitation", "you", 8, "does not name this client"),
        ("Invitation", "threshold", 1, "setup cannot work"),
        ("Invitation", "bits", 16, "setup cannot work"),
        ("Invitation", "clipping_range", "8", "clipping_range"),
        ("Invitation", "clients", [3, True, 9], "clients"),
        ("Invitation", "clients", list(range(1, 100_002)), "at most 100000"),
        ("KeysAdvertised", "share_key", b"\0" * 31, "share_key is not 32 bytes"),
        ("KeysAdvertised", "sender", 0, "sender"),
        ("KeyList", "keys", [{"sender": 3}], "two public keys"),
        ("SharesSent", "shares", [[7, "text"]], "shares"),
        ("SharesSent", "shares", [[7]], "pairs"),
        ("MaskedInput", "vector", VECTOR, "unsigned integers"),
        ("Reveal", "self_seed_shares", {3: b"\0" * 35}, "36 bytes"),
        ("Reveal", "mask_key_shares", [b"\0" * 36], "map of client ids"),
    ],
)
def test_a_malformed_secure_round_message_is_refused(payload_type, key, value, match):
    (payload,) = [p for p, _ in _secure_round_messages() if type(p).__name__ == payload_type]
    message = protocol.SecureMessage(payload).to_message()
    with pytest.raises(protocol.SchemaError, match=match):
        protocol.SecureMessage.from_message(Message(message.subject, message.data | {key: value}))


def test_a_model_request_says_whether_rounds_are_secure():
    request = protocol.ModelRequest("{}", np.tile(VECTOR, (2, 1)), secure_aggregation=True)
    data = request.to_message().data
    assert data["secure_aggregation"] is True
    assert protocol.ModelRequest.from_data(data).secure_aggregation
    plain = protocol.ModelRequest("{}", np.tile(VECTOR, (2, 1))).to_message().data
    assert "secure_aggregation" not in plain  # older clients see the message they know
    with pytest.raises(protocol.SchemaError, match="secure_aggregation"):
        protocol.ModelRequest.from_data(data | {"secure_aggregation": 1})


@pytest.mark.parametrize(
    "data, says",
    [
        ({"accuracy": "x"}, "accuracy 'x' is not a number from 0 to 1"),
        ({"accuracy": 1.5}, "accuracy 1.5 is not a number from 0 to 1"),
        ({"round": -1}, "round -1 is not a count"),
        ({"round": True}, "round True is not a count"),
    ],
)
def test_a_servers_round_and_accuracy_are_checked_on_the_way_in(data, says):
    """A ``done`` or ``model`` naming a nonsense round or accuracy is a schema error, not a
    crash later where the client prints it."""
    for subject, base in (
        (protocol.Subject.DONE, {}),
        (protocol.Subject.MODEL, protocol.ModelRequest("{}", np.tile(VECTOR, (2, 1))).to_data()),
    ):
        with pytest.raises(protocol.SchemaError, match=re.escape(says)):
            protocol.server_reply(protocol.Message(subject, {**base, **data}))
