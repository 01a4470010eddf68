"""A run assembled in one place, for the command line, the windows and Flower alike: the
global model from a config (model, test data, GA settings, history), its results written
when training ends, a headless server run, and the exit codes and text parsers they share.

None of ``cli``, ``gui`` and ``flower`` imports another; each imports this.

Exit codes: 0 done, 1 a failure explained in one line, 2 gave up (--max-rounds) or bad
usage, 3 stopped by --patience, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). A
client exits with the code of the outcome its server sent with ``done`` (``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time

import numpy as np

from common.data import XOR_TEST_DATA, DataError, Dataset, fit_to_model, load_dataset
from common.errors import BindError, Terminated, UserError
from common.events import Outcome
from common.fitness_federation import FITNESS
from common.global_model import GlobalModel
from common.model import Network, load_model_file, xor_network
from common.modelspec import ModelRefused, dense_chain_json
from common.results import History, plot_history
from common.server import ListenThread
from common.server_config import SECURE_REFUSED, NetworkConfig, ServerConfig
from common.status import StatusLine

log = logging.getLogger(__name__)

EXIT_DONE, EXIT_FAILED, EXIT_GAVE_UP = 0, 1, 2
EXIT_PATIENCE = 3  # stopped: no better model for --patience rounds
EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
# How a training that ended ends its processes, the server's and (told with done) each
# client's. A headless server stopped by a signal exits 130 or 143 instead; to its clients,
# as to any stopped server, training ended early: a failure.
EXIT_CODES = {
    Outcome.DONE: EXIT_DONE,
    Outcome.GAVE_UP: EXIT_GAVE_UP,
    Outcome.PATIENCE: EXIT_PATIENCE,
    Outcome.STOPPED: EXIT_FAILED,
}

DEFAULT_HIDDEN_UNITS = 16  # of the Dense model sized to a test set when no model is given


def parse_port(text: str) -> int:
    """A TCP port from a flag or a window's field; ValueError says what is wrong in plain words."""
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return port


def number(kind):
    """A parser of a flag's or a window field's text into a ``kind`` number of any sign, for
    a setting whose bounds another part checks (an aggregation rule's: common.aggregate);
    ``argparse.ArgumentTypeError`` says what is wrong in plain words."""

    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None

    return parse


def positive(kind, *, zero_ok: bool = False):
    """A parser of a flag's or a window field's text into a ``kind`` number above 0 (or 0
    and above); ``argparse.ArgumentTypeError`` says what is wrong in plain words."""
    as_number = number(kind)

    def parse(text: str):
        value = as_number(text)
        if value < 0 or (value == 0 and not zero_ok):
            bound = "0 or more" if zero_ok else "greater than 0"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value

    return parse


def exit_on_mistake(exc: UserError) -> int:
    """End a run on a user's mistake: its one plain sentence in the log, no traceback."""
    log.error("%s", exc)
    return EXIT_FAILED


def configure_logging(level: str, role: str) -> StatusLine | None:
    """Plain log lines; on a terminal also a live status line, which is returned."""
    status = StatusLine(sys.stderr) if sys.stderr.isatty() else None
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s [{role}] %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
        handlers=[status or logging.StreamHandler(sys.stderr)],
    )
    return status


def build_global_model(
    config: ServerConfig, on_event=None, history: History | None = None
) -> GlobalModel:
    """The model and test data of the config, recording the updates in ``history`` (by
    default a History writing the config's history file, when set). Without a model file:
    the tutorial's XOR model for the tutorial's XOR samples, or a Dense model sized to the
    test data (``default_network``). Raises ModelFileError or DataError, each one plain
    sentence."""
    training, history_file = config.training, config.outputs.history
    test_data = XOR_TEST_DATA
    if training.test_data:
        test_data = load_dataset(
            training.test_data, training.test_labels, training.test_label_column
        )
    elif training.model:
        raise DataError(
            f"The model in {training.model} needs its own test set: add --test-data FILE."
        )
    network = (
        load_model_file(training.model, training.seed)
        if training.model
        else default_network(test_data, training.seed)
        if training.test_data
        else xor_network(training.seed)
    )
    forward = network.forward
    test_data = fit_to_model(
        test_data,
        forward.num_features,
        forward.num_outputs,
        training.test_data or "the XOR test data",
    )
    if history is None and history_file:
        history = History(history_file)
    if history is not None:
        on_event = _both(history, on_event)
    return GlobalModel(network, test_data, training, on_event=on_event)


def default_network(test_data: Dataset, seed: int | None = None) -> Network:
    """Input -> Dense(16, relu) -> Dense(classes, softmax) for the data's features and
    classes. Not the tutorial's 2-4-2 XOR model for other data of two features and two
    classes: with four hidden units the GA often stalls below target (``bench.default_model``,
    docs/performance.md)."""
    inputs, outputs = np.asarray(test_data.inputs), np.asarray(test_data.outputs)
    if inputs.ndim != 2:
        raise DataError(
            f"The test data's inputs have shape {inputs.shape}: a model needs (samples, features)."
        )
    one_hot = outputs.ndim == 2 and outputs.shape[1] > 1
    classes = outputs.shape[1] if one_hot else int(np.max(outputs, initial=1)) + 1
    try:
        return Network.from_json(
            dense_chain_json(
                inputs.shape[1], [(DEFAULT_HIDDEN_UNITS, "relu"), (classes, "softmax")]
            ),
            seed,
        )
    except ModelRefused as exc:  # e.g. a label of 10**9: as many classes
        raise DataError(
            f"A default model for the test data ({inputs.shape[1]} features, "
            f"{classes} classes) is refused: {exc}; give a model file."
        ) from None


def _both(first, second):
    if second is None:
        return first
    return lambda event: (first(event), second(event))


def save_results(config: ServerConfig, global_model: GlobalModel) -> None:
    """What the config asks to keep once training ended: the best model, the plot. A file
    that cannot be written is one logged sentence; the other is still written."""
    outputs = config.outputs

    def plot(history: str, path: str) -> None:
        plot_history(history, path)
        log.info("drew the history to %s", path)

    writes = []
    if outputs.save_model:
        writes.append(("the model", outputs.save_model, global_model.save_model))
    if outputs.plot and outputs.history:
        writes.append(("the plot", outputs.plot, functools.partial(plot, outputs.history)))
    for what, path, write in writes:
        try:
            write(path)
        except OSError as exc:
            log.error("Cannot save %s to %s: %s.", what, path, exc.strerror or exc)


def serve(config: ServerConfig, on_event=None) -> int:
    """A headless server: build the global model, serve until training ended and every
    client was answered, save the results; return the exit code. Ctrl-C or SIGTERM (as
    ``KeyboardInterrupt`` or ``Terminated``) stops training as Stop Training does and saves
    the results before it propagates."""
    global_model = build_global_model(config, on_event)
    try:
        server = ListenThread(global_model, config, on_event=on_event)
    except BindError as exc:
        return exit_on_mistake(exc)
    stopped = None
    server.start()
    try:
        host, port = server.server_address
        log.info(
            "listening on %s:%d (model accuracy=%.4f before training; %s)",
            host,
            port,
            global_model.accuracy,
            "fitness mode"
            if config.training.federation == FITNESS
            else f"aggregation {global_model.aggregation.shown(SECURE_REFUSED)} with secure "
            "aggregation"
            if global_model.secure_aggregation
            else f"aggregation {global_model.aggregation}",
        )
        log.info("%s", config.training.summary())
        _serve_until_answered(server, config.network)
    except (KeyboardInterrupt, Terminated):
        stopped = time.monotonic()
        global_model.stop()  # first: it wakes the handlers a round holds, then all hear done
        raise
    finally:
        server.shutdown()
        save_results(config, global_model)
        if stopped is not None:
            log.info("saved the results in %.1f s after the stop", time.monotonic() - stopped)
    return exit_code(global_model)


def _serve_until_answered(server: ListenThread, network: NetworkConfig) -> None:
    """Until training ended and every client was answered; then linger for late ones."""
    while True:
        if server.wait_all_answered(timeout=1.0):
            if network.expected_clients and (
                len(server.peers_told_done) >= network.expected_clients
            ):
                return
            quiet_for = time.monotonic() - server.last_connected
            if quiet_for >= network.linger:
                return
            time.sleep(min(1.0, network.linger - quiet_for))  # a late client may yet come


def exit_code(global_model: GlobalModel) -> int:
    """How a finished training ended, as the process's exit code."""
    assert global_model.outcome is not None, "exit_code() before training ended"
    if global_model.reached_target:
        log.info(
            "finished: accuracy=%.4f after %d rounds; every client was told done",
            global_model.accuracy,
            global_model.round,
        )
    return EXIT_CODES[global_model.outcome]
