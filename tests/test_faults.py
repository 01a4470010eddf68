"""Faults injected into real processes: a client killed mid-round, a server killed
mid-training and restarted from its checkpoint, with every update counted exactly once, and
a server stopped by a signal, which saves its results first."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading

import pytest

from common import checkpoint
from common.checkpoint import CheckpointError
from common.data import XOR_TEST_DATA
from common.model import load_model_file
from common.ports import free_port
from tests.test_cli import Script
from tests.test_startup import PROBED

pytestmark = pytest.mark.slow  # each test starts, kills and restarts processes

NUM_PARAMS = 22  # the XOR model
SLOW = 180  # seconds: a whole training run, possibly on a busy machine
ROUND = re.compile(r"round=(\d+) client=\S+ update_accuracy=\S+ accuracy=\S+ update=(\S+)")


def _rounds(script: Script) -> list[tuple[int, str]]:
    """(round, update key) for each accepted update the server logged."""
    return [(int(m[1]), m[2]) for m in map(ROUND.search, script.lines) if m]


def test_a_client_killed_mid_round_does_not_stop_the_others():
    address = ["--headless", "--host", "127.0.0.1", "--port", str(free_port())]
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(Script("server.py", *address, "--round-delay", "0.2"))
        server.wait_for_line("listening on")
        victim, *others = (
            stack.enter_context(Script(name, *address))
            for name in ("client1.py", "client1.py", "client2.py")
        )
        victim.wait_for_line("trained round")  # its update is on the way or being held
        victim.process.kill()
        assert victim.finish() == -signal.SIGKILL
        codes = [script.finish(SLOW) for script in (*others, server)]
    outputs = "\n".join(script.output() for script in (*others, server))
    assert codes == [0, 0, 0], outputs
    assert "finished: accuracy=1.0000" in server.output()
    assert [o.output().count("server says done (accuracy=1.0)") for o in others] == [1, 1]
    assert "Traceback" not in outputs


class CheckpointWatcher(threading.Thread):
    """Loads the checkpoint over and over while the servers write it: every load must see a
    whole file (before the first save, none at all)."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.loads, self.failures = path, 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.005):  # pacing, not synchronisation
            try:
                checkpoint.load(self.path, NUM_PARAMS)
                self.loads += 1
            except CheckpointError as exc:
                if self.loads or not str(exc).endswith("does not exist."):
                    self.failures.append(str(exc))


def test_a_server_killed_mid_training_resumes_from_its_checkpoint(tmp_path):
    path = tmp_path / "state.npz"
    address = ["--headless", "--host", "127.0.0.1", "--port", str(free_port())]
    # The tutorial's rule: running-best often holds a model at accuracy 1.0 by round 2 (under
    # the unreachable target below), and the resumed server would then be done at once.
    serve = ["server.py", *address, "--checkpoint", str(path), "--aggregation", "running-average"]
    watcher = CheckpointWatcher(path)
    watcher.start()
    with contextlib.ExitStack() as stack:
        stack.callback(watcher.join, SLOW)
        stack.callback(watcher.stop.set)
        # An unreachable target before the kill: training must not end by round 2 (a lucky
        # first update can reach accuracy 1.0); the resumed server trains to the real one.
        first = stack.enter_context(Script(*serve, "--round-delay", "2", "--target-accuracy", "2"))
        first.wait_for_line("listening on")
        clients = [
            stack.enter_context(Script(name, *address)) for name in ("client1.py", "client2.py")
        ]
        # Round 2 is saved and logged; --round-delay still holds its reply for 2 s.
        first.wait_for_line("round=2 ")
        first.process.kill()
        assert first.finish() == -signal.SIGKILL
        saved = checkpoint.load(path, NUM_PARAMS)
        second = stack.enter_context(Script(*serve, "--resume"))
        codes = [script.finish(SLOW) for script in (second, *clients)]
    outputs = "\n".join(script.output() for script in (first, second, *clients))
    assert codes == [0, 0, 0], outputs
    assert "finished: accuracy=1.0000" in second.output()

    # The round count continues from the checkpoint, with no gap and no repeat.
    before, after = _rounds(first), _rounds(second)
    assert f"resumed from {path}: round={saved.round} " in second.output()
    assert [r for r, _ in before] == list(range(1, len(before) + 1))
    assert 2 <= len(before) <= saved.round
    assert [r for r, _ in after] == list(range(saved.round + 1, saved.round + len(after) + 1))

    # No update counted twice: round 2's update, applied but unanswered, came back and was
    # recognised; nothing at or below a client's saved sequence was applied again.
    keys = [key for _, key in before + after]
    assert len(keys) == len(set(keys))
    assert f"resent update={before[1][1]}, already counted: not counted again" in second.output()
    for key in (key for _, key in after):
        client_id, sequence = key.rsplit("#", 1)
        assert int(sequence) > saved.sequences.get(client_id, 0), key
    for client in clients:
        assert "reconnected to 127.0.0.1:" in client.output()
        assert client.output().count("server says done (accuracy=1.0)") == 1

    # The file was whole at every moment, ends with the final state, and nothing else is left.
    assert watcher.loads > 0 and watcher.failures == []
    final = checkpoint.load(path, NUM_PARAMS)
    assert (final.round, final.accuracy) == (after[-1][0], 1.0)
    assert os.listdir(tmp_path) == ["state.npz"]
    assert "Traceback" not in outputs


SAVED = re.compile(r"saved the best global model \(round (\d+), accuracy=(\S+)\)")


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "Ctrl-C"]
)
def test_a_stopped_server_saves_its_model_and_plot_first(tmp_path, signum, code):
    model, history, plot = tmp_path / "best.keras", tmp_path / "history.csv", tmp_path / "plot.png"
    address = ["--headless", "--host", "127.0.0.1", "--port", str(free_port())]
    outputs = ["--save-model", str(model), "--history", str(history), "--plot", str(plot)]
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            Script(
                "server.py",
                *address,
                *outputs,
                "--target-accuracy",
                "2",  # out of reach: only the signal ends this training
                "--aggregation",
                "running-average",
                env=PROBED,  # says if it imports Keras, which could take longer than allowed
            )
        )
        server.wait_for_line("listening on")
        stack.enter_context(Script("client1.py", *address))
        server.wait_for_line("round=3 ")
        server.process.send_signal(signum)
        assert server.finish() == code, server.output()
    output = server.output()
    assert "Traceback" not in output
    assert "stopped by request after" in output
    assert f"drew the history to {plot}" in output
    assert "saved the results in " in output
    assert "heavy import" not in output  # the .keras file was written without Keras
    rounds = _rounds(server)
    assert [r for r, _ in rounds] == list(range(1, len(rounds) + 1))
    (best_round, best_accuracy), *_ = (
        (int(m[1]), float(m[2])) for m in map(SAVED.search, server.lines) if m
    )
    assert best_round <= len(rounds)  # the initial model (round 0) may be the best

    # Whole files, and no temporary one left: the model scores what the log says.
    assert sorted(os.listdir(tmp_path)) == ["best.keras", "history.csv", "plot.png"]
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    saved = load_model_file(str(model))
    accuracy = saved.forward.accuracy(
        saved.initial_vector, XOR_TEST_DATA.inputs, XOR_TEST_DATA.outputs
    )
    assert accuracy == pytest.approx(best_accuracy, abs=1e-4)
