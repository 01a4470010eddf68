"""Rounds and seconds from connect to ``done`` on XOR, for each kind of client and each
aggregation rule: seeded runs side by side in one process, and a few rounds at the
tutorial's settings.

    python -m bench.time_to_accuracy [--runs 20] [--tail-runs 100] [--tutorial-rounds 2]

Each run seeds the model's initial weights, the server's populations and the clients' GA,
starts a server on a free loopback port and its clients as threads, and times from the
first connect until every client has been answered ``done``; a run is done when the server
reached binary accuracy 1.0 on the four XOR samples. Rows take turns seed by seed, so drift
in the machine's load hits them alike. Which update lands first is up to the threads, so
rounds differ between two runs of the same seed. Two rows, fedavg and the plain pair with
running-best, have a tail (a few runs in a hundred take much longer): their targets are the
share of ``--tail-runs`` runs done in time, since 20 runs cannot tell such a tail from none.
The rows:

- built-in: the two XOR clients (``client1``/``client2``, two samples each), with
  ``running-best`` (the default), the tutorial's ``running-average`` (before) and ``fedavg``
  (given up after 60 rounds; its target is within 30).
- plain: two ``bench.plain_peers`` clients on the same two halves, written without common/
  and running the tutorial's own GA: PyGAD's defaults (random mutation adding U(-1, 1) to 5%
  of the genes), the population as received, 20 generations, 4 parents mating, fitness
  1 / (BCE + 1e-8). Their fitness is a batched NumPy forward pass in float32, not Keras per
  solution: the same values within 1e-7 (relative), ~9 ms a client round where Keras takes
  ~0.8 s here, which would stretch these rows to half an hour. The server gives up after
  100 rounds.
- one sample each: four built-in clients each holding one XOR sample, rounds of four
  updates, ``median`` and ``trimmed-mean``, given up after 300 rounds. Median differs from
  the mean from three clients on; trimmed-mean trims ``max(F, int(n * 0.2))`` from each end
  with F = ``--byzantine``, 1 by default, so with four it is the mean of the middle two, as
  median is (before issue 23 it trimmed none of four: the plain mean). Their target
  checks that the rules train at all, not their speed: a client holding one sample fits it
  at once, so its update carries little (docs/performance.md has the plain mean's rounds).

The tutorial's settings (the built-in GA, but clients scoring each solution with
``model.predict`` and reading with the reloading loop) cost tens of seconds a round here,
so ``--tutorial-rounds`` of them are timed (two clients at once) and a whole run estimated
as that per-round cost times the default rule's median rounds. That favours the tutorial:
its own server resends its initial population, so it never reaches 1.0 at all.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pygad

from bench.common import percentile, print_header, print_table, seconds, target, tutorial_fitness
from bench.plain_peers import plain_client, plain_recv, plain_send
from common.app import build_global_model
from common.client import ClientConfig, RecvThread, connect
from common.data import CLIENT_DATA, XOR_TEST_DATA, Dataset
from common.ga import GAConfig
from common.server import ListenThread, ServerConfig
from common.client import ClientOutcome

RUN_TIMEOUT = 60  # seconds: a run that takes this long has failed its target many times over
PLAIN_MAX_ROUNDS = 100
FEDAVG_TARGET_ROUNDS = 30
FEDAVG_MAX_ROUNDS = 2 * FEDAVG_TARGET_ROUNDS  # shows how far the tail reaches, bounded
# Regression guards set below the rates measured over many runs, not the 20/20 and
# median 8, which this code meets by luck about as often as not: the rates and how often
# each guard passes are in docs/performance.md, "fedavg and the one-sample rows".
PLAIN_PERCENT = 90
FEDAVG_PERCENT = 70
FEDAVG_MEDIAN_ROUNDS = 10
ONE_SAMPLE_MAX_ROUNDS = 300  # bounds the bench's time: these rows take ~10 ms a round
ONE_SAMPLE_DATA = {
    f"sample{i + 1}": Dataset(XOR_TEST_DATA.inputs[i : i + 1], XOR_TEST_DATA.outputs[i : i + 1])
    for i in range(4)
}


def start_server(seed: int, **settings) -> ListenThread:
    config = ServerConfig.of(host="127.0.0.1", port=0, seed=seed, **settings)
    server = ListenThread(build_global_model(config), config)  # as server.py builds it
    server.start()
    return server


class BuiltInClients:
    """Our RecvThread clients, one per data set; done when each ends ``done`` at 1.0."""

    def __init__(self, data: dict[str, Dataset]):
        self.data = data

    def start(self, address, seed: int) -> Callable[[], bool]:
        host, port = address
        threads = []
        for index, (name, data) in enumerate(self.data.items()):
            config = ClientConfig(host=host, port=port, name=name, seed=seed * 10 + index)
            threads.append(
                RecvThread(
                    config.buffer_size,
                    config.recv_timeout,
                    sock=connect(host, port, timeout=5),
                    data=data,
                    config=config,
                )
            )
            threads[-1].start()

        def finish() -> bool:
            for thread in threads:
                thread.join(RUN_TIMEOUT)
                thread.stop()
            return all(t.outcome is ClientOutcome.DONE and t.final_accuracy == 1.0 for t in threads)

        return finish


class PlainClients:
    """``bench.plain_peers.plain_client`` threads (the tutorial's GA), one per XOR half."""

    def start(self, address, seed: int) -> Callable[[], bool]:
        replies: list[dict] = []

        def run(data: Dataset, client_seed: int) -> None:
            replies.append(
                plain_client(
                    address,
                    data.inputs,
                    data.outputs,
                    batched=True,
                    seed=client_seed,
                    max_requests=PLAIN_MAX_ROUNDS + 2,
                )
            )

        threads = [
            threading.Thread(target=run, args=(data, seed * 10_000 + index * 1000))
            for index, data in enumerate(CLIENT_DATA.values())
        ]
        for thread in threads:
            thread.start()

        def finish() -> bool:
            for thread in threads:
                thread.join(RUN_TIMEOUT)
            return len(replies) == len(threads) and all(r["subject"] == "done" for r in replies)

        return finish


@dataclass(frozen=True)
class Row:
    name: str
    clients: BuiltInClients | PlainClients
    settings: dict
    # Its target is the share of runs in a tail (a few in a hundred miss), so it runs
    # --tail-runs seeds: 20 cannot tell a 2-12% tail from none (docs/performance.md).
    tail: bool = False


ROWS = (
    Row("built-in, running-best (default)", BuiltInClients(CLIENT_DATA), {}),
    Row(
        "built-in, running-average (tutorial's rule)",
        BuiltInClients(CLIENT_DATA),
        {"aggregation": "running-average"},
    ),
    Row("plain, running-best", PlainClients(), {"max_rounds": PLAIN_MAX_ROUNDS}, tail=True),
    Row(
        "plain, running-average",
        PlainClients(),
        {"aggregation": "running-average", "max_rounds": PLAIN_MAX_ROUNDS},
    ),
    Row(
        "built-in, fedavg",
        BuiltInClients(CLIENT_DATA),
        {"aggregation": "fedavg", "max_rounds": FEDAVG_MAX_ROUNDS},
        tail=True,
    ),
    Row(
        "one sample each (4), median",
        BuiltInClients(ONE_SAMPLE_DATA),
        {"aggregation": "median", "min_clients": 4, "max_rounds": ONE_SAMPLE_MAX_ROUNDS},
    ),
    Row(
        "one sample each (4), trimmed-mean",
        BuiltInClients(ONE_SAMPLE_DATA),
        {"aggregation": "trimmed-mean", "min_clients": 4, "max_rounds": ONE_SAMPLE_MAX_ROUNDS},
    ),
)


def timed_run(row: Row, seed: int) -> tuple[bool, int, float]:
    """(done at accuracy 1.0, rounds, seconds from the first connect until all were told)."""
    server = start_server(seed, **row.settings)
    try:
        started = time.perf_counter()
        finish = row.clients.start(server.server_address, seed)
        ok = finish()
        elapsed = time.perf_counter() - started
        return ok and server.global_model.reached_target, server.global_model.round, elapsed
    finally:
        server.shutdown()


def tutorial_client(address, name: str, seed: int, failures: list) -> None:
    """One round the tutorial's way: echo, read the model with the reloading loop, run the
    GA with one ``model.predict`` per solution, send the best weights, read the reply."""
    data = CLIENT_DATA[name]
    try:
        with connect(*address, timeout=5) as sock:
            plain_send(sock, "echo", {"best_model_weights_vector": None})
            reply = plain_recv(sock)["data"]
            model = keras.models.model_from_json(reply["model_json"])
            settings = GAConfig()
            ga = pygad.GA(
                num_generations=settings.num_generations,
                num_parents_mating=settings.num_parents_mating,
                initial_population=np.array(reply["population_weights"], dtype=np.float64),
                fitness_func=lambda ga, solution, index: tutorial_fitness(
                    model, solution, data.inputs, data.outputs
                ),
                mutation_percent_genes=settings.mutation_percent_genes,
                random_seed=seed,
                suppress_warnings=True,
            )
            ga.run()
            best, _, _ = ga.best_solution(pop_fitness=ga.last_generation_fitness)
            plain_send(sock, "model", {"best_model_weights_vector": best.astype(np.float32)})
            plain_recv(sock)
    except Exception as exc:  # reported in the table, not a traceback from a thread
        failures.append(f"{name}: {exc!r}")


def tutorial_rounds(seed: int, rounds: int) -> tuple[int, float, list[str]]:
    """Rounds the server counted and seconds taken by ``rounds`` tutorial-style updates."""
    server = start_server(seed)
    failures: list[str] = []
    try:
        names = [list(CLIENT_DATA)[i % len(CLIENT_DATA)] for i in range(rounds)]
        threads = [
            threading.Thread(
                target=tutorial_client, args=(server.server_address, name, seed + i, failures)
            )
            for i, name in enumerate(names)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return server.global_model.round, time.perf_counter() - started, failures
    finally:
        server.shutdown()


def spread(values: list[float], unit: Callable[[float], str]) -> str:
    return " / ".join(
        unit(v) for v in (statistics.median(values), percentile(values, 90), max(values))
    )


Run = tuple[bool, int, float]  # (done at accuracy 1.0, rounds, seconds): ``timed_run``'s


@dataclass
class Results:
    """What a run recorded: plain numbers, for the tables and the targets."""

    runs: int  # seeds of each row
    tail_runs: int  # seeds of the rows whose target is a share of runs
    rows: dict[str, list[Run]]  # by row name, one per seed
    tutorial_rounds: int  # tutorial-style updates asked for
    tutorial_counted: int  # rounds the server counted of them
    tutorial_seconds: float
    tutorial_failures: list[str]

    def done(self, name: str) -> int:
        return sum(ok for ok, _, _ in self.rows[name])

    def rounds(self, name: str) -> list[int]:
        return [n for _, n, _ in self.rows[name]]

    def times(self, name: str) -> list[float]:
        return [t for _, _, t in self.rows[name]]

    def per_round(self, name: str) -> float:
        return statistics.median(t / max(1, n) for _, n, t in self.rows[name])

    @property
    def tutorial_per_round(self) -> float:
        return self.tutorial_seconds / max(1, self.tutorial_counted)

    @property
    def tutorial_estimate(self) -> float:
        """A whole tutorial-style run: its per-round cost times the default rule's rounds."""
        return self.tutorial_per_round * statistics.median(self.rounds(ROWS[0].name))


def collect(args: argparse.Namespace) -> Results:
    def runs_of(row: Row) -> int:
        return args.tail_runs if row.tail else args.runs

    rows: dict[str, list[Run]] = {row.name: [] for row in ROWS}
    for seed in range(max(map(runs_of, ROWS))):
        for row in ROWS:
            if seed < runs_of(row):
                rows[row.name].append(timed_run(row, seed))
    counted, took, failures = tutorial_rounds(args.runs, args.tutorial_rounds)
    return Results(args.runs, args.tail_runs, rows, args.tutorial_rounds, counted, took, failures)


def report(results: Results) -> None:
    print_table(
        ["clients, rule", "done", "rounds median/p90/max", "seconds median/p90/max", "per round"],
        [
            [
                name,
                f"{results.done(name)}/{len(runs)}",
                spread(results.rounds(name), lambda v: f"{v:g}"),
                spread(results.times(name), lambda v: f"{v:.2f}"),
                seconds(results.per_round(name)),
            ]
            for name, runs in results.rows.items()
        ],
    )
    default = ROWS[0].name
    median_rounds = statistics.median(results.rounds(default))
    print_table(
        ["settings", "rounds", "seconds", "per round"],
        [
            [
                "built-in, running-best",
                f"{median_rounds:g} (median)",
                f"{statistics.median(results.times(default)):.2f} (median)",
                seconds(results.per_round(default)),
            ],
            [
                "tutorial (estimated)",
                f"{median_rounds:g} (as above)",
                f"{results.tutorial_estimate:.0f} (per round x rounds)",
                f"{seconds(results.tutorial_per_round)} ({results.tutorial_counted} rounds "
                f"timed in {results.tutorial_seconds:.1f} s)",
            ],
        ],
    )
    for failure in results.tutorial_failures:
        print(f"tutorial-style client failed: {failure}")


def check_targets(results: Results) -> bool:
    runs, tail_runs = results.runs, results.tail_runs
    default = ROWS[0].name
    default_done, default_times = results.done(default), results.times(default)
    median_time = statistics.median(default_times)
    met = target(
        "built-in, running-best: runs reaching accuracy 1.0",
        f"{default_done}/{runs}",
        f"{runs}/{runs}",
        default_done == runs,
    )
    met &= target(
        "built-in, running-best: median seconds connect to done",
        f"{median_time:.2f} s",
        "< 1 s",
        median_time < 1,
    )
    met &= target(
        "built-in, running-best: slowest run",
        f"{max(default_times):.2f} s",
        "< 10 s",
        max(default_times) < 10,
    )
    tutorial_done, tutorial_times = results.done(ROWS[1].name), results.times(ROWS[1].name)
    met &= target(
        "built-in, running-average (the tutorial's rule): runs reaching accuracy 1.0",
        f"{tutorial_done}/{runs}",
        f"{runs}/{runs}",
        tutorial_done == runs,
    )
    met &= target(
        "built-in, running-average: median seconds connect to done",
        f"{statistics.median(tutorial_times):.2f} s",
        "< 1 s",
        statistics.median(tutorial_times) < 1,
    )
    plain_done = results.done("plain, running-best")
    met &= target(
        f"plain (tutorial's GA), running-best: runs done within {PLAIN_MAX_ROUNDS} rounds",
        f"{plain_done}/{tail_runs}",
        f">= {PLAIN_PERCENT}% of {tail_runs}",
        100 * plain_done >= PLAIN_PERCENT * tail_runs,
    )
    fedavg = "built-in, fedavg"
    within = sum(ok and n <= FEDAVG_TARGET_ROUNDS for ok, n, _ in results.rows[fedavg])
    met &= target(
        f"built-in, fedavg: runs done within {FEDAVG_TARGET_ROUNDS} rounds",
        f"{within}/{tail_runs}",
        f">= {FEDAVG_PERCENT}% of {tail_runs}",
        100 * within >= FEDAVG_PERCENT * tail_runs,
    )
    met &= target(
        "built-in, fedavg: median rounds",
        f"{statistics.median(results.rounds(fedavg)):g}",
        f"<= {FEDAVG_MEDIAN_ROUNDS}",
        statistics.median(results.rounds(fedavg)) <= FEDAVG_MEDIAN_ROUNDS,
    )
    for rule in ("median", "trimmed-mean"):
        done = results.done(f"one sample each (4), {rule}")
        met &= target(
            f"four one-sample clients, {rule}: runs done within {ONE_SAMPLE_MAX_ROUNDS} rounds",
            f"{done}/{runs}",
            f">= {runs / 4:g}/{runs}",
            done >= runs / 4,
        )
    speedup = results.tutorial_estimate / median_time
    met &= target(
        "speed-up over the tutorial's settings",
        f"{speedup:.0f}x",
        ">= 20x",
        speedup >= 20
        and not results.tutorial_failures
        and results.tutorial_counted == results.tutorial_rounds,
    )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--tail-runs",
        type=int,
        default=100,
        help="runs of the rows whose target is a share of runs (fedavg, plain running-best)",
    )
    parser.add_argument(
        "--tutorial-rounds",
        type=int,
        default=2,
        help="tutorial-style updates to time, run at once (2 = both clients)",
    )
    args = parser.parse_args(argv)
    print_header(
        f"bench.time_to_accuracy: {args.runs} seeded runs per row ({args.tail_runs} for fedavg "
        "and plain running-best), XOR, connect to done"
    )
    results = collect(args)
    report(results)
    return 0 if check_targets(results) else 1


if __name__ == "__main__":
    sys.exit(main())
