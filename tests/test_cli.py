"""The headless entry points as a user runs them: separate processes, real flags, exit codes."""

from __future__ import annotations

import contextlib
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from common.app import EXIT_CODES
from common.events import Outcome
from common.ports import free_port
from tests.conftest import WAIT

ROOT = Path(__file__).resolve().parent.parent


class Script:
    """A running entry point whose stderr lines can be waited on."""

    def __init__(self, script: str, *args: str, preexec_fn=None, env=None):
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / script), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=preexec_fn,
            env=env,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.process.kill()  # no-op once it exited
        self.process.wait(WAIT)
        self._pump_thread.join(WAIT)
        self.process.stdout.close()

    def _pump(self):
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_line(self, text: str, timeout: float = WAIT) -> str:
        for line in self.lines:
            if text in line:
                return line
        while True:
            line = self._queue.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"{text!r} never printed; output:\n{''.join(self.lines)}")
            self.lines.append(line)
            if text in line:
                return line

    def finish(self, timeout: float = WAIT) -> int:
        code = self.process.wait(timeout)
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        return code

    def output(self) -> str:
        return "".join(self.lines)


@pytest.mark.slow
@pytest.mark.parametrize(
    "order",
    [("server.py", "client1.py", "client2.py"), ("client1.py", "client2.py", "server.py")],
    ids=["server first", "clients first"],
)
def test_headless_run_reaches_done_in_any_start_order(order):
    port = str(free_port())
    with contextlib.ExitStack() as stack:
        scripts = [
            stack.enter_context(Script(name, "--headless", "--host", "127.0.0.1", "--port", port))
            for name in order
        ]
        codes = {s.process.args[1]: s.finish(timeout=180) for s in scripts}
    outputs = "\n".join(s.output() for s in scripts)
    assert set(codes.values()) == {0}, outputs
    assert "finished: accuracy=1.0000" in outputs
    assert outputs.count("server says done (accuracy=1.0)") == 2


@pytest.mark.slow
def test_a_client_whose_server_gave_up_says_so_and_exits_with_its_code():
    port = str(free_port())
    flags = ("--headless", "--host", "127.0.0.1", "--port", port)
    with (
        Script(
            "server.py",
            *flags,
            "--max-rounds",
            "2",
            "--target-accuracy",
            "1.5",  # impossible: the rounds run out
            "--expected-clients",
            "1",
        ) as server,
        Script("client1.py", *flags) as client,
    ):
        codes = [server.finish(timeout=180), client.finish(timeout=180)]
    assert codes == [EXIT_CODES[Outcome.GAVE_UP]] * 2 == [2, 2], client.output()
    assert "the server gave up after its round limit: accuracy" in client.output()
    assert "server says done" not in client.output()


@pytest.mark.slow
def test_sigterm_stops_the_server_cleanly():
    with Script("server.py", "--headless", "--host", "127.0.0.1", "--port", "0") as server:
        server.wait_for_line("listening on")
        server.process.send_signal(signal.SIGTERM)
        assert server.finish() == 143
    assert "Traceback" not in server.output()


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# "ignored": started as a non-interactive shell starts a background job (`client1.py &` in a
# script, or a CI job), which inherits SIGINT ignored; the client still honours it.
@pytest.mark.slow
@pytest.mark.parametrize("inherited", [None, _ignore_sigint], ids=["default", "ignored"])
def test_ctrl_c_stops_a_waiting_client(inherited):
    listening = socket.create_server(("127.0.0.1", 0))
    with (
        listening,
        Script(
            "client1.py",
            "--headless",
            "--host",
            "127.0.0.1",
            "--port",
            str(listening.getsockname()[1]),
            preexec_fn=inherited,
        ) as client,
    ):
        client.wait_for_line("connecting to")
        connection, _ = listening.accept()
        with connection:
            connection.recv(1024)  # the echo arrived; the client now waits for a reply
            client.process.send_signal(signal.SIGINT)
            assert client.finish() == 130
    assert "Traceback" not in client.output()


@pytest.mark.slow
def test_unreachable_server_is_one_line_and_exit_1():
    with Script(
        "client2.py",
        "--headless",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--connect-timeout",
        "0.5",
    ) as client:
        assert client.finish() == 1
    errors = [line for line in client.lines if " ERROR " in line]
    assert len(errors) == 1 and "is unreachable" in errors[0]
    assert "Traceback" not in client.output()


@pytest.mark.slow
def test_port_in_use_is_one_line_and_exit_1():
    with (
        socket.create_server(("127.0.0.1", 0)) as taken,
        Script(
            "server.py", "--headless", "--host", "127.0.0.1", "--port", str(taken.getsockname()[1])
        ) as server,
    ):
        assert server.finish() == 1
    assert "is already in use." in server.output()
    assert "Traceback" not in server.output()


@pytest.mark.slow
@pytest.mark.parametrize("name,content", [("missing.npz", None), ("broken.npz", b"garbage")])
def test_resume_from_a_missing_or_broken_checkpoint_is_one_line_and_exit_1(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with Script(
        "server.py",
        "--headless",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--checkpoint",
        str(path),
        "--resume",
    ) as server:
        assert server.finish() == 1
    errors = [line for line in server.lines if " ERROR " in line]
    assert len(errors) == 1 and f"The checkpoint {path} " in errors[0]
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_resume_needs_a_checkpoint_path():
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--headless", "--resume"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert "--resume needs --checkpoint PATH" in result.stderr


@pytest.mark.slow
def test_a_headless_client_of_ones_own_needs_its_data_file():
    """Without --data, client.py opens a window with an empty data row; headless it cannot."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "client.py"), "--headless"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert "--headless needs --data FILE" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, sentence",
    [
        (["--beta1", "0.5"], "running-best takes no beta1 setting: it is for fedadam and fedyogi."),
        (
            ["--aggregation", "fedyogi", "--beta2", "1"],
            "beta2 must be at least 0 and below 1, not 1.",
        ),
        (
            ["--aggregation", "fedavgm", "--server-momentum", "-1"],
            "server-momentum must be at least 0 and below 1, not -1.",
        ),
        (
            ["--aggregation", "norm-bounded", "--clip-norm", "-1"],
            "clip-norm must be greater than 0, not -1.",
        ),
        (
            ["--aggregation", "krum", "--byzantine", "2", "--min-clients", "6"],
            "With min-clients 6, krum cannot tolerate 2 attackers with 6 updates: it needs more "
            "than 2F + 2 = 6.",
        ),
        (
            ["--aggregation", "krum", "--byzantine", "1.5"],
            "argument --byzantine: '1.5' is not a whole number",
        ),
    ],
)
def test_an_aggregation_setting_that_cannot_be_used_is_a_usage_error(flags, sentence):
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--headless", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"server.py: error: {sentence}"


@pytest.mark.slow
@pytest.mark.parametrize("script", ["server.py", "client1.py"])
def test_bad_port_is_a_usage_error(script):
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--headless", "--port", "70000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert "port 70000 is outside 0-65535" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,flags",
    [
        (
            "server.py",
            [
                "--headless",
                "--host",
                "--port",
                "--recv-timeout",
                "--idle-timeout",
                "--min-rate",
                "--buffer-size",
                "--max-rounds",
                "--max-message-bytes",
                "--log-level",
                "--round-delay",
                "--num-solutions",
                "--seed",
                "--checkpoint",
                "--resume",
                "--operators",
                "--mutation-step",
                "--server-learning-rate",
                "--server-momentum",
                "--beta1",
                "--beta2",
                "--tau",
                "--byzantine",
                "--clip-norm",
                "--max-claimed-samples",
            ],
        ),
        (
            "client2.py",
            [
                "--headless",
                "--host",
                "--port",
                "--recv-timeout",
                "--idle-timeout",
                "--min-rate",
                "--buffer-size",
                "--connect-timeout",
                "--num-generations",
                "--log-level",
                "--retries",
                "--operators",
                "--mutation-step",
            ],
        ),
    ],
)
def test_help_documents_every_flag(script, flags):
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 0
    for flag in flags:
        assert flag in result.stdout


@pytest.mark.parametrize(
    "flags,expected",
    [
        ([], ("scaled", 0.3)),
        (["--operators", "tutorial", "--mutation-step", "0.5"], ("tutorial", 0.5)),
    ],
)
def test_operator_flags_reach_the_settings_the_server_sends(flags, expected):
    from common.app import build_global_model
    from common.cli import server_parser
    from common.flags import server_config_from

    args = server_parser().parse_args(flags)
    global_model = build_global_model(server_config_from(args))
    assert (global_model.ga.operators, global_model.ga.mutation_step) == expected
    reply = global_model.reply_to_echo().to_message().data
    assert (reply["operators"], reply["mutation_step"]) == expected


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], (10, 0)),  # the tutorial's XOR model's
        (["--test-data", "test.npz"], (0, 3)),  # any other model's: common.ga.REAL_DATA
        (["--test-data", "test.npz", "--stop-fitness", "5"], (5, 3)),
        (["--stop-fitness", "0", "--step-patience", "2"], (0, 2)),
    ],
)
def test_ga_flags_left_unset_are_left_to_the_model(flags, expected):
    from common.cli import server_parser
    from common.flags import server_config_from
    from common.auto import AUTO

    config = server_config_from(server_parser().parse_args(flags))
    settings = config.settings()
    for flag, name in (("--stop-fitness", "stop_fitness"), ("--step-patience", "step_patience")):
        assert (settings[name] is AUTO) == (flag not in flags)
    ga = config.training.resolved().ga
    assert (ga.stop_fitness, ga.step_patience) == expected


@pytest.mark.slow
def test_a_headless_server_logs_its_settings_resolved_when_it_listens():
    with Script("server.py", "--headless", "--host", "127.0.0.1", "--port", "0") as server:
        listening = server.wait_for_line("listening on")
        line = server.wait_for_line("settings in effect")
        server.process.send_signal(signal.SIGTERM)
        server.finish()
    assert server.lines.index(line) == server.lines.index(listening) + 1
    assert "aggregation=running-best, min-clients=2, round-timeout=5," in line
    assert "GA: num-generations=50, num-parents-mating=4, mutation-percent-genes=5, " in line
    assert "stop-fitness=10, operators=scaled, mutation-step=0.3, step-patience=0" in line


@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            ["--aggregation", "fedavgm"],
            "fedavgm (server-learning-rate=0.1, server-momentum=0.9, "
            "max-claimed-samples=3x the round's median claim)",
        ),
        (
            ["--aggregation", "fedadam", "--server-learning-rate", "0.03", "--tau", "0.01"],
            "fedadam (server-learning-rate=0.03, beta1=0.9, beta2=0.99, tau=0.01, "
            "max-claimed-samples=3x the round's median claim)",
        ),
        (
            ["--aggregation", "fedyogi", "--beta1", "0", "--beta2", "0.5"],
            "fedyogi (server-learning-rate=0.01, beta1=0, beta2=0.5, tau=0.001, "
            "max-claimed-samples=3x the round's median claim)",
        ),
        (["--aggregation", "krum", "--min-clients", "5"], "krum (byzantine=1)"),
        (
            ["--aggregation", "multi-krum", "--byzantine", "0", "--min-clients", "3"],
            "multi-krum (byzantine=0)",
        ),
        (
            [
                "--aggregation",
                "norm-bounded",
                "--clip-norm",
                "2.5",
                "--max-claimed-samples",
                "1000",
            ],
            "norm-bounded (clip-norm=2.5, max-claimed-samples=1000)",
        ),
        (
            ["--aggregation", "fedavg", "--max-claimed-samples", "50"],
            "fedavg (max-claimed-samples=50)",
        ),
    ],
)
def test_aggregation_setting_flags_reach_the_servers_rule(flags, expected):
    from common.app import build_global_model
    from common.cli import server_parser
    from common.flags import server_config_from

    global_model = build_global_model(server_config_from(server_parser().parse_args(flags)))
    assert str(global_model.aggregation) == expected


@pytest.mark.parametrize("script", ["server", "client1"])
def test_the_ga_flags_old_names_are_hidden_aliases_of_the_new(script):
    from common.cli import client_parser, server_parser
    from common.flags import OLD_NAMES

    parser = server_parser() if script == "server" else client_parser(script)
    old = ["--generations", "7", "--parents-mating", "3", "--mutation-percent", "2.5"]
    new = ["--num-generations", "7", "--num-parents-mating", "3", "--mutation-percent-genes", "2.5"]
    assert [flag for flag in old if flag.startswith("--")] == list(OLD_NAMES)
    assert vars(parser.parse_args(old)) == vars(parser.parse_args(new))
    unset = vars(parser.parse_args([]))
    assert unset["num_generations"] is None and "generations" not in unset
    shown = parser.format_help()
    assert all(f"{flag} " not in shown and f"{flag}\n" not in shown for flag in OLD_NAMES)
    assert all(flag in shown for flag in OLD_NAMES.values())
    with pytest.raises(SystemExit):
        parser.parse_args(["--generations", "0"])  # checked as the new flag is


def test_the_deadline_flags_reach_the_server_and_client_configs():
    from common.cli import client_parser, server_parser
    from common.client import ClientConfig
    from common.flags import config_from, server_config_from

    flags = ["--recv-timeout", "4", "--min-rate", "2.5", "--idle-timeout", "60"]
    network = server_config_from(server_parser().parse_args(flags)).network
    client = config_from(client_parser("client1").parse_args(flags), ClientConfig)
    for config in (network, client):
        assert (config.recv_timeout, config.min_rate, config.idle_timeout) == (4, 2.5, 60)
    defaults = server_config_from(server_parser().parse_args([])).network
    assert defaults.min_rate == ClientConfig().min_rate == 8.0


def test_test_data_without_a_model_file_gets_a_dense_model_sized_to_it(tmp_path):
    """The tutorial's 2-4-2 model only for its own four samples: other data of two features
    and two classes gets the 16-unit default too (bench.default_model: with four hidden
    units the GA stalled below target on two moons)."""
    from common.app import build_global_model
    from common.data import XOR_TEST_DATA
    from common.server_config import ServerConfig

    np.savez(tmp_path / "xor.npz", inputs=XOR_TEST_DATA.inputs, outputs=XOR_TEST_DATA.outputs)
    given = build_global_model(ServerConfig.of(test_data=str(tmp_path / "xor.npz")))
    tutorial = build_global_model(ServerConfig())
    assert given.num_params == 2 * 16 + 16 + 16 * 2 + 2
    assert tutorial.num_params == 2 * 4 + 4 + 4 * 2 + 2
