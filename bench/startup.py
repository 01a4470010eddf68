"""Start-up, as whole processes: launch to exit of ``python -m common.demo``, the server
process's peak memory on XOR, and launch to the first drawn frame of the server and client
windows (under Xvfb, when it is installed), each beside the same launch with Keras imported
first (the path every entry point took before; ``bench/keras_first``).

    python -m bench.startup [--runs 5]

The two paths take turns, run by run, so each ratio compares launches made under the same load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from bench.common import PYTHON, ROOT, paired_ratio, print_header, print_table, seconds, target
from bench.display import have_xvfb, xvfb

WAIT = 120  # seconds: any one launch that takes this long has failed
PATHS = {"fedga": {}, "Keras first": {"PYTHONPATH": str(ROOT / "bench" / "keras_first")}}
TARGETS = {"demo": 3.0, "server peak": 150.0, "server.py window": 2.0, "client1.py window": 2.0}
WINDOWS = ("server.py", "client1.py")

Results = dict[str, dict[str, list[float]]]  # what -> path -> one figure per run


def _env(path: str, **extra: str) -> dict[str, str]:
    return {**os.environ, **PATHS[path], **extra}


def demo_seconds(path: str) -> float:
    started = time.perf_counter()
    run = subprocess.run(
        [PYTHON, "-m", "common.demo"],
        cwd=ROOT,
        env=_env(path),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    elapsed = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"the demo failed ({path}):\n{run.stderr[-3000:]}")
    return elapsed


def server_peak_mib(path: str) -> float:
    """The server's peak resident memory over a whole XOR run with the tutorial's clients."""
    from common.ports import free_port

    port = str(free_port())
    flags = ["--headless", "--host", "127.0.0.1", "--port", port]
    server = subprocess.Popen(
        [PYTHON, "server.py", *flags, "--expected-clients", "2"],
        cwd=ROOT,
        env=_env(path),
        stderr=subprocess.DEVNULL,
    )
    clients = [
        subprocess.Popen(
            [PYTHON, name, *flags], cwd=ROOT, env=_env(path), stderr=subprocess.DEVNULL
        )
        for name in ("client1.py", "client2.py")
    ]
    for client in clients:
        client.wait(WAIT)
    _, status, usage = os.wait4(server.pid, 0)
    server.returncode = os.waitstatus_to_exitcode(status)
    if server.returncode != 0:
        raise SystemExit(f"the server failed ({path}): exit code {server.returncode}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def window_seconds(path: str, script: str, display: str, kivy_home: str) -> float:
    """Launch to the window's first drawn frame, which the app logs as its "ready:" line."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [PYTHON, script, "--window-position", "0,0"],
        cwd=ROOT,
        env=_env(path, DISPLAY=display, KIVY_HOME=kivy_home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in process.stderr], daemon=True
    )
    reader.start()
    try:
        while not re.search(r"ready: .* window", lines.get(timeout=WAIT)):
            pass
        return time.perf_counter() - started
    finally:
        process.send_signal(signal.SIGTERM)  # closes the window; the app exits 0
        process.wait(WAIT)


def collect(runs: int) -> Results:
    """Every figure ``runs`` times, the two paths taking turns; the windows' only where Xvfb
    is installed."""
    measures: dict[str, Callable[[str], float]] = {
        "demo": demo_seconds,
        "server peak": server_peak_mib,
    }
    with contextlib.ExitStack() as stack:
        if have_xvfb():
            display = stack.enter_context(xvfb(wait=WAIT))
            kivy_home = stack.enter_context(tempfile.TemporaryDirectory(prefix="fedga-kivy-"))
            for script in WINDOWS:
                measures[f"{script} window"] = lambda path, script=script: window_seconds(
                    path, script, display, kivy_home
                )
        else:
            print("Xvfb is not installed: no window timings (apt-get install xvfb)\n")
        results: Results = {name: {p: [] for p in PATHS} for name in measures}
        for _ in range(runs):
            for name, measure in measures.items():
                for path in PATHS:
                    results[name][path].append(measure(path))
    return results


def shown(name: str, value: float) -> str:
    return f"{value:.0f} MiB" if name == "server peak" else seconds(value)


def report(results: Results) -> None:
    rows = []
    for name, by_path in results.items():
        ours, keras_first = (statistics.median(by_path[p]) for p in PATHS)
        ratio = paired_ratio(by_path["Keras first"], by_path["fedga"])
        rows.append(
            [
                name,
                shown(name, ours),
                shown(name, keras_first),
                f"{ratio:.1f}x",
                f"< {shown(name, TARGETS[name])}",
            ]
        )
    print_table(["what", "fedga", "Keras first", "Keras first / fedga", "target"], rows)


def check_targets(results: Results) -> bool:
    """A TARGET line for each figure measured: fedga's median under its bound."""
    met = True
    for name, by_path in results.items():
        ours = statistics.median(by_path["fedga"])
        met &= target(
            f"{name} (median)",
            shown(name, ours),
            f"< {shown(name, TARGETS[name])}",
            ours < TARGETS[name],
        )
    return met


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="launches of each path per figure")
    args = parser.parse_args(argv)
    print_header(
        "bench.startup: whole processes, fedga against the same launch with Keras "
        f"imported first (median of {args.runs} runs each, taking turns)"
    )
    results = collect(args.runs)
    report(results)
    return 0 if check_targets(results) else 1


if __name__ == "__main__":
    sys.exit(main())
