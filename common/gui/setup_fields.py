"""The server window's setup fields: which settings it shows below the tutorial's column,
in what order, captioned how, each setting's text and back (``parse_texts``), and which fields
matter or follow one another as the others change. Plain Python, no Kivy."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from common.aggregate import AGGREGATIONS, SETTINGS, settings_of
from common.app import number, positive
from common.data import second_field
from common.errors import ConfigError
from common.fitness_federation import FEDERATIONS, FITNESS, FITNESS_SETTING
from common.ga import BY_MODEL, ByModel
from common.operators import OPERATORS
from common.server_config import SECURE_DEFAULTS, SECURE_REFUSED, ServerConfig

ON_OFF = ("off", "on")  # a switch's texts, for False and True


@dataclass(frozen=True)
class SetupField:
    """A server setting the window shows below the tutorial's column, read at Listen."""

    name: str  # the ServerConfig setting it fills, by its flat name
    caption: str
    text: str  # pre-filled from the config (the flags)
    choices: tuple[str, ...] = ()  # a spinner's values; empty: a text field


def setup_text(value) -> str:
    """A setting as its setup field shows it: "" for None or BY_MODEL (a default left to
    the rule or the model), on or off."""
    if isinstance(value, bool):
        return ON_OFF[value]
    if value is None or isinstance(value, ByModel):
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def or_default(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser for a setting whose default depends on the aggregation rule (or each secure
    round's clients): an empty field is None, which leaves it to them."""
    return lambda text: parse(text) if text else None


def or_by_model(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser for a setting whose default depends on the model: an empty field is
    ``BY_MODEL``, which leaves it to the model (``TrainingConfig.ga_for_model``)."""
    return lambda text: parse(text) if text else BY_MODEL


# Setup fields by config field: (caption, parser of the text). Files are paths; "" is none.
NUMBERS = {
    "target_accuracy": ("Target accuracy", positive(float)),
    "min_clients": ("Min clients", positive(int)),
    "secagg_threshold": ("Secagg threshold", or_default(positive(int))),
    # The rules' settings, captioned by their names ("Server learning rate", "Clip norm"):
    # a number here, their bounds the rule's to check (common.aggregate.SETTINGS).
    **{
        name: (name.replace("_", " ").capitalize(), or_default(number(setting.kind)))
        for name, setting in SETTINGS.items()
    },
    "patience": ("Patience (0: never)", positive(int, zero_ok=True)),
    "num_generations": ("Generations", positive(int)),
    "num_parents_mating": ("Parents mating", positive(int)),
    "mutation_percent_genes": ("Mutation %", positive(float)),
    "mutation_step": ("Mutation step", positive(float)),
    "step_patience": ("Step patience", or_by_model(positive(int, zero_ok=True))),
    "stop_fitness": ("Stop fitness", or_by_model(positive(float, zero_ok=True))),
}
FILES = {
    "model": "Model file (.keras, JSON)",
    "test_data": "Test data file",
    "test_labels": "Test labels (.npy)",
    "test_label_column": "Label column (.csv)",
}
# Spinners: (caption, values). The registry itself, so a rule registered later is offered.
CHOICES = {
    "federation": ("Federation", FEDERATIONS),
    "aggregation": ("Aggregation", AGGREGATIONS),
    "operators": ("GA operators", OPERATORS),
}
SWITCHES = {"secure_aggregation": "Secure aggregation"}  # ON_OFF spinners of a bool setting
SETUP_ORDER = (
    *FILES,
    "target_accuracy",
    "federation",
    "aggregation",
    "secure_aggregation",
    "secagg_threshold",
    *SETTINGS,
    "min_clients",
    "patience",
    "step_patience",
    "num_generations",
    "num_parents_mating",
    "mutation_percent_genes",
    "operators",
    "mutation_step",
    "stop_fitness",
)


def fields_for(settings: Mapping[str, Any]) -> list[SetupField]:
    """The setup fields in the window's order, filled from ``settings`` (by flat name, as
    ``ServerConfig.settings`` gives them)."""
    shown = []
    for name in SETUP_ORDER:
        text = setup_text(settings[name])
        if name in CHOICES:
            caption, choices = CHOICES[name]
            shown.append(SetupField(name, caption, text, tuple(choices)))
        elif name in SWITCHES:
            shown.append(SetupField(name, SWITCHES[name], text, ON_OFF))
        else:
            shown.append(SetupField(name, FILES.get(name) or NUMBERS[name][0], text))
    return shown


def parse_texts(texts: Mapping[str, str]) -> dict[str, Any]:
    """The setup fields' texts as config values (``ConfigError``, one sentence naming the
    field, for a text its setting cannot take)."""
    values: dict[str, Any] = {}
    for name, text in texts.items():
        text = text.strip()
        if name in NUMBERS:
            caption, parse_text = NUMBERS[name]
            try:
                values[name] = parse_text(text)
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{caption}: {exc}.") from None
        elif name in CHOICES:
            values[name] = text
        elif name in SWITCHES:
            values[name] = text == "on"
        else:
            values[name] = text or None
    return values


def follows(name: str, texts: Mapping[str, str]) -> dict[str, str]:
    """The texts other setup fields take now that the field ``name`` has changed to its
    text in ``texts``: secure aggregation turned on moves the aggregation and min
    clients, if still at their defaults, to those --secure-aggregation chooses (turned
    off, they stay: a plain run can use them)."""
    if name not in SWITCHES or texts.get(name) != "on":
        return {}
    plain = ServerConfig().settings()
    return {
        other: setup_text(value)
        for other, value in SECURE_DEFAULTS.items()
        if texts.get(other) == setup_text(plain[other])
    }


def applies(name: str, texts: Mapping[str, str]) -> bool:
    """Whether a setup field matters given the others' texts: a labels file for .npy test
    data, a label column for .csv, the aggregation and its settings in weights mode (a
    setting for a rule that takes it), byzantine in fitness mode too (its scores'), min
    clients in fitness mode, for a round-based aggregation or secure aggregation; with
    secure aggregation its threshold, and none of the settings that must see each update
    (the config refuses an aggregation or a federation that cannot run with it)."""
    if name in ("test_labels", "test_label_column"):
        return second_field(texts.get("test_data", "")) == name.removeprefix("test_")
    fitness_mode = texts.get("federation") == FITNESS
    secure = texts.get("secure_aggregation") == "on"
    if name == "aggregation":
        return not fitness_mode
    if name == "secagg_threshold":  # fitness mode masks among all clients, no threshold
        return secure and not fitness_mode
    if name in SECURE_REFUSED and secure:
        return False
    if name == FITNESS_SETTING and fitness_mode:
        return True
    if name in SETTINGS:
        return not fitness_mode and name in settings_of(texts.get("aggregation", ""))
    if name == "min_clients":
        rule = AGGREGATIONS.get(texts.get("aggregation", ""))
        return fitness_mode or secure or rule is None or not rule.per_update
    return True


def not_used(texts: Mapping[str, str]) -> dict[str, None]:
    """The settings of the greyed-out fields given every field's text (the rule does not
    take them, secure aggregation is off or cannot run with them), as None: not used,
    whatever they say."""
    return {name: None for name in (*SETTINGS, "secagg_threshold") if not applies(name, texts)}
