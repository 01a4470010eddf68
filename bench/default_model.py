"""The model a server trains when given test data but no model file, on data of two features
and two classes: the tutorial's 2-4-2 XOR model (the default before) against the Dense model
sized to the data (2-16-2, the default now), in both federations.

    python -m bench.default_model [--runs 20]

Two offline sets where a straight line is not enough, made by scikit-learn: two moons
(``make_moons``, noise 0.2) and two circles (``make_circles``, noise 0.1, factor 0.5), 800
samples each. Each is split 150 for the server's test, 150 held out (never seen by the
server or a client: the accuracy reported), and 500 for two clients of different label
mixes (75% of one class at one, 75% of the other at the other). A run seeds the model and
the GA, trains until the server's test accuracy reaches 0.95 or 40 rounds passed, and scores
the best global model on the held-out part. Rows take turns seed by seed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import make_circles, make_moons

from bench.common import held_out_se, print_header, print_table, target
from common.app import build_global_model
from common.client import ClientConfig, RecvThread, connect
from common.data import Dataset, fit_to_model
from common.fitness_federation import FITNESS, WEIGHTS
from common.model import xor_model_json
from common.server import ListenThread, ServerConfig
from common.split import save_dataset

TARGET_ACCURACY = 0.95
MAX_ROUNDS = 40
RUN_TIMEOUT = 120  # seconds: a run takes a few here
HELD_OUT = 150  # samples of each set that no server or client sees
SETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "moons": lambda: make_moons(800, noise=0.2, random_state=3),
    "circles": lambda: make_circles(800, noise=0.1, factor=0.5, random_state=3),
}
MODELS = ("XOR 2-4-2 (before)", "Dense 2-16-2 (default)")
# Of each set and federation, the default model's runs that reach the target, at least.
REACHED_SHARE = 0.9


@dataclass(frozen=True)
class Split:
    test_file: str  # the server's test data, as a user gives it
    held_out: Dataset
    clients: dict[str, Dataset]


def split(name: str, folder: Path) -> Split:
    inputs, labels = SETS[name]()
    inputs = inputs.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(labels))
    test, held_out, rest = order[:150], order[150 : 150 + HELD_OUT], order[150 + HELD_OUT :]
    # Different label mixes: site1 keeps 3 in 4 of class 0's samples, site2 of class 1's.
    to_site1 = (labels[rest] == 0) == (np.arange(len(rest)) % 4 != 0)
    save_dataset(folder / f"{name}.npz", Dataset(inputs[test], labels[test]), num_classes=2)
    return Split(
        str(folder / f"{name}.npz"),
        Dataset(inputs[held_out], labels[held_out]),
        {
            "site1": Dataset(inputs[rest[to_site1]], labels[rest[to_site1]]),
            "site2": Dataset(inputs[rest[~to_site1]], labels[rest[~to_site1]]),
        },
    )


@dataclass(frozen=True)
class Run:
    data: str
    federation: str
    model: str
    seed: int
    reached: bool
    rounds: int
    held_out: float  # the best global model's accuracy on the held-out part


def run(data: Split, name: str, federation: str, model: str, seed: int, xor_file: str) -> Run:
    """One run: a server as server.py builds it, its two clients as threads."""
    config = ServerConfig.of(
        host="127.0.0.1",
        port=0,
        seed=seed,
        test_data=data.test_file,
        model=xor_file if model == MODELS[0] else None,
        federation=federation,
        target_accuracy=TARGET_ACCURACY,
        max_rounds=MAX_ROUNDS,
    )
    global_model = build_global_model(config)
    server = ListenThread(global_model, config)
    server.start()
    try:
        host, port = server.server_address
        clients = []
        for index, (site, site_data) in enumerate(data.clients.items()):
            client = ClientConfig(host=host, port=port, name=site, seed=seed * 10 + index)
            sock = connect(host, port, timeout=5)
            clients.append(
                RecvThread(
                    client.buffer_size,
                    client.recv_timeout,
                    sock=sock,
                    data=site_data,
                    config=client,
                )
            )
            clients[-1].start()
        for client in clients:
            client.join(RUN_TIMEOUT)
            client.stop()
    finally:
        server.shutdown()
    forward = global_model.forward
    held_out = fit_to_model(data.held_out, forward.num_features, forward.num_outputs, name)
    accuracy = forward.accuracy(global_model.best.vector, held_out.inputs, held_out.outputs)
    return Run(
        name, federation, model, seed, global_model.reached_target, global_model.round, accuracy
    )


def collect(runs: int) -> list[Run]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        xor_file = str(Path(folder, "xor.json"))
        Path(xor_file).write_text(xor_model_json())
        splits = {name: split(name, Path(folder)) for name in SETS}
        for seed in range(1, runs + 1):
            for name, data in splits.items():
                for federation in (FITNESS, WEIGHTS):
                    for model in MODELS:
                        results.append(run(data, name, federation, model, seed, xor_file))
    return results


def cells(results: list[Run]) -> dict[tuple[str, str, str], list[Run]]:
    grouped: dict[tuple[str, str, str], list[Run]] = {}
    for result in results:
        grouped.setdefault((result.data, result.federation, result.model), []).append(result)
    return grouped


def report(results: list[Run]) -> None:
    print_header(f"bench.default_model: two features, two classes, {MAX_ROUNDS} rounds at most")
    rows = []
    for (data, federation, model), runs in cells(results).items():
        reached = [r.rounds for r in runs if r.reached]
        rows.append(
            (
                data,
                federation,
                model,
                f"{len(reached)}/{len(runs)}",
                f"{statistics.median(reached):g}" if reached else "-",
                f"{statistics.median(r.held_out for r in runs):.3f}",
                f"{min(r.held_out for r in runs):.3f}",
            )
        )
    print_table(
        (
            "data",
            "federation",
            "model",
            f"reached {TARGET_ACCURACY}",
            "median rounds",
            "held-out median",
            "held-out worst",
        ),
        rows,
    )


def check_targets(results: list[Run]) -> bool:
    """Of each set and federation: the default model reaches the target in at least
    REACHED_SHARE of the runs, and scores no lower held out (median) than the XOR model, by
    more than the held-out part can tell apart."""
    met = True
    grouped = cells(results)
    for data in SETS:
        for federation in (FITNESS, WEIGHTS):
            xor, dense = (grouped[data, federation, model] for model in MODELS)
            reached = sum(r.reached for r in dense)
            met &= target(
                f"{data}, {federation}: the default model's runs reaching {TARGET_ACCURACY}",
                f"{reached}/{len(dense)} (the XOR model's {sum(r.reached for r in xor)})",
                f">= {REACHED_SHARE:.0%}",
                reached >= REACHED_SHARE * len(dense),
            )
            ours, before = (statistics.median(r.held_out for r in runs) for runs in (dense, xor))
            noise = held_out_se(before, HELD_OUT)
            met &= target(
                f"{data}, {federation}: held-out accuracy, median",
                f"{ours:.3f} (the XOR model's {before:.3f})",
                f"at least the XOR model's less one held-out standard error ({noise:.3f})",
                ours >= before - noise,
            )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="seeds per row")
    args = parser.parse_args(argv)
    logging.getLogger("common").setLevel(logging.ERROR)  # a run that gives up is a result here
    results = collect(args.runs)
    report(results)
    return 0 if check_targets(results) else 1


if __name__ == "__main__":
    sys.exit(main())
