"""``AUTO``: a setting left to what the run knows only later, as httpx's
``USE_CLIENT_DEFAULT``. One value for every such setting: the GA settings the two kinds of
problem want differently (the model's), an aggregation rule's own settings (the rule's),
the secure threshold (each round's clients), the aggregation and min clients (secure
aggregation's or not), the largest message (the model's size). A config holds it until
``TrainingConfig.resolved`` fills in what the config decides; the rest is filled in where it
is known. Each front end turns its own empty value into it: an unset flag, an empty setup
field, an empty run config value. None still means "none": no file, no seed, no secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeVar

T = TypeVar("T")


class Auto:
    """The type of ``AUTO``, its one instance."""

    _instance: Auto | None = None

    def __new__(cls) -> Auto:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "AUTO"

    def __reduce__(self) -> str:
        return "AUTO"  # a copy or a pickle is the same one


AUTO: Final = Auto()


def given(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` without those left ``AUTO``."""
    return {name: value for name, value in settings.items() if value is not AUTO}


def known(value: T | Auto) -> T:
    """The value of a setting its config resolved (``TrainingConfig.resolved``); reading
    one still ``AUTO`` is a bug, and raises ``ValueError``."""
    if isinstance(value, Auto):
        raise ValueError("a setting left AUTO was read before its config was resolved")
    return value
