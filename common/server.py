"""The server core, headless: the global model with its update rule, an accept loop
(``ListenThread``) and one handler thread per client (``SocketThread``).

Shaped like ``socketserver``: ``serve_forever``/``shutdown``, a context manager, the real
bound address after binding port 0. Threads report through an ``on_event`` callback.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from common import checkpoint, protocol, security
from common.aggregate import (
    AGGREGATIONS,
    SETTINGS,
    Aggregation,
    ServerOptimiser,
    Update,
    aggregation_named,
    flag_name,
    listed,
)
from common.checkpoint import Best, Checkpoint
from common.data import Dataset
from common.errors import BindError, CheckpointError, ConfigError
from common.events import Event, EventKind, Outcome
from common.fitness_federation import FITNESS, FITNESS_SETTING, WEIGHTS, FitnessFederation
from common.ga import REAL_DATA, GAConfig, loss
from common.model import Network, accuracy as model_accuracy
from common.operators import spread_population
from common.protocol import Connection, Message, ProtocolError, SchemaError, Subject
from common.protocol.messages import (
    WAITING_VERSION,
    ClientUpdate,
    Done,
    ModelRequest,
    ScoreRequest,
    ServerReply,
    Waiting,
)
from common.secagg.messages import check_threshold
from common.secure_rounds import SecureRounds

log = logging.getLogger(__name__)

MIN_STEP_SHARE = 0.1  # the mutation step shrinks to this share of its starting value at most
# What a judged event says of an update a per-update rule did not apply (GlobalModel._over_share).
OVER_SHARE = "over share"

EventCallback = Callable[[Event], None]


@dataclass
class NetworkConfig:
    """Where and how clients are served."""

    host: str = "localhost"
    port: int = 10000
    buffer_size: int = 1024
    recv_timeout: float = 10.0  # the most seconds between a message's chunks
    idle_timeout: float = 300.0
    min_rate: float = 8.0  # KiB/s: a message slower than this on average is cut
    max_message_bytes: int | None = None  # None: derived from the model size
    max_clients: int = 128  # connections beyond this are refused with a log line
    round_delay: float = 0.0  # pacing: seconds to hold each model reply, so people can watch
    # While a reply is held (a round gathering updates, or round_delay), our clients hear a
    # ``waiting`` notice this often; one that hears nothing for a few is cut off and reconnects.
    notice_interval: float = 5.0
    # Headless: once done, keep answering newcomers ``done`` until none came for this long, so
    # a client started a little late still ends well instead of finding the server gone.
    linger: float = 5.0
    # Headless: exit as soon as this many clients were answered ``done``, without lingering
    # (the demo knows it runs exactly two). None: linger.
    expected_clients: int | None = None


@dataclass
class SecurityConfig:
    """Opt-in protection of the wire; see common.security."""

    secret: bytes | None = field(default=None, repr=False)
    secret_file: str | None = None  # where ``secret`` came from (None: $FEDGA_SECRET or none)
    tls_cert: str | None = None
    tls_key: str | None = None


# GA settings whose defaults depend on the model: the tutorial's XOR's (GAConfig) or, for any
# other model, REAL_DATA's; see common.ga.
GA_BY_MODEL = ("stop_fitness", "step_patience")


# What --secure-aggregation chooses, each unless given: the rule and rounds of at least 3.
SECURE_DEFAULTS = {"aggregation": "fedavg", "min_clients": 3}
# The rule settings that need each update or count on its own: refused with it.
SECURE_REFUSED = ("byzantine", "clip_norm", "max_claimed_samples")


@dataclass
class TrainingConfig:
    """What is trained, how updates combine, and until when."""

    model: str | None = None  # a .keras or Keras JSON file; None: the tutorial's XOR model
    test_data: str | None = None  # .npz, .npy (with test_labels) or .csv; None: XOR
    test_labels: str | None = None
    test_label_column: str | None = None
    num_solutions: int = 10
    target_accuracy: float = 1.0
    max_rounds: int = 1000
    patience: int = 0  # stop once this many rounds passed without a better model; 0: never
    seed: int | None = None
    # What clients share: "weights" (the tutorial's: each trains the population and sends its
    # best weights) or "fitness" (common.fitness_federation: the GA runs here, clients only
    # score its members); see FEDERATIONS.
    federation: str = WEIGHTS
    # Any name in common.aggregate (weights mode); the tutorial's rule is running-average.
    aggregation: str = "running-best"
    # The rule's settings (common.aggregate.SETTINGS), for the rules that take them; None:
    # the rule's default (e.g. server_learning_rate: fedavgm's, fedadam's or fedyogi's).
    server_learning_rate: float | None = None
    server_momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None
    byzantine: int | None = None
    clip_norm: float | None = None
    max_claimed_samples: float | None = None
    # Secure aggregation (common.secure_rounds): the server learns only each round's sum.
    secure_aggregation: bool = False
    secagg_threshold: int | None = None  # None: ceil(2n/3) of each secure round's n clients
    min_clients: int = 2  # round-based: a round closes when this many updates arrived...
    round_timeout: float = 5.0  # ...or this long after its first (tutorial clients wait 10 s)
    checkpoint: str | None = None  # save the global state here after every accepted update
    resume: bool = False  # start from the checkpoint instead of a fresh model
    ga: GAConfig = field(default_factory=GAConfig)  # the GA settings sent to clients
    # Those of GA_BY_MODEL left to the model, whatever ``ga`` says: none for a ``GAConfig``
    # given here; a ServerConfig (flags, the window, Flower) leaves all that were not set.
    ga_by_model: tuple[str, ...] = ()

    def aggregation_rule(self) -> Aggregation:
        """A new instance of the ``aggregation`` rule with the settings given here (not
        None); ``ConfigError``, one plain sentence, for a setting it does not take, a bad
        value, or (weights mode) rounds of ``min_clients`` too few for it to tolerate its
        ``byzantine`` attackers."""
        self._check_secure_aggregation()
        given = {name: getattr(self, name) for name in SETTINGS}
        if self.federation == FITNESS:
            del given[FITNESS_SETTING]  # fitness mode's own: how its scores combine
        rule = aggregation_named(
            self.aggregation, **{name: value for name, value in given.items() if value is not None}
        )
        refusal = rule.refusal(self.min_clients) if self.federation == WEIGHTS else ""
        if refusal:
            raise ConfigError(f"With min-clients {self.min_clients}, {refusal}")
        return rule

    def _check_secure_aggregation(self) -> None:
        """``ConfigError``, one plain sentence, for what cannot run with secure aggregation:
        whatever must see an update or a count on its own, and rounds too small to hide one."""
        if not self.secure_aggregation:
            if self.secagg_threshold is not None:
                raise ConfigError("--secagg-threshold needs --secure-aggregation.")
            return
        rule = AGGREGATIONS.get(self.aggregation)
        if self.federation == FITNESS:  # its scores are masked (common.secagg.scores)
            if self.secagg_threshold is not None:
                raise ConfigError(
                    "--secagg-threshold is for weights mode's secure rounds: fitness mode "
                    "masks each generation's scores among all the clients there."
                )
        elif rule is not None and not rule.mean_only:
            usable = listed([name for name, r in AGGREGATIONS.items() if r.mean_only])
            raise ConfigError(
                f"Secure aggregation shows the server only each round's sum, so it cannot run "
                f"the {self.aggregation} aggregation, which must see each update: choose "
                f"{usable.replace(' and ', ' or ')}."
            )
        for name in SECURE_REFUSED:
            if getattr(self, name) is not None:
                raise ConfigError(
                    f"Secure aggregation masks what each client sends and its sample count, so "
                    f"--{flag_name(name)} cannot run with it."
                )
        if self.min_clients < 3:
            raise ConfigError(
                "Secure aggregation needs --min-clients of at least 3 (of two clients, each "
                f"could read the other's update from the sum), not {self.min_clients}."
            )
        if self.secagg_threshold is not None:
            check_threshold(self.secagg_threshold, self.min_clients)

    def ga_for_model(self) -> GAConfig:
        """``ga`` with the settings left to the model filled in: the tutorial's for its XOR
        model (no model, no test data), else those tuned on real data."""
        defaults = GAConfig() if self.model is None and self.test_data is None else REAL_DATA
        return dataclasses.replace(
            self.ga, **{name: getattr(defaults, name) for name in self.ga_by_model}
        )


@dataclass
class OutputConfig:
    """Results, written when training ends."""

    save_model: str | None = None
    history: str | None = None  # also written as training goes, one row per round
    plot: str | None = None


@dataclass
class ServerConfig:
    """A server's settings in groups. Flags, the window's fields and Flower's run config
    name each setting flat (``port``, ``num_generations``): ``with_settings`` and
    ``settings`` translate."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(ga_by_model=GA_BY_MODEL)
    )
    outputs: OutputConfig = field(default_factory=OutputConfig)

    @classmethod
    def of(cls, **settings: Any) -> ServerConfig:
        """The defaults with ``settings`` changed, each by its flat name."""
        return cls().with_settings(**settings)

    def settings(self) -> dict[str, Any]:
        """Every setting by its flat name; a GA setting left to the model is None."""
        flat: dict[str, Any] = {}
        for group in (self.network, self.security, self.training, self.outputs):
            flat |= {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}
        ga, by_model = flat.pop("ga"), flat.pop("ga_by_model")
        return flat | {
            f.name: None if f.name in by_model else getattr(ga, f.name)
            for f in dataclasses.fields(ga)
        }

    def with_settings(self, **settings: Any) -> ServerConfig:
        """A copy with ``settings`` changed, each by its flat name (``TypeError`` for an
        unknown one). A GA setting of GA_BY_MODEL given as None is left to the model."""
        ga_names = {f.name for f in dataclasses.fields(GAConfig)}
        ga = {name: value for name, value in settings.items() if name in ga_names}
        training = self.training
        if ga:
            by_model = tuple(
                name
                for name in GA_BY_MODEL
                if (ga[name] is None if name in ga else name in training.ga_by_model)
            )
            training = dataclasses.replace(
                training,
                ga_by_model=by_model,
                ga=dataclasses.replace(
                    training.ga, **{k: v for k, v in ga.items() if v is not None}
                ),
            )
        rest = {name: value for name, value in settings.items() if name not in ga_names}

        def changed(group):
            names = {f.name for f in dataclasses.fields(group)} & rest.keys()
            return dataclasses.replace(group, **{name: rest.pop(name) for name in names})

        config = ServerConfig(
            changed(self.network), changed(self.security), changed(training), changed(self.outputs)
        )
        if rest:
            raise TypeError(f"not a server setting: {', '.join(sorted(rest))}")
        return config


def new_socket(family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket that may rebind a port still in TIME_WAIT, like ``socketserver.TCPServer``
    with ``allow_reuse_address`` (the window's Create Socket step)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _resolve(host: str, port: int, family: int = socket.AF_UNSPEC):
    try:
        infos = socket.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise BindError(f"The address {host!r} is not a known host name or IP address.") from None
    family, _, _, _, address = infos[0]
    return family, address


def _bind_error(exc: OSError, host: str, port: int) -> BindError:
    if exc.errno == errno.EADDRINUSE:
        return BindError(f"Port {port} on {host} is already in use.")
    if exc.errno == errno.EACCES:
        return BindError(f"Port {port} needs more privileges than this user has.")
    if exc.errno == errno.EADDRNOTAVAIL:
        return BindError(f"The address {host} does not belong to this machine.")
    return BindError(f"Cannot listen on {host}:{port}: {exc.strerror}.")


def bind_socket(sock: socket.socket, host: str, port: int) -> None:
    """Bind ``sock`` to ``host:port`` in its own address family (the Bind Socket step).

    On failure ``sock`` stays open and unbound, so a corrected address can be tried again.
    """
    _, address = _resolve(host, port, sock.family)
    try:
        sock.bind(address)
    except OSError as exc:
        raise _bind_error(exc, host, port) from exc


def start_listening(sock: socket.socket) -> None:
    """Listen on a bound socket (the Listen to Connections step)."""
    try:
        sock.listen()
    except OSError as exc:
        raise _bind_error(exc, *sock.getsockname()[:2]) from exc


def create_listening_socket(host: str, port: int) -> socket.socket:
    """The three window steps in one go, in the family the host name resolves to first."""
    family, _ = _resolve(host, port)
    sock = new_socket(family)
    try:
        bind_socket(sock, host, port)
        start_listening(sock)
    except BindError:
        sock.close()
        raise
    return sock


class _Entry(NamedTuple):
    """An update waiting for its round to close."""

    update: ClientUpdate
    client: str
    accuracy: float | None = None  # its own, scored as it arrived (None: not scored, from Flower)
    reached_target: bool = False  # that score reached the target accuracy

    def for_rule(self) -> Update:
        return Update(
            self.update.best_model_weights_vector,
            self.update.num_samples or 1,
            self.reached_target,
            self.client,
        )


def _update_name(key: tuple[str, int] | None) -> str:
    return "unsequenced" if key is None else "%s#%d" % key


def _not_applied(client: str, key: tuple[str, int] | None, reason: str) -> None:
    """The line that accounts for an update answered without being applied: with the lines
    of the updates applied, every answered update is in the log once (none lost)."""
    log.info("client=%s update=%s not applied: %s", client, _update_name(key), reason)


def _clients_label(clients: list[str]) -> str:
    """Who made a round, for its log line and history row."""
    return "+".join(clients) if len(clients) <= 3 else f"{len(clients)} clients"


class GlobalModel:
    """The server's model, its test data and the aggregation rule, behind one lock.

    ``training`` says what it trains, until when (``TrainingConfig``; its ``model`` and
    ``test_data`` files are the assembler's, ``common.app``, which passes what they hold).
    Each update is scored on the test data as it arrives; the rule (``aggregation``, a name
    in ``common.aggregate.AGGREGATIONS``) folds a round's updates into the
    global model, which is scored and committed as one round. With the tutorial's running
    average a round is one accepted update: one that reaches the target becomes the global
    model, any other is averaged in. Once the global model reaches the target (or the rounds
    run out, or ``patience`` rounds pass without a better model) it is frozen and every reply
    is ``done``; ``outcome`` then says which. ``best`` is the model that scored highest so
    far (ties: lower loss): what ``save_model`` writes.

    ``on_event`` hears of every scored update, round and ending in the order they happened,
    never under the lock: a slow listener (a file per event, a window) holds up only the one
    thread delivering events, while other clients' updates and replies go on.

    With a ``checkpoint`` path every accepted update is saved there before it is applied or
    answered; ``resume`` starts from that file (``CheckpointError`` if it cannot be read).
    """

    def __init__(
        self,
        network: Network,
        test_data: Dataset,
        training: TrainingConfig | None = None,
        *,
        on_event: EventCallback | None = None,
    ):
        training = training or TrainingConfig()
        self.aggregation = training.aggregation_rule()
        self.aggregation.bind(self._score_candidates)
        self.min_clients, self.round_timeout = training.min_clients, training.round_timeout
        self.secure_aggregation = training.secure_aggregation  # announced with each model
        self._pending: list[_Entry] = []  # this round's updates so far
        self._gone: set[str] = set()  # clients that left while this round gathered
        self._round_id = 0
        self._round_deadline = 0.0
        self.network = network
        self.model_json = network.model_json
        self.ga = training.ga_for_model()  # its mutation_step shrinks as training converges
        self.forward = network.forward
        self.test_data = test_data
        self.num_solutions = training.num_solutions
        self.target_accuracy = training.target_accuracy
        self.max_rounds = training.max_rounds
        self.patience = training.patience
        # The step shrinks as training converges (Keras's ReduceLROnPlateau idea, on the loss
        # the server measures): a step sized for the first rounds is noise near the optimum.
        self._smallest_step = self.ga.mutation_step * MIN_STEP_SHARE
        self._on_event = on_event or (lambda event: None)
        self._events: deque[Event] = deque()  # made under the lock, delivered after it
        self._delivering = threading.Lock()  # held by the one thread delivering them
        self._rng = np.random.default_rng(training.seed)
        self._lock = threading.Lock()
        self._round_closed = threading.Condition(self._lock)
        self._stop_listeners: list[Callable[[], None]] = []
        self.vector = network.initial_vector
        self.round = 0
        self.accuracy = self._evaluate(self.vector)
        self.best = Best(self.vector, 0, self.accuracy, self._loss(self.vector))
        self._lowest_loss = (self.best.loss, 0)  # and its round: when the step last helped
        self.finished = threading.Event()
        self.outcome: Outcome | None = None  # how training ended, once finished
        self.sequences: dict[str, int] = {}  # client id -> last applied update sequence
        # Per-update rules' fair share (_over_share): the connected clients, and when each
        # last had an update applied (as the count of updates applied so far, and a time).
        self._connected: set[str] = set()
        self._last_applied: dict[str, tuple[int, float]] = {}
        self._applied = 0
        self.checkpoint_path = training.checkpoint
        if training.resume:
            self._restore(checkpoint.load(self.checkpoint_path, self.num_params))
        elif self.checkpoint_path is not None and os.path.exists(self.checkpoint_path):
            log.warning(
                "starting afresh: the first update will replace the checkpoint %s "
                "(--resume continues from it)",
                self.checkpoint_path,
            )

    def _restore(self, saved: Checkpoint) -> None:
        self.vector, self.round, self.accuracy = saved.vector, saved.round, saved.accuracy
        self.sequences = saved.sequences
        rule = self.aggregation
        if saved.rule == rule.name:
            try:
                rule.restore(saved.rule_state)
            except (KeyError, ValueError):
                raise CheckpointError(
                    f"The checkpoint {self.checkpoint_path} has a damaged {rule.name} state."
                ) from None
        elif isinstance(rule, ServerOptimiser):
            log.warning(
                "the checkpoint %s holds no %s state (%s): its moments start afresh",
                self.checkpoint_path,
                rule.name,
                f"it was saved with {saved.rule}" if saved.rule else "an older fedga saved it",
            )
        self.best = saved.best or Best(
            self.vector, self.round, self.accuracy, self._loss(self.vector)
        )
        log.info(
            "resumed from %s: round=%d accuracy=%.4f (best %.4f in round %d), last "
            "updates of %d clients",
            self.checkpoint_path,
            self.round,
            self.accuracy,
            self.best.accuracy,
            self.best.round,
            len(self.sequences),
        )
        if self.accuracy >= self.target_accuracy:  # stopped after done, before telling everyone
            self.outcome = Outcome.DONE
            self.finished.set()

    @property
    def reached_target(self) -> bool:
        return self.outcome is Outcome.DONE

    def done(self) -> Done:
        """Once training ended, what every request is answered: the last round, its
        accuracy and how training ended."""
        return Done(self.round, self.accuracy, self.outcome)

    @property
    def num_params(self) -> int:
        return self.forward.num_params

    def _evaluate(self, vector: np.ndarray) -> float:
        data = self.test_data
        return self.forward.accuracy(vector, data.inputs, data.outputs)

    def _loss(self, vector: np.ndarray) -> float:
        data = self.test_data
        return float(loss(self.forward(vector[None, :], data.inputs), data.outputs)[0])

    def _score_candidates(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reaches the target, loss) of each row of ``vectors``, in one batched pass."""
        data = self.test_data
        probabilities = self.forward(vectors, data.inputs)
        return (
            model_accuracy(probabilities, data.outputs) >= self.target_accuracy,
            loss(probabilities, data.outputs),
        )

    def join(self, client: str) -> None:
        """A client connected: per-update rules share the rounds among the connected."""
        with self._lock:
            self._connected.add(client)

    def forget(self, client: str) -> None:
        """A client left: the rule no longer counts its last update (running-best's mean),
        nor the client its share of the rounds."""
        with self._lock:
            if self._pending:  # counted as gone in the round's line, unless its update came
                self._gone.add(client)
            self.aggregation.forget(client)
            self._connected.discard(client)
            self._last_applied.pop(client, None)

    def _over_share(self, client: str) -> bool:
        """Call with the lock held. Per-update rules give a round to every update as it
        comes, so a client that answers at once (an attacker that does not train) would take
        most rounds while the others train. An update is beyond its client's share when this
        client had one applied since some other connected client last did: one in K applied,
        K the connected clients. Never for longer than ``round_timeout`` after the client's
        last applied update, so a silent or slow client cannot stall the others."""
        last = self._last_applied.get(client)
        if last is None or time.monotonic() - last[1] >= self.round_timeout:
            return False
        return any(
            self._last_applied.get(other, (-1, 0.0))[0] < last[0]
            for other in self._connected - {client}
        )

    def save_model(self, path: str) -> None:
        """Save the best global model as a ``.keras`` file."""
        with self._lock:  # a Keras-built forward pass shares its model with evaluation
            self.network.save(self.best.vector, path)
            log.info(
                "saved the best global model (round %d, accuracy=%.4f) to %s; the last, "
                "round %d, scored accuracy=%.4f",
                self.best.round,
                self.best.accuracy,
                path,
                self.round,
                self.accuracy,
            )

    def _population(self) -> np.ndarray:
        """Call with the lock held: a round's first population, around the current global
        weights with the global model itself as its first member."""
        return spread_population(
            self.vector,
            self.forward.shapes,
            self.num_solutions,
            self._rng,
            self.ga.operators,
            self.ga.mutation_step,
        )

    def _sent_settings(self) -> dict[str, Any]:
        """Call with the lock held: the GA settings clients run, by GAConfig field name."""
        sent = dataclasses.asdict(self.ga)
        del sent["step_patience"]  # the server's own
        return sent

    def _reply(self) -> ModelRequest | Done:
        """Call with the lock held: ``done`` once finished, else a population to train."""
        if self.finished.is_set():
            return self.done()
        return ModelRequest(
            self.model_json,
            self._population(),
            self._sent_settings(),
            self.round,
            self.accuracy,
            self.secure_aggregation,
        )

    def fitness_round(self) -> tuple[np.ndarray, GAConfig, dict[str, Any]] | None:
        """Fitness mode: the next round's first population, the GA settings it runs and
        those as sent to clients; None once training ended."""
        with self._lock:
            if self.finished.is_set():
                return None
            return self._population(), self.ga, self._sent_settings()

    def commit_best(self, vector: np.ndarray, clients: list[str], detail: str) -> None:
        """Fitness mode: make a round's best member, scored on ``clients``' data, the global
        model, as a round (unless training ended meanwhile)."""
        try:
            with self._lock:
                if not self.finished.is_set():
                    accuracy = self._evaluate(vector)
                    self._commit(
                        vector,
                        accuracy,
                        [],
                        _clients_label(clients),
                        f"accuracy={accuracy:.4f} {detail}",
                    )
        finally:
            self._deliver_events()

    def apply_mean(self, mean: np.ndarray, count: float, clients: str, detail: str) -> None:
        """Secure aggregation: fold a round's weighted mean of ``count`` samples, which is all
        the server learns of its updates, into the global model as one round (the rule sees
        it as one update; unless training ended meanwhile)."""
        try:
            with self._lock:
                if self.finished.is_set():
                    return
                rule = self.aggregation
                update = Update(mean, max(1, round(count)), client=clients)
                vector = rule.aggregate(self.vector, [update]).astype(np.float32)
                accuracy = self._evaluate(vector)
                self._commit(
                    vector,
                    accuracy,
                    [],
                    clients,
                    f"accuracy={accuracy:.4f} {rule.name} of a {detail} {rule.describe()}".rstrip(),
                )
        finally:
            self._deliver_events()

    def add_stop_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (without the lock) whenever ``stop`` ends training."""
        self._stop_listeners.append(listener)

    def reply_to_echo(self) -> ModelRequest | Done:
        with self._lock:
            return self._reply()

    def apply_update(
        self,
        update: ClientUpdate,
        client: str,
        notify: Callable[[Waiting], None] | None = None,
        every: float = 5.0,
    ) -> ModelRequest | Done:
        """Fold one client's best weights into the global model; return the reply to send.

        An update whose ``key`` (client_id, sequence) is at or below that client's last
        applied sequence is a resend of one already counted. Each update is scored on the
        test data (a ``scored`` event) before it counts. With a round-based aggregation the
        call waits until its round closes: ``min_clients`` updates arrived, or
        ``round_timeout`` passed since the round's first one; meanwhile ``notify`` (if given)
        is told what the round waits for every ``every`` seconds, without the lock.
        """
        key = update.key
        try:
            with self._lock:
                if key is not None and key[1] <= self.sequences.get(key[0], -1):
                    log.info(
                        "client=%s resent update=%s, already counted: not counted again (round=%d)",
                        client,
                        _update_name(key),
                        self.round,
                    )
                    return self._reply()
                if self.finished.is_set():
                    _not_applied(client, key, f"training ended ({self.outcome})")
                    return self._reply()
                if self.aggregation.per_update and self._over_share(client):
                    # Answered at once, never held back: the tutorial's clients give up
                    # after 10 s, and holding one would stall it, not the others.
                    _not_applied(
                        client,
                        key,
                        f"beyond its share (one in {len(self._connected)} applied, one per "
                        "connected client); answered with the current model",
                    )
                    self._emit(
                        Event(EventKind.JUDGED, peer=client, round=self.round, detail=OVER_SHARE)
                    )
                    return self._reply()
                if not self.aggregation.per_update and update.round not in (None, self.round):
                    # Its round closed without it (or it is from another run): a round
                    # averages updates of one global model, so it trains the current one.
                    _not_applied(
                        client,
                        key,
                        f"trained for round {update.round + 1}, but round {self.round + 1} "
                        "is gathering; answered with the current model",
                    )
                    return self._reply()
                update_accuracy = self._evaluate(update.best_model_weights_vector)
                self._emit(
                    Event(
                        EventKind.SCORED,
                        peer=client,
                        round=self.round + 1,
                        accuracy=update_accuracy,
                        samples=update.num_samples,
                        detail="" if key is None else key[0],
                    )
                )
                entry = _Entry(
                    update, client, update_accuracy, update_accuracy >= self.target_accuracy
                )
                if self.aggregation.per_update:
                    self._aggregate([entry])
                    return self._reply()
                round_id = self._round_id
                if key is None or key not in [pending.update.key for pending in self._pending]:
                    self._pending.append(entry)
                if len(self._pending) == 1:
                    self._round_deadline = time.monotonic() + self.round_timeout
                    self._gone = set()
            self._deliver_events()  # the ``scored`` event, before waiting for the round
            while True:
                notice_at = None if notify is None else time.monotonic() + every
                with self._lock:  # meanwhile another update or stop() may have closed it
                    notice = self._await_round(round_id, notice_at)
                    if notice is None:
                        return self._reply()
                notify(notice)
        finally:
            self._deliver_events()

    def _await_round(self, round_id: int, notice_at: float | None) -> Waiting | None:
        """Call with the lock held: wait until round ``round_id`` closed, closing it once it
        has ``min_clients`` updates or its deadline passed, and return None; or until
        ``notice_at`` (a time.monotonic()) and return what the round still waits for."""
        while self._round_id == round_id:
            now = time.monotonic()
            remaining = self._round_deadline - now
            if len(self._pending) >= self.min_clients or remaining <= 0:
                self._close_round(timed_out=len(self._pending) < self.min_clients)
            elif notice_at is not None and now >= notice_at:
                return Waiting(self.round + 1, self.min_clients - len(self._pending), remaining)
            else:
                self._round_closed.wait(remaining if notice_at is None else notice_at - now)
        return None

    def apply_round(self, updates: Mapping[str, ClientUpdate]) -> ModelRequest | Done:
        """Aggregate a whole round gathered elsewhere, each update by its client's name, as
        an engine that runs its own rounds (Flower) does; return the reply for the next
        round."""
        try:
            with self._lock:
                if not self.finished.is_set():
                    self._aggregate([_Entry(update, client) for client, update in updates.items()])
                return self._reply()
        finally:
            self._deliver_events()

    def stop(self) -> None:
        """End training now, as a person's Stop Training does: the round being gathered is
        dropped, every waiting and later request is answered ``done``, and the best model
        stays what ``save_model`` writes."""
        with self._lock:
            if self.finished.is_set():
                return
            self.outcome = Outcome.STOPPED
            for entry in self._pending:
                _not_applied(entry.client, entry.update.key, "training was stopped")
            self._pending, self._round_id = [], self._round_id + 1
            self.finished.set()
            self._round_closed.notify_all()
            log.warning(
                "stopped by request after %d rounds; the best, round %d, scored accuracy=%.4f",
                self.round,
                self.best.round,
                self.best.accuracy,
            )
            self._emit(Event(EventKind.STOPPED, round=self.round, accuracy=self.best.accuracy))
        self._deliver_events()
        for listener in self._stop_listeners:
            listener()

    def _emit(self, event: Event) -> None:
        """Call with the lock held: ``event`` is delivered once the lock is released, after
        every event made before it."""
        self._events.append(event)

    def _deliver_events(self) -> None:
        """Call without the lock: deliver the events made so far, in order. One thread
        delivers at a time; a thread that finds another delivering leaves its events to that
        one, which looks again before it stops, and goes on at once to its own reply."""
        while self._events:
            if not self._delivering.acquire(blocking=False):
                return
            try:
                while self._events:
                    self._on_event(self._events.popleft())
            finally:
                self._delivering.release()

    def _close_round(self, timed_out: bool) -> None:
        """Call with the lock held: aggregate the round's updates once, wake its waiters,
        after a line that says what it got ("round 12: 2 of 3 updates, 1 client gone"). A
        round the rule cannot protect (fewer updates than ``--byzantine`` needs) is closed
        without aggregating rather than aggregated unprotected; it does not count as a
        round, so neither ``--max-rounds`` nor ``--patience`` runs out on it."""
        pending, self._pending, self._round_id = self._pending, [], self._round_id + 1
        gone = len(self._gone - {e.client for e in pending})
        log.info(
            "round %d: %d of %d updates%s%s; updates=%s",
            self.round + 1,
            len(pending),
            self.min_clients,
            f", {gone} client{'s' if gone > 1 else ''} gone" if gone else "",
            f", closed at --round-timeout ({self.round_timeout:g} s)" if timed_out else "",
            ",".join(_update_name(e.update.key) for e in pending),
        )
        refusal = self.aggregation.refusal(len(pending))
        if refusal:
            clients = _clients_label([e.client for e in pending])
            log.warning("round %d closed short, not aggregated: %s", self.round + 1, refusal)
            for entry in pending:
                _not_applied(entry.client, entry.update.key, f"its round closed short: {refusal}")
            self._emit(Event(EventKind.SHORT, peer=clients, round=self.round, detail=refusal))
        else:
            self._aggregate(pending)
        self._round_closed.notify_all()

    def _aggregate(self, entries: list[_Entry]) -> None:
        """Call with the lock held: one round's aggregation, committed as one round, after
        what the rule did with each update (its verdict) is logged and reported."""
        rule = self.aggregation
        updates = [e.for_rule() for e in entries]
        vector = rule.aggregate(self.vector, updates).astype(np.float32)
        # A rule knows clients by connection; people by the id a fedga client sends.
        names = {e.client: e.client if e.update.key is None else e.update.key[0] for e in entries}
        for verdict in rule.verdicts(self.vector, updates):
            log.info(
                "client=%s in round %d: %s, |change|=%.4g distance=%.4g%s%s",
                names[verdict.client],
                self.round + 1,
                verdict.action,
                verdict.change_norm,
                verdict.distance,
                "" if verdict.krum_score is None else f" krum={verdict.krum_score:.4g}",
                f" ({verdict.detail})" if verdict.detail else "",
            )
            self._emit(
                Event(
                    EventKind.JUDGED,
                    peer=verdict.client,
                    round=self.round + 1,
                    detail=names[verdict.client],
                    verdict=verdict,
                )
            )
        accuracy = self._evaluate(vector)
        if rule.per_update:
            (entry,) = entries
            self._applied += 1
            self._last_applied[entry.client] = (self._applied, time.monotonic())
            detail = "update_accuracy=%.4f accuracy=%.4f update=%s" % (
                entry.accuracy,
                accuracy,
                _update_name(entry.update.key),
            )
            self._commit(
                vector,
                accuracy,
                [entry.update.key],
                entry.client,
                f"{detail} {rule.describe()}".rstrip(),
            )
            return
        detail = "accuracy=%.4f %s of %d updates" % (accuracy, rule.name, len(entries))
        self._commit(
            vector,
            accuracy,
            [e.update.key for e in entries],
            _clients_label([e.client for e in entries]),
            f"{detail} {rule.describe()}".rstrip(),
        )

    def _adapt_step(self, loss: float) -> None:
        """Call with the lock held, after a round: halve the step the next populations are
        spread and mutated by once ``step_patience`` rounds passed without a lower loss."""
        if loss < self._lowest_loss[0]:
            self._lowest_loss = (loss, self.round)
            return
        step, patience = self.ga.mutation_step, self.ga.step_patience
        if (
            not patience
            or step <= self._smallest_step
            or self.round - self._lowest_loss[1] < patience
        ):
            return
        self.ga = dataclasses.replace(self.ga, mutation_step=max(self._smallest_step, step / 2))
        self._lowest_loss = (self._lowest_loss[0], self.round)  # patience again from here
        log.info(
            "mutation step %.3g -> %.3g: no lower loss for %d rounds",
            step,
            self.ga.mutation_step,
            patience,
        )

    def _commit(
        self, vector: np.ndarray, accuracy: float, keys: list, client: str, detail: str
    ) -> None:
        """Call with the lock held: make ``vector`` the global model, durably, as one round."""
        sequences = {**self.sequences, **{k[0]: k[1] for k in keys if k is not None}}
        loss = self._loss(vector)
        best = (
            Best(vector, self.round + 1, accuracy, loss)
            if self.best.beaten_by(accuracy, loss)
            else self.best
        )
        if self.checkpoint_path is not None:
            # Durable before it counts: a crash either loses the update, which its client
            # then resends, or keeps it with its sequence, so the resend is recognised.
            rule = self.aggregation
            checkpoint.save(
                self.checkpoint_path,
                Checkpoint(
                    vector, self.round + 1, accuracy, sequences, best, rule.name, rule.state()
                ),
            )
        self.vector, self.accuracy, self.sequences, self.best = vector, accuracy, sequences, best
        self.round += 1
        log.info("round=%d client=%s %s", self.round, client, detail)
        self._adapt_step(loss)
        self._emit(
            Event(
                EventKind.UPDATE, peer=client, round=self.round, accuracy=self.accuracy, loss=loss
            )
        )
        if self.accuracy >= self.target_accuracy:
            self.outcome = Outcome.DONE
            log.info(
                "done: accuracy=%.4f reached the target %.4f in round %d",
                self.accuracy,
                self.target_accuracy,
                self.round,
            )
            self.finished.set()
            self._emit(Event(EventKind.DONE, round=self.round, accuracy=self.accuracy))
        elif self.round >= self.max_rounds:
            log.warning(
                "giving up: accuracy=%.4f after %d rounds (--max-rounds), target %.4f",
                self.accuracy,
                self.round,
                self.target_accuracy,
            )
            self.outcome = Outcome.GAVE_UP
            self.finished.set()
            self._emit(Event(EventKind.GAVE_UP, round=self.round, accuracy=self.accuracy))
        elif self.patience and self.round - self.best.round >= self.patience:
            log.warning(
                "stopping: no better model for %d rounds (--patience); the best, "
                "round %d, scored accuracy=%.4f",
                self.patience,
                self.best.round,
                self.best.accuracy,
            )
            self.outcome = Outcome.PATIENCE
            self.finished.set()
            self._emit(Event(EventKind.PATIENCE, round=self.round, accuracy=self.best.accuracy))


class SocketThread(threading.Thread):
    """Serves one client: receive a request, reply, until the client leaves or misbehaves."""

    def __init__(
        self,
        connection: socket.socket,
        client_info,
        buffer_size: int = 1024,
        recv_timeout: float = 10.0,
        *,
        server: ListenThread,
    ):
        super().__init__(name=f"SocketThread-{client_info[0]}:{client_info[1]}", daemon=True)
        self.server = server  # its settings, model and listeners, as socketserver's handlers
        self.global_model = server.global_model
        network = server.config.network
        self.connection = Connection(
            connection,
            buffer_size=buffer_size,
            recv_timeout=recv_timeout,
            idle_timeout=network.idle_timeout,
            min_rate=network.min_rate,
            secret=server.config.security.secret,
            server_side=True,
            max_message_bytes=network.max_message_bytes
            or protocol.default_max_message_bytes(
                self.global_model.num_params, self.global_model.num_solutions
            ),
        )
        self.client_info = client_info
        self.peer = self.connection.peer
        self.answered_done = False  # this client has been told training is over
        self.closed = False
        self._stopping = threading.Event()

    def reply(self, message: Message) -> ServerReply:
        every = self.server.config.network.notice_interval
        if self.server.federation is not None:
            return self.server.federation.reply(self.peer, message, self._notifier(message), every)
        if message.subject is Subject.ECHO:
            return self.global_model.reply_to_echo()
        if message.subject is not Subject.MODEL:
            raise SchemaError(
                f"{message.subject.value!r} messages are for fitness mode; this server "
                "runs weights mode (--federation weights)"
            )
        update = ClientUpdate.from_data(message.data, self.global_model.num_params)
        return self.global_model.apply_update(update, self.peer, self._notifier(message), every)

    def _notifier(self, message: Message) -> Callable[[Waiting], None] | None:
        """How to tell this client why its reply is held, if it can hear it: only clients
        announcing WAITING_VERSION know ``waiting``; a plain-pickle peer would take it for
        its reply."""
        version = message.data.get("protocol_version")
        if not isinstance(version, int) or version < WAITING_VERSION:
            return None
        return lambda notice: self.connection.send(notice.to_message())

    def _hold(self, reply: ModelRequest, notify: Callable[[Waiting], None] | None) -> bool:
        """--round-delay: hold ``reply`` that long, with notices as a round's wait has; True
        if stop() came meanwhile."""
        network = self.server.config.network
        end = time.monotonic() + network.round_delay
        while (remaining := end - time.monotonic()) > 0:
            if self._stopping.wait(
                remaining if notify is None else min(remaining, network.notice_interval)
            ):
                return True
            if notify is not None and end > time.monotonic():
                notify(Waiting(reply.round or 0, 0, end - time.monotonic()))
        return False

    def run(self) -> None:
        self.global_model.join(self.peer)
        self.server.on_event(Event(EventKind.CONNECTED, peer=self.peer))
        reason = ""
        try:
            while True:
                message = self.connection.receive(protocol.CLIENT_TO_SERVER)
                self.server.on_event(
                    Event(EventKind.REQUEST, peer=self.peer, detail=message.subject.value)
                )
                response = self.reply(message)
                notify = self._notifier(message)
                if isinstance(response, (ModelRequest, ScoreRequest)) and notify is not None:
                    # The promise the client's patience is sized by: every wait sends notices.
                    response = dataclasses.replace(
                        response, notice_interval=self.server.config.network.notice_interval
                    )
                if isinstance(response, ModelRequest) and self._hold(response, notify):
                    break
                self.connection.send(response.to_message())
                if response.subject is Subject.DONE:
                    self.answered_done = True
                    self.server.handler_changed()
                    self.server.on_event(Event(EventKind.ANSWERED_DONE, peer=self.peer))
        except protocol.PeerClosed:
            log.info("client %s disconnected", self.peer)
        except ProtocolError as exc:
            if self._stopping.is_set():  # stop() closed the connection under the receive
                log.info("closed the connection to client %s", self.peer)
            else:
                reason = str(exc)
                log.warning("dropping client %s: %s", self.peer, reason)
        except Exception as exc:  # a bug must cost one connection, not the server
            reason = f"internal error: {exc!r}"
            log.exception("dropping client %s after an internal error", self.peer)
        finally:
            self.connection.close()
            self.closed = True
            self.global_model.forget(self.peer)
            if self.server.federation is not None:
                self.server.federation.leave(self.peer)
            self.server.on_event(Event(EventKind.DISCONNECTED, peer=self.peer, detail=reason))
            self.server.handler_changed()

    def stop(self) -> None:
        self._stopping.set()
        self.connection.close()


class ListenThread(threading.Thread):
    """Accepts connections and starts one ``SocketThread`` per client until ``shutdown()``.

    Pass a socket that is already listening (the window's Create/Bind/Listen steps), or
    let it create one on the config's ``network.host``/``network.port``.
    """

    def __init__(
        self,
        global_model: GlobalModel,
        config: ServerConfig | None = None,
        *,
        listening_socket: socket.socket | None = None,
        on_event: EventCallback | None = None,
    ):
        super().__init__(name="ListenThread", daemon=True)
        self.config = config or ServerConfig()
        self.global_model = global_model
        network, tls = self.config.network, self.config.security
        self.socket = listening_socket or create_listening_socket(network.host, network.port)
        self.server_address = self.socket.getsockname()[:2]
        self._tls = security.server_tls_context(tls.tls_cert, tls.tls_key) if tls.tls_cert else None
        self.on_event = on_event or (lambda event: None)  # its handlers report here too
        self._handlers: list[SocketThread] = []
        self._handlers_lock = threading.Lock()
        self.peers_told_done: set[str] = set()  # every client answered ``done`` so far
        self._changed = threading.Condition()
        self._stop_requested = threading.Event()
        self.last_connected = time.monotonic()  # of the latest client, or of the start
        training = self.config.training
        self.federation = (
            FitnessFederation(
                global_model,
                min_clients=training.min_clients,
                round_timeout=training.round_timeout,
                seed=training.seed,
                byzantine=training.byzantine or 0,  # the exact sum unless asked
                secure=training.secure_aggregation,
                on_event=self.on_event,
            )
            if training.federation == FITNESS
            else SecureRounds(
                global_model,
                min_clients=training.min_clients,
                round_timeout=training.round_timeout,
                threshold=training.secagg_threshold,
                on_event=self.on_event,
            )
            if training.secure_aggregation
            else None
        )

    def __enter__(self) -> ListenThread:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def run(self) -> None:
        self.serve_forever()

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        if self.federation is not None:
            self.federation.start()
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            while not self._stop_requested.is_set():
                if not selector.select(poll_interval):
                    continue
                try:
                    connection, client_info = self.socket.accept()
                except OSError:
                    continue  # the client gave up between select and accept
                self._start_handler(connection, client_info)

    def _start_handler(self, connection: socket.socket, client_info) -> None:
        network = self.config.network
        with self._handlers_lock:
            self._handlers = [h for h in self._handlers if h.is_alive()]
            serving = len(self._handlers)
        if serving >= network.max_clients:
            log.warning(
                "refusing client %s:%s: already serving %d clients (--max-clients)",
                *client_info[:2],
                serving,
            )
            connection.close()
            return
        log.info("client %s:%s connected", *client_info[:2])
        self.last_connected = time.monotonic()
        if self._tls is not None:  # the handshake itself runs in the client's own thread
            connection = self._tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        handler = SocketThread(
            connection, client_info, network.buffer_size, network.recv_timeout, server=self
        )
        with self._handlers_lock:
            self._handlers.append(handler)
        handler.start()

    def handler_changed(self) -> None:
        """A handler's client was answered ``done`` or left."""
        with self._handlers_lock:
            self.peers_told_done.update(h.peer for h in self._handlers if h.answered_done)
        with self._changed:
            self._changed.notify_all()

    @property
    def handlers(self) -> list[SocketThread]:
        with self._handlers_lock:
            return list(self._handlers)

    def all_answered(self) -> bool:
        """Training is over and every connected client has been told ``done``."""
        return self.global_model.finished.is_set() and all(
            h.answered_done or h.closed for h in self.handlers
        )

    def wait_all_answered(self, timeout: float | None = None) -> bool:
        with self._changed:
            return self._changed.wait_for(self.all_answered, timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every client connection, and join all threads."""
        self._stop_requested.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        self.socket.close()
        for handler in self.handlers:
            handler.stop()
        if self.federation is not None:  # after: its waiting handlers find their ends closed
            self.federation.shutdown(timeout)
        for handler in self.handlers:
            if handler.is_alive():
                handler.join(timeout)
