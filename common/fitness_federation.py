"""Fitness mode (``--federation fitness``): clients share fitness, not weights.

The population lives at the server, where PyGAD (``common.ga.SharedFitnessGA``) runs each
round as a weights-mode client holding all the data would: ``--generations`` generations
from a population spread around the global model, whose best member becomes the global
model. Each generation every client scores the members on its own data and returns only
their mean losses, with its sample count; a member's fitness is the tutorial's
``1 / (loss + 1e-8)`` of the sample-weighted mean of those losses, which is its loss over all
the clients' data. So a run is the central GA whatever the split. (EvoFed, Rahimi et al.,
NeurIPS 2023, also shares fitness, with populations rebuilt from a shared seed.)

Traffic. Each client runs the same GA as the server (``build_ga`` from the round's first
population and seed) and so draws the same members: a generation sends no members, only
their fitness to the clients and their losses to the server (~0.4 KiB each way at 10 members,
whatever the model's size). The round's first population goes whole, at its start and to a
client that joins mid-round, which replays the generations' fitness so far to catch up.
Every ``fitness`` message names the members it scored by a digest (``digest``); a client
whose digest differs from the server's is sent the round whole again, and one that differs
twice (a different PyGAD or NumPy, say) gets the members themselves with every request.

Rules of a generation (``FitnessFederation``):
- every client connected scores it; one that has not answered ``--round-timeout`` seconds
  after the first answer is left out (the log names it). With fewer than ``--min-clients``
  answers the generation waits for more: PyGAD 3.9.2 cannot take NaN from a fitness
  function, nor recover from one that raises;
- a generation's fitness values come from one set of clients' data: PyGAD keeps the elite's
  and parents' fitness from the generation before, so when the clients who answered differ
  from the last generation's, every member is scored again (a second attempt);
- only clients that announce ``FITNESS_MODE_VERSION`` take part: plain-pickle peers and older
  fedga clients can only train weights, and are refused with a logged reason.

A client that lies about its scores (the worst member reported best) moves the exact
weighted sum as far as its sample count allows. With ``--byzantine F`` > 0 the scores are
combined robustly instead (``rank_fitness``): each client's losses become ranks, and a
member's fitness is its mean rank over the clients without the F highest and F lowest, so F
liars move no member beyond the honest clients' ranks. That is no longer the central GA
(a rank ignores by how much one member beats another, and sample counts are ignored as a
liar could inflate them), so F = 0, the default in this mode, keeps the exact sum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from common.aggregate import trimmed_mean
from common.driver import RoundDriver, Stoppable
from common.errors import ConfigError, ConnectionLost, Refused, SchemaError
from common.events import Event, EventKind
from common.ga import GAConfig, RoundSeeds, SharedFitnessGA, build_ga, loss
from common.model import ForwardPass
from common.protocol.messages import (
    FITNESS_MODE_VERSION,
    Done,
    Message,
    ModelRequest,
    RoundStart,
    Scores,
    ScoreRequest,
    ServerReply,
    Subject,
    client_id_of,
    echo,
)
from common.training import LocalTrainer

log = logging.getLogger(__name__)

WEIGHTS, FITNESS = "weights", "fitness"
# The one rule setting (common.aggregate.SETTINGS) fitness mode takes: with --byzantine F > 0
# its scores combine robustly to F liars (rank_fitness).
FITNESS_SETTING = "byzantine"
FEDERATIONS = (WEIGHTS, FITNESS)  # the --federation choices; weights is the tutorial's


def digest(members: np.ndarray) -> str:
    """A name for these members: equal digests, equal float32 genes (and shape)."""
    genes = np.ascontiguousarray(members, dtype=np.float32)
    named = hashlib.blake2b(digest_size=16)
    named.update(np.asarray(genes.shape, dtype=np.int64).tobytes())
    named.update(genes.tobytes())
    return named.hexdigest()


def fitness_of(losses: np.ndarray) -> np.ndarray:
    """The tutorial's fitness of a loss, as ``common.ga.fitness`` computes it."""
    return 1.0 / (losses + 1e-8)


def rank_fitness(losses: Sequence[np.ndarray], byzantine: int) -> np.ndarray:
    """Fitness from each client's losses of the same members, robust to ``byzantine`` liars:
    each client's ranks (0: its lowest loss), their trimmed mean over clients per member
    (``byzantine`` dropped at each end; needs more than 2F clients), as the number of members
    less that mean, so higher is better and every fitness is at least 1."""
    ranks = [np.argsort(np.argsort(row, kind="stable"), kind="stable") for row in losses]
    mean_rank, _ = trimmed_mean(ranks, byzantine)
    return len(ranks[0]) - mean_rank


def _unscored(known: np.ndarray) -> np.ndarray:
    """Valid numbers for PyGAD when a generation will not be scored (training ended or the
    round is being resent): its ``on_generation`` stops the GA right after."""
    return np.nan_to_num(known, nan=0.0)


# ---- the server's side --------------------------------------------------------------------


class GlobalRounds(Stoppable, Protocol):
    """What the federation needs of ``common.server.GlobalModel`` (which imports this)."""

    forward: ForwardPass
    model_json: str
    round: int
    accuracy: float

    def fitness_round(self) -> tuple[np.ndarray, GAConfig, dict[str, Any]] | None: ...

    def commit_best(self, vector: np.ndarray, clients: list[str], detail: str) -> None: ...


@dataclass
class _Client:
    peer: str  # the connection serving it now
    round: int | None = None  # the round whose start it holds
    left_out: bool = False  # missed a generation's deadline: not waited for until it answers
    mismatched: bool = False  # its digest differed once this run
    explicit: bool = False  # it differed again: send it the members themselves
    scored_round: int | None = None  # the last round its scores counted in


@dataclass
class _Job:
    """One attempt at scoring one generation."""

    round: int
    generation: int
    attempt: int
    all_members: bool
    members: np.ndarray  # the rows to score, in the population's order
    digest: str
    reports: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)  # id -> losses, n
    first_report: float | None = None
    closed: bool = False

    @property
    def key(self) -> tuple[int, int, int]:
        return self.round, self.generation, self.attempt


class FitnessFederation(RoundDriver):
    """Runs the GA at the server, in a thread of its own (``start``/``shutdown``), with each
    generation scored by the connected clients; ``reply`` answers a client's request from a
    ``SocketThread`` and ``leave`` hears that its connection ended.

    ``on_event`` hears of each generation (``generation``), of one that waits for
    ``min_clients`` (``waiting``) and of each client's first scores in a round (``scored``,
    with its sample count and id); it must not call back into the federation.
    """

    what = "fitness mode"

    def __init__(
        self,
        global_model: GlobalRounds,
        *,
        min_clients: int,
        round_timeout: float,
        seed: int | None = None,
        byzantine: int = 0,
        on_event: Callable[[Event], None] | None = None,
    ):
        if byzantine and min_clients <= 2 * byzantine:
            raise ConfigError(
                f"Fitness mode with --byzantine {byzantine} needs --min-clients of at least "
                f"{2 * byzantine + 1}, not {min_clients}: its scores drop {byzantine} per "
                "side of every member's ranks."
            )
        super().__init__(global_model)
        self.byzantine = byzantine
        self.global_model = global_model
        self._on_event = on_event or (lambda event: None)
        self.min_clients, self.round_timeout = min_clients, round_timeout
        # The seeds a weights-mode client with the same --seed draws: with one client and
        # fedavg, weights mode runs the very GA this runs.
        self._seeds = RoundSeeds(seed)
        self._clients: dict[str, _Client] = {}  # by client id
        self._start: RoundStart | None = None  # the current round's, without its history
        self._histories: dict[int, list[np.ndarray]] = {}  # round -> each generation's fitness
        self._job: _Job | None = None  # the latest attempt published
        self._last_scorers: frozenset[str] | None = None  # whose data scored the last generation

    # -- the GA's thread

    def _rounds(self) -> None:
        while not self._over():
            begun = self.global_model.fitness_round()
            if begun is None:
                return
            population, config, sent_settings = begun
            round_ = self.global_model.round + 1
            seed = self._seeds.next()
            with self._changed:
                self._start = RoundStart(
                    self.global_model.model_json,
                    population,
                    seed,
                    sent_settings,
                    np.empty((0, len(population))),
                )
                self._histories = {r: h for r, h in self._histories.items() if r == round_ - 1} | {
                    round_: []
                }
                self._last_scorers = None
            ga = build_ga(
                population,
                self.global_model.forward.shapes,
                config,
                lambda ga, members, known: self._score_generation(ga, members, known, round_),
                on_generation=self._generation_done,
                seed=seed,
                ga_type=SharedFitnessGA,
            )
            ga.run()
            if self._over():
                return
            best, best_fitness, _ = ga.best_solution(pop_fitness=ga.last_generation_fitness)
            self.global_model.commit_best(
                np.asarray(best, dtype=np.float32),
                sorted(self._last_scorers or ()),
                "fitness mode: best of %d generations, loss %.4g on the clients' data"
                % (ga.generations_completed, 1.0 / best_fitness - 1e-8),
            )

    def _generation_done(self, ga) -> str | None:
        """PyGAD's ``on_generation``: report the generation; stop once training ended."""
        if self._over():
            return "stop"
        self._on_event(
            Event(
                EventKind.GENERATION,
                round=self.global_model.round + 1,
                generation=ga.generations_completed,
                fitness=float(np.max(ga.last_generation_fitness)),
                # The members this generation scored: runs whose every generation scored the
                # same members ran the same GA (tests compare runs by it).
                detail=self._job.digest if self._job is not None else "",
            )
        )
        return None

    def _score_generation(
        self, ga, population: np.ndarray, known: np.ndarray, round_: int
    ) -> np.ndarray:
        """The GA's fitness function: every member's fitness, scored by the clients."""
        # Ranks compare the members scored together: with --byzantine all are, each time.
        rows = np.ones_like(known, dtype=bool) if self.byzantine else np.isnan(known)
        attempt = 0
        with self._changed:
            while True:
                job = self._publish(round_, ga.generations_completed, attempt, population, rows)
                reports = self._collect(job)
                if reports is None:
                    return _unscored(known)
                scorers = frozenset(reports)
                if not rows.all() and scorers != self._last_scorers:
                    log.info(
                        "round=%d generation=%d: scored by %s, the last by %s: every member "
                        "is scored again, so that all its fitness values come from one set "
                        "of clients' data",
                        round_,
                        job.generation,
                        ", ".join(sorted(scorers)),
                        ", ".join(sorted(self._last_scorers or ())),
                    )
                    rows, attempt = np.ones_like(rows), attempt + 1
                    continue
                fitness = known.copy()
                fitness[rows] = self._combine(list(reports.values()))
                self._last_scorers = scorers
                self._histories[round_].append(fitness)
                self._changed.notify_all()
                return fitness

    def _combine(self, reports: list[tuple[np.ndarray, int]]) -> np.ndarray:
        """The members' fitness from the clients' (losses, sample count): of their loss over
        all the clients' data, or with ``byzantine`` robust to that many liars."""
        if self.byzantine:
            return rank_fitness([losses for losses, _ in reports], self.byzantine)
        counts = np.array([count for _, count in reports], dtype=np.float64)
        # Shares, not counts: one client's share is exactly 1, so its losses pass unchanged
        # and the run is bit for bit a weights-mode client's holding it all.
        shares = counts / counts.sum()
        return fitness_of(shares @ np.stack([losses for losses, _ in reports]))

    def _publish(
        self, round_: int, generation: int, attempt: int, population: np.ndarray, rows
    ) -> _Job:
        """Call with ``_changed`` held: make this attempt the one clients are asked to score."""
        if self._job is not None:
            self._job.closed = True
        members = population[rows]
        self._job = _Job(round_, generation, attempt, bool(rows.all()), members, digest(members))
        self._changed.notify_all()
        return self._job

    def _collect(self, job: _Job) -> dict[str, tuple[np.ndarray, int]] | None:
        """Call with ``_changed`` held: wait until every client not left out answered ``job``,
        or ``round_timeout`` passed since the first answer; at least ``min_clients`` answers
        either way. None if training ended meanwhile."""
        said_waiting = False
        while not self._over():
            expected = {cid for cid, client in self._clients.items() if not client.left_out}
            answered = set(job.reports)
            missing = expected - answered
            enough = len(answered) >= self.min_clients
            timeout = None
            if enough and not missing:
                break
            if job.first_report is not None:
                timeout = job.first_report + self.round_timeout - time.monotonic()
                if timeout <= 0 and enough:
                    for cid in missing:
                        self._clients[cid].left_out = True
                    log.warning(
                        "round=%d generation=%d: no scores from %s within %g s "
                        "(--round-timeout): scored without their data",
                        job.round,
                        job.generation,
                        ", ".join(sorted(missing)),
                        self.round_timeout,
                    )
                    break
            if timeout is not None and timeout <= 0:
                timeout = None  # too few answers: wait for more, however long
            if not said_waiting and not missing:
                log.info(
                    "round=%d generation=%d: scored by %d of --min-clients %d clients so far; "
                    "waiting for more",
                    job.round,
                    job.generation,
                    len(answered),
                    self.min_clients,
                )
                self._on_event(
                    Event(
                        EventKind.WAITING,
                        round=job.round,
                        generation=job.generation,
                        detail=f"{len(answered)} of {self.min_clients} clients",
                    )
                )
                said_waiting = True
            self._changed.wait(timeout)
        else:
            return None
        job.closed = True
        self._changed.notify_all()
        return dict(job.reports)

    # -- the clients' threads

    def reply(self, peer: str, message: Message) -> ServerReply:
        """The reply to a client's request, once there is one: a ``score`` request, or
        ``done``. ``Refused`` for a peer that cannot take part; ``SchemaError`` for a
        malformed request."""
        if message.subject is Subject.ECHO:
            version = message.data.get("protocol_version")
            if not isinstance(version, int) or version < FITNESS_MODE_VERSION:
                raise Refused(
                    "this server runs fitness mode (--federation fitness), where clients "
                    f"score members and send losses, which needs protocol_version "
                    f"{FITNESS_MODE_VERSION} or later; this peer announced {version!r} "
                    "(a plain-pickle or older peer, which can only train weights)"
                )
            client_id = client_id_of(message.data) or peer
            with self._changed:
                self._join(client_id, peer).round = None  # it holds no round yet
                return self._reply_when_ready(client_id, None)
        if message.subject is Subject.FITNESS:
            scores = Scores.from_data(message.data)
            client_id = scores.client_id or peer
            with self._changed:
                return self._take(client_id, peer, scores)
        raise Refused(
            "this server runs fitness mode (--federation fitness): it takes clients' "
            f"losses, not {message.subject.value!r} messages with weights"
        )

    def leave(self, peer: str) -> None:
        """A connection ended: its client is no longer waited for."""
        with self._changed:
            for client_id, client in list(self._clients.items()):
                if client.peer == peer:
                    del self._clients[client_id]
                    job = self._job
                    if job is not None and not job.closed and client_id not in job.reports:
                        log.info(
                            "client %s left: round=%d generation=%d goes on without its data",
                            client_id,
                            job.round,
                            job.generation,
                        )
                    self._changed.notify_all()

    def _join(self, client_id: str, peer: str) -> _Client:
        """Call with ``_changed`` held: ``client_id`` is served on ``peer`` from now on."""
        client = self._clients.get(client_id)
        if client is None:
            client = self._clients[client_id] = _Client(peer)
        client.peer, client.left_out = peer, False
        self._changed.notify_all()
        return client

    def _take(self, client_id: str, peer: str, scores: Scores) -> ServerReply:
        """Call with ``_changed`` held: count a client's losses if they answer the open job."""
        # A client that reconnected resends its last request on the new connection: its GA
        # is still in step, so its losses count.
        client = self._join(client_id, peer)
        job = self._job
        if (
            job is None
            or job.closed
            or (scores.round, scores.generation, scores.attempt) != job.key
        ):
            log.info(
                "client %s scored round=%d generation=%d attempt=%d, which is over: sending "
                "it the round whole",
                client_id,
                scores.round,
                scores.generation,
                scores.attempt,
            )
            client.round = None
            return self._reply_when_ready(client_id, None)
        if scores.digest != job.digest:
            client.explicit, client.mismatched = client.mismatched, True
            log.warning(
                "client %s scored other members than the server's in round=%d "
                "generation=%d: sending it %s",
                client_id,
                job.round,
                job.generation,
                "the members themselves from now on" if client.explicit else "the round whole",
            )
            client.round = None
            return self._reply_when_ready(client_id, None)
        if len(scores.losses) != len(job.members):
            raise SchemaError(
                f"losses has {len(scores.losses)} values for {len(job.members)} members"
            )
        if client.scored_round != job.round:  # its first scores this round: say who it is
            client.scored_round = job.round
            self._on_event(
                Event(
                    EventKind.SCORED,
                    peer=peer,
                    round=job.round,
                    samples=scores.num_samples,
                    detail=client_id,
                )
            )
        client.round = job.round
        if job.first_report is None:
            job.first_report = time.monotonic()
        job.reports[client_id] = (scores.losses, scores.num_samples)
        self._changed.notify_all()
        return self._reply_when_ready(client_id, job.key)

    def _reply_when_ready(self, client_id: str, answered: tuple[int, int, int] | None):
        """Call with ``_changed`` held: wait for an open job other than the one the client
        ``answered``, then describe it; ``done`` once training ended."""
        while True:
            job = self._job
            if self.global_model.finished.is_set():
                return Done(self.global_model.round, self.global_model.accuracy)
            if self._stopping:  # shut down, or broken: not done, so the client may retry
                raise ConnectionLost("the server stopped running fitness mode")
            if job is not None and not job.closed and job.key != answered:
                break
            self._changed.wait()
        client = self._clients.get(client_id) or _Client("")
        start = None
        if client.round != job.round and self._start is not None:
            history = self._histories[job.round][: job.generation]
            start = dataclasses.replace(
                self._start,
                fitness_history=np.array(history).reshape(len(history), -1)
                if history
                else self._start.fitness_history,
            )
            client.round = job.round
        return ScoreRequest(
            job.round,
            job.generation,
            job.attempt,
            job.all_members,
            job.digest,
            fitness=None if answered is None else self._fitness(answered),
            start=start,
            members=job.members if client.explicit else None,
            accuracy=self.global_model.accuracy,
        )

    def _fitness(self, answered: tuple[int, int, int]) -> np.ndarray | None:
        """Every member's fitness in the generation a client answered, if it is complete."""
        round_, generation, _ = answered
        history = self._histories.get(round_, [])
        return history[generation] if generation < len(history) else None


# ---- the client's side --------------------------------------------------------------------


class FitnessScorer:
    """Fitness mode at a client: runs the server's GA alongside it to know each generation's
    members, scores them on this client's data, which never leaves it, and sends only their
    losses. ``exchange`` sends a request and returns the server's reply (the client's
    connection, with its reconnecting)."""

    def __init__(
        self,
        trainer: LocalTrainer,
        exchange: Callable[[Message], ServerReply],
        *,
        client_id: str,
        on_event: Callable[[Event], None],
        should_stop: Callable[[], bool],
    ):
        self.trainer, self._exchange = trainer, exchange
        self.client_id, self._on_event, self._should_stop = client_id, on_event, should_stop

    def run(self, reply: ScoreRequest) -> Done | None:
        """Score the server's generations from ``reply`` on; the server's ``done`` once
        training ended, or None if stopped."""
        if self.trainer.ga_overrides:
            log.warning(
                "the server runs fitness mode: its GA settings apply, not this client's %s",
                ", ".join(sorted(self.trainer.ga_overrides)),
            )
        answer: ServerReply = reply
        while isinstance(answer, ScoreRequest) and not self._should_stop():
            if answer.start is None:  # out of step with the server: ask for the round whole
                answer = self._exchange(echo(self.client_id))
            else:
                answer = self._round(answer, answer.start)
        if isinstance(answer, ModelRequest):
            raise SchemaError("the server switched from fitness mode to weights mid-run")
        return answer if isinstance(answer, Done) else None

    def _round(self, reply: ScoreRequest, start: RoundStart) -> ServerReply:
        """Run the server's GA for one round from ``start``, scoring the generations it asks
        for; the reply that ended the round (the next round's start, or ``done``), or a
        request without a start if this GA fell out of step."""
        forward = self.trainer.forward_for(start.model_json)
        if start.population_weights.shape[1] != forward.num_params:
            raise SchemaError(
                f"population_weights has {start.population_weights.shape[1]} columns for a "
                f"model of {forward.num_params} weights"
            )
        # The server's settings exactly, whatever this client overrides in weights mode:
        # another GA would draw other members.
        config = dataclasses.replace(self.trainer.ga, **start.ga_settings)
        data = self.trainer.data
        replayed = len(start.fitness_history)
        pending, ended = reply, None
        failure: Exception | None = None  # what broke the exchange, raised once the GA stopped
        self._on_event(
            Event(
                EventKind.MODEL,
                round=reply.round,
                accuracy=reply.accuracy,
                generation=config.num_generations,
                detail=FITNESS,
            )
        )

        def scored(ga, population: np.ndarray, known: np.ndarray) -> np.ndarray:
            nonlocal pending, ended
            generation = ga.generations_completed
            if generation < replayed:  # catching up: the server's fitness, as it was
                return start.fitness_history[generation]
            while (pending.round, pending.generation) == (reply.round, generation):
                if pending.members is not None:
                    members = pending.members
                elif pending.all_members:
                    members = population
                else:
                    members = population[np.isnan(known)]
                losses, num_samples = loss(forward(members, data.inputs), data.outputs), len(data)
                if self.trainer.attack is not None:  # a lab feature: common.attacks
                    losses, num_samples = self.trainer.attack.poison_losses(losses, num_samples)
                scores = Scores(
                    losses,
                    num_samples,
                    digest(members),
                    pending.round,
                    generation,
                    pending.attempt,
                    self.client_id,
                )
                answer = self._exchange(scores.to_message())
                if not isinstance(answer, ScoreRequest) or (
                    answer.fitness is None and answer.start is not None
                ):
                    ended = answer  # done, or the server resends the round: start afresh
                    return _unscored(known)
                pending = answer
                if answer.fitness is not None:
                    if answer.start is not None:
                        ended = answer  # that was the round's last generation
                    if answer.fitness.shape != known.shape:
                        raise SchemaError(
                            f"fitness has {len(answer.fitness)} values for {len(known)} members"
                        )
                    return answer.fitness
            ended = dataclasses.replace(pending, start=None)  # not this generation: resync
            return _unscored(known)

        def score_generation(ga, population: np.ndarray, known: np.ndarray) -> np.ndarray:
            nonlocal failure
            if ended is not None or failure is not None:
                return _unscored(known)
            try:
                return scored(ga, population, known)
            except Exception as exc:  # PyGAD would log it with a traceback: stop, then raise
                failure = exc
                return _unscored(known)

        def generation_done(ga) -> str | None:
            if ended is None and failure is None and ga.generations_completed > replayed:
                self._on_event(
                    Event(
                        EventKind.GENERATION,
                        round=reply.round,
                        generation=ga.generations_completed,
                        fitness=float(np.max(ga.last_generation_fitness)),
                    )
                )
            stop = ended is not None or failure is not None or self._should_stop()
            return "stop" if stop else None

        ga = build_ga(
            start.population_weights,
            forward.shapes,
            config,
            score_generation,
            on_generation=generation_done,
            seed=start.seed,
            ga_type=SharedFitnessGA,
        )
        ga.run()
        if failure is not None:
            raise failure
        self._on_event(
            Event(
                EventKind.SENT,
                round=reply.round,
                fitness=float(np.max(ga.last_generation_fitness)),
                generation=ga.generations_completed,
                detail=FITNESS,
            )
        )
        log.info("round %d: scored %d generations", reply.round, ga.generations_completed)
        return ended if ended is not None else dataclasses.replace(pending, start=None)
