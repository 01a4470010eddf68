"""The server window's setup fields: which settings it shows below the tutorial's column,
in what order, captioned how, each setting's text and back (``parse_texts``), and which fields
matter or follow one another as the others change. Plain Python, no Kivy."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.aggregate import AGGREGATIONS, SETTINGS, settings_of
from common.app import number, positive
from common.data import second_field
from common.errors import ConfigError
from common.fitness_federation import FEDERATIONS, FITNESS, FITNESS_SETTING
from common.auto import AUTO
from common.operators import OPERATORS
from common.server_config import BY_SECURITY, SECURE_REFUSED

ON_OFF = ("off", "on")  # a switch's texts, for False and True


@dataclass(frozen=True)
class SetupField:
    """A server setting the window shows below the tutorial's column, read at Listen."""

    name: str  # the ServerConfig setting it fills, by its flat name
    caption: str
    text: str  # pre-filled from the config (the flags)
    choices: tuple[str, ...] = ()  # a spinner's values; empty: a text field


def setup_text(value) -> str:
    """A setting as its setup field shows it: "" for no file or ``AUTO`` (left to the run),
    on or off."""
    if isinstance(value, bool):
        return ON_OFF[value]
    if value is None or value is AUTO:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


# Setup fields by config field: (caption, parser of the text). Files are paths; "" is none.
NUMBERS = {
    "target_accuracy": ("Target accuracy", positive(float)),
    "min_clients": ("Min clients", positive(int)),
    "secagg_threshold": ("Secagg threshold", positive(int)),
    # The rules' settings, captioned by their names ("Server learning rate", "Clip norm"):
    # a number here, their bounds the rule's to check (common.aggregate.SETTINGS).
    **{
        name: (name.replace("_", " ").capitalize(), number(setting.kind))
        for name, setting in SETTINGS.items()
    },
    "patience": ("Patience (0: never)", positive(int, zero_ok=True)),
    "num_generations": ("Generations", positive(int)),
    "num_parents_mating": ("Parents mating", positive(int)),
    "mutation_percent_genes": ("Mutation %", positive(float)),
    "mutation_step": ("Mutation step", positive(float)),
    "step_patience": ("Step patience", positive(int, zero_ok=True)),
    "stop_fitness": ("Stop fitness", positive(float, zero_ok=True)),
}
# The number fields that may be left empty (``AUTO``), with what decides them then: their
# hint text.
AUTO_HINTS = {
    "min_clients": "%s, secure %s" % BY_SECURITY["min_clients"],
    "secagg_threshold": "2/3 of a round",
    **dict.fromkeys(SETTINGS, "by rule"),
    "step_patience": "by model",
    "stop_fitness": "by model",
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
        value = settings[name]
        if name in CHOICES and value is AUTO:  # a spinner shows what it resolves to
            value = BY_SECURITY[name][settings["secure_aggregation"]]
        text = setup_text(value)
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
        if not text and name in AUTO_HINTS:
            values[name] = AUTO
        elif name in NUMBERS:
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
    text in ``texts``: secure aggregation turned on moves the aggregation, if still at its
    plain default, to the one it chooses (``BY_SECURITY``; turned off, it stays: a plain run
    can use it). An empty min clients needs no moving: it is resolved at Listen."""
    plain, secure = BY_SECURITY["aggregation"]
    if name in SWITCHES and texts.get(name) == "on" and texts.get("aggregation") == plain:
        return {"aggregation": secure}
    return {}


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


def not_used(texts: Mapping[str, str]) -> dict[str, Any]:
    """The settings of the greyed-out fields given every field's text (the rule does not
    take them, secure aggregation is off or cannot run with them), as ``AUTO``: not
    given, whatever they say."""
    return {name: AUTO for name in (*SETTINGS, "secagg_threshold") if not applies(name, texts)}
