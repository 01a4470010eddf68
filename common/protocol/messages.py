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
from dataclasses import dataclass, field

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
GA_SETTING_KEYS = frozenset({"num_generations", "num_parents_mating", "mutation_percent_genes",
                             "operators", "mutation_step", "stop_fitness"})

CLIENT_TO_SERVER = {
    Subject.ECHO: Schema(frozenset({"best_model_weights_vector"}), COMMON_OPTIONAL_KEYS),
    # sequence: the sender's count of its model updates, so a resent one is applied once
    Subject.MODEL: Schema(frozenset({"best_model_weights_vector"}),
                          COMMON_OPTIONAL_KEYS | {"sequence", "num_samples"}),
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
        log.info("ignoring unknown keys in %r message: %s", subject.value,
                 ", ".join(sorted(map(str, unknown))))
    known = {k: v for k, v in data.items() if k not in unknown}
    return Message(subject, known)


def check_weights_vector(vector, length: int, what: str = "best_model_weights_vector") -> np.ndarray:
    """Return ``vector`` as float32 if it is 1-D, real, finite and ``length`` long."""
    if not isinstance(vector, np.ndarray) or vector.dtype.kind not in "fiu":
        raise SchemaError(f"{what} is not a numeric NumPy array")
    if vector.shape != (length,):
        raise SchemaError(f"{what} has shape {vector.shape}, expected ({length},)")
    if not np.all(np.isfinite(vector)):
        raise SchemaError(f"{what} holds NaN or infinity")
    return vector.astype(np.float32, copy=False)


def check_population(population, num_solutions, num_params: int) -> np.ndarray:
    """Return the server's population as a float32 (num_solutions, num_params) array."""
    if not isinstance(num_solutions, int) or not 1 <= num_solutions <= 100_000:
        raise SchemaError(f"num_solutions {num_solutions!r} is not a sane count")
    try:
        population = np.asarray(population)
    except ValueError as exc:
        raise SchemaError(f"population_weights is ragged: {exc}") from exc
    if population.shape != (num_solutions, num_params) or population.dtype.kind not in "fiu":
        raise SchemaError(f"population_weights has shape {population.shape}, expected "
                          f"({num_solutions}, {num_params}) numbers")
    if not np.all(np.isfinite(population)):
        raise SchemaError("population_weights holds NaN or infinity")
    return population.astype(np.float32, copy=False)


def update_key(data: dict) -> tuple[str, int] | None:
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


def sample_count(data: dict) -> int:
    """How many samples a model update was trained on, for fedavg's weights; 1 when unsent."""
    count = data.get("num_samples", 1)
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) \
            or not 1 <= count <= 10**12:
        raise SchemaError(f"num_samples {count!r} is not a count")
    return int(count)


def check_ga_settings(data: dict, num_solutions: int) -> dict:
    """The GA settings a ``model`` message carries, checked to be sane numbers."""
    settings = {key: data[key] for key in GA_SETTING_KEYS if key in data}
    limits = {"num_generations": (int, 1, 100_000), "num_parents_mating": (int, 1, num_solutions),
              "mutation_percent_genes": ((int, float), 0, 100),
              "mutation_step": ((int, float), 0, 100), "stop_fitness": ((int, float), 0, 1e12)}
    for key, value in settings.items():
        if key == "operators":
            if not isinstance(value, str) or value not in OPERATORS:
                raise SchemaError(f"operators {value!r} is not one of {', '.join(OPERATORS)}")
            continue
        kind, low, high = limits[key]
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            raise SchemaError(f"{key} {value!r} is not a number from {low} to {high}")
    return settings


def default_max_message_bytes(num_params: int, num_solutions: int) -> int:
    """A budget that fits a population of ``num_solutions`` float64 vectors and then some."""
    return (num_solutions + 2) * 8 * num_params + 2**20
