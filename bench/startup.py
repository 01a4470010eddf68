"""Start-up, as whole processes: launch to exit of ``python -m common.demo``, the server
process's peak memory on XOR, and launch to the first drawn frame of the server and client
windows (under Xvfb, when it is installed), each beside the same launch with Keras imported
first (the path every entry point took before; ``bench/keras_first``).

    python -m bench.startup [--runs 5]

The two paths take turns, run by run, so each ratio compares launches made under the same load.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import paired_ratio, print_header, print_table, seconds, target

ROOT = Path(__file__).resolve().parents[1]
WAIT = 120  # seconds: any one launch that takes this long has failed
PATHS = {"fedga": {}, "Keras first": {"PYTHONPATH": str(ROOT / "bench" / "keras_first")}}
TARGETS = {"demo": 3.0, "server peak": 150.0, "server.py window": 2.0, "client1.py window": 2.0}


def _env(path: str, **extra: str) -> dict[str, str]:
    return {**os.environ, **PATHS[path], **extra}


def demo_seconds(path: str) -> float:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "common.demo"],
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
        [sys.executable, "server.py", *flags, "--expected-clients", "2"],
        cwd=ROOT,
        env=_env(path),
        stderr=subprocess.DEVNULL,
    )
    clients = [
        subprocess.Popen(
            [sys.executable, name, *flags], cwd=ROOT, env=_env(path), stderr=subprocess.DEVNULL
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


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """A private Xvfb; -displayfd reports its display number once it accepts clients."""
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(write_end),
            "-screen",
            "0",
            "1280x1024x24",
            "-nolisten",
            "tcp",
            "-noreset",
        ],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], WAIT)
    number = os.read(read_end, 64).decode().strip() if ready else ""
    os.close(read_end)
    if not number:
        xvfb.kill()
        raise SystemExit("Xvfb did not report a display number")
    return xvfb, f":{number}"


def window_seconds(path: str, script: str, display: str, kivy_home: str) -> float:
    """Launch to the window's first drawn frame, which the app logs as its "ready:" line."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, script, "--window-position", "0,0"],
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="launches of each path per figure")
    args = parser.parse_args(argv)
    print_header(
        "bench.startup: whole processes, fedga against the same launch with Keras "
        f"imported first (median of {args.runs} runs each, taking turns)"
    )
    measures = {"demo": demo_seconds, "server peak": server_peak_mib}
    xvfb = None
    if shutil.which("Xvfb"):
        xvfb, display = start_xvfb()
        kivy_home = tempfile.mkdtemp(prefix="fedga-kivy-")
        for script in ("server.py", "client1.py"):
            measures[f"{script} window"] = lambda path, script=script: window_seconds(
                path, script, display, kivy_home
            )
    else:
        print("Xvfb is not installed: no window timings (apt-get install xvfb)\n")
    results: dict[str, dict[str, list[float]]] = {name: {p: [] for p in PATHS} for name in measures}
    try:
        for _ in range(args.runs):
            for name, measure in measures.items():
                for path in PATHS:
                    results[name][path].append(measure(path))
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(WAIT)
            shutil.rmtree(kivy_home, ignore_errors=True)

    def shown(name: str, value: float) -> str:
        return f"{value:.0f} MiB" if name == "server peak" else seconds(value)

    rows, met = [], True
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
    for name, by_path in results.items():
        ours = statistics.median(by_path["fedga"])
        met &= target(
            f"{name} (median)",
            shown(name, ours),
            f"< {shown(name, TARGETS[name])}",
            ours < TARGETS[name],
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
