"""A Flower deployment on this machine, started and stopped for you: a SuperLink and N
SuperNodes on free ports, each its own process group, with a ``FLWR_HOME`` of their own, then
``flwr run`` on this project (a Flower app by its ``pyproject.toml``). The README shows the
same steps by hand.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # flower-superlink & co. are installed beside Python
CONNECTION = "fedga-local"
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_config_text(settings: dict) -> str:
    """``flwr run --run-config`` syntax: key=value pairs, strings quoted as TOML."""
    return " ".join(f'{key}="{value}"' if isinstance(value, str) else f"{key}={value}"
                    for key, value in settings.items())


class LocalDeployment:
    """``with LocalDeployment(3, folder) as deployment: deployment.run({...})``; leaving the
    block stops every process it started, Flower's children included (by process group)."""

    def __init__(self, nodes: int, folder: Path, data_files: list[str] | None = None):
        self.nodes, self.folder = nodes, Path(folder)
        self.data_files = data_files
        self.processes: list[subprocess.Popen] = []
        self.home = self.folder / "flwr-home"
        self.env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                        FLWR_HOME=str(self.home), PYTHONPATH=str(PROJECT),
                        # This venv has what the app needs: no venv built per run.
                        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")

    def _start(self, command: list[str], log_name: str, stream=None) -> subprocess.Popen:
        """Start ``command`` in a process group of its own, its output to ``stream`` or else
        to ``log_name`` in the folder."""
        with (self.folder / log_name).open("wb") if stream is None else nullcontext(stream) as out:
            process = subprocess.Popen(command, cwd=PROJECT, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def __enter__(self) -> LocalDeployment:
        self.home.mkdir(parents=True, exist_ok=True)
        link = free_port()
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{link}"\ninsecure = true\n')
        try:
            self._start([str(BIN / "flower-superlink"), "--insecure", "--port", str(link)],
                        "superlink.log")
            for node in range(self.nodes):
                data = (f"data='{self.data_files[node]}'" if self.data_files
                        else f"partition-id={node} num-partitions={self.nodes}")
                self._start([str(BIN / "flower-supernode"), "--insecure", "--superlink",
                             f"127.0.0.1:{link}", "--port", str(free_port()),
                             "--node-config", data], f"supernode-{node + 1}.log")
        except BaseException:
            self.stop()
            raise
        return self

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

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
