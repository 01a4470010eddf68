"""The client core, headless: connect to a server and run the tutorial's loop in ``RecvThread``
(echo, receive the model, train it on local data, send the best weights, until ``done``).

The data never leaves this process; only weight vectors do. Progress is reported through
an ``on_event`` callback. Given a ``Reconnector``, the thread survives a lost server: it
reconnects with backoff and resends its unanswered request, numbered so that the server
counts an update once even if it arrived before the connection broke.

A client configured with an attack (``ClientConfig.attack``, a lab feature: common.attacks)
poisons its data as it is fitted to the model (``LocalTrainer``), the best vector and claimed
sample count just before ``_request`` sends them, or in fitness mode the losses it reports.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from common import protocol, security
from common.attacks import Attack, AttackConfig, Collusion, HonestUpdate
from common.data import Dataset
from common.errors import ConnectError, SchemaError, UserError
from common.events import Event, EventKind, Outcome
from common.fitness_federation import FITNESS, WEIGHTS, FitnessScorer
from common.ga import GAConfig
from common.modelspec import DEFAULT_MAX_PARAMS
from common.protocol import Connection, Message, ProtocolError, Subject
from common.protocol.messages import (
    ClientUpdate,
    Done,
    Echo,
    ModelRequest,
    Rekey,
    ScoreRequest,
    SecureMessage,
    UnmaskScores,
    ServerReply,
    Waiting,
    server_reply,
)
from common.secure_rounds import SECURE, SecureParticipant
from common.training import LocalTrainer

log = logging.getLogger(__name__)

CONNECT_RETRY_INTERVAL = 0.5  # seconds between attempts while the server is not up yet
RETRY_FIRST_DELAY = 0.5  # seconds before the first reconnect attempt after a lost connection
RETRY_MAX_DELAY = 8.0  # the wait doubles after each failed attempt, up to this
# A server that promised a ``waiting`` notice every S seconds while a reply is held and then
# said nothing for this many times S is taken for lost: the link is silent, not the server busy.
NOTICE_MISSES = 3


@dataclass
class ClientConfig:
    host: str = "localhost"
    port: int = 10000
    buffer_size: int = 1024
    recv_timeout: float = 10.0  # the most seconds between a message's chunks
    idle_timeout: float = 300.0
    min_rate: float = 8.0  # KiB/s: a message slower than this on average is cut
    connect_timeout: float = 30.0
    retries: int = 10  # reconnect attempts in a row after a lost connection: ~1 minute
    max_message_bytes: int = protocol.CLIENT_MAX_MESSAGE_BYTES
    max_params: int = DEFAULT_MAX_PARAMS
    name: str = "client"
    ga: GAConfig = field(default_factory=GAConfig)
    seed: int | None = None
    secret: bytes | None = field(default=None, repr=False)  # see common.security
    secret_file: str | None = None  # where ``secret`` came from (None: $FEDGA_SECRET or none)
    tls_ca: str | None = None  # verify the server's TLS certificate against this CA file
    # GA settings this client insists on; the rest come from the server, else from ``ga``.
    ga_overrides: dict = field(default_factory=dict)
    attack: AttackConfig | None = None  # a lab feature (common.attacks); seeded by ``seed``


def connect(
    host: str, port: int, timeout: float, stop: threading.Event | None = None
) -> socket.socket:
    """Connect, retrying refused attempts for ``timeout`` seconds so start order does not matter."""
    deadline = time.monotonic() + timeout
    stop = stop or threading.Event()
    while True:
        try:
            return socket.create_connection((host, port), timeout=max(1.0, timeout))
        except socket.gaierror:
            raise ConnectError(
                f"The server address {host!r} is not a known host name or IP address."
            ) from None
        except OSError as exc:
            if time.monotonic() >= deadline or stop.is_set():
                raise ConnectError(
                    f"The server at {host}:{port} is unreachable ({exc.strerror or exc})."
                ) from exc
        if stop.wait(CONNECT_RETRY_INTERVAL):
            raise ConnectError("Connecting was cancelled.")


def open_connection(
    sock: socket.socket, config: ClientConfig, buffer_size: int, recv_timeout: float
) -> Connection:
    """Wrap a connected socket with the config's TLS and secret settings."""
    if config.tls_ca:
        sock = security.client_tls_context(config.tls_ca).wrap_socket(
            sock, server_hostname=config.host, do_handshake_on_connect=False
        )
    return Connection(
        sock,
        buffer_size=buffer_size,
        recv_timeout=recv_timeout,
        idle_timeout=config.idle_timeout,
        min_rate=config.min_rate,
        max_message_bytes=config.max_message_bytes,
        secret=config.secret,
    )


class Reconnector:
    """Reopens a lost connection with capped exponential backoff: it waits 0.5 s before the
    first attempt, doubling up to 8 s, for at most ``retries`` attempts in a row. Only a
    reply from the server (``reset``) restores the count, so a server that accepts and
    drops at once still uses it up."""

    def __init__(self, host: str, port: int, retries: int):
        self.host, self.port, self.retries = host, port, retries
        self._failed = 0

    def reset(self) -> None:
        """The server answered: the next outage gets all ``retries`` attempts again."""
        self._failed = 0

    def __call__(
        self, stop: threading.Event, on_attempt: Callable[[int], None] | None = None
    ) -> socket.socket:
        """A new connection; ConnectError once the attempts are used up or ``stop`` is set.
        ``on_attempt(n)`` is told as attempt n begins, before its wait."""
        reason = ""
        while self._failed < self.retries:
            delay = min(RETRY_MAX_DELAY, RETRY_FIRST_DELAY * 2 ** min(self._failed, 16))
            self._failed += 1
            if on_attempt is not None:
                on_attempt(self._failed)
            if stop.wait(delay):
                raise ConnectError("Reconnecting was cancelled.")
            try:
                sock = connect(self.host, self.port, 0, stop)  # timeout 0: one attempt
            except ConnectError as exc:
                reason = str(exc)
                log.warning(
                    "reconnect attempt %d of %d failed: %s", self._failed, self.retries, reason
                )
                continue
            log.info(
                "reconnected to %s:%d (attempt %d of %d)",
                self.host,
                self.port,
                self._failed,
                self.retries,
            )
            return sock
        attempts = "attempt" if self.retries == 1 else "attempts"
        raise ConnectError(
            f"Lost the server and gave up after {self.retries} reconnect "
            f"{attempts} (--retries). {reason}".rstrip()
        )


class ClientOutcome(StrEnum):
    """How a ``RecvThread``'s loop ended."""

    DONE = "done"  # the server said done; its ``server_outcome`` says how training ended
    ERROR = "error"  # lost or refused the server, or a bug: ``error`` says it in plain words
    STOPPED = "stopped"  # ``stop()`` ended it (Close Socket, Ctrl-C, SIGTERM)


class RecvThread(threading.Thread):
    """Runs the tutorial's client loop over one connected socket until ``done`` or an error.

    Afterwards ``outcome`` (a ``ClientOutcome``) says how it ended, and after ``done`` the
    server's ``server_outcome`` how training ended. With ``reconnect``, a lost connection
    (reset, closed, or a read timed out) is reopened and the unanswered request resent, each
    attempt a ``connecting`` event ("attempt 2 of 10" in ``detail``); without it, losing the
    server is an error.
    """

    def __init__(
        self,
        buffer_size: int = 1024,
        recv_timeout: float = 10.0,
        *,
        sock: socket.socket,
        data: Dataset,
        data_source: str = "the client's data",
        config: ClientConfig | None = None,
        on_event: Callable[[Event], None] | None = None,
        reconnect: Reconnector | None = None,
        collusion: Collusion | None = None,
    ):
        super().__init__(name=f"RecvThread-{(config or ClientConfig()).name}", daemon=True)
        self.config = config or ClientConfig()
        self._buffer_size, self._recv_timeout = buffer_size, recv_timeout
        self.connection = open_connection(sock, self.config, buffer_size, recv_timeout)
        self._reconnect = reconnect
        # New for every run, so a restarted client, or two with one name, never share the
        # sequence numbers the server tells resent updates by.
        self.client_id = f"{self.config.name}-{secrets.token_hex(4)}"
        self._sequence = 0  # of the last model update sent
        # The global round the last model came from, if its update goes through secure rounds.
        self._secure_round: int | None = None
        self._secure = SecureParticipant(
            lambda message: self._exchange(message, resend=False), client_id=self.client_id
        )
        self._trained_round: int | None = None  # the server's round in the model last trained
        # How long a reply may keep us waiting without a word: the server's promise of
        # notices (NOTICE_MISSES of its intervals) once it made one, else --idle-timeout.
        self._patience = self.config.idle_timeout
        self._bytes_sent_before = 0  # on connections lost since, for the run's total
        config = self.config
        # ``collusion``: alie's colluders in this process (a bench); see common.attacks.
        self.attack = None
        if config.attack is not None:
            self.attack = config.attack.build(config.seed, collusion)
            log.warning("%s is attacking: %s", config.name, self.attack)
        self.trainer = LocalTrainer(
            data,
            data_source,
            ga=config.ga,
            max_params=config.max_params,
            ga_overrides=config.ga_overrides,
            seed=config.seed,
            attack=self.attack,
        )
        self.outcome: ClientOutcome | None = None
        self.server_outcome: Outcome | None = None  # what the server's done said
        self.error: str | None = None
        self.final_accuracy: float | None = None
        self._on_event = on_event or (lambda event: None)
        self._stop_requested = threading.Event()

    def stop(self) -> None:
        """Ask the loop to end: interrupts training and unblocks a pending receive."""
        self._stop_requested.set()
        self.connection.close()

    def _request(self, best: tuple[np.ndarray, int] | None) -> ServerReply:
        """The tutorial's echo first (no weights yet), then each round's best weights with
        the sample count fedavg weighs them by."""
        if best is None:
            return self._exchange(Echo(self.client_id).to_message())
        if self._secure_round is not None:  # masked, in the server's secure rounds
            return self._secure.run(self._secure_round, *best)
        self._sequence += 1
        update = ClientUpdate(*best, (self.client_id, self._sequence), self._trained_round)
        return self._exchange(update.to_message())

    def _exchange(self, message: Message, resend: bool = True) -> ServerReply:
        """Send ``message`` and return the reply, resending it after each reconnection; or
        without ``resend``, sending an ``echo`` instead (a secure round's message: the round
        goes on without this client, and a masked vector sent twice could be unmasked)."""
        while True:
            try:
                self.connection.send(message)
                reply = self._receive_reply()
            # A read that timed out is a lost connection too: a silent link or a slow one
            # below --min-rate looks the same from here, and a fresh connection may fare
            # better. The resend is safe: the server counts an update once by its sequence.
            except (
                protocol.PeerClosed,
                protocol.ConnectionLost,
                protocol.ReceiveTimeout,
            ) as exc:
                if self._reconnect is None or self._stop_requested.is_set():
                    raise
                log.warning("%s: lost the server (%s); reconnecting", self.config.name, exc)
                self._reopen(self._reconnect)
                if not resend:
                    message = Echo(self.client_id).to_message()
                continue
            if self._reconnect is not None:
                self._reconnect.reset()
            typed = server_reply(reply)
            if isinstance(typed, (ModelRequest, ScoreRequest)) and typed.notice_interval:
                self._patience = min(
                    self.config.idle_timeout, NOTICE_MISSES * typed.notice_interval
                )
            return typed

    def _receive_reply(self) -> Message:
        """The server's reply, after any ``waiting`` notices, each logged and reported. A
        silence longer than ``_patience`` is a ``ReceiveTimeout``."""
        while True:
            self.connection.idle_timeout = self._patience  # each notice starts it again
            message = self.connection.receive(protocol.SERVER_TO_CLIENT)
            if message.subject is not Subject.WAITING:
                return message
            notice = Waiting.from_data(message.data)
            log.info("%s: %s", self.config.name, notice.describe())
            self._on_event(Event(EventKind.WAITING, round=notice.round, detail=notice.describe()))

    @property
    def bytes_sent(self) -> int:
        """Bytes this client sent the server so far, over every connection of the run."""
        return self._bytes_sent_before + self.connection.bytes_sent

    def _reopen(self, reconnect: Reconnector) -> None:
        self._bytes_sent_before += self.connection.bytes_sent
        self.connection.close()
        retries = reconnect.retries
        sock = reconnect(
            self._stop_requested,
            lambda attempt: self._on_event(
                Event(EventKind.CONNECTING, detail=f"attempt {attempt} of {retries}")
            ),
        )
        self.connection = open_connection(sock, self.config, self._buffer_size, self._recv_timeout)
        if self._stop_requested.is_set():  # stop() came too late to close this one
            self.connection.close()
        self._on_event(Event(EventKind.CONNECTED, peer=self.connection.peer))

    def _train(self, request: ModelRequest) -> tuple[np.ndarray, int]:
        """The round's best vector and the sample count to send with it."""
        if self.attack is not None:
            self.attack.check_federation(WEIGHTS)
        server_round = request.round or 0
        self._secure_round = server_round if request.secure_aggregation else None
        self._trained_round = request.round
        self._on_event(
            Event(
                EventKind.MODEL,
                round=server_round,
                accuracy=request.accuracy,
                generation=self.trainer.settings_for(request).num_generations,
                detail=SECURE if request.secure_aggregation else "",
            )
        )

        def on_generation(generation: int, best_fitness: float) -> None:
            self._on_event(
                Event(
                    EventKind.GENERATION,
                    round=server_round,
                    generation=generation,
                    fitness=best_fitness,
                )
            )

        result = self.trainer.train(
            request, on_generation=on_generation, should_stop=self._stop_requested.is_set
        )
        log.info(
            "%s trained round %s: best fitness %.4g",
            self.config.name,
            server_round,
            result.best_fitness,
        )
        best = (result.best_vector, len(self.trainer.data))
        if self.attack is not None:
            best = self._poison(self.attack, request, result.best_vector)
        self._on_event(
            Event(
                EventKind.SENT,
                round=server_round,
                fitness=result.best_fitness,
                generation=result.generations,
                detail=SECURE if request.secure_aggregation else "",
            )
        )
        return best

    def _poison(
        self, attack: Attack, request: ModelRequest, vector: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """The attack's vector and claimed count in place of the honest ones."""
        data = self.trainer.data

        def retrain(rows: np.ndarray) -> np.ndarray:
            part = Dataset(data.inputs[rows], data.outputs[rows])
            return self.trainer.train(
                request, data=part, should_stop=self._stop_requested.is_set
            ).best_vector

        sent, claimed = attack.poison_update(
            HonestUpdate(
                request.population_weights[0],  # the global model (GlobalModel._population)
                vector,
                len(data),
                self._sequence + 1,
                retrain,
            )
        )
        return np.asarray(sent, dtype=vector.dtype), claimed

    def _score(self, reply: ScoreRequest | Rekey) -> Done | None:
        """Fitness mode: score the server's generations until ``done`` (None if stopped)."""
        if self.attack is not None:
            self.attack.check_federation(FITNESS)
        scorer = FitnessScorer(
            self.trainer,
            self._exchange,
            client_id=self.client_id,
            on_event=self._on_event,
            should_stop=self._stop_requested.is_set,
        )
        return scorer.run(reply)

    def run(self) -> None:
        self._on_event(Event(EventKind.CONNECTED, peer=self.connection.peer))
        try:
            best = None
            while True:
                reply = self._request(best)
                if isinstance(reply, (ScoreRequest, Rekey)):  # the server runs fitness mode
                    scored = self._score(reply)
                    if scored is None:  # stopped
                        break
                    reply = scored
                if isinstance(reply, Done):
                    self._done(reply)
                    return
                if isinstance(reply, (SecureMessage, UnmaskScores)):  # only in answer to a stage
                    raise SchemaError(f"the server sent {reply.subject.value!r} out of turn")
                best = self._train(reply)
                if self._stop_requested.is_set():
                    break
        except (ProtocolError, UserError) as exc:
            if not self._stop_requested.is_set():
                self.outcome, self.error = ClientOutcome.ERROR, exc.plain_reason
                log.error("%s: %s", self.config.name, self.error)
                self._on_event(Event(EventKind.ERROR, detail=self.error))
                return
        except Exception as exc:  # report a bug as a failure, not a dead thread
            self.outcome, self.error = ClientOutcome.ERROR, f"internal error: {exc!r}"
            log.exception("%s stopped after an internal error", self.config.name)
            self._on_event(Event(EventKind.ERROR, detail=self.error))
            return
        finally:
            self.connection.close()
            log.info("%s sent %d bytes to the server in all", self.config.name, self.bytes_sent)
        self.outcome = ClientOutcome.STOPPED
        self._on_event(Event(EventKind.STOPPED))

    def _done(self, reply: Done) -> None:
        """The server said done: say how training ended (a warning unless it reached its
        target), and report it (the sentence in ``detail``)."""
        self.final_accuracy, self.server_outcome = reply.accuracy, reply.outcome
        self.outcome = ClientOutcome.DONE
        if reply.outcome is Outcome.DONE:
            log.info("%s: server says done (accuracy=%s)", self.config.name, reply.accuracy)
        else:
            log.warning("%s: %s", self.config.name, reply.describe())
        self._on_event(Event(EventKind.DONE, accuracy=reply.accuracy, detail=reply.describe()))
