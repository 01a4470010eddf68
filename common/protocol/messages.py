"""Message shapes: subjects, the keys each direction's messages carry, encoding, and the
checks a decoded message's values must pass. No sockets here: training, the model checks
and the Flower records use these without loading the socket layer.

Messages are the tutorial's pickled dicts ``{"subject": ..., "data": {...}}``, written with
plain ``pickle.dumps`` so peers that read with ``pickle.loads`` interoperate.
"""

from __future__ import annotations

import enum
import logging
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from common.errors import ConfigError, SchemaError
from common.events import Outcome
from common.operators import OPERATORS
from common.secagg import keys as secagg_keys
from common.secagg import shamir
from common.secagg.messages import (
    EncryptedShare,
    KeyList,
    KeysAdvertised,
    MaskedInput,
    Reveal,
    RoundSetup,
    SharesRelayed,
    SharesSent,
    UnmaskRequest,
)
from common.secagg.ring import RingSpec
from common.secagg.scores import Scoring

log = logging.getLogger(__name__)

# 2: fitness mode's ``score`` and ``fitness``; 3: secure rounds, ``waiting``; 4: masked scores
PROTOCOL_VERSION = 4
FITNESS_MODE_VERSION = 2  # the first version whose clients can score members (fitness mode)
SECURE_AGGREGATION_VERSION = 3  # the first whose clients take part in secure rounds
WAITING_VERSION = 3  # the first version whose clients hear ``waiting`` notices
MASKED_SCORES_VERSION = 4  # the first whose clients mask their scores (fitness mode, secure)
PICKLE_PROTOCOL = 4  # what Python 3.8-3.13 peers write by default
CLIENT_MAX_MESSAGE_BYTES = 256 * 2**20  # a client learns the model size only from its first message


class Subject(str, enum.Enum):
    ECHO = "echo"
    MODEL = "model"
    DONE = "done"
    # Fitness mode (common.fitness_federation), only with clients that announce
    # FITNESS_MODE_VERSION: the server asks a generation's scores, a client sends its losses.
    SCORE = "score"
    FITNESS = "fitness"
    # Secure aggregation (common.secure_rounds, wire forms in common.protocol.secure), only
    # with clients that announce SECURE_AGGREGATION_VERSION; the stages in their order.
    SECAGG_READY = "secagg_ready"  # client: trained, ready for a secure round
    SECAGG_SETUP = "secagg_setup"  # server: the round's setup and the client's id in it
    SECAGG_KEYS = "secagg_keys"  # client: its two public keys
    SECAGG_KEY_LIST = "secagg_key_list"  # server: the keys of every client in time
    SECAGG_SHARES = "secagg_shares"  # client: its sealed shares, one per peer
    SECAGG_RELAYED = "secagg_relayed"  # server: the shares sealed for this client
    SECAGG_MASKED = "secagg_masked"  # client: its masked update and count
    SECAGG_UNMASK = "secagg_unmask"  # server: who survived and who dropped
    SECAGG_REVEAL = "secagg_reveal"  # client: the shares that remove the masks
    # Fitness mode with secure aggregation (common.secagg.scores), only with clients that
    # announce MASKED_SCORES_VERSION.
    FITNESS_REKEY = "fitness_rekey"  # server: make a mask key for a new roster
    FITNESS_KEY = "fitness_key"  # client: its mask key's public half
    FITNESS_MASKED = "fitness_masked"  # client: its losses and count, masked
    FITNESS_UNMASK = "fitness_unmask"  # server: every roster client's vector is in
    FITNESS_REVEAL = "fitness_reveal"  # client: the self-mask seed of that vector
    # Only to clients that announce WAITING_VERSION, every ``notice_interval`` seconds while
    # their reply is held (a round gathering updates, or --round-delay): a sign of life.
    WAITING = "waiting"


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

# Which generation a fitness-mode message is about: the server's round, the GA's generation
# in it, and the attempt at scoring it (a later attempt scores every member again).
GENERATION_KEYS = frozenset({"round", "generation", "attempt"})
# A fitness-mode round's beginning, sent whole at its start and to a client that joins or
# lost step: what the client needs to run the same GA as the server.
ROUND_START_KEYS = frozenset(
    {"population_weights", "model_json", "num_solutions", "seed", "fitness_history"}
)
# Which roster's keys a masked score message is under (common.secagg.scores).
SCORING_KEYS = GENERATION_KEYS | {"epoch"}
# The keys of each secure-round message (common.protocol.secure), all required.
SECURE_KEYS = {
    Subject.SECAGG_READY: frozenset({"round"}),
    Subject.SECAGG_SETUP: frozenset(
        {"round", "clients", "length", "threshold", "bits", "clipping_range", "max_weight", "you"}
    ),
    Subject.SECAGG_KEYS: frozenset({"round", "sender", "share_key", "mask_key"}),
    Subject.SECAGG_KEY_LIST: frozenset({"round", "keys"}),
    Subject.SECAGG_SHARES: frozenset({"round", "sender", "shares"}),
    Subject.SECAGG_RELAYED: frozenset({"round", "receiver", "shares"}),
    Subject.SECAGG_MASKED: frozenset({"round", "sender", "vector"}),
    Subject.SECAGG_UNMASK: frozenset({"round", "survivors", "dropped"}),
    Subject.SECAGG_REVEAL: frozenset({"round", "sender", "self_seed_shares", "mask_key_shares"}),
}
SECURE_FROM_CLIENT = (  # the others are the server's
    Subject.SECAGG_READY,
    Subject.SECAGG_KEYS,
    Subject.SECAGG_SHARES,
    Subject.SECAGG_MASKED,
    Subject.SECAGG_REVEAL,
)

CLIENT_TO_SERVER = {
    Subject.ECHO: Schema(frozenset({"best_model_weights_vector"}), COMMON_OPTIONAL_KEYS),
    # sequence: the sender's count of its model updates, so a resent one is applied once;
    # round: the server's round count in the model it trained, so that a round-based rule
    # applies it only to the round it was trained for
    Subject.MODEL: Schema(
        frozenset({"best_model_weights_vector"}),
        COMMON_OPTIONAL_KEYS | {"sequence", "num_samples", "round"},
    ),
    Subject.FITNESS: Schema(
        frozenset({"losses", "num_samples", "digest"}) | GENERATION_KEYS, COMMON_OPTIONAL_KEYS
    ),
    Subject.FITNESS_KEY: Schema(frozenset({"epoch", "mask_key"}), COMMON_OPTIONAL_KEYS),
    Subject.FITNESS_MASKED: Schema(SCORING_KEYS | {"digest", "vector"}, COMMON_OPTIONAL_KEYS),
    Subject.FITNESS_REVEAL: Schema(SCORING_KEYS | {"self_seed"}, COMMON_OPTIONAL_KEYS),
    **{
        subject: Schema(SECURE_KEYS[subject], COMMON_OPTIONAL_KEYS)
        for subject in SECURE_FROM_CLIENT
    },
}
SERVER_TO_CLIENT = {
    # secure_aggregation: true when the round's updates go through a secure round
    Subject.MODEL: Schema(
        frozenset({"population_weights", "model_json", "num_solutions"}),
        # notice_interval: the server's promise of a ``waiting`` notice at least this often
        # while the client's next reply is held; only to clients announcing WAITING_VERSION.
        COMMON_OPTIONAL_KEYS
        | {"round", "accuracy", "secure_aggregation", "notice_interval"}
        | GA_SETTING_KEYS,
    ),
    # stage: what is gathered when it is not weights updates (fitness mode, secure rounds)
    Subject.WAITING: Schema(
        frozenset({"round", "missing", "closes_in"}), COMMON_OPTIONAL_KEYS | {"stage"}
    ),
    # outcome: how training ended (common.events.Outcome), absent from the tutorial's server
    Subject.DONE: Schema(frozenset(), COMMON_OPTIONAL_KEYS | {"round", "accuracy", "outcome"}),
    # epoch, roster, loss_range: with secure aggregation, mask the scores under this roster
    Subject.SCORE: Schema(
        frozenset({"all_members", "digest"}) | GENERATION_KEYS,
        COMMON_OPTIONAL_KEYS
        | {"fitness", "members", "accuracy", "epoch", "roster", "loss_range", "notice_interval"}
        | ROUND_START_KEYS
        | GA_SETTING_KEYS,
    ),
    Subject.FITNESS_REKEY: Schema(frozenset({"epoch"}), COMMON_OPTIONAL_KEYS),
    Subject.FITNESS_UNMASK: Schema(SCORING_KEYS, COMMON_OPTIONAL_KEYS),
    **{
        subject: Schema(keys, COMMON_OPTIONAL_KEYS)
        for subject, keys in SECURE_KEYS.items()
        if subject not in SECURE_FROM_CLIENT
    },
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
    vector, length: int, what: str = "best_model_weights_vector", dtype=np.float32
) -> np.ndarray:
    """Return ``vector`` as ``dtype`` if it is 1-D, real, finite and ``length`` long."""
    if not isinstance(vector, np.ndarray) or vector.dtype.kind not in "fiu":
        raise SchemaError(f"{what} is not a numeric NumPy array")
    if vector.shape != (length,):
        raise SchemaError(f"{what} has shape {vector.shape}, expected ({length},)")
    if not np.all(np.isfinite(vector)):
        raise SchemaError(f"{what} holds NaN or infinity")
    return vector.astype(dtype, copy=False)


def check_population(
    population,
    num_solutions,
    num_params: int | None = None,
    what: str = "population_weights",
    dtype=np.float32,
) -> np.ndarray:
    """Return the server's population as a ``dtype`` (num_solutions, num_params) array; with
    ``num_params`` None (the model not yet built) any number of columns passes."""
    if not isinstance(num_solutions, int) or not 1 <= num_solutions <= 100_000:
        raise SchemaError(f"num_solutions {num_solutions!r} is not a sane count")
    try:
        population = np.asarray(population)
    except ValueError as exc:
        raise SchemaError(f"{what} is ragged: {exc}") from exc
    columns = population.shape[-1] if num_params is None and population.ndim == 2 else num_params
    if population.shape != (num_solutions, columns) or population.dtype.kind not in "fiu":
        raise SchemaError(
            f"{what} has shape {population.shape}, expected "
            f"({num_solutions}, {num_params or 'parameters'}) numbers"
        )
    if not np.all(np.isfinite(population)):
        raise SchemaError(f"{what} holds NaN or infinity")
    return population.astype(dtype, copy=False)


def check_count(value, what: str, low: int = 0, high: int = 10**12) -> int:
    """``value`` as an int if it is a whole number from ``low`` to ``high`` (not a bool)."""
    if (
        not isinstance(value, (int, np.integer))
        or isinstance(value, bool)
        or not low <= value <= high
    ):
        raise SchemaError(f"{what} {value!r} is not a count from {low} to {high}")
    return int(value)


def update_key(data: Mapping) -> tuple[str, int] | None:
    """A model update's (client_id, sequence), or None from a peer that sends no sequence
    (plain-pickle peers: each of their updates counts)."""
    if "sequence" not in data:
        return None
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not 0 < len(client_id) <= 256:
        raise SchemaError("a message with a sequence needs a client_id of 1-256 characters")
    return client_id, check_count(data["sequence"], "sequence", high=2**63 - 1)


def sample_count(data: Mapping) -> int:
    """How many samples a model update was trained on, for fedavg's weights; 1 when unsent."""
    return check_count(data.get("num_samples", 1), "num_samples", low=1)


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
    round: int | None = None  # the server's round count in the model trained, if sent

    @classmethod
    def from_data(cls, data: Mapping, num_params: int) -> ClientUpdate:
        """The update in a ``model`` message's data; ``SchemaError`` if it is malformed."""
        vector = check_weights_vector(data["best_model_weights_vector"], num_params)
        num_samples = sample_count(data) if "num_samples" in data else None
        trained = check_count(data["round"], "round") if "round" in data else None
        return cls(vector, num_samples, update_key(data), trained)

    def to_message(self) -> Message:
        data: dict[str, Any] = {
            "best_model_weights_vector": self.best_model_weights_vector,
            "protocol_version": PROTOCOL_VERSION,
        }
        if self.key is not None:
            data["client_id"], data["sequence"] = self.key
        if self.num_samples is not None:
            data["num_samples"] = self.num_samples
        if self.round is not None:
            data["round"] = self.round
        return Message(self.subject, data)


@dataclass(frozen=True)
class Echo:
    """A client's first request: the tutorial's ``echo``, which the server answers with the
    model. Its ``best_model_weights_vector`` (ours send None) is not read; ours also carry
    the protocol version and the client's id, if it has one."""

    subject: ClassVar[Subject] = Subject.ECHO
    client_id: str | None = None

    @classmethod
    def from_data(cls, data: Mapping) -> Echo:
        """The typed ``echo``: an id that is not a string of 1-256 characters is ignored."""
        return cls(client_id_of(data))

    def to_message(self) -> Message:
        return Message(
            self.subject, _from_client({"best_model_weights_vector": None}, self.client_id)
        )


def _population_of(data: Mapping) -> np.ndarray:
    """A server's population to train or score, checked: a model message's or a round
    start's (both name the model in ``model_json``)."""
    if not isinstance(data["model_json"], str):
        raise SchemaError("model_json is not a string")
    return check_population(data["population_weights"], data["num_solutions"])


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
    # The trained update goes through a secure round (common.secure_rounds), never in the clear.
    secure_aggregation: bool = False
    notice_interval: float | None = None  # seconds; None: the server sends no notices

    @property
    def num_solutions(self) -> int:
        return len(self.population_weights)

    @classmethod
    def from_data(cls, data: Mapping) -> ModelRequest:
        population = _population_of(data)
        num_solutions = len(population)
        secure = data.get("secure_aggregation", False)
        if not isinstance(secure, bool):
            raise SchemaError(f"secure_aggregation {secure!r} is not true or false")
        return cls(
            data["model_json"],
            population,
            check_ga_settings(data, num_solutions),
            _round_of(data),
            _accuracy_of(data),
            secure,
            _notice_interval_of(data),
        )

    def to_data(self) -> dict[str, Any]:
        data = {
            "population_weights": self.population_weights,
            "model_json": self.model_json,
            "num_solutions": self.num_solutions,
            "round": self.round,
            "accuracy": self.accuracy,
            "secure_aggregation": self.secure_aggregation or None,  # unsent when off
            "notice_interval": self.notice_interval,
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


# What a client says of each outcome the server sends with ``done``.
_HEARD = {
    Outcome.DONE: "training is done",
    Outcome.GAVE_UP: "the server gave up after its round limit",
    Outcome.PATIENCE: "the server stopped: no better model for its patience rounds",
    Outcome.STOPPED: "the server's training was stopped by request",
}


@dataclass(frozen=True)
class Done:
    """A server's ``done``: training is over (with the last round and accuracy, if sent),
    and how it ended; a server that does not say (the tutorial's) reached its target."""

    subject: ClassVar[Subject] = Subject.DONE
    round: int | None = None
    accuracy: float | None = None
    outcome: Outcome = Outcome.DONE

    @classmethod
    def from_data(cls, data: Mapping) -> Done:
        """The typed ``done``; an ``outcome`` absent or None is done (the tutorial's server
        sends no data), one that names no ``Outcome`` is a ``SchemaError``."""
        outcome = data.get("outcome")
        try:
            outcome = Outcome.DONE if outcome is None else Outcome(outcome)
        except ValueError:
            known = ", ".join(repr(str(member)) for member in Outcome)
            raise SchemaError(f"outcome {outcome!r} is none of {known}") from None
        return cls(_round_of(data), _accuracy_of(data), outcome)

    def to_message(self) -> Message:
        # The outcome as a plain str: a pickled enum would name a class of ours, which a
        # restricted unpickler (ours, or a peer's) refuses to load.
        data = {"round": self.round, "accuracy": self.accuracy, "outcome": self.outcome.value}
        return Message(self.subject, data)

    def describe(self) -> str:
        """What a client logs and its window shows."""
        accuracy = "" if self.accuracy is None else f": accuracy {self.accuracy:.2f}"
        return _HEARD[self.outcome] + accuracy


def _seconds(value, what: str, low: float = 0.0) -> float:
    """``value`` as seconds if it is a number from ``low`` to a day (not a bool)."""
    if (
        not isinstance(value, (int, float, np.integer, np.floating))
        or isinstance(value, bool)
        or not low <= value <= 86_400
    ):
        raise SchemaError(f"{what} {value!r} is not a number of seconds from {low:g} to 86400")
    return float(value)


@dataclass(frozen=True)
class Waiting:
    """A server's ``waiting``: the reply to the client's last request is held, while round
    ``round`` awaits ``missing`` more clients, or (``missing`` 0) by --round-delay, for
    ``closes_in`` seconds at most (0: until enough come); ``stage`` names what a round
    gathers when it is not updates (a generation's scores, a secure round's stage)."""

    subject: ClassVar[Subject] = Subject.WAITING
    round: int
    missing: int
    closes_in: float
    stage: str = ""

    @classmethod
    def from_data(cls, data: Mapping) -> Waiting:
        stage = data.get("stage", "")
        return cls(
            check_count(data["round"], "round"),
            check_count(data["missing"], "missing"),
            _seconds(data["closes_in"], "closes_in"),
            stage[:200] if isinstance(stage, str) else "",
        )

    def to_message(self) -> Message:
        data: dict[str, Any] = {
            "round": self.round,
            "missing": self.missing,
            "closes_in": self.closes_in,
        }
        if self.stage:
            data["stage"] = self.stage
        return Message(self.subject, data)

    def describe(self) -> str:
        """What a client logs and its window shows."""
        seconds = math.ceil(self.closes_in)
        where = f"round {self.round}" + (f", {self.stage}" if self.stage else "")
        if not self.missing:
            held = f"the reply is held {seconds} s more (pacing)" if seconds else "waiting"
            return f"{where}: {held}"
        clients = "client" if self.missing == 1 else "clients"
        limit = f" (at most {seconds} s)" if seconds else ""
        return f"{where}: waiting for {self.missing} more {clients}{limit}"


def _round_of(data: Mapping) -> int | None:
    """The server's round count a message carries, if it sent one."""
    value = data.get("round")
    return None if value is None else check_count(value, "round")


def _accuracy_of(data: Mapping) -> float | None:
    """The global accuracy a message carries, if it sent one: a number from 0 to 1."""
    value = data.get("accuracy")
    if value is None:
        return None
    if (
        not isinstance(value, (int, float, np.integer, np.floating))
        or isinstance(value, bool)
        or not 0 <= value <= 1
    ):
        raise SchemaError(f"accuracy {value!r} is not a number from 0 to 1")
    return float(value)


def _notice_interval_of(data: Mapping) -> float | None:
    """The server's promise of a ``waiting`` notice at least this often, if it made one."""
    interval = data.get("notice_interval")
    return None if interval is None else _seconds(interval, "notice_interval", low=0.01)


def _generation_of(data: Mapping) -> tuple[int, int, int]:
    """A fitness-mode message's (round, generation, attempt), checked."""
    return (
        check_count(data["round"], "round"),
        check_count(data["generation"], "generation"),
        check_count(data["attempt"], "attempt"),
    )


def _values(vector, what: str) -> np.ndarray:
    """A 1-D array of finite numbers of any length, as float64."""
    length = len(vector) if isinstance(vector, np.ndarray) and vector.ndim == 1 else -1
    return check_weights_vector(vector, length, what, np.float64)


def client_id_of(data: Mapping) -> str | None:
    """The ``client_id`` a message names, if it is a string of 1-256 characters."""
    client_id = data.get("client_id")
    return client_id if isinstance(client_id, str) and 0 < len(client_id) <= 256 else None


def _digest_of(data: Mapping) -> str:
    digest = data["digest"]
    if not isinstance(digest, str) or not 0 < len(digest) <= 128:
        raise SchemaError("digest is not a string of 1-128 characters")
    return digest


@dataclass(frozen=True)
class RoundStart:
    """A fitness-mode round's beginning, whole: the model, the round's first population and
    the seed and settings of the server's GA, so that a client runs the same GA; and the
    fitness of every generation scored so far, for a client joining mid-round to replay."""

    model_json: str
    population_weights: np.ndarray  # float32, num_solutions x parameters
    seed: int
    ga_settings: Mapping[str, Any]
    fitness_history: np.ndarray  # float64, generations scored so far x num_solutions

    @classmethod
    def from_data(cls, data: Mapping) -> RoundStart:
        population = _population_of(data)
        num_solutions = len(population)
        history = np.asarray(data["fitness_history"])
        if history.ndim != 2 or history.shape[0] > 100_000:
            raise SchemaError(
                f"fitness_history has shape {history.shape}, not generations x members"
            )
        return cls(
            data["model_json"],
            population,
            check_count(data["seed"], "seed", high=2**32 - 1),
            check_ga_settings(data, num_solutions),
            check_population(history, len(history), num_solutions, "fitness_history", np.float64)
            if len(history)
            else np.empty((0, num_solutions)),
        )

    def to_data(self) -> dict[str, Any]:
        return {
            "population_weights": self.population_weights,
            "model_json": self.model_json,
            "num_solutions": len(self.population_weights),
            "seed": self.seed,
            "fitness_history": self.fitness_history,
            **self.ga_settings,
        }


@dataclass(frozen=True)
class ScoreRequest:
    """A server's ``score`` message (fitness mode): score generation ``generation`` of round
    ``round`` on your data: every member if ``all_members``, else those not scored before.

    ``digest`` names the members to score (``common.fitness_federation.digest``); ``fitness``,
    every member's fitness in the generation the client just scored, moves its GA on to this
    one; ``start`` is sent at a round's start and to a client that joins or lost step;
    ``members``, the members themselves, only to a client whose GA does not draw what the
    server's does.
    """

    subject: ClassVar[Subject] = Subject.SCORE
    round: int
    generation: int
    attempt: int
    all_members: bool
    digest: str
    fitness: np.ndarray | None = None
    start: RoundStart | None = None
    members: np.ndarray | None = None
    accuracy: float | None = None  # the global model's, as a ``model`` message carries it
    roster: Roster | None = None  # with secure aggregation: mask the losses under it
    notice_interval: float | None = None  # as a ``model`` message's

    @property
    def scoring(self) -> Scoring | None:
        """What this request's masked answer is (None: answer in the clear)."""
        if self.roster is None:
            return None
        return Scoring(self.roster.epoch, self.round, self.generation, self.attempt)

    @classmethod
    def from_data(cls, data: Mapping) -> ScoreRequest:
        if not isinstance(data["all_members"], bool):
            raise SchemaError("all_members is not true or false")
        start = None
        if "population_weights" in data:
            missing = ROUND_START_KEYS - data.keys()
            if missing:
                raise SchemaError(f"'score' message lacks {', '.join(sorted(missing))}")
            start = RoundStart.from_data(data)
        fitness, members = data.get("fitness"), data.get("members")
        if fitness is not None:
            fitness = _values(fitness, "fitness")
        if members is not None:
            rows = len(members) if isinstance(members, np.ndarray) and members.ndim == 2 else -1
            members = check_population(members, rows, what="members")
        return cls(
            *_generation_of(data),
            data["all_members"],
            _digest_of(data),
            fitness,
            start,
            members,
            _accuracy_of(data),
            Roster.from_data(data) if "epoch" in data else None,
            _notice_interval_of(data),
        )

    def to_message(self) -> Message:
        data: dict[str, Any] = {
            "round": self.round,
            "generation": self.generation,
            "attempt": self.attempt,
            "all_members": self.all_members,
            "digest": self.digest,
        }
        if self.start is not None:
            data |= self.start.to_data()
        optional = {
            "fitness": self.fitness,
            "members": self.members,
            "accuracy": self.accuracy,
            "notice_interval": self.notice_interval,
        }
        data |= {key: value for key, value in optional.items() if value is not None}
        if self.roster is not None:
            data |= self.roster.to_data()
        return Message(self.subject, data)


@dataclass(frozen=True)
class Scores:
    """A client's ``fitness`` message (fitness mode): its mean loss of each member it scored,
    on its own data, with its sample count and the digest of the members it scored."""

    subject: ClassVar[Subject] = Subject.FITNESS
    losses: np.ndarray  # float64, one per member scored, in the population's order
    num_samples: int
    digest: str
    round: int
    generation: int
    attempt: int
    client_id: str | None = None

    @classmethod
    def from_data(cls, data: Mapping) -> Scores:
        losses = _values(data["losses"], "losses")
        if np.any(losses < 0):
            raise SchemaError("losses holds a negative loss")
        return cls(
            losses,
            check_count(data["num_samples"], "num_samples", low=1),
            _digest_of(data),
            *_generation_of(data),
            client_id_of(data),
        )

    def to_message(self) -> Message:
        data: dict[str, Any] = {
            "losses": self.losses,
            "num_samples": self.num_samples,
            "digest": self.digest,
            "round": self.round,
            "generation": self.generation,
            "attempt": self.attempt,
            "protocol_version": PROTOCOL_VERSION,
        }
        if self.client_id is not None:
            data["client_id"] = self.client_id
        return Message(self.subject, data)


# ---- masked scores (fitness mode with secure aggregation: common.secagg.scores) ----------


@dataclass(frozen=True)
class Roster:
    """The clients whose scores are summed, each with its mask key's public half, under
    ``epoch`` (a new one after every change of clients), and the largest loss (the ring's
    clipping range). ``keys`` is empty when the client was sent them before, under this
    ``epoch``: they go once per roster, not with every generation."""

    epoch: int
    keys: tuple[tuple[str, bytes], ...]
    loss_range: float

    @classmethod
    def from_data(cls, data: Mapping) -> Roster:
        keys, loss_range = data.get("roster", []), data.get("loss_range")
        if not isinstance(keys, (list, tuple)) or len(keys) > MAX_SECURE_CLIENTS:
            raise SchemaError(f"roster is not a list of at most {MAX_SECURE_CLIENTS} clients")
        pairs = []
        for item in keys:
            if not (isinstance(item, (list, tuple)) and len(item) == 2):
                raise SchemaError("roster holds something other than (client id, key) pairs")
            name = client_id_of({"client_id": item[0]})
            if name is None:
                raise SchemaError("roster names a client by something other than its id")
            pairs.append((name, _bytes(item[1], "roster", secagg_keys.KEY_BYTES, exactly=True)))
        if not isinstance(loss_range, (int, float)) or not 0 < loss_range <= 1e6:
            raise SchemaError(f"loss_range {loss_range!r} is not a number from 0 to 1e6")
        return cls(_epoch_of(data), tuple(pairs), float(loss_range))

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"epoch": self.epoch, "loss_range": self.loss_range}
        if self.keys:
            data["roster"] = [list(pair) for pair in self.keys]
        return data


def _epoch_of(data: Mapping) -> int:
    return check_count(data["epoch"], "epoch", high=2**63 - 1)


def _scoring_of(data: Mapping) -> Scoring:
    return Scoring(_epoch_of(data), *_generation_of(data))


def _scoring_data(scoring: Scoring) -> dict[str, int]:
    return {
        "epoch": scoring.epoch,
        "round": scoring.round,
        "generation": scoring.generation,
        "attempt": scoring.attempt,
    }


def _from_client(data: dict[str, Any], client_id: str | None) -> dict[str, Any]:
    """A client's message data: with its protocol version, and its id if it has one."""
    data["protocol_version"] = PROTOCOL_VERSION
    if client_id is not None:
        data["client_id"] = client_id
    return data


@dataclass(frozen=True)
class Rekey:
    """A server's ``fitness_rekey``: make a mask key for the roster ``epoch``."""

    subject: ClassVar[Subject] = Subject.FITNESS_REKEY
    epoch: int

    @classmethod
    def from_data(cls, data: Mapping) -> Rekey:
        return cls(_epoch_of(data))

    def to_message(self) -> Message:
        return Message(self.subject, {"epoch": self.epoch})


@dataclass(frozen=True)
class MaskKey:
    """A client's ``fitness_key``: its mask key's public half for the roster ``epoch``."""

    subject: ClassVar[Subject] = Subject.FITNESS_KEY
    epoch: int
    key: bytes
    client_id: str | None = None

    @classmethod
    def from_data(cls, data: Mapping) -> MaskKey:
        key = _bytes(data["mask_key"], "mask_key", secagg_keys.KEY_BYTES, exactly=True)
        return cls(_epoch_of(data), key, client_id_of(data))

    def to_message(self) -> Message:
        data = {"epoch": self.epoch, "mask_key": self.key}
        return Message(self.subject, _from_client(data, self.client_id))


@dataclass(frozen=True)
class MaskedScores:
    """A client's ``fitness_masked``: its losses of the members named by ``digest`` and its
    sample count, quantised and masked (``common.secagg.scores``) for ``scoring``."""

    subject: ClassVar[Subject] = Subject.FITNESS_MASKED
    scoring: Scoring
    digest: str
    vector: np.ndarray  # uint64, one per member scored, then the count
    client_id: str | None = None

    @classmethod
    def from_data(cls, data: Mapping) -> MaskedScores:
        vector = data["vector"]
        if not (isinstance(vector, np.ndarray) and vector.ndim == 1 and vector.dtype == np.uint64):
            raise SchemaError("vector is not a 1-D array of 64-bit unsigned integers")
        return cls(_scoring_of(data), _digest_of(data), vector, client_id_of(data))

    def to_message(self) -> Message:
        data = _scoring_data(self.scoring) | {"digest": self.digest, "vector": self.vector}
        return Message(self.subject, _from_client(data, self.client_id))


@dataclass(frozen=True)
class UnmaskScores:
    """A server's ``fitness_unmask``: every roster client's vector for ``scoring`` is in."""

    subject: ClassVar[Subject] = Subject.FITNESS_UNMASK
    scoring: Scoring

    @classmethod
    def from_data(cls, data: Mapping) -> UnmaskScores:
        return cls(_scoring_of(data))

    def to_message(self) -> Message:
        return Message(self.subject, _scoring_data(self.scoring))


@dataclass(frozen=True)
class ScoresReveal:
    """A client's ``fitness_reveal``: the self-mask seed of its vector for ``scoring``."""

    subject: ClassVar[Subject] = Subject.FITNESS_REVEAL
    scoring: Scoring
    self_seed: bytes
    client_id: str | None = None

    @classmethod
    def from_data(cls, data: Mapping) -> ScoresReveal:
        seed = _bytes(data["self_seed"], "self_seed", secagg_keys.KEY_BYTES, exactly=True)
        return cls(_scoring_of(data), seed, client_id_of(data))

    def to_message(self) -> Message:
        data = _scoring_data(self.scoring) | {"self_seed": self.self_seed}
        return Message(self.subject, _from_client(data, self.client_id))


# ---- secure rounds (common.secure_rounds) -----------------------------------------------
# The stages' messages are common.secagg's dataclasses; here they become plain dicts of ints,
# bytes, lists and one unsigned NumPy vector, so the restricted unpickler needs nothing new.
# Decoding checks every type and bounds every list: the secagg core checks the rest (key and
# share lengths against the round, who may send what when).

MAX_SECURE_CLIENTS = 100_000  # the most client ids a secure-round message may name
MAX_SEALED_BYTES = 1024  # a sealed share is 2 x 36 bytes plus nonce and tag


@dataclass(frozen=True)
class Ready:
    """A client's ``secagg_ready``: it trained on the global model of ``round`` and waits
    for a secure round."""

    round: int
    client_id: str | None = None


@dataclass(frozen=True)
class Invitation:
    """A server's ``secagg_setup``: the round's setup and this client's id in it."""

    setup: RoundSetup
    you: int


SecurePayload = (
    Ready
    | Invitation
    | KeysAdvertised
    | KeyList
    | SharesSent
    | SharesRelayed
    | MaskedInput
    | UnmaskRequest
    | Reveal
)


def _id(value, what: str) -> int:
    return check_count(value, what, low=1, high=2**63 - 1)


def _ids(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_SECURE_CLIENTS:
        raise SchemaError(f"{what} is not a list of at most {MAX_SECURE_CLIENTS} client ids")
    return tuple(_id(item, what) for item in value)


def _pairs(value, what: str) -> list[tuple[int, bytes]]:
    """A list of (client id, sealed share) pairs."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_SECURE_CLIENTS:
        raise SchemaError(f"{what} is not a list of at most {MAX_SECURE_CLIENTS} shares")
    pairs = []
    for item in value:
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise SchemaError(f"{what} holds something other than (client id, share) pairs")
        pairs.append((_id(item[0], what), _bytes(item[1], what, MAX_SEALED_BYTES)))
    return pairs


def _bytes(value, what: str, most: int, exactly: bool = False) -> bytes:
    if not isinstance(value, bytes) or len(value) > most or (exactly and len(value) != most):
        size = f"{most}" if exactly else f"at most {most}"
        raise SchemaError(f"{what} is not {size} bytes")
    return value


def _share_map(value, what: str) -> dict[int, bytes]:
    if not isinstance(value, dict) or len(value) > MAX_SECURE_CLIENTS:
        raise SchemaError(f"{what} is not a map of client ids to shares")
    return {
        _id(key, what): _bytes(share, what, shamir.SHARE_BYTES, exactly=True)
        for key, share in value.items()
    }


def _keys_of(data: Mapping, round_: int) -> KeysAdvertised:
    return KeysAdvertised(
        round_,
        _id(data["sender"], "sender"),
        _bytes(data["share_key"], "share_key", secagg_keys.KEY_BYTES, exactly=True),
        _bytes(data["mask_key"], "mask_key", secagg_keys.KEY_BYTES, exactly=True),
    )


def _key_data(keys: KeysAdvertised) -> dict[str, Any]:
    return {"sender": keys.sender, "share_key": keys.share_key, "mask_key": keys.mask_key}


def _setup_of(data: Mapping, round_: int) -> Invitation:
    clipping = data["clipping_range"]
    if not isinstance(clipping, (int, float)) or isinstance(clipping, bool):
        raise SchemaError(f"clipping_range {clipping!r} is not a number")
    clients = _ids(data["clients"], "clients")
    try:
        setup = RoundSetup(
            round_,
            clients,
            check_count(data["length"], "length", low=1),
            RingSpec(
                len(clients),
                float(clipping),
                check_count(data["max_weight"], "max_weight", low=1),
                check_count(data["bits"], "bits"),
            ),
            check_count(data["threshold"], "threshold"),
        )
    except (ValueError, ConfigError) as exc:
        raise SchemaError(f"the secure round's setup cannot work: {exc}") from None
    you = _id(data["you"], "you")
    if you not in setup.clients:
        raise SchemaError(f"the secure round's setup does not name this client ({you})")
    return Invitation(setup, you)


def _shares_of(data: Mapping, round_: int, kind: type) -> SharesSent | SharesRelayed:
    """A client's shares for its peers (``SharesSent``: the pairs name each receiver), or the
    shares relayed to one client (``SharesRelayed``: the pairs name each sender)."""
    if kind is SharesSent:
        sender = _id(data["sender"], "sender")
        pairs = _pairs(data["shares"], "shares")
        return SharesSent(round_, sender, tuple(EncryptedShare(sender, to, s) for to, s in pairs))
    receiver = _id(data["receiver"], "receiver")
    pairs = _pairs(data["shares"], "shares")
    return SharesRelayed(
        round_, receiver, tuple(EncryptedShare(by, receiver, s) for by, s in pairs)
    )


def _masked_of(data: Mapping, round_: int) -> MaskedInput:
    vector = data["vector"]
    if not (isinstance(vector, np.ndarray) and vector.ndim == 1 and vector.dtype.kind == "u"):
        raise SchemaError("vector is not a 1-D array of unsigned integers")
    return MaskedInput(round_, _id(data["sender"], "sender"), vector)


# Per payload type: its subject, its data (without the round) and its decoder from data.
_SECURE_WIRE: dict[type, tuple[Subject, Any, Any]] = {
    Ready: (
        Subject.SECAGG_READY,
        lambda m: {} if m.client_id is None else {"client_id": m.client_id},
        lambda data, round_: Ready(round_, client_id_of(data)),
    ),
    Invitation: (
        Subject.SECAGG_SETUP,
        lambda m: {
            "clients": list(m.setup.clients),
            "length": m.setup.length,
            "threshold": m.setup.threshold,
            "bits": m.setup.ring.bits,
            "clipping_range": m.setup.ring.clipping_range,
            "max_weight": m.setup.ring.max_weight,
            "you": m.you,
        },
        _setup_of,
    ),
    KeysAdvertised: (Subject.SECAGG_KEYS, _key_data, _keys_of),
    KeyList: (
        Subject.SECAGG_KEY_LIST,
        lambda m: {"keys": [_key_data(keys) for keys in m.keys]},
        lambda data, round_: KeyList(
            round_, tuple(_keys_of(keys, round_) for keys in _key_dicts(data["keys"]))
        ),
    ),
    SharesSent: (
        Subject.SECAGG_SHARES,
        lambda m: {"sender": m.sender, "shares": [[s.receiver, s.sealed] for s in m.shares]},
        lambda data, round_: _shares_of(data, round_, SharesSent),
    ),
    SharesRelayed: (
        Subject.SECAGG_RELAYED,
        lambda m: {"receiver": m.receiver, "shares": [[s.sender, s.sealed] for s in m.shares]},
        lambda data, round_: _shares_of(data, round_, SharesRelayed),
    ),
    MaskedInput: (
        Subject.SECAGG_MASKED,
        lambda m: {"sender": m.sender, "vector": m.vector},
        _masked_of,
    ),
    UnmaskRequest: (
        Subject.SECAGG_UNMASK,
        lambda m: {"survivors": list(m.survivors), "dropped": list(m.dropped)},
        lambda data, round_: UnmaskRequest(
            round_, _ids(data["survivors"], "survivors"), _ids(data["dropped"], "dropped")
        ),
    ),
    Reveal: (
        Subject.SECAGG_REVEAL,
        lambda m: {
            "sender": m.sender,
            "self_seed_shares": dict(m.self_seed_shares),
            "mask_key_shares": dict(m.mask_key_shares),
        },
        lambda data, round_: Reveal(
            round_,
            _id(data["sender"], "sender"),
            _share_map(data["self_seed_shares"], "self_seed_shares"),
            _share_map(data["mask_key_shares"], "mask_key_shares"),
        ),
    ),
}
_SECURE_PAYLOADS = {subject: payload for payload, (subject, _, _) in _SECURE_WIRE.items()}


def _key_dicts(value) -> list[Mapping]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_SECURE_CLIENTS:
        raise SchemaError(f"keys is not a list of at most {MAX_SECURE_CLIENTS} clients' keys")
    for item in value:
        if not (isinstance(item, dict) and {"sender", "share_key", "mask_key"} <= item.keys()):
            raise SchemaError("keys holds something other than a client's two public keys")
    return list(value)


@dataclass(frozen=True)
class SecureMessage:
    """One secure-round message as the wire carries it; ``payload`` is what the core sees."""

    payload: SecurePayload

    @property
    def subject(self) -> Subject:
        return _SECURE_WIRE[type(self.payload)][0]

    @property
    def round(self) -> int:
        """The secure round it belongs to (for ``Ready``: the global round it trained on)."""
        payload = self.payload
        return payload.setup.round if isinstance(payload, Invitation) else payload.round

    def to_message(self) -> Message:
        _, data_of, _ = _SECURE_WIRE[type(self.payload)]
        data = {"round": self.round, "protocol_version": PROTOCOL_VERSION, **data_of(self.payload)}
        return Message(self.subject, data)

    @classmethod
    def from_message(cls, message: Message) -> SecureMessage:
        """The payload of a validated secure-round message; ``SchemaError`` if malformed."""
        _, _, decode = _SECURE_WIRE[_SECURE_PAYLOADS[message.subject]]
        return cls(
            decode(message.data, check_count(message.data["round"], "round", high=2**63 - 1))
        )


ServerReply = ModelRequest | Done | ScoreRequest | SecureMessage | Rekey | UnmaskScores


def server_reply(message: Message) -> ServerReply:
    """The typed form of a validated message from a server; ``SchemaError`` if malformed."""
    if message.subject is Subject.DONE:
        return Done.from_data(message.data)
    if message.subject is Subject.SCORE:
        return ScoreRequest.from_data(message.data)
    if message.subject is Subject.FITNESS_REKEY:
        return Rekey.from_data(message.data)
    if message.subject is Subject.FITNESS_UNMASK:
        return UnmaskScores.from_data(message.data)
    if message.subject in SECURE_KEYS:
        return SecureMessage.from_message(message)
    return ModelRequest.from_data(message.data)


def default_max_message_bytes(num_params: int, num_solutions: int) -> int:
    """A budget that fits a population of ``num_solutions`` float64 vectors and then some."""
    return (num_solutions + 2) * 8 * num_params + 2**20
