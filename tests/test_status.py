"""Headless runs on a terminal show a live status line; piped, they print plain lines only."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import threading

import pytest

from common.events import Event, EventKind
from common.status import ClientStatus, StatusLine
from tests.conftest import WAIT
from tests.test_cli import ROOT


def _run_on_a_terminal(args: list[str]) -> str:
    """Run a script with a pseudo-terminal as its stderr; return all it wrote there."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / args[0]), *args[1:]],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the terminal closed: the process ended
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        assert process.wait(WAIT * 2) == 0
    finally:
        process.kill()
        reader.join(WAIT)
        os.close(leader)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_terminal_gets_a_status_line_and_a_pipe_does_not():
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "server.py"),
            "--headless",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--linger",
            "0",
            # rounds wait for both clients: client1 surely trains one
            "--aggregation",
            "fedavg",
            "--round-timeout",
            "60",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        port = None
        for line in server.stdout:
            if "listening on" in line:
                port = line.split("127.0.0.1:")[1].split()[0]
                break
        client = threading.Thread(
            target=subprocess.run,
            kwargs=dict(
                args=[
                    sys.executable,
                    str(ROOT / "client2.py"),
                    "--headless",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    port,
                ],
                cwd=ROOT,
                capture_output=True,
                timeout=WAIT,
            ),
        )
        client.start()
        terminal = _run_on_a_terminal(
            ["client1.py", "--headless", "--host", "127.0.0.1", "--port", port]
        )
        client.join(WAIT)
        piped = server.stdout.read()
    finally:
        server.kill()
        server.wait(WAIT)
        server.stdout.close()
    assert "\r\x1b[K[client1] round " in terminal and "] generation " in terminal
    assert "server says done" in terminal  # log lines still come through
    assert "\r" not in piped and "round=" in piped


def test_the_client_bar_fills_over_the_generations_the_server_sent():
    # The round runs the server's num_generations (40 here), whatever the client's own were.
    stream = io.StringIO()
    status = ClientStatus(StatusLine(stream), "client1")
    status(Event(EventKind.MODEL, round=3, generation=40))
    status(Event(EventKind.GENERATION, round=3, generation=10, fitness=2.0))
    assert stream.getvalue().endswith(
        "[client1] round 3 [#####---------------] generation 10  best fitness 2"
    )
