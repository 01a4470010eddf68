"""Rounds and seconds from connect to ``done``: 20 seeded runs of a server and the two XOR
clients in one process, side by side with a few rounds at the tutorial's settings.

    python -m bench.time_to_accuracy [--runs 20] [--tutorial-rounds 2]

Each run seeds the model's initial weights, the server's populations and the clients' GA,
starts a server on a free loopback port and both clients as threads, and times from the
first connect until both clients have been answered ``done`` (binary accuracy 1.0).

The tutorial's settings are the same server and GA but clients that score each solution
with ``model.predict`` and read with the 1024-byte reloading loop. One such round takes
tens of seconds here, so the benchmark times ``--tutorial-rounds`` of them (two clients at
once, as in the runs) and estimates a whole run as that per-round cost times our median
rounds. That favours the tutorial: its own server resends its initial population, so it
never reaches 1.0 at all.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import keras
import numpy as np
import pygad

from bench.common import (percentile, print_header, print_table, seconds, target,
                          tutorial_fitness, tutorial_recv, tutorial_send)
from common.client import ClientConfig, RecvThread, connect
from common.data import CLIENT_DATA, XOR_TEST_DATA
from common.ga import GAConfig
from common.model import xor_network
from common.server import GlobalModel, ListenThread, ServerConfig

RUN_TIMEOUT = 60  # seconds: a run that takes this long has failed its target many times over


def start_server(seed: int) -> ListenThread:
    config = ServerConfig(host="127.0.0.1", port=0, seed=seed)
    global_model = GlobalModel(xor_network(seed), XOR_TEST_DATA,
                               num_solutions=config.num_solutions, seed=seed)
    server = ListenThread(global_model, config)
    server.start()
    return server


def our_run(seed: int) -> tuple[bool, int, float]:
    """(every client done at accuracy 1.0, rounds, seconds from connect to done)."""
    server = start_server(seed)
    try:
        host, port = server.server_address
        started = time.perf_counter()
        clients = []
        for index, name in enumerate(CLIENT_DATA):
            config = ClientConfig(host=host, port=port, name=name, seed=seed * 10 + index)
            clients.append(RecvThread(config.buffer_size, config.recv_timeout,
                                      sock=connect(host, port, timeout=5),
                                      data=CLIENT_DATA[name], config=config))
            clients[-1].start()
        for client in clients:
            client.join(RUN_TIMEOUT)
        elapsed = time.perf_counter() - started
        ok = all(c.outcome == "done" and c.final_accuracy == 1.0 for c in clients)
        return ok, server.global_model.round, elapsed
    finally:
        for client in clients:
            client.stop()
        server.shutdown()


def tutorial_client(address, name: str, seed: int, failures: list) -> None:
    """One round the tutorial's way: echo, read the model with the reloading loop, run the
    GA with one ``model.predict`` per solution, send the best weights, read the reply."""
    data = CLIENT_DATA[name]
    try:
        with connect(*address, timeout=5) as sock:
            tutorial_send(sock, "echo", {"best_model_weights_vector": None})
            reply = tutorial_recv(sock)["data"]
            model = keras.models.model_from_json(reply["model_json"])
            settings = GAConfig()
            ga = pygad.GA(
                num_generations=settings.num_generations,
                num_parents_mating=settings.num_parents_mating,
                initial_population=np.array(reply["population_weights"], dtype=np.float64),
                fitness_func=lambda ga, solution, index: tutorial_fitness(
                    model, solution, data.inputs, data.outputs),
                mutation_percent_genes=settings.mutation_percent_genes,
                random_seed=seed, suppress_warnings=True)
            ga.run()
            best, _, _ = ga.best_solution(pop_fitness=ga.last_generation_fitness)
            tutorial_send(sock, "model", {"best_model_weights_vector": best.astype(np.float32)})
            tutorial_recv(sock)
    except Exception as exc:  # reported in the table, not a traceback from a thread
        failures.append(f"{name}: {exc!r}")


def tutorial_rounds(seed: int, rounds: int) -> tuple[int, float, list[str]]:
    """Rounds the server counted and seconds taken by ``rounds`` tutorial-style updates."""
    server = start_server(seed)
    failures: list[str] = []
    try:
        names = [list(CLIENT_DATA)[i % len(CLIENT_DATA)] for i in range(rounds)]
        threads = [threading.Thread(target=tutorial_client,
                                    args=(server.server_address, name, seed + i, failures))
                   for i, name in enumerate(names)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return server.global_model.round, time.perf_counter() - started, failures
    finally:
        server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tutorial-rounds", type=int, default=2,
                        help="tutorial-style updates to time, run at once (2 = both clients)")
    args = parser.parse_args(argv)
    print_header(f"bench.time_to_accuracy: {args.runs} seeded runs, server + 2 clients, "
                 "connect to done")

    runs = [our_run(seed) for seed in range(args.runs)]
    done = [r for r in runs if r[0]]
    rounds = [r[1] for r in runs]
    times = [r[2] for r in runs]
    per_round = statistics.median(t / max(1, n) for _, n, t in runs)
    print_table(["seed", "done", "rounds", "seconds"],
                [[seed, "yes" if ok else "NO", n, f"{t:.2f}"]
                 for seed, (ok, n, t) in enumerate(runs)])

    counted, tutorial_time, failures = tutorial_rounds(args.runs, args.tutorial_rounds)
    tutorial_per_round = tutorial_time / max(1, counted)
    median_rounds, median_time = statistics.median(rounds), statistics.median(times)
    estimate = tutorial_per_round * median_rounds
    speedup = estimate / median_time
    print_table(["settings", "rounds median/p90/max", "seconds median/p90/max", "per round"], [
        ["ours", f"{median_rounds:g} / {percentile(rounds, 90):.1f} / {max(rounds)}",
         f"{median_time:.2f} / {percentile(times, 90):.2f} / {max(times):.2f}", seconds(per_round)],
        ["tutorial (estimated)", f"{median_rounds:g} (ours)", f"{estimate:.0f} (per round x rounds)",
         f"{seconds(tutorial_per_round)} ({counted} rounds timed in {tutorial_time:.1f} s)"],
    ])
    for failure in failures:
        print(f"tutorial-style client failed: {failure}")

    met = target("runs reaching accuracy 1.0", f"{len(done)}/{len(runs)}", f"{len(runs)}/{len(runs)}",
                 len(done) == len(runs))
    met &= target("median seconds connect to done", f"{median_time:.2f} s", "< 1 s", median_time < 1)
    met &= target("slowest run", f"{max(times):.2f} s", "< 10 s", max(times) < 10)
    met &= target("speed-up over the tutorial's settings", f"{speedup:.0f}x", ">= 20x",
                  speedup >= 20 and not failures and counted == args.tutorial_rounds)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
