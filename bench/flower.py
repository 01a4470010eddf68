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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    PYTHON,
    RUN_TIMEOUT,
    Finished,
    PeakMemory,
    machine,
    print_table,
    read_history,
    run_processes,
    seconds_per_round,
)
from common.flower.deploy import PROJECT, LocalDeployment
from common.ports import free_port


@dataclass
class Run:
    seconds: float  # launch to done
    rounds: int | None  # None: not done
    first_round: float  # launch to the first aggregated round
    per_round: float  # seconds between aggregated rounds after the first
    peak_mib: float


def _run(history: Path, launched: float, seconds: float, peak_mib: float) -> Run:
    """A run's figures from its ``--history``, launched at unix time ``launched``."""
    rows = read_history(history)
    done = bool(rows) and rows[-1].accuracy >= 1.0
    return Run(
        seconds,
        rows[-1].round if done else None,
        rows[0].time - launched if rows else float("nan"),
        seconds_per_round(rows),
        peak_mib,
    )


def _processes(history: Path, commands: list[tuple[list[str], Path]]) -> Run:
    """The commands run together (with this project on ``PYTHONPATH``, as Ray's workers
    need), and the run's figures."""
    lines, logs = zip(*commands)
    finished: Finished = run_processes(
        lines, logs, RUN_TIMEOUT, dict(os.environ, PYTHONPATH=str(PROJECT))
    )
    return _run(history, finished.launched, finished.seconds, finished.peak_mib)


def builtin(work: Path, aggregation: str, max_rounds: int) -> Run:
    history, port = work / f"builtin-{aggregation}.csv", str(free_port())
    server = [
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
    ]
    return _processes(
        history,
        [(server, work / f"builtin-{aggregation}.log")]
        + [
            ([PYTHON, f"{name}.py", "--headless", "--port", port], work / f"builtin-{name}.log")
            for name in ("client1", "client2")
        ],
    )


def simulation(work: Path, nodes: int, max_rounds: int) -> Run:
    history = work / f"sim{nodes}.csv"
    command = [
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
    ]
    return _processes(history, [(command, work / f"sim{nodes}.log")])


def deployment(work: Path, nodes: int, max_rounds: int) -> Run:
    """Started, run and stopped by ``common.flower.deploy``, as ``deploy`` does."""
    history, folder = work / f"deploy{nodes}.csv", work / f"deploy{nodes}"
    folder.mkdir()
    launched = time.time()
    with LocalDeployment(nodes, folder) as deployment:
        memory = PeakMemory(lambda: [p.pid for p in deployment.processes])
        deployment.run(
            {"min-clients": nodes, "max-rounds": max_rounds, "history": str(history)}, RUN_TIMEOUT
        )
        peak = memory.stop()
    return _run(history, launched, time.time() - launched, peak)


def parser() -> argparse.ArgumentParser:
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
    return parser


def collect(args: argparse.Namespace, work: Path) -> dict[str, list[Run]]:
    """Every setup's ``--runs`` runs, by the setup's name, each printed as it ends."""
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
    results: dict[str, list[Run]] = {}
    for name, setup in setups:
        runs = results[name] = []
        for index in range(args.runs):
            folder = work / f"{len(results) - 1}-{index}"
            folder.mkdir()
            runs.append(setup(folder))
            print(f"{name}, run {index + 1}: {runs[-1]}", flush=True)
    return results


def report(results: dict[str, list[Run]], cap: int) -> None:
    """The table: a comparison, with no targets."""
    median = statistics.median
    rows = []
    for name, runs in results.items():
        done = [run for run in runs if run.rounds is not None]
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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import flwr
    import ray

    print(
        f"bench.flower: launch to done on XOR, {args.runs} runs each\n{machine()}, "
        f"Flower {flwr.__version__}, Ray {ray.__version__}\n",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="fedga-bench-flower-"))
    report(collect(args, work), args.max_rounds)
    if args.keep:
        print(f"logs: {work}", flush=True)
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
