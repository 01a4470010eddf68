"""Beyond XOR: fedga on real data (scikit-learn's breast cancer, wine and digits, a synthetic
set and MNIST-1D), each run as a user runs it, beside the references on the same split and
what users pick instead (Flower's FedAvg with Keras ``fit``), measured side by side in one run.

    python -m bench.real_data [--data-sets digits] [--seeds 1] [--rows fedavg flower-keras]
        [--rounds N]

Per data set and split seed, ``python -m common.datasets NAME --clients 3`` splits the set
60/15/25 (stratified, standardised on the training part): the 60% goes to 3 clients
(Dirichlet 0.5, or IID), the 15% is the server's ``--test-data`` (what it evaluates, keeps
its best model on and stops on), the 25% is held out: the bench scores every saved model on
it, and the server never sees it. Rows, on the same split and network (``common.datasets``'
Dense(hidden, relu), then Dense(k, softmax): 16 hidden units, 32 for digits and synthetic,
100 for MNIST-1D):

- references: logistic regression, and the network trained centrally with Keras Adam
  (learning rate 0.001, batch 32) with early stopping on the server's 15% (its loss, patience
  20 epochs, min_delta 0.001, best weights restored);
- fedga as a user runs it: ``server.py --headless`` and 3 ``client.py --headless --data``
  processes over loopback, the GA's default settings, with the tutorial's operators
  (before) and the new ones, ``--aggregation fedavg --min-clients 3``, the tutorial's
  running average or running-best (for those two a round is one client's update, so their
  round count is 3x);
- the same GA on Flower's simulation (``python -m common.flower simulate --nodes 3``);
- Flower's FedAvg with Keras ``fit`` on each node (``bench.flower_keras``), settings in the
  row's name.

Two federations (issue 22), on synthetic, MNIST-1D and digits, where clients' label mixes
differ and the hidden layer matters (``Setup.data_sets`` says which rows run where by default):

- ``central``, the central GA: weights mode, ``--aggregation fedavg --min-clients 1``, one
  ``client.py`` holding all three clients' training data (``all.npz``). Server and client get
  the split seed as ``--seed``, as the fitness row's server does: weights mode with one client
  seeded as the server is then the very GA fitness mode runs, bit for bit
  (tests/test_fitness_federation.py), so the two rows differ only in how the clients'
  data is reached, and any gap between them is a fault, not luck;
- ``fedavg``: weights mode, 3 clients (the row above);
- ``fedadam``: weights mode with the best server optimiser measured on digits, fedadam at a
  server learning rate of 0.03 (``Setup.server_flags``);
- ``fitness``: ``--federation fitness --min-clients 3``: the GA on the server, clients send
  each member's loss every generation;
- ``central-tuned`` and ``fitness-tuned``, on synthetic and MNIST-1D: the same two with the GA
  tuned (``GA_TUNED``: 30 members, 1% of genes mutated; one split's search is beside it), the
  fitness row that is held against Flower's FedAvg;
- ``flower-keras-60``: Flower's FedAvg with Keras ``fit`` at issue 22's settings (Adam 0.01,
  batch 32, 1 local epoch) for 60 rounds (``flower-keras``, the same for 30 rounds, stays on
  the earlier sets so their documented numbers compare); each split's score is the median of
  ``KERAS_REPEATS`` runs, as Flower's runs of one split and seed differ (TensorFlow's
  threads, Ray's scheduling; docs/performance.md), where fedga's repeat to the bit;
- ``flower-keras-tuned``: the best of a grid of learning rates x local epochs (``KERAS_GRID``),
  chosen per split by the saved model's accuracy on the server's test data (never the held-out
  part), its held-out accuracy reported, and the grid printed. The grid's point at issue 22's
  settings is the ``flower-keras-60`` run itself, not run twice.

The central and fitness rows run ``ROUNDS`` rounds of ``--num-generations`` (50) generations each:
equal generations (400 tuned rounds were measured too, docs/performance.md: no held-out gain).
Their targets: each fitness row within a point of its central GA (held-out, median of the
seeds), the tuned one at least Flower's FedAvg at issue 22's settings on synthetic and
MNIST-1D less one standard error of a held-out accuracy (``held_out_se``: two runs closer
than that are not told apart by the held-out set), and on digits 0.95 on the server's test
data within 15 s of launch; each client's bytes sent in the whole run (the ``sent N bytes to the server in all`` line it logs at exit) are printed beside
weights mode's.

How runs end, and why. A run must leave its best model, and its speed must be read off the
same run: so no run stops at the target. Every run has a fixed number of rounds
(``--max-rounds``), as Flower's ``FedAvg.start`` does, chosen past where it stops improving
here, and the saved model is the best (highest accuracy on the server's test data, ties:
lower loss). Not ``--patience``: on digits the GA's held-out accuracy still rises long after
the server's few test samples stop seeing it, so patience ended runs early and saved worse
models than a fixed count (docs/performance.md, "Digits: longer runs"). ``--target-accuracy``
is above 1, so it never ends a run: on wine's few test samples a first perfect score, the
default target, came from models that scored lower held out than later ties with a lower
loss (docs/performance.md, "Numbers the benches rest on"). Stopping at the
target instead would save a model that only just reached it, and would end the fast and the
slow at different points of their curves. The target: the central Adam reference's held-out
accuracy on the same split minus 2 points (digits: 0.95), read on the server's test data, the
accuracy each run's ``--history`` records per round; launch to target is the ``time`` of the
first round reaching it minus the launch of the run's first process. The tutorial's operators
cost seconds a round on digits (PyGAD's per-gene mutation): their rows have a lower round cap,
and show where fedga started, not where it could get. MNIST-1D keeps the 200 rounds.

Per row: the saved model's held-out accuracy (median over the split seeds; wine's 45
held-out samples make one sample 2 points), rounds to the target, seconds from launch to it,
seconds per round after the first, peak memory: the largest sum of resident memory over
all of a run's processes (server and clients, or Flower's Ray workers), sampled from /proc
every 0.2 s, and the bytes a fedga client sent to the server in the whole run (the mean over
clients). ``--save-model`` writes a ``.keras`` file, so a server imports TensorFlow once
training ends: that, not training, sets fedga's peak. Needs requirements-flower.txt. Exit
code 1 when a target is missed.

How long: about 3 hours on 2 cores at the defaults; docs/performance.md ("Numbers the
benches rest on") has it by data set. ``--data-sets``, ``--seeds``, ``--rows`` and
``--rounds`` make a quick try.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import (
    PYTHON,
    ROOT,
    RUN_TIMEOUT,
    Finished,
    held_out_se,
    print_header,
    print_table,
    read_history,
    run_processes,
    seconds,
    seconds_per_round,
    target,
)
from common.aggregate import AGGREGATIONS
from common.data import Dataset, load_dataset
from common.fitness_federation import FITNESS, WEIGHTS
from common.ports import free_port
from common.split import save_dataset

# The earlier rows' sets, and the two federations' (where the hidden layer matters), digits
# in both: each row runs by default on its own (Setup.data_sets).
EARLIER = ("breast-cancer", "wine", "digits")
FEDERATIONS = ("synthetic", "mnist1d", "digits")
DATA_SETS = ("breast-cancer", "wine", "digits", "synthetic", "mnist1d")
SEEDS = (1, 2, 3)
CLIENTS = 3
ALPHA = 0.5  # Dirichlet concentration of the label skew
# The target: the central Adam reference minus this much, or one held-out sample where one
# is worth more (wine's 45: 2.2 points), since no score can tell apart less than one sample.
TARGET_GAP = 0.02
DIGITS_TARGET = 0.95
DIGITS_SECONDS = 30.0  # launch to 0.95 on digits, for the target row
FITNESS_SECONDS = 15.0  # the same in fitness mode
FITNESS_GAP = 0.01  # fitness mode's held-out accuracy from the central GA's, at most
ROUNDS = 200  # every fedga run's length: see "How runs end" above
TUTORIAL_MAX_ROUNDS = 15  # the tutorial's operators: seconds a round on digits
KERAS_ROUNDS = 30  # the earlier Flower FedAvg row's, kept so its documented numbers compare
ISSUE_KERAS_ROUNDS = 60  # issue 22's Flower FedAvg settings
KERAS_REPEATS = 3  # runs of a one-setting Flower row per split: its median run is the row's
# Wine's test loss falls by ever less for 1000 epochs: min_delta ends that at ~400.
ADAM = {
    "learning_rate": 0.001,
    "batch_size": 32,
    "patience": 20,
    "min_delta": 1e-3,
    "max_epochs": 1000,
}
NEVER = "2"  # --target-accuracy above any accuracy: only the round count stops a run
# A run's limit grows with its rounds (the slowest rounds seen: docs/performance.md).
SECONDS_PER_ROUND_ALLOWED = 20
POOLED = "all.npz"  # every client's training data in one file: the central GA's one client
SENT = re.compile(rb"sent (\d+) bytes to the server in all")  # a headless client's last line


@dataclass(frozen=True)
class KerasFit:
    """What each Flower node's Keras ``fit`` runs with, every round."""

    learning_rate: float
    epochs: int
    batch_size: int = 32

    def __str__(self) -> str:
        return (
            f"Adam {self.learning_rate:g}, {self.epochs} epoch{'s' if self.epochs > 1 else ''}, "
            f"batch {self.batch_size}"
        )


ISSUE_FIT = KerasFit(0.01, 1)  # the earlier row's and issue 22's
# Each point is a whole Flower run, so the grid stays small.
KERAS_GRID = tuple(KerasFit(rate, epochs) for rate in (0.001, 0.01) for epochs in (1, 5))


@dataclass(frozen=True)
class Setup:
    """One federated row: how its processes are started."""

    key: str  # for --rows
    name: str  # for the table
    engine: str  # "fedga", "fedga-flower" or "flower-keras"
    data_sets: tuple[str, ...]  # where it runs when --rows is not given
    split: str = "dirichlet"  # or "iid"
    federation: str = WEIGHTS
    aggregation: str = "fedavg"  # weights mode's rule
    server_flags: tuple[str, ...] = ()  # the rule's settings, say, or the GA's
    operators: str = "scaled"
    pooled: bool = False  # one client holding every client's training data (POOLED)
    rounds: int = ROUNDS  # x CLIENTS for a per-update rule
    # flower-keras: one setting, or a grid whose best on the server's test data is the row's
    fits: tuple[KerasFit, ...] = ()

    @property
    def clients(self) -> int:
        return 1 if self.pooled else CLIENTS

    @property
    def _updates_per_round(self) -> int:
        """A per-update rule's round is one client's update: its limits are CLIENTS x."""
        return CLIENTS if AGGREGATIONS[self.aggregation].per_update else 1

    @property
    def max_rounds(self) -> int:
        return self.rounds * self._updates_per_round

    @property
    def label(self) -> str:
        return f"{self.name}, {self.rounds} rounds" if self.engine == "flower-keras" else self.name


BEATS_KERAS = ("synthetic", "mnist1d")  # where fitness mode must match Flower's FedAvg
# The GA of the central-tuned and fitness-tuned rows (one GA, so the two compare at equal
# generations): 30 members, 1% of genes mutated, the best of a search on MNIST-1D
# (docs/performance.md, "Numbers the benches rest on").
GA_TUNED = ("--num-solutions", "30", "--mutation-percent-genes", "1")

SETUPS = (
    Setup(
        "tutorial-fedavg",
        "fedga, tutorial operators, fedavg",
        "fedga",
        EARLIER,
        operators="tutorial",
        rounds=TUTORIAL_MAX_ROUNDS,
    ),
    Setup(
        "tutorial-running",
        "fedga, tutorial operators, running-average (round: update)",
        "fedga",
        EARLIER,
        aggregation="running-average",
        operators="tutorial",
        rounds=TUTORIAL_MAX_ROUNDS,
    ),
    Setup(
        "central",
        "fedga central GA: weights mode, 1 client holding all 3's data, fedavg",
        "fedga",
        FEDERATIONS,
        pooled=True,
    ),
    Setup("fedavg", "fedga, new operators, fedavg", "fedga", EARLIER + FEDERATIONS),
    # The best server optimiser on digits (docs/performance.md, "server optimisers"): fedadam
    # at eta 0.03.
    Setup(
        "fedadam",
        "fedga, weights mode, fedadam (server learning rate 0.03)",
        "fedga",
        FEDERATIONS,
        aggregation="fedadam",
        server_flags=("--server-learning-rate", "0.03"),
    ),
    Setup("fitness", "fedga fitness mode", "fedga", FEDERATIONS, federation=FITNESS),
    # The same two with the GA tuned (GA_TUNED), where fitness mode must match Flower.
    Setup(
        "central-tuned",
        f"the central GA, tuned ({' '.join(GA_TUNED)})",
        "fedga",
        BEATS_KERAS,
        pooled=True,
        server_flags=GA_TUNED,
    ),
    Setup(
        "fitness-tuned",
        f"fitness mode, tuned ({' '.join(GA_TUNED)})",
        "fedga",
        BEATS_KERAS,
        federation=FITNESS,
        server_flags=GA_TUNED,
    ),
    Setup(
        "running",
        "fedga, new operators, running-average (round: update)",
        "fedga",
        EARLIER,
        aggregation="running-average",
    ),
    Setup(
        "running-best",
        "fedga, new operators, running-best (round: update)",
        "fedga",
        EARLIER,
        aggregation="running-best",
    ),
    Setup("fedavg-iid", "fedga, new operators, fedavg, IID", "fedga", EARLIER, split="iid"),
    Setup(
        "flower-ga",
        "fedga's GA on Flower simulation, new operators, fedavg",
        "fedga-flower",
        EARLIER,
    ),
    Setup(
        "flower-keras",
        f"Flower FedAvg, Keras fit ({ISSUE_FIT})",
        "flower-keras",
        EARLIER,
        rounds=KERAS_ROUNDS,
        fits=(ISSUE_FIT,),
    ),
    Setup(
        "flower-keras-60",
        f"Flower FedAvg, Keras fit ({ISSUE_FIT})",
        "flower-keras",
        FEDERATIONS,
        rounds=ISSUE_KERAS_ROUNDS,
        fits=(ISSUE_FIT,),
    ),
    Setup(
        "flower-keras-tuned",
        "Flower FedAvg, Keras fit, tuned on the server's test data (Adam "
        f"{'/'.join(f'{rate:g}' for rate in sorted({f.learning_rate for f in KERAS_GRID}))} x "
        f"{'/'.join(str(epochs) for epochs in sorted({f.epochs for f in KERAS_GRID}))} epochs, "
        "batch 32)",
        "flower-keras",
        FEDERATIONS,
        rounds=ISSUE_KERAS_ROUNDS,
        fits=KERAS_GRID,
    ),
)
TARGET_ROW, KERAS_ROW = "fedavg", "flower-keras"
CENTRAL_ROW, FITNESS_ROW = "central", "fitness"
# Each fitness row and the central GA it must equal; the last present is held against Flower.
FITNESS_PAIRS = ((FITNESS_ROW, CENTRAL_ROW), ("fitness-tuned", "central-tuned"))
ISSUE_KERAS_ROW, TUNED_KERAS_ROW = "flower-keras-60", "flower-keras-tuned"


class RunFailed(Exception):
    """A process of a run ended badly; the message holds the logs' ends."""


@dataclass
class Outcome:
    holdout: float  # the saved (best) model's accuracy on the held-out 25%
    rounds: int  # rounds the run made
    target_round: int | None  # first round at the target on the server's test data
    to_target: float  # seconds from launch to that round; inf if never
    per_round: float  # seconds per round after the first
    peak_mib: float
    seconds: float  # launch to the last process's exit
    test: tuple[float, float] = (0.0, math.inf)  # the saved model's (accuracy, loss), server's
    sent: tuple[int, ...] = ()  # bytes each fedga client sent to the server in the whole run
    failed: bool = False  # then it scores 0 and never reaches the target

    @classmethod
    def failure(cls) -> Outcome:
        return cls(0.0, 0, None, math.inf, math.nan, math.nan, math.nan, failed=True)

    @property
    def rank(self) -> tuple[float, float]:
        """Higher is better: the saved model's accuracy on the server's test data, then loss
        (the rule a server keeps its best model by)."""
        return self.test[0], -self.test[1]

    def __str__(self) -> str:
        if self.failed:
            return "FAILED"
        when = (
            f"round {self.target_round} at {seconds(self.to_target)}"
            if self.target_round
            else "not reached"
        )
        sent = f", each client sent {' '.join(map(kib, self.sent))}" if self.sent else ""
        return (
            f"held-out {self.holdout:.3f} (server's test {self.test[0]:.3f}), {self.rounds} "
            f"rounds, target {when}, {seconds(self.per_round)} a round, peak "
            f"{self.peak_mib:.0f} MiB, run {seconds(self.seconds)}{sent}"
        )


def kib(count: float) -> str:
    return f"{count / 1024:,.0f} KiB"


@dataclass(frozen=True)
class Split:
    folder: Path  # client_1.npz ... client_3.npz, all.npz, server_test.npz, holdout.npz, model.json
    target: float

    def file(self, name: str) -> str:
        return str(self.folder / name)


# ---- the split and the references -------------------------------------------------------


def make_split(name: str, seed: int, split: str, folder: Path, clients: int = CLIENTS) -> None:
    """``python -m common.datasets``: the user's first command."""
    skew = ["--dirichlet", str(ALPHA)] if split == "dirichlet" else []
    run = subprocess.run(
        [
            PYTHON,
            "-m",
            "common.datasets",
            name,
            "--clients",
            str(clients),
            "--seed",
            str(seed),
            "--out",
            str(folder),
            *skew,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    if run.returncode != 0:
        raise SystemExit(f"python -m common.datasets {name} failed:\n{run.stderr[-3000:]}")
    pooled = training_part(folder)
    save_dataset(folder / POOLED, pooled, pooled.outputs.shape[1])


def training_part(folder: Path) -> Dataset:
    parts = [load_dataset(str(path)) for path in sorted(folder.glob("client_*.npz"))]
    return Dataset(
        np.concatenate([p.inputs for p in parts]), np.concatenate([p.outputs for p in parts])
    )


def logistic_regression(folder: Path) -> float:
    from sklearn.linear_model import LogisticRegression

    from common.split import class_labels

    train, holdout = training_part(folder), load_dataset(str(folder / "holdout.npz"))
    fitted = LogisticRegression(max_iter=5000).fit(train.inputs, class_labels(train.outputs))
    return float(np.mean(fitted.predict(holdout.inputs) == class_labels(holdout.outputs)))


def central_adam(folder: Path, seed: int) -> float:
    """The same network trained centrally: Keras ``fit`` with Adam, early stopping on the
    server's test data; held-out accuracy of the restored best weights."""
    from common.model import accuracy, load_keras

    keras = load_keras()
    keras.utils.set_random_seed(seed)
    train, holdout = training_part(folder), load_dataset(str(folder / "holdout.npz"))
    test = load_dataset(str(folder / "server_test.npz"))
    model = keras.models.model_from_json((folder / "model.json").read_text())
    model.compile(
        optimizer=keras.optimizers.Adam(ADAM["learning_rate"]), loss="categorical_crossentropy"
    )
    model.fit(
        train.inputs,
        train.outputs,
        batch_size=ADAM["batch_size"],
        epochs=ADAM["max_epochs"],
        validation_data=(test.inputs, test.outputs),
        callbacks=[
            keras.callbacks.EarlyStopping(
                patience=ADAM["patience"], min_delta=ADAM["min_delta"], restore_best_weights=True
            )
        ],
        verbose=0,
    )
    # A direct call, not predict: predict traces a new function for every new model.
    probabilities = keras.ops.convert_to_numpy(model(holdout.inputs, training=False))
    return float(accuracy(probabilities, holdout.outputs))


# ---- federated runs ---------------------------------------------------------------------


def commands(
    setup: Setup, split: Split, seed: int, run: Path, fit: KerasFit | None = None
) -> list[list[str]]:
    """The command lines of one run, as a user types them (``fit``: a flower-keras run's)."""
    outputs = ["--history", str(run / "history.csv"), "--save-model", str(run / "best.keras")]
    model = ["--model", split.file("model.json"), "--test-data", split.file("server_test.npz")]
    if setup.engine == "flower-keras":
        return [
            [
                PYTHON,
                "-m",
                "bench.flower_keras",
                "--data",
                str(split.folder),
                *model,
                "--nodes",
                str(CLIENTS),
                "--rounds",
                str(setup.rounds),
                "--seed",
                str(seed),
                *outputs,
                f"--learning-rate={fit.learning_rate}",
                f"--epochs={fit.epochs}",
                f"--batch-size={fit.batch_size}",
            ]
        ]
    federation = (
        ["--aggregation", setup.aggregation, *setup.server_flags]
        if setup.federation == WEIGHTS
        else ["--federation", setup.federation, *setup.server_flags]
    )
    training = [
        *model,
        *outputs,
        *federation,
        "--operators",
        setup.operators,
        "--target-accuracy",
        NEVER,
        "--max-rounds",
        str(setup.max_rounds),
        "--seed",
        str(seed),
    ]
    if setup.engine == "fedga-flower":
        return [
            [
                PYTHON,
                "-m",
                "common.flower",
                "simulate",
                "--nodes",
                str(CLIENTS),
                "--data",
                str(split.folder),
                *training,
            ]
        ]
    address = ["--host", "127.0.0.1", "--port", str(free_port())]
    # --expected-clients: exit once all were told done; a late one still is (the default
    # --linger), as with the tutorial's running average a fast client may use up the rounds
    # before a slow one has connected.
    server = [
        PYTHON,
        "server.py",
        "--headless",
        *address,
        *training,
        "--min-clients",
        str(setup.clients),
        "--round-timeout",
        "60",
        "--expected-clients",
        str(setup.clients),
    ]
    # The central GA's client is seeded as the server, as fitness mode's server GA is: so the
    # two runs are the same GA (tests/test_fitness_federation.py), and differ only by the wire.
    clients = (
        [(POOLED, "all", seed)]
        if setup.pooled
        else [(f"client_{n}.npz", f"client{n}", seed * 100 + n) for n in range(1, CLIENTS + 1)]
    )
    return [server] + [
        [
            PYTHON,
            "client.py",
            "--headless",
            *address,
            "--data",
            split.file(data),
            "--name",
            name,
            "--seed",
            str(client_seed),
        ]
        for data, name, client_seed in clients
    ]


def launch(
    command_lines: list[list[str]], run: Path, timeout: float
) -> tuple[Finished, tuple[int, ...]]:
    """Start the processes together and wait for them all (``bench.common.run_processes``);
    also the bytes each fedga client logged it sent. The server exits 0 (a perfect score) or
    2 (--max-rounds), each client as its server (the outcome its ``done`` says); anything
    else, or not ending within ``timeout``
    seconds, is ``RunFailed``."""
    logs = [run / f"process{n}.log" for n in range(len(command_lines))]
    try:
        finished = run_processes(command_lines, logs, timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"not finished within {timeout:.0f} s: see {run}") from None
    codes = finished.codes
    if codes[0] not in (0, 2) or any(code != codes[0] for code in codes[1:]):
        tails = "\n".join(f"--- {log}:\n{log.read_text()[-2000:]}" for log in logs)
        raise RunFailed(f"exit codes {list(codes)}; the logs' ends:\n{tails}")
    sent = (SENT.search(log.read_bytes()) for log in logs[1:])
    return finished, tuple(int(m[1]) for m in sent if m)


def federated(
    setup: Setup, split: Split, seed: int, run: Path, fit: KerasFit | None = None
) -> Outcome:
    from common.model import load_model_file

    run.mkdir(parents=True)
    timeout = max(RUN_TIMEOUT, setup.max_rounds * SECONDS_PER_ROUND_ALLOWED)
    finished, sent = launch(commands(setup, split, seed, run, fit), run, timeout)
    rows = read_history(run / "history.csv")
    reached = next((row for row in rows if row.accuracy >= split.target), None)
    saved = load_model_file(str(run / "best.keras"))
    holdout = load_dataset(split.file("holdout.npz"))
    return Outcome(
        holdout=saved.forward.accuracy(saved.initial_vector, holdout.inputs, holdout.outputs),
        rounds=rows[-1].round,
        target_round=reached and reached.round,
        to_target=reached.time - finished.launched if reached else math.inf,
        per_round=seconds_per_round(rows),
        peak_mib=finished.peak_mib,
        seconds=finished.seconds,
        test=max(((r.accuracy, r.loss) for r in rows), key=lambda t: (t[0], -t[1])),
        sent=sent,
    )


def median_run(runs: list[Outcome]) -> Outcome:
    """The run whose held-out accuracy is the median (the lower of the middle two)."""
    return sorted(runs, key=lambda o: o.holdout)[(len(runs) - 1) // 2]


def attempt(label: str, run, *args) -> Outcome:
    """``run(*args)``, or a failed ``Outcome`` with the logs' ends printed."""
    try:
        return run(*args)
    except RunFailed as exc:
        print(f"{label}: FAILED: {exc}", flush=True)
        return Outcome.failure()


KerasRuns = dict[tuple[str, int, KerasFit], Outcome]  # (split, rounds, fit): one split's runs


def keras_row(
    setup: Setup, split: Split, seed: int, folder: Path, runs: KerasRuns, label: str
) -> tuple[KerasFit, dict[KerasFit, Outcome]]:
    """A flower-keras row: each of its settings' runs (from ``runs`` if another row made it
    on this split, else run and kept there), and the one whose best model scored best on the
    server's test data, never on the held-out part."""
    grid = {}
    repeats = KERAS_REPEATS if len(setup.fits) == 1 else 1
    for fit in setup.fits:
        key = (setup.split, setup.rounds, fit)
        if key not in runs:
            run = folder / f"{setup.key}-{fit.learning_rate:g}-{fit.epochs}-{fit.batch_size}"
            repeated = [
                attempt(f"{label} ({fit})", federated, setup, split, seed, run / str(n), fit)
                for n in range(repeats)
            ]
            runs[key] = median_run(repeated)
            if repeats > 1:
                print(
                    f"{label}: {repeats} runs, held-out "
                    + " ".join(f"{o.holdout:.3f}" for o in repeated)
                    + f"; the median's is the row's ({runs[key].holdout:.3f})",
                    flush=True,
                )
        grid[fit] = runs[key]
    chosen = max(grid, key=lambda fit: grid[fit].rank)
    if len(grid) > 1:
        print(
            f"{label}: chose {chosen}; the grid, the server's test accuracy of each setting's "
            "best model (held-out, not used to choose): "
            + "; ".join(f"{fit}: {o.test[0]:.3f} ({o.holdout:.3f})" for fit, o in grid.items()),
            flush=True,
        )
    return chosen, grid


# ---- the report -------------------------------------------------------------------------


def median(values) -> float:
    return statistics.median(values)


def reached(values: list[float], shown) -> str:
    """The median of values that may be inf (never reached), and how many reached it."""
    middle, count = median(values), sum(math.isfinite(v) for v in values)
    if not count:
        return "not reached"
    text = shown(middle) if math.isfinite(middle) else "not reached"
    return text if count == len(values) else f"{text} ({count}/{len(values)} reached)"


def accuracies(values: list[float]) -> str:
    return f"{median(values):.3f}" + (
        f" ({' '.join(f'{v:.3f}' for v in values)})" if len(values) > 1 else ""
    )


def table(
    name: str,
    refs: dict[str, list[float]],
    targets: list[float],
    outcomes: dict[str, list[Outcome]],
    held_out: int,
    setups: list[Setup],
) -> None:
    print(
        f"{name}, {CLIENTS} clients, Dirichlet {ALPHA} unless IID: held-out accuracy on "
        f"{held_out} samples (one is {100 / held_out:.1f} points), the median of "
        f"{len(targets)} split seeds, then each; the target, on the server's test data: "
        f"{' '.join(f'{t:.3f}' for t in targets)}"
    )
    rows = [
        ["logistic regression (central)", accuracies(refs["logistic"]), "", "", "", "", "", ""],
        [
            f"Keras Adam {ADAM['learning_rate']} (central, early stopping)",
            accuracies(refs["adam"]),
            "",
            "",
            "",
            "",
            "",
            "",
        ],
    ]
    for setup in setups:
        if setup.key not in outcomes:
            continue
        runs = outcomes[setup.key]
        finished = [o for o in runs if not o.failed]
        failed = len(runs) - len(finished)
        rows.append(
            [
                setup.label + (f" ({failed} FAILED, scored 0)" if failed else ""),
                accuracies([o.holdout for o in runs]),
                reached([o.target_round or math.inf for o in runs], lambda v: f"{v:.0f}"),
                reached([o.to_target for o in runs], seconds),
                *(
                    [
                        f"{median(o.rounds for o in finished):.0f}",
                        seconds(median(o.per_round for o in finished)),
                        f"{max(o.peak_mib for o in finished):.0f} MiB",
                        kib(median(statistics.mean(o.sent) for o in finished))
                        if all(o.sent for o in finished)
                        else "",
                    ]
                    if finished
                    else ["-", "-", "-", "-"]
                ),
            ]
        )
    print_table(
        [
            "setup",
            "held-out accuracy",
            "rounds to target",
            "launch to target",
            "rounds run",
            "per round",
            "peak memory",
            "sent per client",
        ],
        rows,
    )


def grid_table(grids: list[tuple[KerasFit, dict[KerasFit, Outcome]]]) -> None:
    """A tuned row's grid over the split seeds: what each setting scored, which was chosen."""
    rows = []
    for fit in grids[0][1]:
        runs = [grid[fit] for _, grid in grids]
        rows.append(
            [
                str(fit),
                accuracies([o.test[0] for o in runs]),
                accuracies([o.holdout for o in runs]),
                f"{sum(chosen == fit for chosen, _ in grids)}/{len(grids)}",
            ]
        )
    print_table(
        [
            "Flower FedAvg, Keras fit: the grid",
            "server's test accuracy (chooses)",
            "held-out accuracy",
            "chosen",
        ],
        rows,
    )


def holdouts(runs: list[Outcome]) -> list[float]:
    return [o.holdout for o in runs]


def earlier_targets(
    refs: dict[str, dict[str, list[float]]],
    outcomes: dict[str, dict[str, list[Outcome]]],
    held_out: dict[str, int],
) -> bool:
    met = True
    for name, by_setup in outcomes.items():
        if name not in EARLIER or TARGET_ROW not in by_setup:
            continue
        ours, adam = median(holdouts(by_setup[TARGET_ROW])), median(refs[name]["adam"])
        gap = max(TARGET_GAP, 1 / held_out[name])
        met &= target(
            f"{name}, new operators, fedavg, Dirichlet {ALPHA}: held-out accuracy "
            f"within {TARGET_GAP * 100:.0f} points of central Adam (or one of its "
            f"{held_out[name]} held-out samples, if more)",
            f"{ours:.3f} (Adam {adam:.3f})",
            f">= {adam - gap:.3f}",
            ours >= adam - gap - 1e-9,
        )
    digits = outcomes.get("digits", {})
    if TARGET_ROW in digits:
        runs = digits[TARGET_ROW]
        accuracy, to_target = median(holdouts(runs)), median(o.to_target for o in runs)
        met &= target(
            "digits, new operators, fedavg: held-out accuracy",
            f"{accuracy:.3f}",
            f">= {DIGITS_TARGET}",
            accuracy >= DIGITS_TARGET,
        )
        met &= target(
            f"digits, new operators, fedavg: launch to {DIGITS_TARGET}",
            seconds(to_target) if math.isfinite(to_target) else "not reached",
            f"< {seconds(DIGITS_SECONDS)}",
            to_target < DIGITS_SECONDS,
        )
        if KERAS_ROW in digits:
            theirs = [o.to_target for o in digits[KERAS_ROW]]
            # Per split, as both ran under the same load; fedga never reaching it counts as 0.
            ratio = median(
                t / o.to_target if math.isfinite(o.to_target) else 0.0 for t, o in zip(theirs, runs)
            )
            met &= target(
                f"digits: launch to {DIGITS_TARGET}, Flower FedAvg with Keras fit / "
                "fedga new operators fedavg (median of the per-split ratios)",
                f"{ratio:.2f}x",
                ">= 1.00x",
                ratio >= 1.0,
            )
    return met


def federation_targets(
    outcomes: dict[str, dict[str, list[Outcome]]], held_out: dict[str, int]
) -> bool:
    """Fitness mode against the central GA it should equal, and against Flower's FedAvg
    (within the held-out set's standard error: at parity a strict >= is a coin flip)."""
    met = True
    for name, by_setup in outcomes.items():
        pairs = [(f, c) for f, c in FITNESS_PAIRS if f in by_setup]
        for fitness_row, central_row in pairs:
            if central_row not in by_setup:
                continue
            fitness = holdouts(by_setup[fitness_row])
            ours, central = median(fitness), holdouts(by_setup[central_row])
            each = " ".join(f"{f - c:+.3f}" for f, c in zip(fitness, central))
            met &= target(
                f"{name}: {fitness_row}'s held-out accuracy within {FITNESS_GAP * 100:.0f} point "
                f"of {central_row}'s (the same GA; per split seed: {each})",
                f"{ours:.3f} ({central_row} {median(central):.3f}, {ours - median(central):+.3f})",
                f"difference within +-{FITNESS_GAP:.3f}",
                abs(ours - median(central)) <= FITNESS_GAP + 1e-9,
            )
        if name in BEATS_KERAS and pairs and ISSUE_KERAS_ROW in by_setup:
            fitness_row = pairs[-1][0]
            ours = median(holdouts(by_setup[fitness_row]))
            theirs = {
                label: median(holdouts(by_setup[key]))
                for label, key in (("FedAvg", ISSUE_KERAS_ROW), ("tuned", TUNED_KERAS_ROW))
                if key in by_setup
            }
            se = held_out_se(theirs["FedAvg"], held_out[name])
            met &= target(
                f"{name}: {fitness_row}'s held-out accuracy vs Flower FedAvg with Keras fit "
                f"({ISSUE_FIT}, issue 22's rounds; the tuned row's beside it), less one "
                f"standard error on {held_out[name]} held-out samples",
                f"{ours:.3f} ("
                + "; ".join(f"{k} {v:.3f}: {ours - v:+.3f}" for k, v in theirs.items())
                + ")",
                f">= {theirs['FedAvg']:.3f} - {se:.3f} = {theirs['FedAvg'] - se:.3f}",
                ours >= theirs["FedAvg"] - se - 1e-9,
            )
    digits = outcomes.get("digits", {})
    if FITNESS_ROW in digits:
        runs = digits[FITNESS_ROW]
        to_target = median(o.to_target for o in runs)
        weights = (
            f" (weights mode fedavg: {reached([o.to_target for o in digits[TARGET_ROW]], seconds)})"
            if TARGET_ROW in digits
            else ""
        )
        met &= target(
            f"digits, fitness mode: launch to {DIGITS_TARGET}",
            (seconds(to_target) if math.isfinite(to_target) else "not reached") + weights,
            f"< {seconds(FITNESS_SECONDS)}",
            to_target < FITNESS_SECONDS,
        )
        for key in (FITNESS_ROW, TARGET_ROW):
            if key in digits:
                print(
                    f"digits, {key}: bytes each client sent to the server in the whole run, "
                    "per split seed: "
                    + "; ".join(" ".join(map(kib, o.sent)) or "-" for o in digits[key]),
                    flush=True,
                )
    return met


@dataclass
class Results:
    """What a run of the bench recorded, by data set: plain data, for the targets."""

    refs: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # name -> ref -> seeds
    outcomes: dict[str, dict[str, list[Outcome]]] = field(default_factory=dict)  # -> row -> seeds
    grids: dict[str, list[tuple[KerasFit, dict[KerasFit, Outcome]]]] = field(default_factory=dict)
    targets: dict[str, list[float]] = field(default_factory=dict)  # per seed, server's test data
    held_out: dict[str, int] = field(default_factory=dict)  # samples
    failures: int = 0  # runs that failed (a Keras run serving two rows counts once)


def check_targets(results: Results) -> bool:
    """Every TARGET line of the recorded results; True when all are met."""
    earlier = earlier_targets(results.refs, results.outcomes, results.held_out)
    return earlier & federation_targets(results.outcomes, results.held_out)


def report(results: Results, name: str, setups: list[Setup]) -> None:
    """A data set's tables, printed as its runs end."""
    table(
        name,
        results.refs[name],
        results.targets[name],
        results.outcomes[name],
        results.held_out[name],
        setups,
    )
    if results.grids[name]:
        grid_table(results.grids[name])


def collect(args: argparse.Namespace, setups: list[Setup], work: Path) -> Results:
    """Every run, each printed as it ends, and each data set's tables once its runs are in."""
    results = Results()
    made: list[Outcome] = []  # every run, once: a Keras run may serve two rows
    for name in args.data_sets:
        rows = [s for s in setups if args.rows or name in s.data_sets]
        refs = results.refs[name] = {"logistic": [], "adam": []}
        outcomes: dict[str, list[Outcome]] = results.outcomes.setdefault(name, {})
        grids = results.grids[name] = []
        targets = results.targets[name] = []
        for seed in args.seeds:
            folder = work / name / f"seed{seed}"
            for kind in {s.split for s in rows} | {"dirichlet"}:
                make_split(name, seed, kind, folder / kind)
            refs["logistic"].append(logistic_regression(folder / "dirichlet"))
            refs["adam"].append(central_adam(folder / "dirichlet", seed))
            goal = DIGITS_TARGET if name == "digits" else refs["adam"][-1] - TARGET_GAP
            targets.append(goal)
            print(
                f"{name} seed {seed}: logistic regression {refs['logistic'][-1]:.3f}, "
                f"Adam {refs['adam'][-1]:.3f}, target {goal:.3f}",
                flush=True,
            )
            keras_runs: KerasRuns = {}
            for setup in rows:
                label = f"{name} seed {seed}: {setup.label}"
                split = Split(folder / setup.split, goal)
                if setup.engine == "flower-keras":
                    chosen, grid = keras_row(setup, split, seed, folder, keras_runs, label)
                    outcome = grid[chosen]
                    if len(grid) > 1:
                        grids.append((chosen, grid))
                else:
                    outcome = attempt(label, federated, setup, split, seed, folder / setup.key)
                    made.append(outcome)
                outcomes.setdefault(setup.key, []).append(outcome)
                print(f"{label}: {outcome}", flush=True)
            made.extend(keras_runs.values())
        print()
        results.held_out[name] = len(load_dataset(str(folder / "dirichlet" / "holdout.npz")))
        report(results, name, rows)
    results.failures = sum(o.failed for o in made)
    return results


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.real_data", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data-sets", nargs="+", choices=DATA_SETS, default=list(DATA_SETS))
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=list(SEEDS),
        help="split seeds (default: %(default)s)",
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=[s.key for s in SETUPS],
        help="federated rows to run on every data set chosen (default: each data set's own: "
        + "; ".join(
            f"{name}: {' '.join(s.key for s in SETUPS if name in s.data_sets)}"
            for name in DATA_SETS
        )
        + ")",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"every run's rounds, for a quick try (default: {ROUNDS} for fedga, "
        f"{TUTORIAL_MAX_ROUNDS} with the tutorial's operators, {KERAS_ROUNDS} or "
        f"{ISSUE_KERAS_ROUNDS} for Flower's FedAvg; x{CLIENTS} for per-update rules); the "
        "targets assume the defaults",
    )
    parser.add_argument("--keep", action="store_true", help="keep the runs' files and logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    started = time.perf_counter()
    if importlib.util.find_spec("flwr") is None:
        print(
            "Flower is not installed: .venv/bin/pip install -r requirements-flower.txt",
            file=sys.stderr,
        )
        return 1
    import flwr

    keys = args.rows or [s.key for s in SETUPS if set(s.data_sets) & set(args.data_sets)]
    setups = [
        dataclasses.replace(s, rounds=args.rounds or s.rounds) for s in SETUPS if s.key in keys
    ]
    lengths = (
        f"every run {args.rounds} rounds (--rounds: the targets assume the defaults"
        if args.rounds
        else f"fedga runs {ROUNDS} rounds ({TUTORIAL_MAX_ROUNDS} with the tutorial's operators"
    )
    print_header(
        f"bench.real_data: fedga on {', '.join(args.data_sets)}, {CLIENTS} clients, "
        f"split seeds {' '.join(map(str, args.seeds))}; Flower {flwr.__version__}; {lengths}; "
        f"x{CLIENTS} for running-average and running-best, where a round is one update)"
    )
    work = Path(tempfile.mkdtemp(prefix="fedga-bench-real-data-"))
    results = collect(args, setups, work)
    met = check_targets(results)
    if results.failures:
        print(f"{results.failures} run(s) FAILED: their logs are above", flush=True)
    if args.keep:
        print(f"files and logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(f"bench.real_data took {seconds(time.perf_counter() - started)}", flush=True)
    return 0 if met and not results.failures else 1


if __name__ == "__main__":
    sys.exit(main())
