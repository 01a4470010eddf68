"""The built-in server and clients through the fault proxy (tests/faults/proxy.py): each
toxic alone on XOR, cuts mid-message, silent links, and a slow link that the minimum-rate
deadline now serves. Each run reaches ``done`` with no update lost or counted twice, by the
ledger's definitions (tests/faults/ledger.py): the server's log against what each client
sent."""

from __future__ import annotations

import numpy as np
import pytest

from common.data import CLIENT_DATA, Dataset
from common.client import ClientOutcome
from tests.conftest import WAIT
from tests.faults.ledger import Ledger, ledger
from tests.faults.proxy import STREAMS, FaultProxy


def _both_ways(proxy: FaultProxy, type: str, **attributes) -> None:
    for stream in STREAMS:
        proxy.add_toxic(type, stream=stream, **attributes)


def _assert_counted_once(caplog, events, clients, client_events=()) -> Ledger:
    """Every client done; no update lost, applied twice, applied to a round it was not
    trained for (round-based rules), or applied without a client sending it; the rounds
    numbered 1, 2, ... with one ``update`` event each (tests/faults/ledger.py)."""
    for client in clients:
        assert client.outcome is ClientOutcome.DONE, client.error
    lines = [r.getMessage() for r in caplog.records if r.name == "common.global_model"]
    book = ledger(lines, clients, client_events)
    assert book.applied and book.lost == set() and book.duplicated == set()
    assert book.misplaced == {} and book.phantom == set()
    rounds = sorted(set(book.rounds.values()))
    assert rounds == list(range(1, len(rounds) + 1))
    assert len([e for e in events.all() if e.kind == "update"]) == len(rounds)
    return book


def _train_xor(server_factory, client_factory, caplog, setup, **server_settings):
    """client1 and client2 through one proxy set up by ``setup``, to done; the proxy and
    the run's ledger."""
    listener, events = server_factory(**server_settings)
    with FaultProxy(listener.server_address, seed=1) as proxy:
        setup(proxy)
        clients, client_events = zip(
            *(
                client_factory(proxy.address, name=name, reconnect=True, retries=5)
                for name in ("client1", "client2")
            )
        )
        events.wait_for(lambda e: e.kind in ("done", "gave_up"))
        for client in clients:
            client.join(WAIT)
    return proxy, _assert_counted_once(caplog, events, clients, client_events)


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda p: _both_ways(p, "latency", latency=30, jitter=10), id="latency"),
        pytest.param(lambda p: _both_ways(p, "bandwidth", rate=32), id="bandwidth 32 KiB/s"),
        pytest.param(
            lambda p: _both_ways(p, "slicer", average_size=64, size_variation=32, delay=100),
            id="slicer",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_xor_trains_through_a_poor_link(setup, server_factory, client_factory, caplog):
    _train_xor(server_factory, client_factory, caplog, setup)


def test_a_cut_in_the_middle_of_the_first_model_is_reconnected(
    server_factory, client_factory, caplog
):
    def setup(proxy):  # the first reply, a model of about 2.5 KB, ends after 600 bytes
        proxy.add_toxic("limit_data", stream="downstream", bytes=600, connections=[0])

    proxy, _ = _train_xor(server_factory, client_factory, caplog, setup)
    first, *others = proxy.links
    assert first.ended == "cut" and first.forwarded["downstream"] == 600
    assert len(others) >= 2  # the other client's, and the cut one's second


def test_resets_on_the_first_connections_are_reconnected(server_factory, client_factory, caplog):
    def setup(proxy):  # 50 ms in: before the first reply, held 100 ms by --round-delay
        proxy.add_toxic("reset_peer", stream="downstream", timeout=50, connections=[0, 1])

    proxy, _ = _train_xor(server_factory, client_factory, caplog, setup, round_delay=0.1)
    assert [link.ended for link in proxy.links[:2]] == ["reset", "reset"]
    assert len(proxy.links) >= 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "rule",
    [{}, {"aggregation": "fedavg", "min_clients": 2, "round_timeout": 3}],
    ids=["running-best", "fedavg rounds"],
)
def test_cuts_mid_message_lose_no_update_and_count_none_twice(
    rule, server_factory, client_factory, caplog
):
    """Each of the first four connections is cut: one mid-reply after its first update was
    applied (so the resend is one already counted), one mid-update on the way up, two reset
    50 ms in (before their first reply, held 100 ms by --round-delay). Training runs 20
    rounds (the target is out of reach), long enough for every cut. Through all of it, by
    the ledger's definitions: 0 updates lost, 0 applied twice, none applied to a round it
    was not trained for."""

    def setup(proxy):
        proxy.add_toxic("limit_data", stream="downstream", bytes=4000, connections=[0])
        proxy.add_toxic("limit_data", stream="upstream", bytes=1500, connections=[1])
        proxy.add_toxic("reset_peer", stream="downstream", timeout=50, connections=[2, 3])

    proxy, book = _train_xor(
        server_factory,
        client_factory,
        caplog,
        setup,
        round_delay=0.1,
        target_accuracy=2,
        max_rounds=20,
        **rule,
    )
    links = proxy.links
    assert [link.ended for link in links[:4]] == ["cut", "cut", "reset", "reset"]
    assert links[0].forwarded["downstream"] == 4000 and links[1].forwarded["upstream"] == 1500
    assert len(links) >= 6  # each cut one reconnected
    assert len(book.answered) >= len(book.applied) > 0


@pytest.mark.slow
def test_a_blackholed_client_reconnects_while_the_other_finishes(
    server_factory, client_factory, caplog
):
    """After client1's first model arrived, its link swallows everything both ways and
    closes nothing. client2 (direct) trains on; client1 hears nothing for three of the
    intervals the server promised notices at, takes the link for lost, reconnects through
    the now clean proxy and resends."""
    listener, events = server_factory(notice_interval=0.5)
    with FaultProxy(listener.server_address, seed=1) as proxy:
        silenced, silenced_events = client_factory(
            proxy.address, name="client1", reconnect=True, retries=5
        )
        silenced_events.wait_for(lambda e: e.kind == "model")  # bytes flowed both ways
        _both_ways(proxy, "timeout", connections=[0])
        other, _ = client_factory(listener.server_address, name="client2")
        events.wait_for(lambda e: e.kind == "done")
        for client in (silenced, other):
            client.join(WAIT)
        first, second = proxy.wait_for_links(2, WAIT)
    _assert_counted_once(caplog, events, [silenced, other])
    assert first.swallowed["upstream"] > 0  # client1's update went into the hole
    assert [e.kind for e in silenced_events.all()].count("connected") == 2
    assert any(
        "client1: lost the server (no message within 1.5 s); reconnecting" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.slow
def test_a_client_blackholed_in_a_round_reconnects_and_the_round_closes_with_it(
    server_factory, client_factory, caplog
):
    """fedavg rounds of both clients, which wait up to 60 s for each other. client1's link
    swallows everything after its first model: its update never arrives, and client2 waits
    in round 1, hearing why every 0.3 s. client1 hears nothing for 0.9 s, reconnects and
    resends; round 1 closes with both updates, and the run goes on to done."""
    listener, events = server_factory(
        aggregation="fedavg", min_clients=2, round_timeout=60, notice_interval=0.3
    )
    with FaultProxy(listener.server_address, seed=1) as proxy:
        silenced, silenced_events = client_factory(
            proxy.address, name="client1", reconnect=True, retries=5
        )
        silenced_events.wait_for(lambda e: e.kind == "model")
        _both_ways(proxy, "timeout", connections=[0])
        other, other_events = client_factory(listener.server_address, name="client2")
        waiting = other_events.wait_for(lambda e: e.kind == "waiting")
        events.wait_for(lambda e: e.kind == "done")
        for client in (silenced, other):
            client.join(WAIT)
        first = proxy.links[0]
    assert (silenced.outcome, other.outcome) == (ClientOutcome.DONE, ClientOutcome.DONE), (
        silenced.error,
        other.error,
    )
    assert first.swallowed["upstream"] > 0  # client1's update went into the hole
    assert (waiting.round, waiting.detail) == (
        1,
        "round 1: waiting for 1 more client (at most 60 s)",
    )
    assert any(
        "client1: lost the server (no message within 0.9 s); reconnecting" in r.getMessage()
        for r in caplog.records
    )
    updates = [e for e in events.all() if e.kind == "update"]
    assert updates[0].round == 1 and updates[0].peer.count("+") == 1  # both updates in round 1


@pytest.mark.slow
def test_a_population_slower_than_recv_timeout_but_above_the_floor_arrives_whole(
    server_factory, client_factory, caplog, tmp_path
):
    """A 1000-feature model (16,050 parameters): its population, 642 KB, takes about 2.5 s
    at 256 KiB/s, more than twice --recv-timeout (1 s), which the fixed whole-message
    deadline cut every time. At 256 KiB/s, far above the 8 KiB/s floor, it arrives whole."""
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((20, 1000)).astype(np.float32)
    labels = (inputs[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "test.npz", inputs=inputs, outputs=labels)
    listener, events = server_factory(
        test_data=str(tmp_path / "test.npz"), max_rounds=1, num_generations=2, recv_timeout=1.0
    )
    with FaultProxy(listener.server_address, seed=1) as proxy:
        proxy.add_toxic("bandwidth", stream="downstream", rate=256)
        client, client_events = client_factory(
            proxy.address, data=Dataset(inputs, labels), recv_timeout=1.0
        )
        client.join(WAIT)
        (link,) = proxy.links
    assert client.outcome is ClientOutcome.DONE, client.error
    model = client_events.wait_for(lambda e: e.kind == "model")
    assert model.round == 0
    assert link.forwarded["downstream"] > 2.2 * 256 * 1024  # over 2.2 s at that rate
    assert [e.round for e in events.all() if e.kind == "update"] == [1]


@pytest.mark.parametrize(
    "settings, says",
    [
        (
            {"federation": "fitness", "min_clients": 2},
            "round 1, generation 0, scores: waiting for 1 more client",
        ),
        (
            {"federation": "fitness", "secure_aggregation": True, "min_clients": 3},
            "round 1, generation 0, keys: waiting for 2 more clients",
        ),
        (
            {"secure_aggregation": True, "aggregation": "fedavg", "min_clients": 3},
            "round 1, clients ready for a secure round: waiting for 2 more clients",
        ),
    ],
    ids=["fitness", "fitness-masked", "secure-rounds"],
)
def test_a_client_waiting_on_a_generation_or_a_secure_stage_hears_why_and_stays(
    server_factory, client_factory, caplog, settings, says
):
    """Notices in fitness mode's generations and secure aggregation's stages too: a client
    alone waits for the others, told why every 0.2 s, and does not take the silence for a
    lost link (its patience is 0.6 s); once the others come, all finish."""
    listener, events = server_factory(notice_interval=0.2, round_timeout=60, **settings)
    first, first_events = client_factory(
        listener.server_address, data=CLIENT_DATA["client1"], name="first", reconnect=True
    )
    notices = iter(range(10))  # ten notices, 2 s: over three times its patience
    waiting = first_events.wait_for(
        lambda e: e.kind == "waiting" and says in e.detail and next(notices) == 9
    )
    others = [
        client_factory(listener.server_address, data=CLIENT_DATA[name], name=f"{name}-{n}")[0]
        for n, name in enumerate(["client2", "client1"][: settings["min_clients"] - 1])
    ]
    events.wait_for(lambda e: e.kind == "done")
    for client in (first, *others):
        client.join(WAIT)
        assert client.outcome is ClientOutcome.DONE, client.error
    assert waiting.detail.startswith(says)
    assert not any("lost the server" in r.getMessage() for r in caplog.records)
