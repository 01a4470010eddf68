"""Receiving one message of 1, 10 and 100 MB: our Connection versus raw loopback and the
tutorial's loop; and over slow links, a 784-128-10 model's population and a client training
that model.

    python -m bench.transfer [--sizes 1 10 100] [--repeats 5] [--cap 3] [--slow-links 1000 256]

Each message is a ``model`` reply (a float32 population, the model JSON, the count), sent
with one ``sendall`` over a fresh 127.0.0.1 TCP connection while the receiver times:
- raw: ``recv_into`` a preallocated buffer of the known size (the loopback's ceiling);
- ours: ``Connection.receive`` with the default 1024-byte buffer size, validation included;
- tutorial: 1024-byte chunks, ``pickle.loads`` retried on the whole buffer (capped).
Raw and ours take turns, so their ratio is measured under the same load.

Slow links go through the test suite's fault proxy (tests/faults/proxy.py) with its
``bandwidth`` toxic at each ``--slow-links`` rate (kbit/s; none: skip them, about 3 minutes
at the defaults): the population of a 784-128-10 Dense model (101,770 parameters, 10 members,
4.07 MB) received by ``Connection.receive`` with the default deadlines, against size / rate;
then, at the first rate both ways, our client trains that model for one round with a server.
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import interleaved, loopback_pair, paired_ratio, print_header, print_table, target
from bench.plain_peers import DidNotFinish, plain_recv
from common import protocol
from common.app import build_global_model
from common.client import ClientConfig, RecvThread, connect
from common.data import Dataset
from common.model import build_xor_model
from common.modelspec import dense_chain_json
from common.protocol import Connection, Message, Subject
from common.server import ListenThread, ServerConfig
from common.client import ClientOutcome
from tests.faults.proxy import STREAMS, FaultProxy

MB = 10**6
NUM_SOLUTIONS = 10
MNIST_LAYERS = (784, [(128, "relu"), (10, "softmax")])  # 101,770 parameters
KBIT = 1000 / 8  # bytes per second in a kbit/s
# Ours over the tutorial's loop at 1 MB, turn by turn: set under the spread measured
# (docs/performance.md, Transfer).
TUTORIAL_SPEEDUP = 10


def model_message(size: int) -> bytes:
    """An encoded ``model`` reply of about ``size`` bytes."""
    num_params = max(1, size // (4 * NUM_SOLUTIONS))
    population = np.random.default_rng(0).standard_normal(
        (NUM_SOLUTIONS, num_params), dtype=np.float32
    )
    return protocol.encode(
        Message(
            Subject.MODEL,
            {
                "population_weights": population,
                "model_json": build_xor_model().to_json(),
                "num_solutions": NUM_SOLUTIONS,
                "round": 1,
                "accuracy": 0.5,
            },
        )
    )


def _transfer(payload: bytes, receive, pair=loopback_pair) -> float:
    """Seconds from the first ``sendall`` call to the receiver holding the whole message,
    over a (receiver, sender) ``pair`` of connected sockets."""
    receiver, sender = pair()
    go = threading.Event()

    def send():
        go.wait()
        try:
            sender.sendall(payload)
        except OSError:
            pass  # a capped receiver hung up early

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        start = time.perf_counter()
        go.set()
        receive(receiver, len(payload))
        return time.perf_counter() - start
    finally:
        receiver.close()
        sender.close()
        thread.join(10)


def raw_receive(sock, size: int) -> None:
    buffer = bytearray(size)
    view, have = memoryview(buffer), 0
    while have < size:
        n = sock.recv_into(view[have:])
        if n == 0:
            raise ConnectionError("sender closed early")
        have += n


def our_receive(sock, size: int) -> None:
    connection = Connection(sock, recv_timeout=60, max_message_bytes=size + 2**20)
    message = connection.receive(protocol.SERVER_TO_CLIENT)
    assert message.subject is Subject.MODEL


def population_message() -> bytes:
    """A server's ``model`` reply for the 784-128-10 model, as it sends it."""
    model_json = dense_chain_json(*MNIST_LAYERS)
    population = np.random.default_rng(0).standard_normal((NUM_SOLUTIONS, 101_770), np.float32)
    request = protocol.ModelRequest(model_json, population, round=0, accuracy=0.1)
    return protocol.encode(request.to_message())


def through_a_slow_link(payload: bytes, kbit: float) -> float:
    """Seconds ``Connection.receive`` (the default deadlines) takes for ``payload`` sent
    through the proxy at ``kbit`` kbit/s."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        with FaultProxy(listening.getsockname()) as proxy:
            proxy.add_toxic("bandwidth", stream="downstream", rate=kbit * KBIT / 1024)

            def through_proxy() -> tuple[socket.socket, socket.socket]:
                receiver = socket.create_connection(proxy.address)
                return receiver, listening.accept()[0]

            return _transfer(payload, our_receive, through_proxy)


def train_over_a_slow_link(kbit: float) -> tuple[bool, float, str]:
    """A server with the 784-128-10 model (one round, two generations) and our client
    through the proxy at ``kbit`` kbit/s both ways: (the round applied the client's update,
    seconds, what the client said)."""
    rng = np.random.default_rng(0)
    inputs = rng.random((300, 784), np.float32)
    labels = rng.integers(0, 10, 300)
    with tempfile.TemporaryDirectory() as folder:
        model, test = Path(folder, "model.json"), Path(folder, "test.npz")
        model.write_text(dense_chain_json(*MNIST_LAYERS))
        np.savez(test, inputs=inputs[:100], outputs=labels[:100])
        config = ServerConfig.of(
            host="127.0.0.1",
            port=0,
            model=str(model),
            test_data=str(test),
            max_rounds=1,
            num_generations=2,
            seed=0,
        )
        rounds: list[int] = []
        global_model = build_global_model(
            config, lambda e: rounds.append(e.round) if e.kind == "update" else None
        )
    server = ListenThread(global_model, config)
    with server, FaultProxy(server.server_address) as proxy:
        for stream in STREAMS:
            proxy.add_toxic("bandwidth", stream=stream, rate=kbit * KBIT / 1024)
        start = time.perf_counter()
        client = RecvThread(
            sock=connect(*proxy.address, timeout=10),
            data=Dataset(inputs[100:], labels[100:]),
            config=ClientConfig(host=proxy.address[0], port=proxy.address[1], name="slow"),
        )
        client.start()
        client.join(600)
        client.stop()
        seconds = time.perf_counter() - start
    said = client.error or f"outcome {client.outcome}"
    return client.outcome is ClientOutcome.DONE and rounds == [1], seconds, said


@dataclass(frozen=True)
class Received:
    """One message size: seconds per turn of each receiver. Raw and ours take turns; then
    ours and the tutorial's loop take turns (``beside_tutorial`` is ours in those turns), as
    the loop's churn of growing buffers slows whatever runs after it in the process. An
    empty ``tutorial``: its loop did not finish within ``cap`` seconds, and was timed once."""

    size_mb: int
    nbytes: int
    raw: list[float]
    ours: list[float]
    tutorial: list[float]
    beside_tutorial: list[float]
    cap: float

    @property
    def vs_raw(self) -> float:
        """Ours over raw throughput: the median of the turns' ratios."""
        return paired_ratio(self.raw, self.ours)

    @property
    def vs_tutorial(self) -> float:
        """How many times faster ours is than the tutorial's loop: the median of the turns'
        ratios, or where that loop never finished, a lower bound (its cap over our median)."""
        if self.tutorial:
            return paired_ratio(self.tutorial, self.beside_tutorial)
        return self.cap / statistics.median(self.ours)


@dataclass(frozen=True)
class SlowLink:
    kbit: float
    nbytes: int
    took: float  # seconds; inf if the receive was cut
    received: str  # what the table says


@dataclass(frozen=True)
class Trained:
    kbit: float
    trained: bool  # the round applied the client's update
    seconds: float
    said: str


def receive(size_mb: int, repeats: int, cap: float) -> Received:
    """Raw and ours receiving one message of ``size_mb``, taking turns; then ours and the
    tutorial's loop, taking turns, if that loop finishes within ``cap`` seconds."""
    payload = model_message(size_mb * MB)
    scale = 4 if size_mb <= 1 else 1 if size_mb <= 10 else 0.5  # small ones are noisier
    turns = max(3, round(repeats * scale))
    receivers = {
        "raw": lambda: _transfer(payload, raw_receive),
        "ours": lambda: _transfer(payload, our_receive),
    }
    interleaved(receivers, 1)  # warm-up: first-touch page faults, lazy imports
    times = interleaved(receivers, turns)
    tutorial = {
        "tutorial": lambda: _transfer(payload, lambda sock, _: plain_recv(sock, cap=cap)),
        "ours": receivers["ours"],
    }
    try:
        interleaved(tutorial, 1)  # warm-up, and past its cap the first time: no turns
        beside = interleaved(tutorial, turns)
    except DidNotFinish:
        beside = {"tutorial": [], "ours": []}
    return Received(
        size_mb, len(payload), times["raw"], times["ours"], beside["tutorial"], beside["ours"], cap
    )


def mb_per_second(nbytes: int, times: list[float]) -> float:
    return nbytes / statistics.median(times) / MB


def receive_table(received: list[Received]) -> None:
    rows = []
    for r in received:
        rows.append(
            [
                f"{r.nbytes / MB:.1f} MB",
                f"{mb_per_second(r.nbytes, r.raw):.0f}",
                f"{mb_per_second(r.nbytes, r.ours):.0f}",
                f"{100 * r.vs_raw:.0f}%",
                f"{mb_per_second(r.nbytes, r.tutorial):.1f}"
                if r.tutorial
                else f"did not finish in {r.cap:g} s",
                f"{'' if r.tutorial else '>'}{r.vs_tutorial:.0f}x",
            ]
        )
    print_table(
        ["message", "raw recv_into", "ours", "ours/raw", "tutorial loop", "ours vs tutorial"], rows
    )


def slow_links(rates: list[float]) -> tuple[list[SlowLink], Trained]:
    """The population through the proxy at each rate, then a client training at the first."""
    payload = population_message()
    links = []
    for kbit in rates:
        try:
            took = through_a_slow_link(payload, kbit)
            received = f"{took:.1f} s"
        except protocol.ProtocolError as exc:
            took, received = float("inf"), f"cut: {exc}"
        links.append(SlowLink(kbit, len(payload), took, received))
    trained = Trained(rates[0], *train_over_a_slow_link(rates[0]))
    return links, trained


def slow_link_table(links: list[SlowLink], trained: Trained) -> None:
    print_table(
        ["link", "population", "size / rate", "received by ours"],
        [
            [
                f"{link.kbit:g} kbit/s",
                f"{link.nbytes / MB:.2f} MB",
                f"{link.nbytes / (link.kbit * KBIT):.1f} s",
                link.received,
            ]
            for link in links
        ],
    )
    print(
        f"a client at {trained.kbit:g} kbit/s both ways, 784-128-10, one round: {trained.said} "
        f"in {trained.seconds:.0f} s"
    )


def check_targets(
    received: Sequence[Received], links: Sequence[SlowLink] = (), trained: Trained | None = None
) -> bool:
    """The TARGET lines of what was measured; True when every one is met."""
    met = True
    by_size = {r.size_mb: r for r in received}
    for size_mb in (10, 100):
        if size_mb in by_size:
            ratio = by_size[size_mb].vs_raw
            met &= target(
                f"receive at {size_mb} MB vs raw loopback",
                f"{100 * ratio:.0f}%",
                ">= 80%",
                ratio >= 0.8,
            )
    if 1 in by_size:
        speedup = by_size[1].vs_tutorial
        met &= target(
            "receive at 1 MB vs tutorial loop",
            f"{speedup:.0f}x",
            f">= {TUTORIAL_SPEEDUP}x",
            speedup >= TUTORIAL_SPEEDUP,
        )
    for link in links:
        expected = link.nbytes / (link.kbit * KBIT)
        met &= target(
            f"784-128-10 population at {link.kbit:g} kbit/s received whole within 10% of size / rate",
            link.received,
            f"{expected * 0.9:.1f}-{expected * 1.1:.1f} s",
            abs(link.took - expected) <= 0.1 * expected,
        )
    if trained is not None:
        met &= target(
            f"a client on a {trained.kbit:g} kbit/s link trains the 784-128-10 model",
            "its update applied in round 1" if trained.trained else f"no round ({trained.said})",
            "its update applied in round 1",
            trained.trained,
        )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], help="MB")
    parser.add_argument(
        "--repeats", type=int, default=8, help="turns at 10 MB; 1 MB takes 4x as many, 100 MB half"
    )
    parser.add_argument(
        "--cap", type=float, default=3.0, help="seconds the tutorial's loop may take per message"
    )
    parser.add_argument(
        "--slow-links",
        type=float,
        nargs="*",
        default=[1000, 256],
        metavar="KBIT",
        help="link rates in kbit/s for the slow-link rows; none skips them (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("common").setLevel(logging.ERROR)  # the slow links' server and client
    print_header("bench.transfer: receiving one message, MB/s (median of interleaved runs)")
    received = [receive(size_mb, args.repeats, args.cap) for size_mb in args.sizes]
    receive_table(received)
    links, trained = slow_links(args.slow_links) if args.slow_links else ([], None)
    if trained is not None:
        slow_link_table(links, trained)
    return 0 if check_targets(received, links, trained) else 1


if __name__ == "__main__":
    sys.exit(main())
