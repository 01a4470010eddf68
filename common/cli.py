"""Command lines of server.py and the client scripts: flags fill the config dataclasses,
then a window opens or, with ``--headless``, the core runs in this terminal.

Exit codes: 0 done, 1 a failure explained in one line, 2 gave up (--max-rounds) or bad
usage, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import time
from dataclasses import fields

import numpy as np

from common import security
from common.checkpoint import CheckpointError
from common.client import (RETRY_FIRST_DELAY, RETRY_MAX_DELAY, ClientConfig, ConnectError,
                           Reconnector, RecvThread, connect)
from common.data import (CLIENT_DATA, XOR_TEST_DATA, DataError, DataFile, Dataset,
                         fit_to_model, load_dataset)
from common.errors import Terminated
from common.aggregate import AGGREGATION_NAMES
from common.ga import REAL_DATA, GAConfig
from common.model import ModelFileError, Network, load_model_file, xor_network
from common.modelspec import ModelRefused, dense_chain_json
from common.operators import OPERATORS
from common.results import History, plot_history
from common.status import ClientStatus, ServerStatus, StatusLine
from common.server import BindError, GlobalModel, ListenThread, ServerConfig

log = logging.getLogger("fedga")

EXIT_DONE, EXIT_FAILED, EXIT_GAVE_UP = 0, 1, 2
EXIT_PATIENCE = 3  # stopped: no better model for --patience rounds
EXIT_USAGE = 2  # argparse's own code for a bad command line
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


def _on_sigterm(signum, frame):
    raise Terminated


def _handle_signals() -> None:
    """Ctrl-C and SIGTERM end a headless run cleanly. SIGINT gets Python's own handler even
    when this process inherited it ignored, as anything started in the background by a
    non-interactive shell does (`cmd &` in a script, or a CI runner's job)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)


def parse_port(text: str) -> int:
    """A TCP port from a flag or a window's field; ValueError says what is wrong in plain words."""
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return port


def _port(text: str) -> int:
    try:
        return parse_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _window_position(text: str) -> tuple[int, int]:
    try:
        left, top = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LEFT,TOP in pixels") from None
    return left, top


def positive(kind, *, zero_ok: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0 or (value == 0 and not zero_ok):
            bound = "0 or more" if zero_ok else "greater than 0"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value
    return parse


def _common_flags(parser: argparse.ArgumentParser, defaults) -> None:
    parser.add_argument("--headless", action="store_true",
                        help="run in this terminal without a window")
    parser.add_argument("--host", default=defaults.host,
                        help="server IPv4 address or host name (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=defaults.port,
                        help="server TCP port; 0 lets the server pick one (default: %(default)s)")
    parser.add_argument("--recv-timeout", type=positive(float), default=defaults.recv_timeout,
                        metavar="S", help="seconds a message may take once its first byte "
                        "arrived (default: %(default)s)")
    parser.add_argument("--idle-timeout", type=positive(float), default=defaults.idle_timeout,
                        metavar="S", help="seconds to wait for the next message to begin "
                        "(default: %(default)s)")
    parser.add_argument("--buffer-size", type=positive(int), default=defaults.buffer_size,
                        metavar="N", help="bytes per socket read (default: %(default)s)")
    parser.add_argument("--max-message-bytes", type=positive(int),
                        default=defaults.max_message_bytes, metavar="N",
                        help="refuse any message larger than this (default: %s)" % (
                            "derived from the model size" if defaults.max_message_bytes is None
                            else "%(default)s"))
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed, for repeatable runs (default: none)")
    parser.add_argument("--window-position", type=_window_position, default=None,
                        metavar="LEFT,TOP", help="place the window's top-left corner here, in "
                        "screen pixels (default: centred)")
    parser.add_argument("--secret-file", metavar="PATH",
                        help="authenticate every message with the shared secret in this file "
                        f"(or in ${security.SECRET_ENV}); both sides need the same one "
                        "(default: none, plain pickle as in the tutorial)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log (default: %(default)s)")


def config_from(args: argparse.Namespace, config_type, **extra):
    names = {f.name for f in fields(config_type)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return config_type(**(values | extra))


def configure_logging(level: str, role: str) -> StatusLine | None:
    """Plain log lines; on a terminal also a live status line, which is returned."""
    status = StatusLine(sys.stderr) if sys.stderr.isatty() else None
    logging.basicConfig(level=level, format=f"%(asctime)s [{role}] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True,
                        handlers=[status or logging.StreamHandler(sys.stderr)])
    return status


def server_parser() -> argparse.ArgumentParser:
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="server.py", description="fedga server: owns the Keras model, averages the "
        "clients' updates and tests the global model until it reaches the target accuracy.")
    _common_flags(parser, defaults)
    parser.add_argument("--round-delay", type=float, default=defaults.round_delay, metavar="S",
                        help="pacing: hold each model reply this many seconds so training can "
                        "be watched; keep it well under 10 for tutorial clients (default: off)")
    parser.add_argument("--linger", type=positive(float, zero_ok=True),
                        default=defaults.linger, metavar="S", help="once done, keep answering "
                        "late clients 'done' until none connected for S seconds, then exit "
                        "(default: %(default)s)")
    parser.add_argument("--expected-clients", type=positive(int),
                        default=defaults.expected_clients, metavar="N", help="headless: exit "
                        "as soon as N clients were answered done, without --linger "
                        "(default: linger)")
    parser.add_argument("--aggregation", default=defaults.aggregation,
                        choices=AGGREGATION_NAMES,
                        help="running-average: the tutorial's, each update averaged in as it "
                        "comes; the others close a round per --min-clients updates "
                        "(default: %(default)s)")
    parser.add_argument("--min-clients", type=positive(int), default=defaults.min_clients,
                        metavar="N", help="round-based: close a round once N updates arrived "
                        "(default: %(default)s)")
    parser.add_argument("--round-timeout", type=positive(float),
                        default=defaults.round_timeout, metavar="S", help="round-based: close "
                        "a round S seconds after its first update even if fewer came; keep it "
                        "under 10 for tutorial clients (default: %(default)s)")
    parser.add_argument("--max-clients", type=positive(int), default=defaults.max_clients,
                        metavar="N", help="refuse connections beyond this many at once "
                        "(default: %(default)s)")
    parser.add_argument("--tls-cert", metavar="PATH", help="serve TLS with this certificate "
                        "chain (PEM); needs --tls-key")
    parser.add_argument("--tls-key", metavar="PATH", help="the private key of --tls-cert (PEM)")
    parser.add_argument("--checkpoint", metavar="PATH", default=defaults.checkpoint,
                        help="after every accepted update, save the global model, round count "
                        "and each client's last update number to this .npz file, atomically "
                        "(default: none)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the --checkpoint file instead of a fresh model: "
                        "rounds carry on and updates the file has counted are not counted again")
    training_flags(parser, defaults)
    return parser


def training_flags(parser: argparse.ArgumentParser, defaults: ServerConfig) -> None:
    """What to train and until when, and where results go: server.py's and Flower's."""
    parser.add_argument("--max-rounds", type=positive(int), default=defaults.max_rounds,
                        metavar="N", help="give up (exit 2) after this many accepted updates "
                        "(default: %(default)s)")
    parser.add_argument("--patience", type=positive(int, zero_ok=True),
                        default=defaults.patience, metavar="N", help="stop (exit 3) once N "
                        "rounds passed without a better model on the test data; the best is "
                        "what --save-model writes (default: %(default)s, never)")
    parser.add_argument("--step-patience", type=positive(int, zero_ok=True), metavar="N",
                        help="halve the mutation step after N rounds without a lower test "
                        "loss, down to a tenth of --mutation-step; 0: a fixed step (default: "
                        f"{REAL_DATA.step_patience}, or {GAConfig.step_patience} for the "
                        "tutorial's XOR model)")
    parser.add_argument("--num-solutions", type=positive(int), default=defaults.num_solutions,
                        metavar="N", help="population size sent to clients (default: %(default)s)")
    parser.add_argument("--model", metavar="FILE", help="the model to train: a .keras file or a "
                        "Keras JSON architecture (default: the tutorial's XOR model, or for "
                        "--test-data of other features or classes a Dense model sized to it)")
    parser.add_argument("--test-data", metavar="FILE", help="the server's test set: .npz with "
                        "inputs and outputs, X.npy with --test-labels, or .csv with "
                        "--test-label-column (default: the four XOR samples)")
    parser.add_argument("--test-labels", metavar="FILE", help="labels .npy for --test-data")
    parser.add_argument("--test-label-column", metavar="C",
                        help="CSV column of --test-data holding the labels (name or index)")
    parser.add_argument("--target-accuracy", type=float, default=defaults.target_accuracy,
                        metavar="A", help="say done once the global model reaches this "
                        "accuracy: binary for two outputs, categorical for more "
                        "(default: %(default)s)")
    parser.add_argument("--save-model", metavar="FILE.keras",
                        help="save the final global model here")
    parser.add_argument("--history", metavar="FILE.csv", help="write one row per accepted "
                        "update: time, round, client, accuracy, loss")
    parser.add_argument("--plot", metavar="FILE.png", help="draw accuracy and loss over rounds "
                        "when training ends (needs --history)")
    _ga_flags(parser, "sent to clients; default: ")


def client_parser(name: str) -> argparse.ArgumentParser:
    defaults = ClientConfig()
    parser = argparse.ArgumentParser(
        prog=f"{name}.py", description=f"fedga {name}: trains the server's model with a genetic "
        "algorithm on its own data, which never leaves this machine.")
    _common_flags(parser, defaults)
    parser.add_argument("--connect-timeout", type=positive(float),
                        default=defaults.connect_timeout, metavar="S",
                        help="keep retrying to reach the server this long (default: %(default)s)")
    parser.add_argument("--retries", type=positive(int, zero_ok=True), default=defaults.retries,
                        metavar="N", help="after losing the server mid-training, reconnect up "
                        f"to N times in a row, waiting {RETRY_FIRST_DELAY:g} s doubling to "
                        f"{RETRY_MAX_DELAY:g} s between attempts, and resend the last unanswered "
                        "update; 0 gives up at once (default: %(default)s, about a minute)")
    parser.add_argument("--tls-ca", metavar="PATH", help="connect over TLS and verify the "
                        "server's certificate and host name against this CA file (PEM)")
    parser.add_argument("--max-params", type=positive(int), default=defaults.max_params,
                        metavar="N", help="refuse a server's model with more parameters than "
                        "this (default: %(default)s)")
    own = name not in CLIENT_DATA
    parser.add_argument("--data", metavar="FILE",
                        help="this client's own data: .npz with inputs and outputs, X.npy with "
                        "--labels, or .csv with --label-column" + (
                            " (required with --headless; the window can choose one)" if own
                            else f" (default: the tutorial's {name} XOR samples)"))
    parser.add_argument("--labels", metavar="FILE", help="labels .npy for --data")
    parser.add_argument("--label-column", metavar="C",
                        help="CSV column of --data holding the labels (name or index)")
    if own:
        parser.add_argument("--name", default=name, help="this client's name in the server's "
                            "log (default: %(default)s)")
    _ga_flags(parser, "override the server's setting; without one: ")
    return parser


def _ga_flags(parser: argparse.ArgumentParser, default_text: str) -> None:
    ga = GAConfig()
    parser.add_argument("--generations", type=positive(int), metavar="N",
                        help=f"GA generations per round at most ({default_text}"
                        f"{ga.num_generations})")
    parser.add_argument("--parents-mating", type=positive(int), metavar="N",
                        help=f"GA parents mating ({default_text}{ga.num_parents_mating})")
    parser.add_argument("--mutation-percent", type=positive(float), metavar="P",
                        help=f"percent of genes mutated ({default_text}"
                        f"{ga.mutation_percent_genes:g})")
    # SUPPRESS: absent unless given, so config_from leaves the config's default (same names)
    parser.add_argument("--operators", choices=OPERATORS, default=argparse.SUPPRESS,
                        help="how far mutation and the server's population spread move weights: "
                        "Gaussian steps scaled to each layer, or the tutorial's U(-1, 1) "
                        f"({default_text}{ga.operators})")
    parser.add_argument("--mutation-step", type=positive(float), metavar="S",
                        default=argparse.SUPPRESS, help="scaled operators: a step's sigma as a "
                        f"share of its layer's weight scale ({default_text}{ga.mutation_step:g})")
    parser.add_argument("--stop-fitness", type=positive(float, zero_ok=True), metavar="F",
                        help="end a round's GA once a member reaches this fitness, "
                        "1 / (loss + 1e-8); 0: run every generation (servers send "
                        f"{ga.stop_fitness:g} for the tutorial's XOR model, else "
                        f"{REAL_DATA.stop_fitness:g}; a server that sends none: {ga.stop_fitness:g})")


def ga_settings(args: argparse.Namespace) -> dict:
    """The GA flags given, by GAConfig field name."""
    given = {"num_generations": args.generations, "num_parents_mating": args.parents_mating,
             "mutation_percent_genes": args.mutation_percent,
             "operators": getattr(args, "operators", None),
             "mutation_step": getattr(args, "mutation_step", None),
             "stop_fitness": args.stop_fitness}
    return {key: value for key, value in given.items() if value is not None}


def _security_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The secret, with TLS files checked now: a mistake is one line before anything starts."""
    tls = {k: v for k, v in vars(args).items() if k in ("tls_cert", "tls_key", "tls_ca")}
    try:
        return {"secret": security.check_settings(args.secret_file, **tls)}
    except security.ConfigError as exc:
        parser.exit(EXIT_USAGE, f"{parser.prog}: {exc}\n")


def server_main(argv: list[str] | None = None) -> int:
    parser = server_parser()
    args = parser.parse_args(argv)
    status = configure_logging(args.log_level, "server")
    if args.resume and not args.checkpoint:
        parser.error("--resume needs --checkpoint PATH")
    config = config_from(args, ServerConfig, **ga_settings(args),
                          **_security_settings(parser, args))
    try:
        if args.headless:
            return run_server_headless(config, status)
        from common.gui import run_server_window  # imports Kivy: only when a window is wanted

        built = []  # the window builds a global model per Listen; the last one is the result

        def build_and_keep(config: ServerConfig, on_event=None, history=None) -> GlobalModel:
            built.append(build_global_model(config, on_event, history))
            return built[-1]

        code = run_server_window(config, build_and_keep, position=args.window_position)
        if built:
            save_results(config, built[-1])
        return code
    except (CheckpointError, DataError, ModelFileError) as exc:  # one plain sentence each
        log.error("%s", exc)
        return EXIT_FAILED


DEFAULT_HIDDEN_UNITS = 16  # of the Dense model sized to a test set when no model is given


def build_global_model(config: ServerConfig, on_event=None,
                       history: History | None = None) -> GlobalModel:
    """The model and test data of the config, recording the updates in ``history`` (by
    default a History writing ``config.history``, when set). Without a model file: the
    tutorial's XOR model, or for test data of other features or classes a Dense model sized
    to it (``default_network``). Raises ModelFileError or DataError, each one plain sentence."""
    test_data = XOR_TEST_DATA
    if config.test_data:
        test_data = load_dataset(config.test_data, config.test_labels, config.test_label_column)
    elif config.model:
        raise DataError(f"The model in {config.model} needs its own test set: add "
                        "--test-data FILE.")
    network = (load_model_file(config.model, config.seed) if config.model
               else default_network(test_data, config.seed))
    forward = network.forward
    test_data = fit_to_model(test_data, forward.num_features, forward.num_outputs,
                             config.test_data or "the XOR test data")
    if history is None and config.history:
        history = History(config.history)
    if history is not None:
        on_event = _both(history, on_event)
    return GlobalModel(network, test_data, num_solutions=config.num_solutions,
                       target_accuracy=config.target_accuracy, max_rounds=config.max_rounds,
                       seed=config.seed, on_event=on_event, checkpoint_path=config.checkpoint,
                       resume=config.resume, aggregation=config.aggregation,
                       min_clients=config.min_clients, round_timeout=config.round_timeout,
                       patience=config.patience, ga=ga_config(config))


def ga_config(config: ServerConfig) -> GAConfig:
    """The GA settings of the config; those it leaves open are the tutorial's for its XOR
    model (no --model, no --test-data), else those tuned on real data."""
    defaults = GAConfig() if config.model is None and config.test_data is None else REAL_DATA
    given = {name: getattr(config, name) for name in ("stop_fitness", "step_patience")}
    return dataclasses.replace(
        defaults, num_generations=config.num_generations,
        num_parents_mating=config.num_parents_mating,
        mutation_percent_genes=config.mutation_percent_genes, operators=config.operators,
        mutation_step=config.mutation_step,
        **{name: value for name, value in given.items() if value is not None})


def default_network(test_data: Dataset, seed: int | None = None) -> Network:
    """The tutorial's XOR model for data of two features and two classes, else Input ->
    Dense(16, relu) -> Dense(classes, softmax) for the data's features and classes."""
    inputs, outputs = np.asarray(test_data.inputs), np.asarray(test_data.outputs)
    if inputs.ndim != 2:
        raise DataError(f"The test data's inputs have shape {inputs.shape}: a model needs "
                        "(samples, features).")
    one_hot = outputs.ndim == 2 and outputs.shape[1] > 1
    classes = outputs.shape[1] if one_hot else int(np.max(outputs, initial=1)) + 1
    if (inputs.shape[1], classes) == (2, 2):
        return xor_network(seed)
    try:
        return Network.from_json(dense_chain_json(
            inputs.shape[1], [(DEFAULT_HIDDEN_UNITS, "relu"), (classes, "softmax")]), seed)
    except ModelRefused as exc:  # e.g. a label of 10**9: as many classes
        raise DataError(f"A default model for the test data ({inputs.shape[1]} features, "
                        f"{classes} classes) is refused: {exc}; give a model file.") from None


def _both(first, second):
    if second is None:
        return first
    return lambda event: (first(event), second(event))


def save_results(config: ServerConfig, global_model: GlobalModel) -> None:
    if config.save_model:
        global_model.save_model(config.save_model)
    if config.plot and config.history:
        plot_history(config.history, config.plot)
        log.info("drew the history to %s", config.plot)


def run_server_headless(config: ServerConfig, status: StatusLine | None = None) -> int:
    _handle_signals()
    try:  # from here on a signal may land anywhere, even inside a log call
        return _serve(config, status and ServerStatus(status))
    except KeyboardInterrupt:
        log.warning("interrupted: stopped before training was done")
        return EXIT_INTERRUPTED
    except Terminated:
        log.warning("terminated: stopped before training was done")
        return EXIT_TERMINATED


def _serve(config: ServerConfig, on_event=None) -> int:
    global_model = build_global_model(config, on_event)
    try:
        server = ListenThread(global_model, config, on_event=on_event)
    except BindError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    with server:
        host, port = server.server_address
        log.info("listening on %s:%d (model accuracy=%.4f before training)", host, port,
                 global_model.accuracy)
        while True:
            if server.wait_all_answered(timeout=1.0):
                if config.expected_clients and (len(server.peers_told_done)
                                                >= config.expected_clients):
                    break
                quiet_for = time.monotonic() - server.last_connected
                if quiet_for >= config.linger:
                    break
                time.sleep(min(1.0, config.linger - quiet_for))  # a late client may yet come
    save_results(config, global_model)
    return exit_code(global_model)


def exit_code(global_model: GlobalModel) -> int:
    """How a finished training ended, as the process's exit code."""
    if global_model.reached_target:
        log.info("finished: accuracy=%.4f after %d rounds; every client was told done",
                 global_model.accuracy, global_model.round)
        return EXIT_DONE
    return EXIT_PATIENCE if global_model.outcome == "patience" else EXIT_GAVE_UP


def client_main(name: str, argv: list[str] | None = None) -> int:
    parser = client_parser(name)
    args = parser.parse_args(argv)
    name = getattr(args, "name", name)
    status = configure_logging(args.log_level, name)
    if args.data:
        try:
            data = load_dataset(args.data, args.labels, args.label_column)
        except DataError as exc:
            parser.exit(EXIT_USAGE, f"{parser.prog}: {exc}\n")
        source = args.data
    elif name in CLIENT_DATA:
        data, source = CLIENT_DATA[name], f"the tutorial's {name} samples"
    elif args.headless:
        parser.error("--headless needs --data FILE")
    else:
        data, source = None, None  # the window opens with an empty data row
    overrides = ga_settings(args)
    config = config_from(args, ClientConfig, name=name, ga_overrides=overrides,
                          ga=dataclasses.replace(GAConfig(), **overrides),
                          **_security_settings(parser, args))
    if args.headless:
        return run_client_headless(config, data, source, status)
    from common.gui import run_client_window  # imports Kivy: only when a window is wanted

    return run_client_window(config, data, DataFile(args.data or "", args.labels or "",
                                                    args.label_column or ""),
                             position=args.window_position)


def run_client_headless(config: ClientConfig, data: Dataset, data_source: str,
                        status: StatusLine | None = None) -> int:
    _handle_signals()
    thread = None
    try:
        log.info("connecting to %s:%d", config.host, config.port)
        sock = connect(config.host, config.port, config.connect_timeout)
        thread = RecvThread(config.buffer_size, config.recv_timeout, sock=sock,
                            data=data, data_source=data_source, config=config,
                            on_event=status and ClientStatus(status, config.name,
                                                             config.ga.num_generations),
                            reconnect=Reconnector(config.host, config.port, config.retries))
        thread.start()
        while thread.is_alive():
            thread.join(timeout=1.0)
    except ConnectError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        log.warning("interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        log.warning("terminated")
        return EXIT_TERMINATED
    finally:
        if thread is not None:
            thread.stop()
            thread.join()
    return EXIT_DONE if thread.outcome == "done" else EXIT_FAILED
