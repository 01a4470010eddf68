"""What every benchmark shares: where the project and its Python are, tables, TARGET lines,
interleaved timing, processes launched together with their peak memory, the per-round times
of a ``--history`` CSV, loopback sockets, the machine's description, and the tutorial's
baselines reimplemented for comparison. (A private X display is ``bench.display``'s.)

The baselines are written here from the tutorial's description, not copied: a fitness that
loads one solution into the Keras model and calls ``model.predict`` on it. The tutorial's
receive loop and client are ``bench.plain_peers``'s, shared with the tests.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

from common.model import is_multiclass

ROOT = Path(__file__).resolve().parents[1]  # the project: every command runs from here
PYTHON = sys.executable
RUN_TIMEOUT = 1800.0  # seconds: one run of processes, far beyond any seen here

# ---- output -----------------------------------------------------------------------------


def print_header(title: str) -> None:
    print(f"{title}\n{machine()}\n", flush=True)


def machine() -> str:
    """One line naming the machine and the versions, so a table can be read in context."""
    return (
        f"machine: {os.cpu_count()} cores, no GPU, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, NumPy {np.__version__}, TensorFlow "
        f"{version('tensorflow-cpu')}, Keras {version('keras')}, PyGAD {version('pygad')}"
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))
            ).rstrip()
        )
        if index == 0:
            print("  ".join("-" * w for w in widths))
    print(flush=True)


def target(name: str, measured: str, wanted: str, met: bool) -> bool:
    print(
        f"TARGET {name}: measured {measured}, target {wanted}, {'met' if met else 'missed'}",
        flush=True,
    )
    return met


def seconds(value: float) -> str:
    """A duration with a unit that keeps three significant digits readable."""
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} us"


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def held_out_se(accuracy: float, samples: int) -> float:
    """The standard error of an accuracy measured on ``samples`` held-out samples: two runs
    whose scores differ by less are not told apart by this held-out set."""
    return math.sqrt(accuracy * (1 - accuracy) / samples)


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- timing -----------------------------------------------------------------------------


def interleaved(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, taking turns, so drift in the machine's load
    hits all of them alike; returns the seconds of every call by name."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(slow: Sequence[float], fast: Sequence[float]) -> float:
    """Median of the per-turn ratios: each pair ran back to back under the same load."""
    return statistics.median(s / f for s, f in zip(slow, fast))


# ---- processes --------------------------------------------------------------------------


class PeakMemory:
    """The largest sum of resident set sizes over the process groups ``sessions()`` names,
    sampled from /proc every 0.2 s until ``stop()``."""

    def __init__(self, sessions: Callable[[], Sequence[int]]):
        self._sessions, self.peak_mib = sessions, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _rss_mib(self) -> float:
        sessions, total = set(self._sessions()), 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) in sessions:  # stat field 6: the session id
                    total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24: rss
            except (OSError, IndexError, ValueError):
                continue  # the process ended meanwhile
        return total / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak_mib = max(self.peak_mib, self._rss_mib())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mib


@dataclass(frozen=True)
class Finished:
    """Processes run together to their ends."""

    launched: float  # unix time, just before the first started
    seconds: float  # launch to the last exit
    peak_mib: float  # the largest sum of their resident memory (PeakMemory)
    codes: tuple[int, ...]  # exit codes, in the commands' order


def run_processes(
    command_lines: Sequence[Sequence[str]],
    logs: Sequence[Path],
    timeout: float = RUN_TIMEOUT,
    env: dict[str, str] | None = None,
) -> Finished:
    """Start the commands together from ``ROOT``, each in a session of its own (so
    ``PeakMemory`` counts its children) with its output in its log, and wait for them all.
    Past ``timeout`` seconds the ones left are killed and ``subprocess.TimeoutExpired`` raised."""
    launched = time.time()
    processes = [
        subprocess.Popen(
            line,
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for line, log in zip(command_lines, logs)
    ]
    memory = PeakMemory(lambda: [p.pid for p in processes])
    try:
        codes = tuple(p.wait(max(1.0, launched + timeout - time.time())) for p in processes)
        elapsed = time.time() - launched
    finally:
        peak = memory.stop()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return Finished(launched, elapsed, peak, codes)


# ---- a run's history --------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRow:
    """One row of a ``--history`` CSV (``common.results.FIELDS``), the columns benches read."""

    time: float  # unix time of the round's update
    round: int
    accuracy: float  # on the server's test data
    loss: float  # inf where the row has none


def read_history(path: Path) -> list[HistoryRow]:
    """The rows of a ``--history`` CSV; none if the run never wrote it."""
    try:
        with path.open(newline="") as file:
            return [
                HistoryRow(
                    float(r["time"]),
                    int(r["round"]),
                    float(r["accuracy"]),
                    float(r["loss"] or "inf"),
                )
                for r in csv.DictReader(file)
            ]
    except FileNotFoundError:
        return []


def seconds_per_round(rows: Sequence[HistoryRow]) -> float:
    """Seconds between rounds after the first (the first also connects); NaN with fewer than
    two rounds."""
    if len(rows) < 2:
        return math.nan
    return (rows[-1].time - rows[0].time) / (len(rows) - 1)


# ---- sockets ----------------------------------------------------------------------------


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair over 127.0.0.1 (not a Unix socketpair: the real path)."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        client = socket.create_connection(listening.getsockname())
        server, _ = listening.accept()
    return server, client


# ---- the tutorial's baselines -----------------------------------------------------------


def keras_loss(outputs: np.ndarray, predictions: np.ndarray) -> float:
    """The loss the project uses for these labels (``common.ga.loss``), computed by Keras's
    own loss class: binary cross-entropy for two outputs (the tutorial's), categorical for more."""
    import keras  # here, not at the top: bench.startup's children must not inherit TensorFlow

    rule = (
        keras.losses.CategoricalCrossentropy
        if is_multiclass(outputs)
        else keras.losses.BinaryCrossentropy
    )
    return float(keras.ops.convert_to_numpy(rule()(outputs, predictions)))


def tutorial_fitness(
    model: keras.Model, solution: np.ndarray, inputs: np.ndarray, outputs: np.ndarray
) -> float:
    """The tutorial's per-solution fitness: load the weights, ``model.predict``, the Keras loss
    (BCE on the tutorial's XOR)."""
    import pygad.kerasga

    model.set_weights(pygad.kerasga.model_weights_as_matrix(model=model, weights_vector=solution))
    predictions = model.predict(inputs, verbose=0)
    return 1.0 / (keras_loss(outputs, predictions) + 1e-8)


def run_to_the_end(clients: Sequence, finished, timeout: float, what: str) -> None:
    """Start in-process client threads, wait for the global model's ``finished`` event, then
    for the clients to end; ``RuntimeError`` naming ``what`` if training outlives
    ``timeout`` seconds."""
    for client in clients:
        client.start()
    if not finished.wait(timeout):
        raise RuntimeError(f"{what} did not finish in {timeout} s")
    for client in clients:
        client.join(timeout)
