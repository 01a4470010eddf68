"""A long run under a changing fault schedule: the server's memory, descriptors and threads
over time, and every update accounted for.

    python -m bench.soak [--minutes 30] [--clients 20] [--storm 30] [--seed 1]

The server runs as ``server.py --headless`` in its own process, so the numbers sampled are
its own: the digits set (``common.datasets``: 64-32-10 Dense model), fedavg rounds of every
client (``--min-clients`` the client count, ``--round-timeout 5``), notices every 2 s, and a
target out of reach so that it trains until the soak ends. The clients run here, as threads,
each on its own part of the training data, all through one fault proxy
(tests/faults/proxy.py), and reconnect on any fault (``--retries 20``). Every ``--storm``
seconds the schedule turns: a storm, then as long a calm, the storms in turn:

- latency: 100 ms +- 50 each way, on every connection;
- bandwidth: 16 KiB/s each way, on every connection;
- cuts: half the connections cut after 50 KB from the server (mid-population), a third
  reset 3 s in;
- blackholes: a fifth of the connections swallow everything, closed 10 s later;
- kills: a quarter of the clients stopped; new ones (new names) start when the storm ends.

The last quarter of the run is calm. Every 5 s the server's RSS, open descriptors and threads
are sampled from /proc and printed. Targets: RSS grows less than 5% from the 25% mark to the
end (medians of the samples around each: one swings by a few MiB with the messages in
flight); descriptors and threads at the end of each calm are within 2 of those at the end of
the first; 0 updates lost or applied twice (tests/faults/ledger.py, on the server's log
against every client's updates; a stopped client's last update counts as unanswered); and
after the storms the global model reaches 0.9 on the server's test data.

CI runs none of it: a soak worth the name takes minutes, beyond pytest's 120 s per test, and
the fault tests cover each fault alone.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import PYTHON, ROOT, print_header, print_table, read_history, target
from common.client import ClientConfig, Reconnector, RecvThread, connect
from common.datasets import export
from common.ports import free_port
from tests.faults.ledger import ledger
from tests.faults.proxy import STREAMS, FaultProxy

SAMPLE_EVERY = 5.0  # seconds between samples of the server's resources
ACCURACY = 0.9  # on digits' server test data, after the storms
STORMS = ("latency", "bandwidth", "cuts", "blackholes", "kills")
KILLED_SHARE = 0.25
LOG_LINE = re.compile(r"^\S+ \[server\] [A-Z]+ (.*)$")


def add_storm(proxy: FaultProxy, storm: str) -> None:
    """The toxics of ``storm`` (kills have none)."""
    for stream in STREAMS:
        if storm == "latency":
            proxy.add_toxic("latency", stream=stream, latency=100, jitter=50)
        elif storm == "bandwidth":
            proxy.add_toxic("bandwidth", stream=stream, rate=16)
        elif storm == "blackholes":
            proxy.add_toxic("timeout", stream=stream, timeout=10_000, toxicity=0.2)
    if storm == "cuts":
        proxy.add_toxic("limit_data", stream="downstream", bytes=50_000, toxicity=0.5)
        proxy.add_toxic("reset_peer", stream="downstream", timeout=3_000, toxicity=0.3)


def calm(proxy: FaultProxy) -> None:
    for toxic in proxy.toxics:
        proxy.remove_toxic(toxic.name)


class Server:
    """``server.py --headless`` in its own process; its log lines kept as they come."""

    def __init__(self, args: list[str]):
        self.process = subprocess.Popen(
            [PYTHON, str(ROOT / "server.py"), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if "listening on" in line:
                self._listening.set()
        self._listening.set()  # it ended: whoever waits should look

    def wait_listening(self, timeout: float = 120) -> None:
        if not self._listening.wait(timeout) or self.process.poll() is not None:
            raise SystemExit("the server did not start:\n" + "\n".join(self.lines[-20:]))

    def sample(self) -> tuple[float, int, int]:
        """(RSS in MiB, open descriptors, threads) from /proc."""
        pid = self.process.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)[1]) / 1024
        threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M)[1])
        return rss, len(list(Path(f"/proc/{pid}/fd").iterdir())), threads

    def stop(self) -> list[str]:
        """SIGTERM, then its log messages (without time and level)."""
        self.process.terminate()
        self.process.wait(60)
        self._pump.join(60)
        return [m[1] for m in map(LOG_LINE.match, self.lines) if m]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--storm", type=float, default=30, help="seconds per storm and calm")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    logging.getLogger("common").setLevel(logging.ERROR)  # the clients' reconnect warnings
    print_header(f"bench.soak: {args.minutes:g} minutes, {args.clients} clients, faults")
    with tempfile.TemporaryDirectory(prefix="fedga-soak-") as folder:
        return soak(args, Path(folder))


def soak(args: argparse.Namespace, folder: Path) -> int:
    """The run, its files in ``folder``; the exit code."""
    data = export("digits", args.clients, args.seed)
    (folder / "model.json").write_text(data.model_json)
    np.savez(folder / "test.npz", inputs=data.server_test.inputs, outputs=data.server_test.outputs)
    port = free_port()
    server = Server(
        [
            "--headless",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model",
            str(folder / "model.json"),
            "--test-data",
            str(folder / "test.npz"),
            "--aggregation",
            "fedavg",
            "--min-clients",
            str(args.clients),
            "--round-timeout",
            "5",
            "--notice-interval",
            "2",
            "--target-accuracy",
            "2",  # out of reach: it trains until the soak ends
            "--max-rounds",
            "100000000",
            "--history",
            str(folder / "history.csv"),
            "--seed",
            str(args.seed),
        ]
    )
    server.wait_listening()
    rng = random.Random(args.seed)
    clients: list[RecvThread] = []  # every client ever started, for the ledger
    running: dict[int, RecvThread] = {}  # by its slot, a part of the data

    with FaultProxy(("127.0.0.1", port), seed=args.seed) as proxy:

        def start(slot: int) -> None:
            config = ClientConfig(
                host=proxy.address[0],
                port=proxy.address[1],
                name=f"c{slot}-{len(clients)}",
                retries=20,
                seed=args.seed + len(clients),
            )
            thread = RecvThread(
                sock=connect(*proxy.address, timeout=30),
                data=data.clients[slot],
                config=config,
                reconnect=Reconnector(config.host, config.port, config.retries),
            )
            thread.start()
            clients.append(thread)
            running[slot] = thread

        for slot in range(args.clients):
            start(slot)
        began = time.monotonic()
        total, storms_end = args.minutes * 60, args.minutes * 60 * 0.75
        samples: list[tuple[float, float, int, int]] = []
        # (the storm before, fds, threads, connections through the proxy so far)
        after_calm: list[tuple[str, int, int, int]] = []
        phase, storm, killed = 0, "start", []
        next_sample = began
        print("     t  phase       RSS MiB  fds  threads", flush=True)
        while (now := time.monotonic() - began) < total:
            if now >= next_sample - began:
                rss, fds, threads = server.sample()
                samples.append((now, rss, fds, threads))
                label = storm if phase % 2 else "calm"
                print(f"{now:6.0f}  {label:10}  {rss:7.1f}  {fds:3d}  {threads:7d}", flush=True)
                next_sample += SAMPLE_EVERY
            if now >= (phase + 1) * args.storm:  # the phase ends
                if phase % 2:  # a storm ends: calm, and the killed come back as new clients
                    calm(proxy)
                    for slot in killed:
                        start(slot)
                    killed = []
                else:  # a calm ends: note where it left the server, then the next storm
                    after_calm.append((storm, *samples[-1][2:], len(proxy.links)))
                    if now < storms_end:
                        storm = STORMS[(phase // 2) % len(STORMS)]
                        add_storm(proxy, storm)
                        if storm == "kills":
                            killed = rng.sample(sorted(running), int(args.clients * KILLED_SHARE))
                            for slot in killed:
                                running.pop(slot).stop()
                    else:
                        storm = "calm"
                phase += 1
            time.sleep(0.2)  # pacing the schedule, not synchronisation
        storms_ended_at = time.time() - (total - storms_end)
        for thread in running.values():
            thread.stop()
        for thread in clients:
            thread.join(60)
        ended = Counter(link.ended for link in proxy.links)
        lines = server.stop()
    results = report(samples, after_calm, ended, lines, clients, folder, storms_ended_at)
    return 0 if check_targets(results) else 1


def _rss_near(samples, start: float, end: float) -> float:
    """The median RSS of the samples taken between these shares of the run: one sample
    swings by a few MiB with the messages in flight."""
    last = samples[-1][0]
    return statistics.median(rss for t, rss, _, _ in samples if start * last <= t <= end * last)


@dataclass(frozen=True)
class Results:
    """What a soak recorded, reduced to the numbers its targets read (plain data)."""

    rss_quarter: float  # MiB, the median of the samples around the 25% mark
    rss_final: float  # MiB, the median of those in the last 10%
    drift: list[tuple[str, int, int, int]]  # per storm: (storm, fds, threads, new connections)
    lost: int  # updates sent and never answered
    duplicated: int  # updates applied twice
    accuracy_after: float  # the best on the server's test data once the storms ended

    @property
    def growth(self) -> float:
        return (self.rss_final - self.rss_quarter) / self.rss_quarter


def report(samples, after_calm, ended, lines, clients, folder: Path, storms_ended_at) -> Results:
    """The drift table and the run's summary line; the results the targets read."""
    rounds = sum(1 for line in lines if re.match(r"round=\d+ ", line))
    book = ledger(lines, clients)
    _, base_fds, base_threads, _ = after_calm[0]  # the first calm, before any storm
    drift = [
        (storm, fds - base_fds, threads - base_threads, links - before[3])
        for before, (storm, fds, threads, links) in zip(after_calm, after_calm[1:])
    ]
    after = [r.accuracy for r in read_history(folder / "history.csv") if r.time >= storms_ended_at]
    results = Results(
        _rss_near(samples, 0.2, 0.3),
        _rss_near(samples, 0.9, 1.0),
        drift,
        len(book.lost),
        len(book.duplicated),
        max(after, default=0.0),
    )
    endings = ", ".join(f"{n} {how or 'open at the end'}" for how, n in ended.items())
    print()
    print_table(
        ["storm", "new connections", "descriptors after the calm", "threads after the calm"],
        [[storm, links, f"{fds:+d}", f"{threads:+d}"] for storm, fds, threads, links in drift],
    )
    print(
        f"{rounds} rounds; {len(clients)} clients; {sum(book.applied.values())} updates "
        f"applied, {len(book.refused)} refused with a reason, {len(book.answered)} answered; "
        f"connections ended: {endings}; RSS {results.rss_quarter:.1f} MiB around the 25% mark, "
        f"{results.rss_final:.1f} MiB in the last 10%"
    )
    return results


def check_targets(results: Results) -> bool:
    met = target(
        "server RSS growth from the 25% mark to the end (medians)",
        f"{100 * results.growth:+.1f}%",
        "< 5%",
        results.growth < 0.05,
    )
    worst = max((max(abs(f), abs(t)) for _, f, t, _ in results.drift), default=0)
    met &= target(
        "descriptors and threads after each storm vs the first calm",
        f"within {worst}",
        "within 2",
        worst <= 2,
    )
    met &= target(
        "updates lost / applied twice",
        f"{results.lost} / {results.duplicated}",
        "0 / 0",
        not results.lost and not results.duplicated,
    )
    best = results.accuracy_after
    met &= target("accuracy after the storms", f"{best:.3f}", f">= {ACCURACY}", best >= ACCURACY)
    return met


if __name__ == "__main__":
    sys.exit(main())
