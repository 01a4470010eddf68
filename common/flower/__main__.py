"""Train on Flower: N simulated nodes in this one process, or a deployment on this machine:

    python -m common.flower simulate [--nodes N] [--data FOLDER] [server.py's training flags]
    python -m common.flower deploy [--nodes N] [--data FOLDER] [server.py's training flags]

Each node holds ``FOLDER/client_<i>.npz`` (from ``python -m common.split``) or, by default,
the tutorial's XOR samples. ``deploy`` starts a SuperLink and N SuperNodes, runs
``flwr run`` on this project and stops them all; their logs stay in ``--logs``. Exit codes
as ``server.py``'s: 0 done, 1 failed, 2 gave up.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys

from common.app import (
    EXIT_DONE,
    EXIT_FAILED,
    configure_logging,
    exit_code,
    exit_on_mistake,
    positive,
)
from common.auto import AUTO
from common.data import DataError
from common.errors import ConfigError, UserError
from common.flags import rule_setting_flags, server_config_from, training_flags
from common.flower.deploy import LocalDeployment
from common.server_config import ServerConfig

log = logging.getLogger("fedga.flower")


def parser() -> argparse.ArgumentParser:
    from common.aggregate import round_based
    from common.flower.server_app import DEFAULTS

    defaults = ServerConfig.of(**DEFAULTS).training
    parser = argparse.ArgumentParser(
        prog="python -m common.flower", description=__doc__.split("\n\n")[0].rstrip(":") + "."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser("simulate", help="simulate N nodes in this process")
    deploy = commands.add_parser("deploy", help="a SuperLink and N SuperNodes on this machine")
    deploy.add_argument(
        "--logs",
        metavar="FOLDER",
        default="flower-logs",
        help="where the SuperLink's and SuperNodes' logs go (default: %(default)s)",
    )
    simulate.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed of the server's populations (default: none)",
    )
    for command in (simulate, deploy):
        command.add_argument(
            "--nodes",
            type=positive(int),
            default=2,
            help="nodes, each running the ClientApp (default: %(default)s)",
        )
        command.add_argument(
            "--data",
            metavar="FOLDER",
            help="per-node data: client_1.npz "
            "... client_N.npz, as python -m common.split writes them "
            "(default: the tutorial's XOR samples, client1's and client2's "
            "by turns)",
        )
        command.add_argument(
            "--secure-aggregation",
            action="store_true",
            default=None,
            help="run Flower's own SecAgg+: the server sees only each round's sum (needs 3 "
            "nodes or more, and fedavg or a server optimiser)",
        )
        command.add_argument(
            "--secagg-threshold",
            type=positive(int),
            metavar="T",
            help="with --secure-aggregation: the nodes that must stay for a round's sum "
            "(default: ceil(2n/3) of its n nodes)",
        )
        command.add_argument(
            "--aggregation",
            default=defaults.aggregation,
            choices=round_based(),
            help="how each round's answers combine (default: %(default)s)",
        )
        rule_setting_flags(command)
        command.add_argument(
            "--round-timeout",
            type=positive(float),
            default=defaults.round_timeout,
            metavar="S",
            help="wait this long for a round's answers (default: %(default)s)",
        )
        command.add_argument(
            "--log-level",
            default="INFO",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            help="how much to log (default: %(default)s)",
        )
        training_flags(command, defaults)
    return parser


def quiet_flower(level: str) -> None:
    """Flower's and its libraries' own chatter only at DEBUG: our log says what happens."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray tip
    logging.getLogger("flwr").propagate = False  # it has a handler of its own
    if level != "DEBUG":
        for name in ("flwr", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


def simulate(config: ServerConfig, nodes: int, data_folder: str | None) -> int:
    """Run the ServerApp and ``nodes`` ClientApps on Flower's simulation engine (Ray), one
    Ray worker per core."""
    import ray
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from common.app import build_global_model
    from common.flower.client_app import make_client_app
    from common.flower.server_app import run

    global_model = build_global_model(config)  # a bad --model or --test-data fails here, once
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        run(grid, context, config, global_model)

    # Ray as Flower's backend would start it (which then leaves it be, and shuts it down at
    # the end), plus a worker setup that keeps TensorFlow out of the nodes.
    ray.init(
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)},
            "worker_process_setup_hook": "common.flower.keep_tensorflow_out",
        },
    )
    run_simulation(
        server_app,
        make_client_app(data_folder),
        num_supernodes=nodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return exit_code(global_model) if global_model.finished.is_set() else EXIT_FAILED


def deploy(config: ServerConfig, nodes: int, data_folder: str | None, logs: str) -> int:
    """A SuperLink and ``nodes`` SuperNodes here; ``flwr run`` streams the ServerApp's log."""
    from pathlib import Path

    files = None
    if data_folder:
        files = [str(Path(data_folder, f"client_{n}.npz").resolve()) for n in range(1, nodes + 1)]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise DataError(f"The data file {missing[0]} does not exist.")
    folder = Path(logs).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    log.info("starting a SuperLink and %d SuperNodes; their logs go to %s", nodes, folder)
    with LocalDeployment(nodes, folder, files) as deployment:
        log.info("the SuperLink serves and all %d SuperNodes are online: flwr run", nodes)
        code = deployment.run(run_config(config), stream=sys.stderr)
    # flwr run tells only whether the run ended; the ServerApp's log above says how.
    return EXIT_DONE if code == 0 else EXIT_FAILED


def run_config(config: ServerConfig) -> dict:
    """The ServerApp's settings as Flower run config: the keys pyproject.toml declares, files
    as absolute paths (the ServerApp runs in another folder)."""
    from pathlib import Path

    from common.flower.server_app import RUN_CONFIG_KEYS

    settings, values = {}, config.settings()
    for key in RUN_CONFIG_KEYS:
        value = values[key.replace("-", "_")]
        if isinstance(value, str) and key not in ("aggregation", "operators", "test-label-column"):
            value = str(Path(value).resolve())
        settings[key] = "" if value is None or value is AUTO else value  # "": the default
    return settings


def main(argv: list[str] | None = None) -> int:
    if importlib.util.find_spec("flwr") is None:
        print(
            "Flower is not installed: .venv/bin/pip install -r requirements-flower.txt",
            file=sys.stderr,
        )
        return EXIT_FAILED
    arguments = parser()
    args = arguments.parse_args(argv)
    configure_logging(args.log_level, "flower")
    quiet_flower(args.log_level)
    try:
        config = server_config_from(args, min_clients=args.nodes)
    except ConfigError as exc:  # the aggregation's settings
        arguments.error(str(exc))
    try:
        if args.command == "deploy":
            return deploy(config, args.nodes, args.data, args.logs)
        return simulate(config, args.nodes, args.data)
    except UserError as exc:  # a bad data folder, model file or deployment: one sentence
        return exit_on_mistake(exc)


if __name__ == "__main__":
    sys.exit(main())
