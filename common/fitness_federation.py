"""Fitness mode (``--federation fitness``): clients share fitness, not weights.

The population lives at the server, where PyGAD (``common.ga.SharedFitnessGA``) runs each
round as a weights-mode client holding all the data would: ``--num-generations`` generations
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
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from common.aggregate import trimmed_mean
from common.driver import Notify, RoundDriver, Stoppable
from common.errors import ConfigError, ConnectionLost, Refused, SchemaError, SecAggRefused
from common.events import Event, EventKind
from common.ga import EPSILON, GAConfig, RoundSeeds, SharedFitnessGA, build_ga, loss
from common.model import ForwardPass
from common.protocol.messages import (
    FITNESS_MODE_VERSION,
    MASKED_SCORES_VERSION,
    Done,
    Echo,
    MaskedScores,
    MaskKey,
    Message,
    ModelRequest,
    Rekey,
    Roster,
    RoundStart,
    Scores,
    ScoreRequest,
    ScoresReveal,
    ServerReply,
    Subject,
    UnmaskScores,
    Waiting,
)
from common.secagg import ring
from common.secagg.scores import SMALLEST_ROSTER, ScoreMasker, Scoring, score_ring, unmask_sum
from common.training import LocalTrainer

log = logging.getLogger(__name__)

WEIGHTS, FITNESS = "weights", "fitness"
# The one rule setting (common.aggregate.SETTINGS) fitness mode takes: with --byzantine F > 0
# its scores combine robustly to F liars (rank_fitness).
FITNESS_SETTING = "byzantine"
FEDERATIONS = (WEIGHTS, FITNESS)  # the --federation choices; weights is the tutorial's
# A client's ``model`` and ``sent`` events' detail when its scores go masked (FITNESS: clear).
SCORES_MASKED = "fitness, masked"
# No loss exceeds this (probabilities are clipped to [EPSILON, 1 - EPSILON]): the clipping
# range of masked scores, so an honest client's loss is never clipped.
LARGEST_LOSS = -math.log(EPSILON)


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
    """What the federation needs of ``common.global_model.GlobalModel`` (a Protocol:
    ``common.server`` imports this module)."""

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
    answered: tuple[int, int, int] | None = None  # the last scoring its scores counted in
    epoch: int | None = None  # masked: the roster whose keys it was sent


# A scoring's stages: in the clear one; masked (secure aggregation) the roster's keys when
# its clients changed, then the masked scores, then the self-mask seeds that unmask their sum.
SCORES, KEYS, MASKED, SEEDS = "scores", "keys", "masked scores", "self-mask seeds"


@dataclass
class _Stage:
    """One exchange of a scoring: what each client sent in it, and when the first came."""

    name: str
    answers: dict[str, Any] = field(default_factory=dict)  # by client id
    first: float | None = None


class _ScoreAgain(Exception):
    """A masked scoring lacks a client of its roster: nothing of it can be unmasked."""


@dataclass
class _Job:
    """One attempt at scoring one generation."""

    round: int
    generation: int
    attempt: int
    all_members: bool
    members: np.ndarray  # the rows to score, in the population's order
    digest: str
    stage: _Stage = field(default_factory=lambda: _Stage(SCORES))
    roster: Roster | None = None  # masked: whose scores are summed, under which keys
    withdrawn: set[str] = field(default_factory=set)  # asked afresh mid-scoring: not waited for
    closed: bool = False

    @property
    def key(self) -> tuple[int, int, int]:
        return self.round, self.generation, self.attempt

    @property
    def scoring(self) -> Scoring:
        assert self.roster is not None
        return Scoring(self.roster.epoch, *self.key)

    @property
    def roster_names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.roster.keys) if self.roster else frozenset()


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
        secure: bool = False,
        on_event: Callable[[Event], None] | None = None,
    ):
        if secure and min_clients < SMALLEST_ROSTER:
            raise ConfigError(
                f"Masked scores need --min-clients of at least {SMALLEST_ROSTER}, not "
                f"{min_clients}: of two clients, each could read the other's losses."
            )
        if byzantine and min_clients <= 2 * byzantine:
            raise ConfigError(
                f"Fitness mode with --byzantine {byzantine} needs --min-clients of at least "
                f"{2 * byzantine + 1}, not {min_clients}: its scores drop {byzantine} per "
                "side of every member's ranks."
            )
        super().__init__(global_model)
        self.byzantine, self.secure = byzantine, secure
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
        # Masked scores: the roster whose keys the clients mask under, while its clients stay.
        self._roster: Roster | None = None
        self._epoch = 0  # the latest roster's number

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
                try:
                    scored = self._masked_scoring(job) if self.secure else self._scoring(job)
                except _ScoreAgain:
                    attempt += 1
                    continue
                if scored is None:
                    return _unscored(known)
                scorers, values = scored
                if not rows.all() and scorers != self._last_scorers:
                    log.info(
                        "round=%d generation=%d: scored by %s, the last by %s: %s",
                        round_,
                        job.generation,
                        ", ".join(sorted(scorers)),
                        ", ".join(sorted(self._last_scorers or ())),
                        "the members carried over keep their fitness (masked scores: the "
                        "sums of two sets of clients for one member differ by the changed "
                        "clients' losses)"
                        if self.secure
                        else "every member is scored again, so that all its fitness values "
                        "come from one set of clients' data",
                    )
                    if not self.secure:
                        rows, attempt = np.ones_like(rows), attempt + 1
                        continue
                fitness = known.copy()
                fitness[rows] = values
                self._last_scorers = scorers
                self._histories[round_].append(fitness)
                self._changed.notify_all()
                return fitness

    def _scoring(self, job: _Job) -> tuple[frozenset[str], np.ndarray] | None:
        """Call with ``_changed`` held: ``job`` scored in the clear, and by whom; None once
        training ended."""
        reports = self._collect(job)
        if reports is None:
            return None
        job.closed = True
        return frozenset(reports), self._combine(list(reports.values()))

    def _masked_scoring(self, job: _Job) -> tuple[frozenset[str], np.ndarray] | None:
        """Call with ``_changed`` held: ``job`` scored masked (``common.secagg.scores``): under
        the roster's keys (new ones if its clients changed), every roster client's masked
        losses, then their self-mask seeds, and the fitness of the unmasked sum. None once
        training ended; ``_ScoreAgain`` if a roster client went missing at either step."""
        job.roster = self._roster_for(job)
        if job.roster is None:
            return None
        names = job.roster_names
        masked = self._next_stage(job, MASKED, names)
        if masked is None:
            return None
        seeds = self._next_stage(job, SEEDS, names)
        if seeds is None:
            return None
        job.closed = True
        spec = score_ring(len(names), job.roster.loss_range)
        order = sorted(names)
        sums, count = unmask_sum(
            spec, [masked[name] for name in order], [seeds[name] for name in order], job.scoring
        )
        log.debug(
            "round=%d generation=%d: masked scores of %d clients unmasked, within %.2g",
            job.round,
            job.generation,
            len(names),
            ring.error_bound(spec, len(names), count),
        )
        return names, fitness_of(sums / count)

    def _next_stage(self, job: _Job, name: str, roster: frozenset[str]) -> dict[str, Any] | None:
        """Call with ``_changed`` held: open stage ``name`` of ``job`` and collect it from
        every client of ``roster``; None once training ended. Short of one, the roster is
        done with (``_ScoreAgain``): new keys, then the generation scored again."""
        job.stage = _Stage(name)
        self._changed.notify_all()
        answers = self._collect(job, roster)
        if answers is None:
            return None
        if set(answers) != roster:
            self._roster = None
            log.info(
                "round=%d generation=%d: %s of %s missing: nothing of this attempt is "
                "unmasked; new keys among the clients still here, then it is scored again",
                job.round,
                job.generation,
                name,
                ", ".join(sorted(roster - set(answers))),
            )
            raise _ScoreAgain
        return answers

    def _roster_for(self, job: _Job) -> Roster | None:
        """Call with ``_changed`` held: the roster to mask ``job`` under: the last one while
        its clients are the ones here, else one of fresh keys (``keys`` stage); None once
        training ended."""
        here = frozenset(self._here(job))
        if self._roster is not None and here == frozenset(n for n, _ in self._roster.keys):
            return self._roster
        self._epoch += 1
        self._roster = None
        job.stage = _Stage(KEYS)
        self._changed.notify_all()
        keys = self._collect(job)
        if keys is None:
            return None
        self._roster = Roster(self._epoch, tuple(sorted(keys.items())), LARGEST_LOSS)
        log.info(
            "round=%d generation=%d: scores masked from now on under roster %d: %s",
            job.round,
            job.generation,
            self._epoch,
            ", ".join(sorted(keys)),
        )
        return self._roster

    def _here(self, job: _Job) -> set[str]:
        """Call with ``_changed`` held: the clients ``job`` waits for (not left out, not
        withdrawn)."""
        return {cid for cid, client in self._clients.items() if not client.left_out} - job.withdrawn

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

    def _collect(self, job: _Job, roster: frozenset[str] | None = None) -> dict[str, Any] | None:
        """Call with ``_changed`` held: wait for the answers to ``job``'s stage and return
        them; None if training ended meanwhile.

        Without a ``roster`` (scores in the clear, or keys): until every client here
        answered, or ``round_timeout`` passed since the first answer; at least
        ``min_clients`` answers either way. With one: until every client of it answered,
        or one is gone, or ``round_timeout`` passed since the first answer."""
        stage = job.stage
        said_waiting = False
        while not self._over():
            here = self._here(job)
            answered = set(stage.answers)
            missing = (here if roster is None else roster) - answered
            enough = len(answered) >= self.min_clients or roster is not None
            timeout = None
            if (enough and not missing) or (roster is not None and missing - here):
                break
            if stage.first is not None:
                timeout = stage.first + self.round_timeout - time.monotonic()
                if timeout <= 0 and enough:
                    for cid in missing:
                        self._clients[cid].left_out = True
                    log.warning(
                        "round=%d generation=%d: no %s from %s within %g s (--round-timeout)%s",
                        job.round,
                        job.generation,
                        stage.name,
                        ", ".join(sorted(missing)),
                        self.round_timeout,
                        ": scored without their data" if roster is None else "",
                    )
                    break
            if timeout is not None and timeout <= 0:
                timeout = None  # too few answers: wait for more, however long
            if not said_waiting and not missing:
                log.info(
                    "round=%d generation=%d: %s from %d of --min-clients %d clients so far; "
                    "waiting for more",
                    job.round,
                    job.generation,
                    stage.name,
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
        self._changed.notify_all()
        return dict(stage.answers)

    # -- the clients' threads

    def reply(
        self, peer: str, message: Message, notify: Notify | None = None, every: float = 5.0
    ) -> ServerReply:
        """The reply to a client's request, once there is one: a ``score`` request (masked:
        or the stages around it), or ``done``; meanwhile ``notify`` (if given) hears what
        the generation waits for every ``every`` seconds. ``Refused`` for a peer that
        cannot take part; ``SchemaError`` for a malformed request."""
        answered: tuple[int, int, int] | None = None  # the scoring whose fitness it awaits
        take = _MASKED_TAKES.get(message.subject) if self.secure else None
        if message.subject is Subject.ECHO:
            self._check_version(message)
            client_id = Echo.from_data(message.data).client_id or peer
            with self._changed:
                client = self._join(client_id, peer)
                client.round = client.epoch = None  # it holds no round yet, nor roster
                self._withdraw(client_id)
        elif take is not None:
            answer = _MASKED_ANSWERS[message.subject].from_data(message.data)
            client_id = answer.client_id or peer
            with self._changed:
                answered = take(self, client_id, peer, answer)
        elif message.subject is Subject.FITNESS and not self.secure:
            scores = Scores.from_data(message.data)
            client_id = scores.client_id or peer
            with self._changed:
                answered = self._take(client_id, peer, scores)
        else:
            raise Refused(
                f"this server runs fitness mode (--federation fitness){self._masked}: it does "
                f"not take {message.subject.value!r} messages"
            )
        return self._answer(lambda: self._ready(client_id, answered), self._waiting, notify, every)

    @property
    def _masked(self) -> str:
        return " with masked scores (--secure-aggregation)" if self.secure else ""

    def _check_version(self, message: Message) -> None:
        """``Refused`` for a peer whose protocol cannot take part."""
        needed = MASKED_SCORES_VERSION if self.secure else FITNESS_MODE_VERSION
        version = message.data.get("protocol_version")
        if not isinstance(version, int) or version < needed:
            raise Refused(
                f"this server runs fitness mode (--federation fitness){self._masked}, where "
                f"clients score members and send {'masked ' if self.secure else ''}losses, "
                f"which needs protocol_version {needed} or later; this peer announced "
                f"{version!r} (a plain-pickle or older peer"
                + (
                    ", which would send its losses in the clear)"
                    if self.secure
                    else ", which can only train weights)"
                )
            )

    def leave(self, peer: str) -> None:
        """A connection ended: its client is no longer waited for."""
        with self._changed:
            for client_id, client in list(self._clients.items()):
                if client.peer == peer:
                    del self._clients[client_id]
                    job = self._job
                    if job is not None and not job.closed and client_id not in job.stage.answers:
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

    def _withdraw(self, client_id: str) -> None:
        """Call with ``_changed`` held: a client that asks afresh mid-scoring takes no more
        part in a masked scoring's roster (it would not mask the same scoring twice)."""
        job = self._job
        if job is not None and not job.closed and client_id in job.roster_names:
            if job.stage.name in (MASKED, SEEDS) and client_id not in job.stage.answers:
                job.withdrawn.add(client_id)
                self._changed.notify_all()

    def _open(
        self, client_id: str, peer: str, stage: str, what: str, fits: Callable[[_Job], bool]
    ) -> _Job | None:
        """Call with ``_changed`` held: the open job whose ``stage`` a client's answer
        ``fits``, or None (logged) if that is over: the client is then sent the round whole.
        An answer sent again (after a reconnect) replaces the first: it is the same."""
        client = self._join(client_id, peer)
        job = self._job
        if job is not None and not job.closed and job.stage.name == stage and fits(job):
            return job
        log.info("client %s sent %s, which is over: sending it the round whole", client_id, what)
        client.round = None
        return None

    def _take(self, client_id: str, peer: str, scores: Scores) -> tuple[int, int, int] | None:
        """Call with ``_changed`` held: count a client's losses if they answer the open job;
        the scoring whose fitness it then awaits (``_take_*`` too)."""
        # A client that reconnected resends its last request on the new connection: its GA
        # is still in step, so its losses count.
        key = scores.round, scores.generation, scores.attempt
        what = "the scores of round=%d generation=%d attempt=%d" % key
        job = self._open(client_id, peer, SCORES, what, lambda job: job.key == key)
        if job is None:
            return None
        if not self._same_members(client_id, job, scores.digest):
            return None
        if len(scores.losses) != len(job.members):
            raise SchemaError(
                f"losses has {len(scores.losses)} values for {len(job.members)} members"
            )
        self._answered(client_id, peer, job, (scores.losses, scores.num_samples))
        return job.key

    def _take_key(self, client_id: str, peer: str, key: MaskKey) -> tuple[int, int, int] | None:
        """Call with ``_changed`` held: a client's mask key for the roster being made."""
        what = f"a key for roster {key.epoch}"
        job = self._open(client_id, peer, KEYS, what, lambda job: key.epoch == self._epoch)
        if job is not None:
            if key.key in {k for cid, k in job.stage.answers.items() if cid != client_id}:
                raise SchemaError("the mask key is another client's")
            self._answered(client_id, peer, job, key.key)
        return self._clients[client_id].answered

    def _take_masked(
        self, client_id: str, peer: str, masked: MaskedScores
    ) -> tuple[int, int, int] | None:
        """Call with ``_changed`` held: a roster client's masked losses of the open job."""
        job = self._open(
            client_id, peer, MASKED, "masked scores", lambda job: masked.scoring == job.scoring
        )
        if job is not None and self._same_members(client_id, job, masked.digest):
            if masked.vector.shape != (len(job.members) + 1,):
                raise SchemaError(
                    f"vector has {len(masked.vector)} values for {len(job.members)} members "
                    "and a count"
                )
            self._answered(client_id, peer, job, masked.vector)
        return self._clients[client_id].answered

    def _take_seed(
        self, client_id: str, peer: str, reveal: ScoresReveal
    ) -> tuple[int, int, int] | None:
        """Call with ``_changed`` held: a roster client's self-mask seed of the open job."""
        job = self._open(
            client_id, peer, SEEDS, "a self-mask seed", lambda job: reveal.scoring == job.scoring
        )
        if job is None:
            return None
        self._answered(client_id, peer, job, reveal.self_seed)
        return job.key

    def _same_members(self, client_id: str, job: _Job, scored: str) -> bool:
        """Call with ``_changed`` held: whether a client scored ``job``'s members; if not
        (logged), it is sent the round whole, or from the second time the members."""
        if scored == job.digest:
            return True
        client = self._clients[client_id]
        client.explicit, client.mismatched = client.mismatched, True
        log.warning(
            "client %s scored other members than the server's in round=%d generation=%d: "
            "sending it %s",
            client_id,
            job.round,
            job.generation,
            "the members themselves from now on" if client.explicit else "the round whole",
        )
        client.round = None
        job.withdrawn.add(client_id)  # masked: its vector is missing from this roster's sum
        self._changed.notify_all()
        return False

    def _answered(self, client_id: str, peer: str, job: _Job, answer: Any) -> None:
        """Call with ``_changed`` held: count a client's answer to ``job``'s stage."""
        client = self._clients[client_id]
        if job.stage.name in (SCORES, MASKED) and client.scored_round != job.round:
            client.scored_round = job.round  # its first scores this round: say who it is
            self._on_event(
                Event(
                    EventKind.SCORED,
                    peer=peer,
                    round=job.round,
                    samples=answer[1] if job.stage.name == SCORES else None,
                    detail=client_id,
                )
            )
        if job.stage.name in (SCORES, MASKED):
            client.round = job.round
        if job.stage.first is None:
            job.stage.first = time.monotonic()
        job.stage.answers[client_id] = answer
        if job.stage.name in (SCORES, SEEDS):  # its scores count: it awaits their fitness
            client.answered = job.key
        self._changed.notify_all()

    def _ready(self, client_id: str, answered: tuple[int, int, int] | None) -> ServerReply | None:
        """Call with ``_changed`` held: what to send the client now (``_ask``), or None to
        wait; ``done`` once training ended. ``answered``: the scoring whose fitness the
        client awaits."""
        if self.global_model.finished.is_set():
            return self.global_model.done()
        if self._stopping:  # shut down, or broken: not done, so the client may retry
            raise ConnectionLost("the server stopped running fitness mode")
        return self._ask(client_id, self._clients.get(client_id) or _Client(""), answered)

    def _waiting(self) -> Waiting:
        """Call with ``_changed`` held: what a waiting client is told it waits for."""
        job = self._job
        if job is None or job.closed:
            return Waiting(self.global_model.round + 1, 0, 0.0, "the next generation")
        answered = set(job.stage.answers)
        if job.stage.name in (MASKED, SEEDS):
            missing = len(job.roster_names - answered)
        else:
            missing = max(len(self._here(job) - answered), self.min_clients - len(answered))
        closes_in = 0.0
        if job.stage.first is not None:  # a stage closes --round-timeout after its first answer
            closes_in = max(0.0, job.stage.first + self.round_timeout - time.monotonic())
        return Waiting(
            job.round, missing, closes_in, f"generation {job.generation}, {job.stage.name}"
        )

    def _ask(
        self, client_id: str, client: _Client, answered: tuple[int, int, int] | None
    ) -> ServerReply | None:
        """Call with ``_changed`` held: what the open job asks of this client now, if
        anything: in the clear, to score it (unless it just did); masked, its key for a new
        roster, its masked scores, or its self-mask seed once every roster client's are in."""
        job = self._job
        if job is None or job.closed:
            return None
        if not self.secure:
            return None if job.key == answered else self._score_request(job, client, answered)
        if client_id in job.stage.answers or client_id in job.withdrawn:
            return None
        if job.stage.name == KEYS:
            return None if client.left_out else Rekey(self._epoch)
        if client_id not in job.roster_names:
            return None  # it joined after the roster was made: in the next one
        if job.stage.name == MASKED:
            return self._score_request(job, client, answered)
        return UnmaskScores(job.scoring) if job.stage.name == SEEDS else None

    def _score_request(
        self, job: _Job, client: _Client, answered: tuple[int, int, int] | None
    ) -> ScoreRequest:
        """Call with ``_changed`` held: ask ``client`` to score ``job``, with the fitness of
        the scoring it ``answered`` and, if it does not hold this round, the round whole."""
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
        roster = job.roster
        if roster is not None:  # its keys once per roster: from then on, its epoch names it
            if client.epoch == roster.epoch:
                roster = dataclasses.replace(roster, keys=())
            client.epoch = roster.epoch
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
            roster=roster,
        )

    def _fitness(self, answered: tuple[int, int, int]) -> np.ndarray | None:
        """Every member's fitness in the generation a client answered, if it is complete."""
        round_, generation, _ = answered
        history = self._histories.get(round_, [])
        return history[generation] if generation < len(history) else None


# How a server with masked scores takes each of a client's answers.
_MASKED_TAKES: dict[Subject, Callable[..., tuple[int, int, int] | None]] = {
    Subject.FITNESS_KEY: FitnessFederation._take_key,
    Subject.FITNESS_MASKED: FitnessFederation._take_masked,
    Subject.FITNESS_REVEAL: FitnessFederation._take_seed,
}
_MASKED_ANSWERS: dict[Subject, Any] = {
    Subject.FITNESS_KEY: MaskKey,
    Subject.FITNESS_MASKED: MaskedScores,
    Subject.FITNESS_REVEAL: ScoresReveal,
}


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
        self._masker: ScoreMasker | None = None  # masked scores: under the latest roster's keys

    def run(self, reply: ScoreRequest | Rekey) -> Done | None:
        """Score the server's generations from ``reply`` on; the server's ``done`` once
        training ended, or None if stopped."""
        if self.trainer.ga_overrides:
            log.warning(
                "the server runs fitness mode: its GA settings apply, not this client's %s",
                ", ".join(sorted(self.trainer.ga_overrides)),
            )
        answer = self._settle(reply)
        while isinstance(answer, ScoreRequest) and not self._should_stop():
            if answer.start is None:  # out of step with the server: ask for the round whole
                answer = self._send(Echo(self.client_id).to_message())
            else:
                answer = self._round(answer, answer.start)
        if isinstance(answer, ModelRequest):
            raise SchemaError("the server switched from fitness mode to weights mid-run")
        return answer if isinstance(answer, Done) else None

    def _send(self, message: Message, masked: Scoring | None = None) -> ServerReply:
        """Send ``message`` (``masked``: this client's masked scores of that scoring) and
        return the server's reply, once it is not a step of masking: a new roster's key, or
        (after masked scores) the self-mask seed, which this client gives."""
        return self._settle(self._exchange(message), masked)

    def _settle(self, reply: ServerReply, masked: Scoring | None = None) -> ServerReply:
        while isinstance(reply, (Rekey, UnmaskScores)):
            if isinstance(reply, Rekey):
                self._masker = ScoreMasker(reply.epoch, self.client_id)
                answer: Message = MaskKey(
                    reply.epoch, self._masker.public_key, self.client_id
                ).to_message()
            else:
                if masked is None or self._masker is None:
                    raise SchemaError("the server asked for a self-mask seed out of turn")
                seed, masked = self._masker.reveal(reply.scoring), None
                answer = ScoresReveal(reply.scoring, seed, self.client_id).to_message()
            reply = self._exchange(answer)
        return reply

    def _send_scores(
        self, request: ScoreRequest, losses: np.ndarray, num_samples: int, scored: str
    ) -> ServerReply:
        """This client's ``losses`` of the members named ``scored``, in the clear or masked
        as ``request`` asks; the server's reply. A masking this client refuses (logged)
        takes it out of that scoring: it asks afresh."""
        scoring, roster = request.scoring, request.roster
        if scoring is None or roster is None:
            scores = Scores(
                losses,
                num_samples,
                scored,
                request.round,
                request.generation,
                request.attempt,
                self.client_id,
            )
            return self._send(scores.to_message())
        try:
            if self._masker is None:
                raise SecAggRefused(
                    f"Client {self.client_id} has no key for roster {roster.epoch}."
                )
            self._masker.join(roster.epoch, roster.keys, roster.loss_range)
            vector = self._masker.mask(scoring, losses, num_samples)
            return self._send(
                MaskedScores(scoring, scored, vector, self.client_id).to_message(), scoring
            )
        except SecAggRefused as exc:
            log.warning("%s", exc)
            self._masker = None
            return self._send(Echo(self.client_id).to_message())

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
                detail=FITNESS if reply.roster is None else SCORES_MASKED,
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
                answer = self._send_scores(pending, losses, num_samples, digest(members))
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
                detail=FITNESS if reply.roster is None else SCORES_MASKED,
            )
        )
        log.info("round %d: scored %d generations", reply.round, ga.generations_completed)
        return ended if ended is not None else dataclasses.replace(pending, start=None)
