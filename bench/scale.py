"""One server, many concurrent clients: errors, lost updates, reply latency, throughput and
the server's peak memory.

    python -m bench.scale [--clients 100] [--seed 0]

The server runs in its own process (``--serve``, started by this command) so its peak RSS
is its own; the clients are threads in this process (a TensorFlow process is ~540 MB, so
100 processes would not fit), connected over loopback, each holding one of the two XOR
splits. Every client trains until the server answers ``done``. The server runs the
tutorial's running average, which takes hundreds of updates to get there.

Exactly once: every request gets one reply, and once the model is frozen an update is
answered ``done`` without being counted. So of the updates the clients sent, the server
must have received all, counted all but those that arrived after the freeze, and those are
exactly one per client that had sent any update, less the one update that froze the model;
and but those answered uncounted because their client was beyond its share of the rounds
(one in K applied updates, K the connected clients: so that no client takes the rounds by
answering fast), which the server reports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

from bench.common import (
    PYTHON,
    peak_rss_mib,
    percentile,
    print_header,
    print_table,
    seconds,
    target,
)
from common.client import ClientConfig, RecvThread, connect
from common.data import CLIENT_DATA, XOR_TEST_DATA
from common.model import xor_network
from common.server import OVER_SHARE, GlobalModel, ListenThread, ServerConfig
from common.client import ClientOutcome

TIMEOUT = 110  # seconds: the benchmark must finish in under 2 minutes


def serve(clients: int, seed: int) -> int:
    """The server process: print the port, serve until every client has left, print stats."""
    counts: Counter = Counter()
    errors: list[str] = []
    all_left = threading.Event()

    def on_event(event) -> None:
        detail = event.detail if event.kind == "request" or event.detail == OVER_SHARE else ""
        counts[event.kind, detail] += 1
        if event.kind == "disconnected":
            if event.detail:
                errors.append(f"{event.peer}: {event.detail}")
            if counts["disconnected", ""] == clients:
                all_left.set()

    # The tutorial's rule: hundreds of updates before done, where the default (running-best)
    # is done within a handful of rounds; this bench is about serving them concurrently.
    config = ServerConfig.of(host="127.0.0.1", port=0, seed=seed, aggregation="running-average")
    global_model = GlobalModel(xor_network(seed), XOR_TEST_DATA, config.training, on_event=on_event)
    with ListenThread(global_model, config, on_event=on_event) as server:
        print(f"PORT {server.server_address[1]}", flush=True)
        finished = all_left.wait(TIMEOUT)
    print(
        json.dumps(
            {
                "finished": finished,
                "rounds": global_model.round,
                "accuracy": global_model.accuracy,
                "reached_target": global_model.reached_target,
                "update_events": counts["update", ""],
                "over_share": counts["judged", OVER_SHARE],
                "model_requests": counts["request", "model"],
                "echo_requests": counts["request", "echo"],
                "answered_done": counts["answered_done", ""],
                "errors": errors,
                "peak_rss_mib": peak_rss_mib(),
            }
        ),
        flush=True,
    )
    return 0


class ClientRecord:
    """One client's events with the time each arrived (called from that client's thread)."""

    def __init__(self):
        self.events: list[tuple[float, str]] = []

    def __call__(self, event) -> None:
        self.events.append((time.perf_counter(), event.kind))

    def latencies(self) -> tuple[list[float], list[float]]:
        """(echo reply latencies, update reply latencies): from sending to holding the reply."""
        echo, update, sent_at = [], [], None
        for when, kind in self.events:
            if kind == "connected":
                sent_at, first = when, True
            elif kind == "sent":
                sent_at, first = when, False
            elif kind in ("model", "done") and sent_at is not None:
                (echo if first else update).append(when - sent_at)
                sent_at = None
        return echo, update

    def updates_sent(self) -> int:
        return sum(kind == "sent" for _, kind in self.events)


@dataclass(frozen=True)
class Results:
    """What a run recorded: plain numbers, for the report and the targets."""

    clients: int  # started
    done: int  # clients that ended ``done``
    client_errors: list[str]
    sent: int  # updates the clients sent
    senders: int  # clients that sent any
    echo: list[float]  # first-reply latencies
    update: list[float]  # update-reply latencies
    seconds: float  # first connect to all done
    stats: dict  # the server process's (``serve``)

    @property
    def rounds(self) -> int:
        return self.stats.get("rounds", -1)

    @property
    def over_share(self) -> int:
        return self.stats.get("over_share", 0)

    @property
    def expected_rounds(self) -> int:
        """Every update sent but each sender's last (answered done once the model froze, less
        the one that froze it) and those answered uncounted, beyond their client's share."""
        return self.sent - self.senders + 1 - self.over_share if self.senders else 0

    @property
    def errors(self) -> int:
        return len(self.client_errors) + len(self.stats.get("errors", ["server did not report"]))


def run(clients: int, seed: int) -> Results:
    """The server process and ``clients`` client threads, to the end."""
    server = subprocess.Popen(
        [PYTHON, "-m", "bench.scale", "--serve", "--clients", str(clients), "--seed", str(seed)],
        stdout=subprocess.PIPE,
        text=True,
    )
    threads = []
    try:
        port = int(server.stdout.readline().split()[1])
        names = list(CLIENT_DATA)
        records = [ClientRecord() for _ in range(clients)]
        started = time.perf_counter()
        for index, record in enumerate(records):
            name = names[index % len(names)]
            config = ClientConfig(
                host="127.0.0.1", port=port, name=f"{name}-{index}", seed=seed * 1000 + index
            )
            threads.append(
                RecvThread(
                    config.buffer_size,
                    config.recv_timeout,
                    sock=connect("127.0.0.1", port, timeout=10),
                    data=CLIENT_DATA[name],
                    config=config,
                    on_event=record,
                )
            )
        for thread in threads:
            thread.start()
        deadline = started + TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.perf_counter()))
        elapsed = time.perf_counter() - started
        stats = json.loads(server.stdout.readline() or "{}")
    finally:
        for thread in threads:
            thread.stop()
        server.wait(30)
    echo, update = [], []
    for record in records:
        e, u = record.latencies()
        echo += e
        update += u
    return Results(
        clients,
        sum(thread.outcome is ClientOutcome.DONE for thread in threads),
        [f"{t.config.name}: {t.error}" for t in threads if t.outcome is not ClientOutcome.DONE],
        sum(record.updates_sent() for record in records),
        sum(record.updates_sent() > 0 for record in records),
        echo,
        update,
        elapsed,
        stats,
    )


def report(results: Results) -> None:
    r, stats = results, results.stats
    print_table(
        ["measure", "value"],
        [
            ["clients done / errors", f"{r.done} / {r.errors}"],
            ["final accuracy (rounds)", f"{stats.get('accuracy', 0):.2f} ({r.rounds})"],
            ["updates sent by clients", r.sent],
            ["updates received by the server", stats.get("model_requests")],
            [
                "updates counted in the global model",
                f"{r.rounds} (update events: {stats.get('update_events')})",
            ],
            ["updates answered uncounted, beyond their client's share", r.over_share],
            [
                "updates answered done after the freeze",
                f"{r.sent - r.rounds - r.over_share} (expected {max(0, r.senders - 1)})",
            ],
            ["wall time, first connect to all done", f"{r.seconds:.1f} s"],
            [
                "updates per second (counted / received)",
                f"{r.rounds / r.seconds:.1f} / "
                f"{(stats.get('model_requests') or 0) / r.seconds:.1f}",
            ],
            [
                "first reply, with building the model, p50 / p99",
                f"{seconds(percentile(r.echo or [0], 50))} / "
                f"{seconds(percentile(r.echo or [0], 99))}",
            ],
            [
                "update reply latency p50 / p99",
                f"{seconds(percentile(r.update or [0], 50))} / "
                f"{seconds(percentile(r.update or [0], 99))}",
            ],
            ["server peak RSS", f"{stats.get('peak_rss_mib', 0):.0f} MiB"],
            ["client process peak RSS", f"{peak_rss_mib():.0f} MiB"],
        ],
    )
    for error in (r.client_errors + stats.get("errors", []))[:10]:
        print(f"error: {error}")


def check_targets(results: Results) -> bool:
    r, stats = results, results.stats
    met = target(
        "clients done", f"{r.done}/{r.clients}", f"{r.clients}/{r.clients}", r.done == r.clients
    )
    met &= target("errors", str(r.errors), "0", r.errors == 0)
    lost = r.sent - (stats.get("model_requests") or 0)
    met &= target("lost updates (sent but not received)", str(lost), "0", lost == 0)
    met &= target(
        "updates counted exactly once",
        f"{r.rounds} counted, {stats.get('update_events')} update events, "
        f"{r.expected_rounds} expected",
        "all three equal",
        r.rounds == r.expected_rounds == stats.get("update_events"),
    )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.clients, args.seed)
    print_header(f"bench.scale: one server process, {args.clients} client threads over loopback")
    results = run(args.clients, args.seed)
    report(results)
    return 0 if check_targets(results) else 1


if __name__ == "__main__":
    sys.exit(main())
