"""The flags server.py and ``python -m common.flower`` share: what to train, until when,
where results go, and the GA settings; and filling a config dataclass from parsed flags."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from common.aggregate import SETTINGS, defaults_of, flag_name, listed
from common.app import number, positive
from common.ga import REAL_DATA, GAConfig
from common.operators import OPERATORS
from common.server_config import ServerConfig, TrainingConfig


def config_from(args: argparse.Namespace, config_type, **extra):
    """A ``config_type`` from the flags named as its fields, and ``extra``."""
    names = {f.name for f in fields(config_type)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return config_type(**(values | extra))


def server_config_from(args: argparse.Namespace, **extra) -> ServerConfig:
    """A ``ServerConfig`` from the flags (each named as its setting) and ``extra``;
    a flag left unset (None) keeps the config's default, ``AUTO`` where the run decides.
    ``ConfigError``, one sentence, if the aggregation cannot take its settings."""
    names = ServerConfig().settings().keys()
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    config = ServerConfig.of(**(given | extra))
    config.training.aggregation_rule()  # checks them now, not once the model is built
    return config


def rule_setting_flags(parser: argparse.ArgumentParser) -> None:
    """The aggregation rules' settings (``common.aggregate.SETTINGS``), each named once:
    ``--server-learning-rate`` and so on; unset, each rule's own default. The flag reads a
    number; its bounds are the rule's to say."""
    for name, setting in SETTINGS.items():
        by_default: dict[str, list[str]] = {}  # the rules that take it, by default shown
        for rule, value in defaults_of(name).items():
            by_default.setdefault(setting.shown(value), []).append(rule)
        defaults = "; ".join(f"{shown} for {listed(rules)}" for shown, rules in by_default.items())
        parser.add_argument(
            f"--{flag_name(name)}",
            type=number(setting.kind),
            metavar="F" if setting.kind is int else "X",
            help=f"{setting.text} (default: {defaults})",
        )


def training_flags(parser: argparse.ArgumentParser, defaults: TrainingConfig) -> None:
    """What to train and until when, and where results go: server.py's and Flower's."""
    parser.add_argument(
        "--max-rounds",
        type=positive(int),
        default=defaults.max_rounds,
        metavar="N",
        help="give up (exit 2) after this many accepted updates (default: %(default)s)",
    )
    parser.add_argument(
        "--patience",
        type=positive(int, zero_ok=True),
        default=defaults.patience,
        metavar="N",
        help="stop (exit 3) once N "
        "rounds passed without a better model on the test data; the best is "
        "what --save-model writes (default: %(default)s, never)",
    )
    parser.add_argument(
        "--step-patience",
        type=positive(int, zero_ok=True),
        metavar="N",
        help="halve the mutation step after N rounds without a lower test "
        "loss, down to a tenth of --mutation-step; 0: a fixed step (default: "
        f"{REAL_DATA.step_patience}, or {GAConfig.step_patience} for the "
        "tutorial's XOR model)",
    )
    parser.add_argument(
        "--num-solutions",
        type=positive(int),
        default=defaults.num_solutions,
        metavar="N",
        help="population size sent to clients (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        metavar="FILE",
        help="the model to train: a .keras file or a "
        "Keras JSON architecture (default: the tutorial's XOR model, or with "
        "--test-data a Dense model sized to it)",
    )
    parser.add_argument(
        "--test-data",
        metavar="FILE",
        help="the server's test set: .npz with "
        "inputs and outputs, X.npy with --test-labels, or .csv with "
        "--test-label-column (default: the four XOR samples)",
    )
    parser.add_argument("--test-labels", metavar="FILE", help="labels .npy for --test-data")
    parser.add_argument(
        "--test-label-column",
        metavar="C",
        help="CSV column of --test-data holding the labels (name or index)",
    )
    parser.add_argument(
        "--target-accuracy",
        type=float,
        default=defaults.target_accuracy,
        metavar="A",
        help="say done once the global model reaches this "
        "accuracy: binary for two outputs, categorical for more "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--save-model",
        metavar="FILE.keras",
        help="save the best global model here (the highest accuracy on the test data, ties to the lower loss) when training ends",
    )
    parser.add_argument(
        "--history",
        metavar="FILE.csv",
        help="write one row per accepted update: time, round, client, accuracy, loss",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw accuracy and loss over rounds when training ends (needs --history)",
    )
    ga_flags(parser, "sent to clients; default: ")


def ga_flags(parser: argparse.ArgumentParser, default_text: str) -> None:
    """The GA settings' flags, each named as its ``GAConfig`` field (the wire's and the run
    config's key); the names they had before stay accepted, hidden (``OLD_NAMES``)."""
    ga = GAConfig()
    parser.add_argument(
        "--num-generations",
        type=positive(int),
        metavar="N",
        help=f"GA generations per round at most ({default_text}{ga.num_generations})",
    )
    parser.add_argument(
        "--num-parents-mating",
        type=positive(int),
        metavar="N",
        help=f"GA parents mating ({default_text}{ga.num_parents_mating})",
    )
    parser.add_argument(
        "--mutation-percent-genes",
        type=positive(float),
        metavar="P",
        help=f"percent of genes mutated ({default_text}{ga.mutation_percent_genes:g})",
    )
    parser.add_argument(
        "--operators",
        choices=OPERATORS,
        help="how far mutation and the server's population spread move weights: "
        "Gaussian steps scaled to each layer, or the tutorial's U(-1, 1) "
        f"({default_text}{ga.operators})",
    )
    parser.add_argument(
        "--mutation-step",
        type=positive(float),
        metavar="S",
        help="scaled operators: a step's sigma as a "
        f"share of its layer's weight scale ({default_text}{ga.mutation_step:g})",
    )
    parser.add_argument(
        "--stop-fitness",
        type=positive(float, zero_ok=True),
        metavar="F",
        help="end a round's GA once a member reaches this fitness, "
        "1 / (loss + 1e-8); 0: run every generation (servers send "
        f"{ga.stop_fitness:g} for the tutorial's XOR model, else "
        f"{REAL_DATA.stop_fitness:g}; a server that sends none: {ga.stop_fitness:g})",
    )
    hidden_aliases(parser, OLD_NAMES)


# Flags renamed to their settings' names, by old name; still accepted, not shown in --help.
OLD_NAMES = {
    "--generations": "--num-generations",
    "--parents-mating": "--num-parents-mating",
    "--mutation-percent": "--mutation-percent-genes",
}


def hidden_aliases(parser: argparse.ArgumentParser, aliases: dict[str, str]) -> None:
    """Each old flag of ``aliases`` (old -> new) read as its new one, left out of --help."""
    actions = {option: action for action in parser._actions for option in action.option_strings}
    for old, new in aliases.items():
        action = actions[new]
        same: dict[str, Any] = {"type": action.type, "metavar": action.metavar}
        parser.add_argument(
            old,
            dest=action.dest,
            default=argparse.SUPPRESS,  # the new flag's default stands
            help=argparse.SUPPRESS,
            **{name: value for name, value in same.items() if value is not None},
        )


def ga_settings(args: argparse.Namespace) -> dict:
    """The GA flags given, by GAConfig field name: a client's own settings."""
    given = {f.name: getattr(args, f.name, None) for f in fields(GAConfig)}
    return {name: value for name, value in given.items() if value is not None}
