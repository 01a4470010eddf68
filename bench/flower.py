"""Launch to ``done`` on XOR: the built-in server against Flower's simulation and deployment,
measured side by side in one run, each as a user starts it (fresh processes, cold imports).

    python -m bench.flower [--runs 3] [--max-rounds 30] [--sim-nodes 2 50] [--deploy-nodes 2 10]

- built-in: ``server.py --headless --aggregation fedavg`` (rounds as Flower runs them) with
  ``client1.py``/``client2.py --headless``.
- Flower simulation: ``python -m common.flower simulate --nodes N`` (Ray, one process).
- Flower deployment: a SuperLink and N SuperNodes on this machine and ``flwr run`` on this
  project, started and stopped by ``common.flower.deploy`` as ``deploy`` does.

Rounds to ``done`` vary widely from run to run on every engine (they follow the GA's random
draws; fedavg of the two XOR halves has a long tail), so each setup runs ``--runs`` times,
each capped at ``--max-rounds``, and the table gives every run's rounds with the two costs
that belong to the engine: launch to the first aggregated round, and seconds per round
after it. Times come from each run's ``--history``; peak memory is the largest sum of
resident set sizes over the processes a run started, sampled every 0.2 s. Needs
requirements-flower.txt.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common.flower.deploy import PROJECT, LocalDeployment
from common.ports import free_port

PYTHON = sys.executable

RUN_TIMEOUT = 1800  # seconds: far beyond any run seen here


class PeakMemory:
    """The largest sum of resident set sizes over the process groups ``sessions()`` names,
    sampled every 0.2 s until ``stop()``."""

    def __init__(self, sessions):
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


@dataclass
class Run:
    seconds: float  # launch to done
    rounds: int | None  # None: not done
    first_round: float  # launch to the first aggregated round
    per_round: float  # seconds between aggregated rounds after the first
    peak_mib: float


def _run(history: Path, started: float, peak_mib: float) -> Run:
    elapsed = time.perf_counter() - started
    launched = time.time() - elapsed
    try:
        with history.open() as file:
            rows = list(csv.DictReader(file))
    except OSError:
        rows = []
    times = [float(row["time"]) for row in rows]
    done = bool(rows) and float(rows[-1]["accuracy"]) >= 1.0
    return Run(
        elapsed,
        int(rows[-1]["round"]) if done else None,
        times[0] - launched if times else float("nan"),
        (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else float("nan"),
        peak_mib,
    )


def _processes(commands: list[tuple[list[str], Path]]) -> list[subprocess.Popen]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    return [
        subprocess.Popen(
            command,
            cwd=PROJECT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for command, log in commands
    ]


def builtin(work: Path, aggregation: str, max_rounds: int) -> Run:
    history, port = work / f"builtin-{aggregation}.csv", str(free_port())
    started = time.perf_counter()
    processes = _processes(
        [
            (
                [
                    PYTHON,
                    "server.py",
                    "--headless",
                    "--port",
                    port,
                    "--linger",
                    "0",
                    "--aggregation",
                    aggregation,
                    "--max-rounds",
                    str(max_rounds),
                    "--history",
                    str(history),
                ],
                work / f"builtin-{aggregation}.log",
            )
        ]
        + [
            ([PYTHON, f"{name}.py", "--headless", "--port", port], work / f"builtin-{name}.log")
            for name in ("client1", "client2")
        ]
    )
    memory = PeakMemory(lambda: [p.pid for p in processes])
    for process in processes:
        process.wait(RUN_TIMEOUT)
    return _run(history, started, memory.stop())


def simulation(work: Path, nodes: int, max_rounds: int) -> Run:
    history = work / f"sim{nodes}.csv"
    started = time.perf_counter()
    processes = _processes(
        [
            (
                [
                    PYTHON,
                    "-m",
                    "common.flower",
                    "simulate",
                    "--nodes",
                    str(nodes),
                    "--max-rounds",
                    str(max_rounds),
                    "--history",
                    str(history),
                ],
                work / f"sim{nodes}.log",
            )
        ]
    )
    memory = PeakMemory(lambda: [p.pid for p in processes])
    processes[0].wait(RUN_TIMEOUT)
    return _run(history, started, memory.stop())


def deployment(work: Path, nodes: int, max_rounds: int) -> Run:
    """Started, run and stopped by ``common.flower.deploy``, as ``deploy`` does."""
    history, folder = work / f"deploy{nodes}.csv", work / f"deploy{nodes}"
    folder.mkdir()
    started = time.perf_counter()
    with LocalDeployment(nodes, folder) as deployment:
        memory = PeakMemory(lambda: [p.pid for p in deployment.processes])
        deployment.run(
            {"min-clients": nodes, "max-rounds": max_rounds, "history": str(history)}, RUN_TIMEOUT
        )
        peak = memory.stop()
    return _run(history, started, peak)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flower", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each (default: 3)")
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=30,
        help="a run not done after this "
        "many rounds gives up, so one long run cannot take the hour "
        "(default: %(default)s)",
    )
    parser.add_argument("--sim-nodes", type=int, nargs="*", default=[2, 50])
    parser.add_argument("--deploy-nodes", type=int, nargs="*", default=[2, 10])
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder")
    args = parser.parse_args(argv)
    import flwr
    import ray

    from bench.common import machine, print_table

    print(
        f"bench.flower: launch to done on XOR, {args.runs} runs each\n{machine()}, "
        f"Flower {flwr.__version__}, Ray {ray.__version__}\n",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="fedga-bench-flower-"))
    cap = args.max_rounds
    setups = [("built-in, fedavg rounds, 2 clients", lambda w: builtin(w, "fedavg", cap))]
    setups += [
        (f"Flower simulation, {n} nodes", lambda w, n=n: simulation(w, n, cap))
        for n in args.sim_nodes
    ]
    setups += [
        (f"Flower deployment, {n} nodes", lambda w, n=n: deployment(w, n, cap))
        for n in args.deploy_nodes
    ]
    rows = []
    for name, setup in setups:
        runs = []
        for index in range(args.runs):
            folder = work / f"{len(rows)}-{index}"
            folder.mkdir()
            runs.append(setup(folder))
            print(f"{name}, run {index + 1}: {runs[-1]}", flush=True)
        done = [run for run in runs if run.rounds is not None]
        median = statistics.median
        rows.append(
            (
                name,
                f"{len(done)}/{len(runs)}",
                f"{median(r.seconds for r in done):.1f} s" if done else "-",
                " ".join(str(r.rounds or f">{cap}") for r in runs),
                f"{median(r.first_round for r in runs):.1f} s",
                f"{median(r.per_round for r in runs if r.per_round == r.per_round):.2f} s",
                f"{max(r.peak_mib for r in runs) / 1024:.2f} GiB",
            )
        )
    print()
    print_table(
        [
            "setup",
            "done",
            "launch to done (median)",
            "rounds per run",
            "launch to round 1",
            "per round",
            "peak memory",
        ],
        rows,
    )
    if args.keep:
        print(f"logs: {work}", flush=True)
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
