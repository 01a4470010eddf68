"""Receiving one message of 1, 10 and 100 MB: our Connection versus raw loopback and the
tutorial's loop.

    python -m bench.transfer [--sizes 1 10 100] [--repeats 5] [--cap 3]

Each message is a ``model`` reply (a float32 population, the model JSON, the count), sent
with one ``sendall`` over a fresh 127.0.0.1 TCP connection while the receiver times:
- raw: ``recv_into`` a preallocated buffer of the known size (the loopback's ceiling);
- ours: ``Connection.receive`` with the default 1024-byte buffer size, validation included;
- tutorial: 1024-byte chunks, ``pickle.loads`` retried on the whole buffer (capped).
Raw and ours take turns, so their ratio is measured under the same load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import numpy as np

from bench.common import interleaved, loopback_pair, paired_ratio, print_header, print_table, target
from bench.plain_peers import DidNotFinish, plain_recv
from common import protocol
from common.model import build_xor_model
from common.protocol import Connection, Message, Subject

MB = 10**6
NUM_SOLUTIONS = 10


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


def _transfer(payload: bytes, receive) -> float:
    """Seconds from the first ``sendall`` call to the receiver holding the whole message."""
    receiver, sender = loopback_pair()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], help="MB")
    parser.add_argument(
        "--repeats", type=int, default=8, help="turns at 10 MB; 1 MB takes 4x as many, 100 MB half"
    )
    parser.add_argument(
        "--cap", type=float, default=3.0, help="seconds the tutorial's loop may take per message"
    )
    args = parser.parse_args(argv)
    print_header("bench.transfer: receiving one message, MB/s (median of interleaved runs)")

    rows, ratios, tutorial_speedup = [], {}, {}
    for size_mb in args.sizes:
        payload = model_message(size_mb * MB)
        scale = 4 if size_mb <= 1 else 1 if size_mb <= 10 else 0.5  # small ones are noisier
        repeats = max(3, round(args.repeats * scale))
        receivers = {
            "raw": lambda: _transfer(payload, raw_receive),
            "ours": lambda: _transfer(payload, our_receive),
        }
        interleaved(receivers, 1)  # warm-up: first-touch page faults, lazy imports
        times = interleaved(receivers, repeats)
        raw, ours = statistics.median(times["raw"]), statistics.median(times["ours"])
        ratios[size_mb] = paired_ratio(times["raw"], times["ours"])
        try:
            tutorial = _transfer(payload, lambda sock, _: plain_recv(sock, cap=args.cap))
            tutorial_text = f"{len(payload) / tutorial / MB:.1f}"
        except DidNotFinish:
            tutorial = args.cap  # a lower bound: it needed longer than this
            tutorial_text = f"did not finish in {args.cap:g} s"
        tutorial_speedup[size_mb] = tutorial / ours
        rows.append(
            [
                f"{len(payload) / MB:.1f} MB",
                f"{len(payload) / raw / MB:.0f}",
                f"{len(payload) / ours / MB:.0f}",
                f"{100 * ratios[size_mb]:.0f}%",
                tutorial_text,
                f"{'>' if tutorial_text.startswith('did') else ''}{tutorial_speedup[size_mb]:.0f}x",
            ]
        )
    print_table(
        ["message", "raw recv_into", "ours", "ours/raw", "tutorial loop", "ours vs tutorial"], rows
    )

    met = True
    for size_mb in (10, 100):
        if size_mb in ratios:
            met &= target(
                f"receive at {size_mb} MB vs raw loopback",
                f"{100 * ratios[size_mb]:.0f}%",
                ">= 80%",
                ratios[size_mb] >= 0.8,
            )
    if 1 in args.sizes:
        met &= target(
            "receive at 1 MB vs tutorial loop",
            f"{tutorial_speedup[1]:.0f}x",
            ">= 50x",
            tutorial_speedup[1] >= 50,
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
