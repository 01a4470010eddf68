"""The server's global model (``GlobalModel``): rounds of client updates folded by the
aggregation rule, each scored on the test data, committed (and checkpointed) as one round,
until training ends; the events it reports, delivered after its lock. No sockets here: the
handler threads of ``common.server`` call it, as Flower's strategy and the federations do."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from common import checkpoint
from common.aggregate import ServerOptimiser, Update
from common.auto import known
from common.checkpoint import Best, Checkpoint
from common.data import Dataset
from common.errors import CheckpointError, ConfigError
from common.events import Event, EventKind, Outcome
from common.ga import GAConfig, loss
from common.model import Network, accuracy as model_accuracy
from common.operators import spread_population
from common.protocol.messages import ClientUpdate, Done, ModelRequest, Waiting
from common.server_config import TrainingConfig
from common.step_schedule import StepSchedule

log = logging.getLogger(__name__)

# What a judged event says of an update a per-update rule did not apply (GlobalModel._over_share).
OVER_SHARE = "over share"

EventCallback = Callable[[Event], None]


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

    Methods for callers (each takes the lock itself, so never call one holding it):

    - apply_update(update, client, notify, every) -> reply   a handler's update, weights mode
    - reply_to_echo() -> reply                               a handler's echo
    - apply_round(updates) -> reply       a whole round gathered elsewhere (Flower's strategy)
    - apply_mean(mean, count, clients, detail)    a secure round's sum (common.secure_rounds)
    - fitness_round(), commit_best(vector, clients, detail)   fitness mode's rounds
    - join(client), forget(client)         a client came, left (per-update rules' shares)
    - stop()                               Stop Training, Ctrl-C, SIGTERM
    - save_model(path)                     the best model, as a .keras file

    Methods for callers that take no lock:

    - done() -> Done                       the answer to every request once ``finished``
    - add_stop_listener(listener)          a round driver woken by ``stop()``

    Methods that run under the lock (the callers' above call them with it held):

    - _reply(), _population(), _sent_settings()   what a reply sends
    - _evaluate(), _loss(), _score_candidates()   the forward pass (a Keras model is shared)
    - _over_share(client)                         a per-update rule's fair share
    - _await_round() -> _close_round() -> _aggregate() -> _commit() -> _ending(), _end()
                                                  (``_await_round`` waits on the lock's
                                                  condition, ``_round_closed``)
    - _emit(event)             queues an event; ``_deliver_events()``, after the lock, sends it

    Instance variables callers read: ``vector``, ``round``, ``accuracy``, ``best``,
    ``finished`` (a ``threading.Event``), ``outcome``, ``ga`` (its ``mutation_step`` as the
    schedule has it now), ``forward``, ``num_params``, ``num_solutions``, ``aggregation``.
    """

    def __init__(
        self,
        network: Network,
        test_data: Dataset,
        training: TrainingConfig | None = None,
        *,
        on_event: EventCallback | None = None,
    ):
        training = (training or TrainingConfig()).resolved()
        self.aggregation = training.aggregation_rule()
        self.aggregation.bind(self._score_candidates)
        self.min_clients, self.round_timeout = known(training.min_clients), training.round_timeout
        self.secure_aggregation = training.secure_aggregation  # announced with each model
        self._pending: list[_Entry] = []  # this round's updates so far
        self._gone: set[str] = set()  # clients that left while this round gathered
        self._round_id = 0
        self._round_deadline = 0.0
        self.network = network
        self.model_json = network.model_json
        self.ga = training.ga  # its mutation_step shrinks as training converges
        self.forward = network.forward
        self.test_data = test_data
        self.num_solutions = training.num_solutions
        self.target_accuracy = training.target_accuracy
        self.max_rounds = training.max_rounds
        self.patience = training.patience
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
        # When to halve ``ga``'s mutation_step (common.step_schedule), from the first loss.
        self._step = StepSchedule(
            self.ga.mutation_step, known(self.ga.step_patience), self.best.loss
        )
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
            if self.checkpoint_path is None:
                raise ConfigError("--resume needs --checkpoint PATH.")
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
        assert self.outcome is not None, "done() before training ended"  # set before finished
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
                assert notify is not None  # a notice comes only when asked for (notice_at)
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
            for entry in self._pending:
                _not_applied(entry.client, entry.update.key, "training was stopped")
            self._pending, self._round_id = [], self._round_id + 1
            self._end(Outcome.STOPPED)
            self._round_closed.notify_all()  # the dropped round's waiters are answered done
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
            assert entry.accuracy is not None  # scored as it came (apply_update)
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
        if self._step.after_round(loss, self.round):
            self.ga = dataclasses.replace(self.ga, mutation_step=self._step.step)
        self._emit(
            Event(
                EventKind.UPDATE, peer=client, round=self.round, accuracy=self.accuracy, loss=loss
            )
        )
        ending = self._ending()
        if ending is not None:
            self._end(ending)

    def _ending(self) -> Outcome | None:
        """Call with the lock held, after a round: how training ends now, if it does."""
        if self.accuracy >= self.target_accuracy:
            return Outcome.DONE
        if self.round >= self.max_rounds:
            return Outcome.GAVE_UP
        if self.patience and self.round - self.best.round >= self.patience:
            return Outcome.PATIENCE
        return None

    def _end(self, outcome: Outcome) -> None:
        """Call with the lock held: end training with ``outcome``. The model is frozen (every
        reply is ``done``), the ending logged in a line that says why, and reported by an
        event of its kind with the last round's accuracy (done, gave up) or the best's (out
        of patience, stopped: the best is what is kept)."""
        self.outcome = outcome
        self.finished.set()
        best = self.best
        if outcome is Outcome.DONE:
            log.info(
                "done: accuracy=%.4f reached the target %.4f in round %d",
                self.accuracy,
                self.target_accuracy,
                self.round,
            )
        elif outcome is Outcome.GAVE_UP:
            log.warning(
                "giving up: accuracy=%.4f after %d rounds (--max-rounds), target %.4f",
                self.accuracy,
                self.round,
                self.target_accuracy,
            )
        elif outcome is Outcome.PATIENCE:
            log.warning(
                "stopping: no better model for %d rounds (--patience); the best, "
                "round %d, scored accuracy=%.4f",
                self.patience,
                best.round,
                best.accuracy,
            )
        else:
            log.warning(
                "stopped by request after %d rounds; the best, round %d, scored accuracy=%.4f",
                self.round,
                best.round,
                best.accuracy,
            )
        last = outcome in (Outcome.DONE, Outcome.GAVE_UP)
        self._emit(
            Event(
                EventKind(outcome),
                round=self.round,
                accuracy=self.accuracy if last else best.accuracy,
            )
        )
