"""Message shapes: subjects, the keys each direction's messages carry, encoding, and the
checks a decoded message's values must pass. No sockets here: training, the model checks
and the Flower records use these without loading the socket layer.

Messages are the tutorial's pickled dicts ``{"subject": ..., "data": {...}}``, written with
plain ``pickle.dumps`` so peers that read with ``pickle.loads`` interoperate.
"""

from __future__ import annotations

import enum
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from common.errors import SchemaError
from common.operators import OPERATORS

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
PICKLE_PROTOCOL = 4  # what Python 3.8-3.13 peers write by default
CLIENT_MAX_MESSAGE_BYTES = 256 * 2**20  # a client learns the model size only from its first message


class Subject(str, enum.Enum):
    ECHO = "echo"
    MODEL = "model"
    DONE = "done"


@dataclass(frozen=True)
class Schema:
    """Keys a message's ``data`` must have, and the ones it may have."""

    required: frozenset[str]
    optional: frozenset[str] = field(default_factory=frozenset)


# Keys any message may carry; peers that do not know them ignore them.
COMMON_OPTIONAL_KEYS = frozenset({"client_id", "protocol_version"})

# The server's GA settings, sent with each model; plain-pickle peers ignore them, and a
# message may lack any of them (an older server's): the client's own settings apply.
GA_SETTING_KEYS = frozenset(
    {
        "num_generations",
        "num_parents_mating",
        "mutation_percent_genes",
        "operators",
        "mutation_step",
        "stop_fitness",
    }
)

CLIENT_TO_SERVER = {
    Subject.ECHO: Schema(frozenset({"best_model_weights_vector"}), COMMON_OPTIONAL_KEYS),
    # sequence: the sender's count of its model updates, so a resent one is applied once
    Subject.MODEL: Schema(
        frozenset({"best_model_weights_vector"}), COMMON_OPTIONAL_KEYS | {"sequence", "num_samples"}
    ),
}
SERVER_TO_CLIENT = {
    Subject.MODEL: Schema(
        frozenset({"population_weights", "model_json", "num_solutions"}),
        COMMON_OPTIONAL_KEYS | {"round", "accuracy"} | GA_SETTING_KEYS,
    ),
    Subject.DONE: Schema(frozenset(), COMMON_OPTIONAL_KEYS | {"round", "accuracy"}),
}


# ---- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    subject: Subject
    data: dict

    def to_wire(self) -> dict:
        return {"subject": self.subject.value, "data": self.data}


def encode(message: Message) -> bytes:
    return pickle.dumps(message.to_wire(), protocol=PICKLE_PROTOCOL)


def validate(obj, schemas: dict[Subject, Schema]) -> Message:
    """Check a decoded object against the schemas of one direction; unknown keys are dropped."""
    if not isinstance(obj, dict):
        raise SchemaError(f"message is a {type(obj).__name__}, not a dict")
    if "subject" not in obj:
        raise SchemaError("message has no 'subject'")
    try:
        subject = Subject(obj["subject"])
    except ValueError:
        subject = None
    if subject not in schemas:
        expected = ", ".join(repr(s.value) for s in schemas)
        raise SchemaError(f"unexpected subject {obj['subject']!r} (expected {expected})")
    data = obj.get("data")
    if data is None and subject is Subject.DONE:
        data = {}  # the tutorial's server sends {"subject": "done", "data": None}
    if not isinstance(data, dict):
        raise SchemaError(f"{subject.value!r} message has no 'data' dict")
    schema = schemas[subject]
    missing = schema.required - data.keys()
    if missing:
        raise SchemaError(f"{subject.value!r} message lacks {', '.join(sorted(missing))}")
    unknown = data.keys() - schema.required - schema.optional
    if unknown:
        log.info(
            "ignoring unknown keys in %r message: %s",
            subject.value,
            ", ".join(sorted(map(str, unknown))),
        )
    known = {k: v for k, v in data.items() if k not in unknown}
    return Message(subject, known)


def check_weights_vector(
    vector, length: int, what: str = "best_model_weights_vector"
) -> np.ndarray:
    """Return ``vector`` as float32 if it is 1-D, real, finite and ``length`` long."""
    if not isinstance(vector, np.ndarray) or vector.dtype.kind not in "fiu":
        raise SchemaError(f"{what} is not a numeric NumPy array")
    if vector.shape != (length,):
        raise SchemaError(f"{what} has shape {vector.shape}, expected ({length},)")
    if not np.all(np.isfinite(vector)):
        raise SchemaError(f"{what} holds NaN or infinity")
    return vector.astype(np.float32, copy=False)


def check_population(population, num_solutions, num_params: int | None = None) -> np.ndarray:
    """Return the server's population as a float32 (num_solutions, num_params) array; with
    ``num_params`` None (the model not yet built) any number of columns passes."""
    if not isinstance(num_solutions, int) or not 1 <= num_solutions <= 100_000:
        raise SchemaError(f"num_solutions {num_solutions!r} is not a sane count")
    try:
        population = np.asarray(population)
    except ValueError as exc:
        raise SchemaError(f"population_weights is ragged: {exc}") from exc
    columns = population.shape[-1] if num_params is None and population.ndim == 2 else num_params
    if population.shape != (num_solutions, columns) or population.dtype.kind not in "fiu":
        raise SchemaError(
            f"population_weights has shape {population.shape}, expected "
            f"({num_solutions}, {num_params or 'parameters'}) numbers"
        )
    if not np.all(np.isfinite(population)):
        raise SchemaError("population_weights holds NaN or infinity")
    return population.astype(np.float32, copy=False)


def update_key(data: Mapping) -> tuple[str, int] | None:
    """A model update's (client_id, sequence), or None from a peer that sends no sequence
    (plain-pickle peers: each of their updates counts)."""
    if "sequence" not in data:
        return None
    client_id, sequence = data.get("client_id"), data["sequence"]
    if not isinstance(client_id, str) or not 0 < len(client_id) <= 256:
        raise SchemaError("a message with a sequence needs a client_id of 1-256 characters")
    if not isinstance(sequence, (int, np.integer)) or isinstance(sequence, bool) or sequence < 0:
        raise SchemaError(f"sequence {sequence!r} is not a count")
    return client_id, int(sequence)


def sample_count(data: Mapping) -> int:
    """How many samples a model update was trained on, for fedavg's weights; 1 when unsent."""
    count = data.get("num_samples", 1)
    if (
        not isinstance(count, (int, np.integer))
        or isinstance(count, bool)
        or not 1 <= count <= 10**12
    ):
        raise SchemaError(f"num_samples {count!r} is not a count")
    return int(count)


def check_ga_settings(data: Mapping, num_solutions: int) -> dict[str, Any]:
    """The GA settings a ``model`` message carries, checked to be sane numbers."""
    settings: dict[str, Any] = {key: data[key] for key in GA_SETTING_KEYS if key in data}
    limits: dict[str, tuple[type | tuple[type, ...], float, float]] = {
        "num_generations": (int, 1, 100_000),
        "num_parents_mating": (int, 1, num_solutions),
        "mutation_percent_genes": ((int, float), 0, 100),
        "mutation_step": ((int, float), 0, 100),
        "stop_fitness": ((int, float), 0, 1e12),
    }
    for key, value in settings.items():
        if key == "operators":
            if not isinstance(value, str) or value not in OPERATORS:
                raise SchemaError(f"operators {value!r} is not one of {', '.join(OPERATORS)}")
            continue
        kind, low, high = limits[key]
        number = isinstance(value, kind) and not isinstance(value, bool)
        if not (number and low <= value <= high):
            raise SchemaError(f"{key} {value!r} is not a number from {low} to {high}")
    return settings


# ---- the typed messages the core sees --------------------------------------------------
# Each converts to and from its message's ``data`` here and nowhere else: the core takes
# and returns these, the transports (a socket connection, Flower's records) carry the dicts.


@dataclass(frozen=True)
class ClientUpdate:
    """A client's ``model`` message: its best weights, checked against the model's size."""

    subject: ClassVar[Subject] = Subject.MODEL
    best_model_weights_vector: np.ndarray
    num_samples: int | None = None  # None: not sent (tutorial peers); fedavg counts 1
    key: tuple[str, int] | None = None  # (client_id, sequence), if the client sent one

    @classmethod
    def from_data(cls, data: Mapping, num_params: int) -> ClientUpdate:
        """The update in a ``model`` message's data; ``SchemaError`` if it is malformed."""
        vector = check_weights_vector(data["best_model_weights_vector"], num_params)
        num_samples = sample_count(data) if "num_samples" in data else None
        return cls(vector, num_samples, update_key(data))

    def to_message(self) -> Message:
        data: dict[str, Any] = {
            "best_model_weights_vector": self.best_model_weights_vector,
            "protocol_version": PROTOCOL_VERSION,
        }
        if self.key is not None:
            data["client_id"], data["sequence"] = self.key
        if self.num_samples is not None:
            data["num_samples"] = self.num_samples
        return Message(self.subject, data)


def echo(client_id: str | None = None) -> Message:
    """A client's first request: the tutorial's ``echo``, which the server answers with the
    model."""
    data: dict[str, Any] = {"best_model_weights_vector": None, "protocol_version": PROTOCOL_VERSION}
    if client_id is not None:
        data["client_id"] = client_id
    return Message(Subject.ECHO, data)


@dataclass(frozen=True)
class ModelRequest:
    """A server's ``model`` message: train this population of this model.

    The population's rows are checked here; its columns only once the model is built
    (``check_columns``). ``ga_settings`` holds the GA settings the server sent, by
    ``GAConfig`` field name (a plain-pickle server sends none).
    """

    subject: ClassVar[Subject] = Subject.MODEL
    model_json: str
    population_weights: np.ndarray  # float32, num_solutions x parameters
    ga_settings: Mapping[str, Any] = field(default_factory=dict)
    round: int | None = None  # the server's round count and global accuracy, if sent
    accuracy: float | None = None

    @property
    def num_solutions(self) -> int:
        return len(self.population_weights)

    @classmethod
    def from_data(cls, data: Mapping) -> ModelRequest:
        if not isinstance(data["model_json"], str):
            raise SchemaError("model_json is not a string")
        num_solutions = data["num_solutions"]
        population = check_population(data["population_weights"], num_solutions)
        return cls(
            data["model_json"],
            population,
            check_ga_settings(data, num_solutions),
            data.get("round"),
            data.get("accuracy"),
        )

    def to_data(self) -> dict[str, Any]:
        data = {
            "population_weights": self.population_weights,
            "model_json": self.model_json,
            "num_solutions": self.num_solutions,
            "round": self.round,
            "accuracy": self.accuracy,
            **self.ga_settings,
        }
        return {key: value for key, value in data.items() if value is not None}

    def to_message(self) -> Message:
        return Message(self.subject, self.to_data())

    def check_columns(self, num_params: int) -> None:
        """``SchemaError`` unless each member has ``num_params`` weights, as the model has."""
        shape = self.population_weights.shape
        if shape[1] != num_params:
            raise SchemaError(
                f"population_weights has shape {shape}, expected "
                f"({self.num_solutions}, {num_params}) numbers"
            )


@dataclass(frozen=True)
class Done:
    """A server's ``done``: training is over (with the last round and accuracy, if sent)."""

    subject: ClassVar[Subject] = Subject.DONE
    round: int | None = None
    accuracy: float | None = None

    def to_message(self) -> Message:
        return Message(self.subject, {"round": self.round, "accuracy": self.accuracy})


ServerReply = ModelRequest | Done


def server_reply(message: Message) -> ServerReply:
    """The typed form of a validated message from a server; ``SchemaError`` if malformed."""
    if message.subject is Subject.DONE:
        return Done(message.data.get("round"), message.data.get("accuracy"))
    return ModelRequest.from_data(message.data)


def default_max_message_bytes(num_params: int, num_solutions: int) -> int:
    """A budget that fits a population of ``num_solutions`` float64 vectors and then some."""
    return (num_solutions + 2) * 8 * num_params + 2**20
