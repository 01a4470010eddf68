"""A Flower deployment on this machine, started and stopped for you: a SuperLink and N
SuperNodes on free ports, each its own process group, with a ``FLWR_HOME`` of their own, then
``flwr run`` on this project (a Flower app by its ``pyproject.toml``). The README shows the
same steps by hand.

Each process is waited for until it serves, not for a time: the SuperLink until its HTTP port
answers ``GET /health`` (as Flower's own CLI checks a local SuperLink), each SuperNode until it
logs its node ID. Only then does ``flwr run`` start: it fails at once on a SuperLink that does
not serve yet, and Flower's strategy waits forever for nodes that never connect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from common.errors import DeploymentError
from common.ports import free_port

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # flower-superlink & co. are installed beside Python
CONNECTION = "fedga-local"
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
# Seconds each process may take to serve. Measured here (2 cores): the SuperLink and two
# SuperNodes all served 4 s after launch on idle cores, 8-13 s with the cores shared (load
# 8-12, a core kept busy too).
READY_TIMEOUT = 60.0
POLL_INTERVAL = 0.2  # seconds between readiness checks, Flower's own CLI's
# The SuperLink is on loopback: a proxy from the environment must not come between.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def superlink_serves(port: int) -> bool:
    """True once the SuperLink on this loopback port answers ``GET /health`` with 200."""
    try:
        with _DIRECT.open(f"http://127.0.0.1:{port}/health", timeout=1.0) as reply:
            return reply.status == 200
    except OSError:  # refused, reset or timed out: not serving yet
        return False


def node_online(log_file: Path) -> bool:
    """True once the SuperNode writing ``log_file`` logged its ID: Flower logs it after the
    node has registered with the SuperLink and gone online."""
    return b"SuperNode ID: " in log_file.read_bytes()


def run_config_text(settings: dict) -> str:
    """``flwr run --run-config`` syntax: key=value pairs, strings quoted as TOML."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in settings.items())


def toml_value(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class LocalDeployment:
    """``with LocalDeployment(3, folder) as deployment: deployment.run({...})``; leaving the
    block stops every process it started, Flower's children included (by process group)."""

    def __init__(self, nodes: int, folder: Path, data_files: list[str] | None = None):
        self.nodes, self.folder = nodes, Path(folder)
        self.data_files = data_files
        self.processes: list[subprocess.Popen] = []
        self.home = self.folder / "flwr-home"
        self.env = dict(
            os.environ,
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            FLWR_HOME=str(self.home),
            PYTHONPATH=str(PROJECT),
            # This venv has what the app needs: no venv built per run.
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        )

    def _start(self, command: list[str], log_name: str, stream=None) -> subprocess.Popen:
        """Start ``command`` in a process group of its own, its output to ``stream`` or else
        to ``log_name`` in the folder."""
        with (self.folder / log_name).open("wb") if stream is None else nullcontext(stream) as out:
            process = subprocess.Popen(
                command,
                cwd=PROJECT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def __enter__(self) -> LocalDeployment:
        self.home.mkdir(parents=True, exist_ok=True)
        link = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{link}"\ninsecure = true\n'
        )
        try:
            superlink = self._start(
                [str(BIN / "flower-superlink"), "--insecure", "--port", str(link)], "superlink.log"
            )
            self._wait_until_ready(
                superlink, "The SuperLink", "superlink.log", partial(superlink_serves, link)
            )
            for node in range(self.nodes):
                data = (
                    f"data='{self.data_files[node]}'"
                    if self.data_files
                    else f"partition-id={node} num-partitions={self.nodes}"
                )
                self._start(
                    [
                        str(BIN / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{link}",
                        "--port",
                        str(free_port()),
                        "--node-config",
                        data,
                    ],
                    f"supernode-{node + 1}.log",
                )
            # They start side by side; each is then checked in turn.
            for number, process in enumerate(self.processes[1:], 1):
                log_name = f"supernode-{number}.log"
                self._wait_until_ready(
                    process,
                    f"SuperNode {number}",
                    log_name,
                    partial(node_online, self.folder / log_name),
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(
        self, process: subprocess.Popen, name: str, log_name: str, ready: Callable[[], bool]
    ) -> None:
        """Return once ``ready()``; ``DeploymentError`` if ``process`` exits first or
        ``READY_TIMEOUT`` passes."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready():
            try:
                code = process.wait(POLL_INTERVAL)  # the poll's pause, cut short by an exit
            except subprocess.TimeoutExpired:
                if time.monotonic() < deadline:
                    continue
                raise DeploymentError(
                    f"{name} did not come up within {READY_TIMEOUT:g} s; "
                    f"see {self.folder / log_name}."
                ) from None
            raise DeploymentError(
                f"{name} exited with code {code} before it came up; see {self.folder / log_name}."
            )

    def run(self, settings: dict, timeout: float | None = None, stream=None) -> int:
        """``flwr run`` with these run-config settings; its output (the ServerApp's log) goes
        to ``stream`` (default: run.log in the folder). Returns its exit code."""
        command = [str(BIN / "flwr"), "run", str(PROJECT), CONNECTION, "--stream"]
        if settings:
            command += ["--run-config", run_config_text(settings)]
        return self._start(command, "run.log", stream).wait(timeout)

    def stop(self) -> None:
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # what SIGTERM left, children included
            process.wait()
            _wait_group_gone(process, STOP_GRACE)

    def __exit__(self, *exc_info) -> None:
        self.stop()


def live_members(sessions: set[int]) -> list[str]:
    """Processes (not zombies) left in the given sessions, as "pid name"."""
    left = []
    for entry in Path("/proc").iterdir():
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue  # not a process, or it ended meanwhile
        state, session = tail.split()[0], int(tail.split()[3])
        if session in sessions and state != "Z":
            left.append(f"{entry.name} {head.split('(', 1)[1]}")
    return left


def _wait_group_gone(process: subprocess.Popen, timeout: float) -> None:
    """Until no live process of ``process``'s session is left: SIGKILL is delivered
    asynchronously, and on a busy machine a child (Flower's SuperExec) can outlive its
    leader's exit by a moment. No event says so: /proc is polled for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while live_members({process.pid}) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
