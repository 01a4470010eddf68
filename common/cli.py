"""Command lines of server.py and the client scripts: flags fill the config dataclasses,
then a window opens or, with ``--headless``, the core runs in this terminal (exit codes in
``common.app``). The only module of ``common`` that imports the windows.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal

from common import security
from common.aggregate import AGGREGATIONS
from common.auto import AUTO
from common.attacks import ATTACKS, AttackConfig, shown
from common.app import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    build_global_model,
    configure_logging,
    exit_on_mistake,
    parse_port,
    positive,
    save_results,
    serve,
)
from common.client import (
    NOTICE_MISSES,
    RETRY_FIRST_DELAY,
    RETRY_MAX_DELAY,
    ClientConfig,
    ConnectError,
    Reconnector,
    RecvThread,
    connect,
)
from common.data import CLIENT_DATA, DataError, DataFile, Dataset, load_dataset
from common.errors import ConfigError, Terminated, UserError
from common.fitness_federation import FEDERATIONS
from common.flags import (
    config_from,
    ga_flags,
    ga_settings,
    rule_setting_flags,
    server_config_from,
    training_flags,
)
from common.ga import GAConfig
from common.global_model import GlobalModel
from common.server_config import BY_SECURITY, ServerConfig
from common.status import ClientStatus, ServerStatus, StatusLine

log = logging.getLogger("fedga")


def _on_sigterm(signum, frame):
    raise Terminated


def _handle_signals() -> None:
    """Ctrl-C and SIGTERM end a headless run cleanly. SIGINT gets Python's own handler even
    when this process inherited it ignored, as anything started in the background by a
    non-interactive shell does (`cmd &` in a script, or a CI runner's job)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)


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


# The connection's deadlines (common.protocol.connection): setting, metavar, meaning.
DEADLINE_FLAGS = (
    ("recv_timeout", "S", "seconds a message may go without a byte once it began"),
    (
        "min_rate",
        "KIB",
        "cut a message arriving or leaving slower than this many KiB/s on average, after a "
        "grace of --recv-timeout",
    ),
    ("idle_timeout", "S", "seconds to wait for the next message to begin"),
)


def _common_flags(parser: argparse.ArgumentParser, defaults) -> None:
    parser.add_argument(
        "--headless", action="store_true", help="run in this terminal without a window"
    )
    parser.add_argument(
        "--host",
        default=defaults.host,
        help="server IPv4 address or host name (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=defaults.port,
        help="server TCP port; 0 lets the server pick one (default: %(default)s)",
    )
    for name, metavar, meaning in DEADLINE_FLAGS:
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=positive(float),
            default=getattr(defaults, name),
            metavar=metavar,
            help=f"{meaning} (default: %(default)s)",
        )
    parser.add_argument(
        "--buffer-size",
        type=positive(int),
        default=defaults.buffer_size,
        metavar="N",
        help="bytes per socket read (default: %(default)s)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=positive(int),
        default=defaults.max_message_bytes,
        metavar="N",
        help="refuse any message larger than this (default: %s)"
        % ("derived from the model size" if defaults.max_message_bytes is AUTO else "%(default)s"),
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed, for repeatable runs (default: none)"
    )
    parser.add_argument(
        "--window-position",
        type=_window_position,
        default=None,
        metavar="LEFT,TOP",
        help="place the window's top-left corner here, in screen pixels (default: centred)",
    )
    parser.add_argument(
        "--secret-file",
        metavar="PATH",
        help="authenticate every message with the shared secret in this file "
        f"(or in ${security.SECRET_ENV}); both sides need the same one "
        "(default: none, plain pickle as in the tutorial)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much to log (default: %(default)s)",
    )


def server_parser() -> argparse.ArgumentParser:
    defaults = ServerConfig()
    network, training = defaults.network, defaults.training
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="fedga server: owns the Keras model, averages the "
        "clients' updates and tests the global model until it reaches the target accuracy.",
    )
    _common_flags(parser, network)
    parser.add_argument(
        "--round-delay",
        type=float,
        default=network.round_delay,
        metavar="S",
        help="pacing: hold each model reply this many seconds so training can "
        "be watched; keep it well under 10 for tutorial clients (default: off)",
    )
    parser.add_argument(
        "--linger",
        type=positive(float, zero_ok=True),
        default=network.linger,
        metavar="S",
        help="once done, keep answering "
        "late clients 'done' until none connected for S seconds, then exit "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--expected-clients",
        type=positive(int),
        default=network.expected_clients,
        metavar="N",
        help="headless: exit "
        "as soon as N clients were answered done, without --linger "
        "(default: linger)",
    )
    parser.add_argument(
        "--federation",
        default=training.federation,
        choices=FEDERATIONS,
        help="what clients share. weights: the tutorial's, each client trains the "
        "population on its data and sends its best weights, combined by --aggregation; "
        "few, large messages. fitness: the GA runs here and each generation every "
        "client scores its members on its data and sends only their losses, so the run "
        "is the central GA whatever the split; many tiny messages, fedga clients only "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--aggregation",
        choices=list(AGGREGATIONS),
        help="weights mode: running-best: each update as it comes, keeping whichever of "
        "steps toward it, the clients' mean and the current model scores best "
        "on the test data; running-average: the tutorial's, each update "
        "averaged in; the others close a round per --min-clients updates: fedavg "
        "weighs them by their clients' sample counts; the defences median, "
        "trimmed-mean, krum, multi-krum and zeno resist a minority of attackers (the "
        "last four --byzantine of them; zeno by the test data), and norm-bounded clips "
        "each change to "
        "--clip-norm before fedavg; the server "
        "optimisers fedavgm, fedadam and fedyogi step along the round's mean change "
        "by the settings below (default: %s, or %s with --secure-aggregation)"
        % BY_SECURITY["aggregation"],
    )
    rule_setting_flags(parser)
    parser.add_argument(
        "--min-clients",
        type=positive(int),
        metavar="N",
        help="how many clients each step of training waits for (TrainingConfig says why "
        "one setting serves every mode). Round-based: close a round once N updates arrived; "
        "fitness mode: score each generation with at least N clients; secure aggregation: "
        "begin a secure round once N clients trained (default: %s, or %s with "
        "--secure-aggregation)" % BY_SECURITY["min_clients"],
    )
    parser.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="weights mode: clients send their updates masked so that the server learns "
        "only each round's sum (Bonawitz et al., 2017); needs fedga clients, fedavg or a "
        "server optimiser, and at least 3 clients a round; a client that drops out is "
        "tolerated while --secagg-threshold remain. Fitness mode: each generation's scores "
        "go masked, and the server learns only their sum over the clients",
    )
    parser.add_argument(
        "--secagg-threshold",
        type=positive(int),
        metavar="T",
        help="weights mode's secure aggregation: the clients that must remain for a round's sum to be "
        "unmasked, above half of each round's and at most --min-clients (default: two "
        "thirds of each round's clients, rounded up)",
    )
    parser.add_argument(
        "--round-timeout",
        type=positive(float),
        default=training.round_timeout,
        metavar="S",
        help="how long each step of training waits for the slower clients. Round-based: "
        "close a round S seconds after its first update even if fewer came; keep it under 10 "
        "for tutorial clients; fitness mode: leave out a client that has not scored a "
        "generation (or a stage of its masked scores) S seconds after the first did; secure "
        "aggregation: invite the clients ready S seconds after the first, and close each "
        "stage S seconds after it opened; per-update rules: a client's fair share of updates "
        "lapses S seconds after its last applied one (default: %(default)s)",
    )
    parser.add_argument(
        "--notice-interval",
        type=positive(float),
        default=network.notice_interval,
        metavar="S",
        help="while the server holds a client's reply (a round, a fitness-mode generation "
        "or a secure round's stage waiting for others; --round-delay), "
        f"tell it so every S seconds; fedga clients take {NOTICE_MISSES} silent intervals "
        "for a lost link and reconnect; tutorial clients are told nothing (default: %(default)s)",
    )
    parser.add_argument(
        "--max-clients",
        type=positive(int),
        default=network.max_clients,
        metavar="N",
        help="refuse connections beyond this many at once (default: %(default)s)",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PATH",
        help="serve TLS with this certificate chain (PEM); needs --tls-key",
    )
    parser.add_argument("--tls-key", metavar="PATH", help="the private key of --tls-cert (PEM)")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        default=training.checkpoint,
        help="after every accepted update, save the global model, round count "
        "and each client's last update number to this .npz file, atomically "
        "(default: none)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the --checkpoint file instead of a fresh model: "
        "rounds carry on and updates the file has counted are not counted again",
    )
    training_flags(parser, training)
    return parser


def client_parser(name: str) -> argparse.ArgumentParser:
    defaults = ClientConfig()
    parser = argparse.ArgumentParser(
        prog=f"{name}.py",
        description=f"fedga {name}: trains the server's model with a genetic "
        "algorithm on its own data, which never leaves this machine.",
    )
    _common_flags(parser, defaults)
    parser.add_argument(
        "--connect-timeout",
        type=positive(float),
        default=defaults.connect_timeout,
        metavar="S",
        help="keep retrying to reach the server this long (default: %(default)s)",
    )
    parser.add_argument(
        "--retries",
        type=positive(int, zero_ok=True),
        default=defaults.retries,
        metavar="N",
        help="after losing the server mid-training, reconnect up "
        f"to N times in a row, waiting {RETRY_FIRST_DELAY:g} s doubling to "
        f"{RETRY_MAX_DELAY:g} s between attempts, and resend the last unanswered "
        "update; 0 gives up at once (default: %(default)s, about a minute)",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="PATH",
        help="connect over TLS and verify the "
        "server's certificate and host name against this CA file (PEM)",
    )
    parser.add_argument(
        "--max-params",
        type=positive(int),
        default=defaults.max_params,
        metavar="N",
        help="refuse a server's model with more parameters than this (default: %(default)s)",
    )
    own = name not in CLIENT_DATA
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="this client's own data: .npz with inputs and outputs, X.npy with "
        "--labels, or .csv with --label-column"
        + (
            " (required with --headless; the window can choose one)"
            if own
            else f" (default: the tutorial's {name} XOR samples)"
        ),
    )
    parser.add_argument("--labels", metavar="FILE", help="labels .npy for --data")
    parser.add_argument(
        "--label-column",
        metavar="C",
        help="CSV column of --data holding the labels (name or index)",
    )
    if own:
        parser.add_argument(
            "--name",
            default=name,
            help="this client's name in the server's log (default: %(default)s)",
        )
    ga_flags(parser, "override the server's setting; without one: ")
    _attack_flags(parser)
    return parser


def _attack_flags(parser: argparse.ArgumentParser) -> None:
    """The attack lab's flags (common.attacks); the window has no such fields."""
    group = parser.add_argument_group(
        "attacks",
        "a lab feature, for experiments and teaching: this client poisons what it trains on, "
        "sends or reports, still speaking the normal protocol (common/attacks.py documents "
        "each attack); its random draws follow --seed",
    )
    group.add_argument(
        "--attack",
        metavar="MODE",
        help=f"the attack: {', '.join(ATTACKS)} (default: none, an honest client)",
    )
    strengths = "; ".join(
        f"{name}: {attack.strength_means} (default "
        + ("its real count" if attack.default_strength is None else shown(attack.default_strength))
        + ")"
        for name, attack in ATTACKS.items()
    )
    group.add_argument(
        "--attack-strength",
        type=positive(float, zero_ok=True),
        metavar="S",
        help=f"how hard it attacks, by attack: {strengths}",
    )
    group.add_argument(
        "--attack-target",
        type=positive(int, zero_ok=True),
        metavar="K",
        help="label-flip: relabel to class K instead of each label to the next class; "
        "backdoor, scaling and bounded-scaling: the class triggered samples are relabelled to "
        "(default: 0)",
    )


def _attack_config(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The attack the flags ask for, checked now (a usage error in one sentence), or None."""
    if args.attack is None:
        if args.attack_strength is not None or args.attack_target is not None:
            parser.error("--attack-strength and --attack-target need --attack MODE")
        return None
    attack = AttackConfig(args.attack, args.attack_strength, args.attack_target)
    try:
        attack.build()
    except ConfigError as exc:
        parser.error(str(exc))
    return attack


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
    try:
        config = server_config_from(args, **_security_settings(parser, args))
    except ConfigError as exc:  # the aggregation's settings
        parser.error(str(exc))
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
    except UserError as exc:  # a bad model file, test set, checkpoint: one plain sentence
        return exit_on_mistake(exc)


def run_server_headless(config: ServerConfig, status: StatusLine | None = None) -> int:
    _handle_signals()
    try:  # from here on a signal may land anywhere, even inside a log call
        return serve(config, status and ServerStatus(status))
    except KeyboardInterrupt:
        log.warning("interrupted: stopped before training was done")
        return EXIT_INTERRUPTED
    except Terminated:
        log.warning("terminated: stopped before training was done")
        return EXIT_TERMINATED


def client_main(name: str, argv: list[str] | None = None) -> int:
    parser = client_parser(name)
    args = parser.parse_args(argv)
    name = getattr(args, "name", name)
    attack = _attack_config(parser, args)
    status = configure_logging(args.log_level, name)
    if args.data:
        try:
            data = load_dataset(args.data, args.labels, args.label_column)
        except DataError as exc:
            parser.exit(EXIT_USAGE, f"{parser.prog}: {exc}\n")
        source = args.data
    elif name in CLIENT_DATA:
        data, source = CLIENT_DATA[name], f"the tutorial's {name} samples"
    else:
        data, source = None, None  # the window opens with an empty data row
    overrides = ga_settings(args)
    config = config_from(
        args,
        ClientConfig,
        name=name,
        ga_overrides=overrides,
        ga=dataclasses.replace(GAConfig(), **overrides),
        attack=attack,
        **_security_settings(parser, args),
    )
    if args.headless:
        if data is None:
            parser.error("--headless needs --data FILE")
        return run_client_headless(config, data, source, status)
    from common.gui import run_client_window  # imports Kivy: only when a window is wanted

    return run_client_window(
        config,
        data,
        DataFile(args.data or "", args.labels or "", args.label_column or ""),
        position=args.window_position,
    )


def run_client_headless(
    config: ClientConfig, data: Dataset, data_source: str, status: StatusLine | None = None
) -> int:
    _handle_signals()
    thread = None
    try:
        log.info("connecting to %s:%d", config.host, config.port)
        sock = connect(config.host, config.port, config.connect_timeout)
        thread = RecvThread(
            config.buffer_size,
            config.recv_timeout,
            sock=sock,
            data=data,
            data_source=data_source,
            config=config,
            on_event=ClientStatus(status, config.name) if status else None,
            reconnect=Reconnector(config.host, config.port, config.retries),
        )
        thread.start()
        while thread.is_alive():
            thread.join(timeout=1.0)
    except ConnectError as exc:
        return exit_on_mistake(exc)
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
    if thread.server_outcome is None:  # never told done: an error, or stopped
        return EXIT_FAILED
    # Done is not success: the server may have given up or been stopped; it said which.
    return EXIT_CODES[thread.server_outcome]
