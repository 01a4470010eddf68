"""Secure aggregation (``--secure-aggregation``): what it costs and what it hides, measured
beside plain fedavg rounds in one process.

    python -m bench.secagg [--models digits 784-128-10] [--clients 3 10 30] [--rounds 4]
        [--repeats 5] [--generations 5] [--e2e-rounds 100] [--seeds 1 2 3]

Server and clients run in this process over loopback (``ListenThread`` and ``RecvThread``s, as
``server.py`` and ``client.py`` do), every client training with the real GA. Models: digits
(64-32-10, 2,410 parameters, ``python -m common.datasets digits --clients N --dirichlet 0.5``,
split seed 1) and 784-128-10 (101,770 parameters, random pixel-like data, 50 samples a
client: only the bytes and the time matter there). For each model and number of clients, a
plain fedavg run and a secure run of ``--rounds`` rounds take turns (``--repeats`` turns at 10
clients, where the targets are, one elsewhere), same seeds, ``--min-clients N``, every stage
waiting for every client. Clients train ``--generations`` generations a round, not the 50 a
user's client runs: the GA's time is not what is measured, and 50 would hide the protocol's
cost. The round-time target is a round as users run it, though: a row at 10 digits clients
with the GA's default 50 generations (the end-to-end runs use the defaults too).

Per round after the first (the first also connects): the round's wall time, between the
server's consecutive commits, and where it goes: from the server's ``request`` events, the
last arrival of each stage's message (training and the model's transfer end at the last
``secagg_ready``; the key round at the last ``secagg_keys``, ...; the server's unmasking and
commit after the last ``secagg_reveal``). Bytes: each message a client sends, by subject, and
what the server sends per round (every handler's ``bytes_sent`` at each commit). The largest
difference between the model the secure round committed and ``common.aggregate.fedavg`` of the
updates the clients really trained (each client keeps its own, in this process): the
quantisation bound of ``common.secagg.ring.error_bound`` plus float32's rounding of the
committed model. Leakage: the correlation of each masked vector the server received (read as
signed integers) with its client's true update, against that of the same update quantised
without masks; and a loss-threshold membership-inference attack (Yeom et al., 2018) on the
end-to-end runs' saved models.

A kill run: 10 digits clients, one killed (its connection closed, as a killed process's is)
just before its masked input, after its shares went out: the survivors must rebuild its mask
key and the round complete with the other 9 updates. End to end: digits, 3 clients, the GA's
defaults, ``--e2e-rounds`` rounds with and without ``--secure-aggregation``, per split seed,
the saved model scored on the held-out quarter the server never sees. Fitness mode, digits, at
each number of clients from 3: ``FITNESS_ROUNDS`` rounds of the GA's default generations in
the clear and with masked scores, each generation's time and bytes each way.

How long: 9 minutes at the defaults on 2 cores beside another benchmark (docs/performance.md),
two thirds of it the six end-to-end runs (~1 minute each); a secure round of 30 clients takes
seconds, most of them the server's pure-Python Shamir combines.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import paired_ratio, print_header, print_table, run_to_the_end, seconds, target
from bench.real_data import make_split
from common.aggregate import fedavg
from common.app import build_global_model
from common.client import ClientConfig, RecvThread, connect
from common.data import Dataset, load_dataset
from common.events import Event, EventKind
from common.ga import GAConfig
from common.modelspec import dense_chain_json
from common.protocol.messages import Invitation, SecureMessage, Subject
from common.secagg import RingSpec, default_threshold, error_bound, shamir
from common.secagg.ring import quantise
from common.server import GlobalModel, ListenThread, ServerConfig
from common.split import save_dataset
from common.client import ClientOutcome

MODELS = ("digits", "784-128-10")
CLIENTS = (3, 10, 30)
SPLIT_SEED = 1
SEEDS = (1, 2, 3)
ROUNDS = 4
REPEATS = 5
GENERATIONS = 5
DEFAULT_GENERATIONS = GAConfig().num_generations
E2E_ROUNDS = 100
E2E_CLIENTS = 3
PIXEL_SAMPLES = 50  # a 784-128-10 client's, and the server's test data
ROUND_RATIO = 1.5
FITNESS_ROUNDS = 2  # fitness mode's rows: rounds of the GA's default generations
FITNESS_BYTES = 1024  # masked scores: what a client sends per generation
UPLOAD_RATIO = 2.1
ACCURACY_GAP = 0.01
CHANCE = math.erfc(4 / math.sqrt(2))  # P(|r| >= 4/sqrt(d)) for an unrelated vector
FLOAT32_ROUNDING = 2.0**-24  # of the committed model, which the server keeps as float32
RUN_TIMEOUT = 900.0  # seconds: far beyond any run seen here
# Where a round's time goes, each stage ending at the last arrival of its message.
PLAIN_STAGES = (("train and send", Subject.MODEL),)
SECURE_STAGES = (
    ("train, ready", Subject.SECAGG_READY),
    ("keys", Subject.SECAGG_KEYS),
    ("shares", Subject.SECAGG_SHARES),
    ("masked", Subject.SECAGG_MASKED),
    ("reveal", Subject.SECAGG_REVEAL),
)
COMMIT = "aggregate, commit"  # the last stage: after the last message, to the commit


@dataclass(frozen=True)
class Workload:
    model: str
    clients: int
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.model}, {self.clients} clients"


class MeasuredClient(RecvThread):
    """A real client that also keeps what the server must not see: each round's trained
    update and count and the masked vector it sent (by the global round it trained on), and
    the bytes of each message it sends. With ``kill_before``, it is killed just before it
    would send a message of that subject: its connection closes, nothing more is sent."""

    def __init__(self, *args, kill_before: Subject | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kill_before = kill_before
        self.trained: dict[int, tuple[np.ndarray, int]] = {}
        self.masked: dict[int, np.ndarray] = {}
        self.rings: dict[int, RingSpec] = {}
        self.sent: list[tuple[Subject, int]] = []
        self._round = 0

    def _train(self, request):
        best = super()._train(request)
        self._round = request.round or 0
        self.trained[self._round] = best
        return best

    def _exchange(self, message, resend=True):
        if message.subject is self.kill_before:
            self.stop()  # the send below fails: the server sees the connection end
        before = self.connection.bytes_sent
        reply = super()._exchange(message, resend)
        self.sent.append((message.subject, self.connection.bytes_sent - before))
        if message.subject is Subject.SECAGG_MASKED:
            self.masked[self._round] = SecureMessage.from_message(message).payload.vector
        if isinstance(reply, SecureMessage) and isinstance(reply.payload, Invitation):
            self.rings[self._round] = reply.payload.setup.ring
        return reply


@dataclass
class Commit:
    """One round the server committed, as its ``update`` event saw it."""

    at: float  # perf_counter
    round: int
    vector: np.ndarray
    server_bytes: int  # sent by the server so far, every connection


@dataclass(frozen=True)
class Measured:
    """What one run measured (rounds after the first: the first also connects)."""

    secure: bool
    params: int
    round_seconds: list[float]  # between the server's consecutive commits
    stages: dict[str, list[float]]  # each stage's seconds per round
    upload: dict[Subject, float]  # a client's mean bytes per round by subject (echo aside)
    server_bytes: float  # what the server sends a client per round
    # Secure runs, per round: the largest difference between the committed model and the
    # plain weighted mean of the same updates, its bound, and how many inputs were summed.
    differences: list[tuple[float, float, int]] = field(default_factory=list)
    # Secure runs, per masked vector: its correlation with its client's true update, and
    # that of the same update quantised without masks.
    correlations: list[tuple[float, float]] = field(default_factory=list)
    killed: bool = False  # a client was killed mid-round, and it stopped there


def measure(
    secure: bool,
    commits: list[Commit],
    requests: list[tuple[float, Subject]],
    clients: list[MeasuredClient],
    params: int,
) -> Measured:
    """A run's measurements from the server's commits and requests and what its clients kept."""
    pairs = list(zip(commits, commits[1:]))
    stages = SECURE_STAGES if secure else PLAIN_STAGES
    spent: dict[str, list[float]] = {name: [] for name in [*dict(stages), COMMIT]}
    for before, commit in pairs:
        start = before.at
        for name, subject in stages:
            last = max(t for t, s in requests if s is subject and before.at < t < commit.at)
            spent[name].append(last - start)
            start = last
        spent[COMMIT].append(commit.at - start)
    sizes: dict[Subject, list[int]] = {}
    for client in clients:
        for subject, size in client.sent:
            if subject is not Subject.ECHO:
                sizes.setdefault(subject, []).append(size)
    server = [b.server_bytes - a.server_bytes for a, b in pairs]
    return Measured(
        secure,
        params,
        [b.at - a.at for a, b in pairs],
        spent,
        {subject: statistics.mean(values) for subject, values in sizes.items()},
        statistics.mean(server) / len(clients) if server else math.nan,
        [difference(commit, clients) for commit in commits] if secure else [],
        [pair for client in clients for pair in correlations(client)],
        any(client.kill_before and client.outcome is ClientOutcome.STOPPED for client in clients),
    )


def difference(commit: Commit, clients: list[MeasuredClient]) -> tuple[float, float, int]:
    """The largest difference between the model a secure round committed and the plain
    weighted mean of the updates summed in it, its bound, and how many were summed."""
    summed = [client for client in clients if commit.round - 1 in client.masked]
    trained = [client.trained[commit.round - 1] for client in summed]
    expected = fedavg([vector for vector, _ in trained], [count for _, count in trained])
    ring = summed[0].rings[commit.round - 1]
    bound = error_bound(ring, len(summed), sum(count for _, count in trained))
    bound += float(np.abs(expected).max()) * FLOAT32_ROUNDING
    return float(np.abs(commit.vector - expected).max()), bound, len(summed)


def correlations(client: MeasuredClient) -> list[tuple[float, float]]:
    """Per masked vector ``client`` sent: its correlation with the true update, read as the
    server reads ring elements (signed), and that of the same update quantised unmasked."""
    found = []
    for round, vector in client.masked.items():
        update, count = client.trained[round]
        unmasked = quantise(client.rings[round], update, count)
        found.append((correlation(vector[:-1], update), correlation(unmasked[:-1], update)))
    return found


def correlation(ring_vector: np.ndarray, update: np.ndarray) -> float:
    signed = ring_vector.view(np.int32 if ring_vector.dtype == np.uint32 else np.int64)
    return float(np.corrcoef(signed.astype(np.float64), update.astype(np.float64))[0, 1])


# ---- the workloads -----------------------------------------------------------------------


def prepare(model: str, clients: int, folder: Path, seed: int = SPLIT_SEED) -> Workload:
    """The model, the server's test data and the clients' files of a workload, in ``folder``
    (digits: split by ``seed``, with a held-out part)."""
    folder.mkdir(parents=True, exist_ok=True)
    if model == "digits":
        make_split("digits", seed, "dirichlet", folder, clients)
    else:
        features, hidden, classes = (int(n) for n in model.split("-"))
        (folder / "model.json").write_text(
            dense_chain_json(features, [(hidden, "relu"), (classes, "softmax")])
        )
        rng = np.random.default_rng(seed)
        for name in ["server_test", *(f"client_{n + 1}" for n in range(clients))]:
            inputs = rng.random((PIXEL_SAMPLES, features), dtype=np.float32)
            labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, PIXEL_SAMPLES)]
            save_dataset(folder / f"{name}.npz", Dataset(inputs, labels), classes)
    return Workload(model, clients, folder)


def server_config(workload: Workload, rounds: int, **settings) -> ServerConfig:
    """A server of ``workload``'s model and test data for exactly ``rounds`` rounds, each
    waiting for every client (``--min-clients`` all, every stage or generation waiting for
    each client still connected); ``settings`` as ``ServerConfig.of`` takes them."""
    return ServerConfig.of(
        host="127.0.0.1",
        port=0,
        model=str(workload.folder / "model.json"),
        test_data=str(workload.folder / "server_test.npz"),
        target_accuracy=2.0,  # out of reach: every run has its rounds
        max_rounds=rounds,
        min_clients=workload.clients,
        round_timeout=RUN_TIMEOUT,
        **settings,
    )


def run(
    workload: Workload,
    secure: bool,
    rounds: int,
    seed: int,
    generations: int | None = None,
    kill_before: Subject | None = None,
) -> tuple[Measured, GlobalModel]:
    """One federated run in this process (``generations``: None for the GA's default), and
    its server's model; with ``kill_before``, the last client is killed before it sends a
    message of that subject."""
    config = server_config(
        workload,
        rounds,
        aggregation="fedavg",
        secure_aggregation=secure,
        num_generations=generations,
        seed=seed,
    )
    commits: list[Commit] = []
    requests: list[tuple[float, Subject]] = []
    servers: list[ListenThread] = []

    def on_commit(event: Event) -> None:
        if event.kind == EventKind.UPDATE:  # delivered before any client hears of the round
            sent = sum(handler.connection.bytes_sent for handler in servers[0].handlers)
            commits.append(
                Commit(time.perf_counter(), event.round, global_model.vector.copy(), sent)
            )

    def on_request(event: Event) -> None:
        if event.kind == EventKind.REQUEST:
            requests.append((time.perf_counter(), Subject(event.detail)))

    global_model = build_global_model(config, on_event=on_commit)
    with ListenThread(global_model, config, on_event=on_request) as server:
        servers.append(server)
        port = server.server_address[1]
        clients = []
        for index in range(workload.clients):
            client_config = ClientConfig(
                host="127.0.0.1", port=port, name=f"client{index + 1}", seed=seed * 100 + index
            )
            last = index == workload.clients - 1
            clients.append(
                MeasuredClient(
                    client_config.buffer_size,
                    client_config.recv_timeout,
                    sock=connect("127.0.0.1", port, timeout=10),
                    data=load_dataset(str(workload.folder / f"client_{index + 1}.npz")),
                    config=client_config,
                    kill_before=kill_before if last else None,
                )
            )
        run_to_the_end(clients, global_model.finished, RUN_TIMEOUT, workload.label)
    failed = [f"{c.config.name}: {c.error}" for c in clients if c.outcome is ClientOutcome.ERROR]
    if failed:
        raise RuntimeError(f"{workload.label}: {'; '.join(failed)}")
    params = global_model.num_params
    return measure(secure, commits, requests, clients, params), global_model


def shamir_seconds(clients: int) -> tuple[float, float]:
    """The median seconds of one split (to ``clients`` holders) and one combine (from t) of
    a 32-byte secret at the default threshold: a secure round's pure-Python part."""
    threshold = default_threshold(clients)
    secret = bytes(range(32))
    splits, combines = [], []
    for _ in range(5):
        start = time.perf_counter()
        shares = shamir.split(secret, threshold, clients)
        middle = time.perf_counter()
        shamir.combine(shares[:threshold])
        splits.append(middle - start)
        combines.append(time.perf_counter() - middle)
    return statistics.median(splits), statistics.median(combines)


# ---- end to end, and membership inference -----------------------------------------------


@dataclass(frozen=True)
class EndToEnd:
    """One digits run at the GA's defaults: its saved model on the held-out part."""

    seed: int
    secure: bool
    holdout: float  # accuracy
    membership: float  # the attack's AUC: every client's training samples against held-out
    membership_by_client: tuple[float, ...]  # each client's samples against held-out
    seconds: float
    measured: Measured


def end_to_end(workload: Workload, seed: int, secure: bool, rounds: int) -> EndToEnd:
    started = time.perf_counter()
    measured, global_model = run(workload, secure, rounds, seed)
    elapsed = time.perf_counter() - started
    forward, vector = global_model.forward, global_model.best.vector
    holdout = load_dataset(str(workload.folder / "holdout.npz"))
    parts = [
        load_dataset(str(workload.folder / f"client_{n + 1}.npz")) for n in range(workload.clients)
    ]
    members = Dataset(
        np.concatenate([p.inputs for p in parts]), np.concatenate([p.outputs for p in parts])
    )
    return EndToEnd(
        seed,
        secure,
        forward.accuracy(vector, holdout.inputs, holdout.outputs),
        membership_auc(forward, vector, members, holdout),
        tuple(membership_auc(forward, vector, part, holdout) for part in parts),
        elapsed,
        measured,
    )


@dataclass(frozen=True)
class FitnessCost:
    """A fitness-mode run of digits clients: per generation, in the clear or masked."""

    clients: int
    secure: bool
    seconds: float  # the run's wall time per generation
    sent: float  # bytes a client sends per generation (its whole run's, echo and keys too)
    received: float  # bytes the server sends a client per generation


def fitness_cost(workload: Workload, secure: bool, rounds: int) -> FitnessCost:
    """``rounds`` rounds of fitness mode at the GA's defaults, every client scoring every
    generation (``--min-clients`` all of them); its traffic and time per generation."""
    config = server_config(
        workload, rounds, federation="fitness", secure_aggregation=secure, seed=SPLIT_SEED
    )
    generations: list[Event] = []

    def on_event(event: Event) -> None:
        if event.kind == EventKind.GENERATION:
            generations.append(event)

    global_model = build_global_model(config, on_event=on_event)
    started = time.perf_counter()
    with ListenThread(global_model, config, on_event=on_event) as server:
        port = server.server_address[1]
        clients = [
            RecvThread(
                sock=connect("127.0.0.1", port, timeout=10),
                data=load_dataset(str(workload.folder / f"client_{index + 1}.npz")),
                config=ClientConfig(host="127.0.0.1", port=port, name=f"client{index + 1}"),
            )
            for index in range(workload.clients)
        ]
        run_to_the_end(clients, global_model.finished, RUN_TIMEOUT, f"fitness, {workload.label}")
        received = sum(handler.connection.bytes_sent for handler in server.handlers)
    elapsed = time.perf_counter() - started
    count = len(generations)
    return FitnessCost(
        workload.clients,
        secure,
        elapsed / count,
        statistics.mean(client.bytes_sent for client in clients) / count,
        received / workload.clients / count,
    )


def membership_auc(forward, vector: np.ndarray, members: Dataset, outsiders: Dataset) -> float:
    """Yeom et al.'s loss-threshold attack (2018): the AUC of telling ``members`` (trained on)
    from ``outsiders`` by the model's loss on each sample, a lower loss meaning a member.

    The outsiders are weighted to the members' class mix: a client's label-skewed samples
    against stratified held-out ones would otherwise measure how hard its classes are."""
    from sklearn.metrics import roc_auc_score

    losses = [sample_losses(forward, vector, data) for data in (members, outsiders)]
    labels = np.concatenate([np.ones(len(losses[0])), np.zeros(len(losses[1]))])
    classes = [data.outputs.argmax(axis=1) for data in (members, outsiders)]
    shares = [np.bincount(c, minlength=members.outputs.shape[1]) / len(c) for c in classes]
    matched = np.divide(shares[0], shares[1], out=np.zeros_like(shares[0]), where=shares[1] > 0)
    weights = np.concatenate([np.ones(len(losses[0])), matched[classes[1]]])
    return float(roc_auc_score(labels, -np.concatenate(losses), sample_weight=weights))


def sample_losses(forward, vector: np.ndarray, data: Dataset) -> np.ndarray:
    """The cross-entropy of each sample under the model ``vector``."""
    probabilities = forward(vector[None, :], data.inputs)[0]
    return -np.log(np.clip((probabilities * data.outputs).sum(axis=1), 1e-12, None))


# ---- what is run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """A row of the cost tables: plain and secure runs taking turns ``repeats`` times."""

    model: str
    clients: int
    generations: int | None  # a round's; None: the GA's default
    repeats: int

    @property
    def label(self) -> str:
        generations = self.generations or f"{DEFAULT_GENERATIONS} (default)"
        return f"{self.model}, {self.clients} clients, {generations} generations"


@dataclass
class Results:
    turns: dict[Setting, list[Measured]] = field(default_factory=dict)  # both modes, by turn
    killed: Measured | None = None
    killed_of: int = 0
    ends: list[EndToEnd] = field(default_factory=list)
    shamir: dict[int, tuple[float, float]] = field(default_factory=dict)  # by clients
    timed: Setting | None = None  # where the round-time target is measured
    uploaded: Setting | None = None  # where the upload target is
    fitness: list[FitnessCost] = field(default_factory=list)

    def of(self, setting: Setting, secure: bool) -> list[Measured]:
        return [m for m in self.turns[setting] if m.secure == secure]


def target_clients(clients: Sequence[int]) -> int:
    """The issue's targets are at 10 clients; a smaller bench holds its smallest to them."""
    return 10 if 10 in clients else min(clients)


def settings(args: argparse.Namespace) -> tuple[list[Setting], Setting | None, Setting | None]:
    """The cost rows, the row of the round-time target and that of the upload target."""
    at = target_clients(args.clients)
    rows = [
        Setting(model, clients, args.generations, args.repeats if clients == at else 1)
        for model in args.models
        for clients in args.clients
    ]
    timed = None
    if "digits" in args.models:  # a round as a user's client trains it
        timed = Setting("digits", at, None, args.repeats)
        rows.insert(rows.index(Setting("digits", at, args.generations, args.repeats)) + 1, timed)
    uploaded = next((r for r in rows if r.clients == at and r.model == MODELS[-1]), None)
    return rows, timed, uploaded


def collect(args: argparse.Namespace, folder: Path) -> Results:
    """Every run of the bench, each printed as it ends."""
    rows, timed, uploaded = settings(args)
    results = Results(timed=timed, uploaded=uploaded, killed_of=target_clients(args.clients))
    workloads: dict[tuple[str, int], Workload] = {}

    def workload(model: str, clients: int) -> Workload:
        if (model, clients) not in workloads:
            workloads[model, clients] = prepare(model, clients, folder / f"{model}-{clients}")
        return workloads[model, clients]

    for row in rows:
        for turn in range(row.repeats):
            # Each turn a plain and a secure run, first one then the other, so that load
            # drifting within a turn falls on both alike; the ratio is the turns' median.
            for secure in (False, True) if turn % 2 == 0 else (True, False):
                started = time.perf_counter()
                measured, _ = run(
                    workload(row.model, row.clients),
                    secure,
                    args.rounds,
                    SPLIT_SEED,
                    row.generations,
                )
                results.turns.setdefault(row, []).append(measured)
                print(
                    f"  {row.label}, {'secure' if secure else 'plain'}: median round "
                    f"{seconds(statistics.median(measured.round_seconds))}, run "
                    f"{time.perf_counter() - started:.1f} s",
                    flush=True,
                )
    if "digits" in args.models:
        results.killed, _ = run(
            workload("digits", results.killed_of),
            True,
            1,
            SPLIT_SEED,
            args.generations,
            kill_before=Subject.SECAGG_MASKED,
        )
        for seed in args.seeds:
            split = prepare("digits", E2E_CLIENTS, folder / f"e2e-{seed}", seed)
            for secure in (False, True):
                end = end_to_end(split, seed, secure, args.e2e_rounds)
                results.ends.append(end)
                print(
                    f"  end to end, seed {seed}, {'secure' if secure else 'plain'}: held-out "
                    f"{end.holdout:.3f}, membership AUC {end.membership:.3f}, "
                    f"{end.seconds:.1f} s",
                    flush=True,
                )
        for clients in args.clients:
            if clients >= 3:  # masked scores need a roster of 3
                for secure in (False, True):
                    cost = fitness_cost(workload("digits", clients), secure, FITNESS_ROUNDS)
                    results.fitness.append(cost)
                    print(
                        f"  fitness mode, digits, {clients} clients, "
                        f"{'masked' if secure else 'in the clear'}: a generation "
                        f"{seconds(cost.seconds)}, {nbytes(cost.sent)} sent",
                        flush=True,
                    )
    for clients in sorted({row.clients for row in rows}):
        results.shamir[clients] = shamir_seconds(clients)
    return results


# ---- tables and targets -------------------------------------------------------------------


def turn_medians(results: Results, row: Setting, secure: bool) -> list[float]:
    """Each turn's median round time."""
    return [statistics.median(m.round_seconds) for m in results.of(row, secure)]


def round_ratio(results: Results, row: Setting) -> float:
    """Secure over plain round time: the median of the turns' ratios."""
    return paired_ratio(turn_medians(results, row, True), turn_medians(results, row, False))


def stage_median(measured: list[Measured], stage: str) -> float:
    return statistics.median(s for m in measured for s in m.stages[stage])


def nbytes(value: float) -> str:
    return f"{value:,.0f}"


def secure_upload(measured: Measured) -> float:
    """A client's bytes per secure round: every message it sends in one."""
    return sum(measured.upload.values())


def time_tables(results: Results) -> None:
    print("round time: median over the rounds after the first, of every turn")
    rows = []
    for row in results.turns:
        plain, secure = (statistics.median(turn_medians(results, row, s)) for s in (False, True))
        rows.append(
            [
                row.label,
                row.repeats,
                seconds(plain),
                seconds(secure),
                f"{round_ratio(results, row):.2f}x",
                f"{secure - plain:+.3f} s",
            ]
        )
    print_table(["setting", "turns", "plain", "secure", "secure / plain", "secure adds"], rows)
    names = [name for name, _ in SECURE_STAGES] + [COMMIT]
    print(
        "where a round goes (median seconds): plain's training and upload and its aggregation;"
        " a secure round's stages, each to the last arrival of its message; and the Shamir "
        "work alone (each client's 2 splits, the server's n combines, timed apart)"
    )
    print_table(
        ["setting", "plain: train and send", COMMIT, *(f"secure: {n}" for n in names), "Shamir"],
        [
            [
                row.label,
                *(seconds(stage_median(results.of(row, False), n)) for n, _ in PLAIN_STAGES),
                seconds(stage_median(results.of(row, False), COMMIT)),
                *(seconds(stage_median(results.of(row, True), name)) for name in names),
                f"{seconds(2 * results.shamir[row.clients][0])} / "
                f"{seconds(row.clients * results.shamir[row.clients][1])}",
            ]
            for row in results.turns
        ],
    )


def byte_table(results: Results) -> None:
    subjects = [subject for _, subject in SECURE_STAGES]
    print(
        "bytes on the wire per round (32-bit ring): a client's upload, plain and secure by "
        "message, and what the server sends a client"
    )
    rows = []
    for row in results.turns:
        if row == results.timed:
            continue  # the same bytes as its row at fewer generations
        plain, secure = results.of(row, False)[0], results.of(row, True)[0]
        update = plain.upload[Subject.MODEL]
        rows.append(
            [
                row.label.split(", ", 2)[0] + f", {row.clients} clients",
                nbytes(update),
                *(nbytes(secure.upload[subject]) for subject in subjects),
                nbytes(secure_upload(secure)),
                f"{secure_upload(secure) / update:.3f}x",
                nbytes(plain.server_bytes),
                nbytes(secure.server_bytes),
            ]
        )
    print_table(
        [
            "setting",
            "plain update",
            *(subject.value for subject in subjects),
            "secure",
            "secure / plain",
            "server: plain",
            "server: secure",
        ],
        rows,
    )


def secure_runs(results: Results) -> list[Measured]:
    """The secure cost runs and the kill run (the end-to-end ones are in ``results.ends``)."""
    runs = [m for measured in results.turns.values() for m in measured if m.secure]
    return runs + ([results.killed] if results.killed else [])


def sum_table(results: Results) -> None:
    print(
        "the secure sum against the plain weighted mean of the same updates (each client's "
        "true update kept in this process), and the correlation of each masked vector the "
        "server received with its client's true update"
    )
    rows = []
    for row, measured in results.turns.items():
        runs = [m for m in measured if m.secure]
        differences = [d for m in runs for d in m.differences]
        worst = max(differences, key=lambda d: d[0] / d[1])
        pairs = [pair for m in runs for pair in m.correlations]
        rows.append(
            [
                row.label,
                len(differences),
                f"{worst[0]:.2e}",
                f"{worst[1]:.2e}",
                f"{max(abs(r) for r, _ in pairs):.4f}",
                f"{4 / math.sqrt(runs[0].params):.4f}",
                f"{min(r for _, r in pairs):.6f}",
            ]
        )
    print_table(
        [
            "setting",
            "rounds",
            "largest difference",
            "its bound",
            "masked |r|, largest",
            "4/sqrt(d)",
            "unmasked r, smallest",
        ],
        rows,
    )


def end_to_end_table(results: Results) -> None:
    print(
        f"end to end: digits, {E2E_CLIENTS} clients, the GA's defaults; the saved model on the "
        "held-out part, and a loss-threshold membership-inference attack on it (AUC: every "
        "client's training samples against the held-out ones; per client, the largest)"
    )
    rows = []
    for seed in dict.fromkeys(end.seed for end in results.ends):
        plain, secure = (e for e in results.ends if e.seed == seed)  # run in that order
        rows.append(
            [
                seed,
                f"{plain.holdout:.3f}",
                f"{secure.holdout:.3f}",
                f"{secure.holdout - plain.holdout:+.3f}",
                f"{plain.membership:.3f} ({max(plain.membership_by_client):.3f})",
                f"{secure.membership:.3f} ({max(secure.membership_by_client):.3f})",
            ]
        )
    print_table(
        ["seed", "plain", "secure", "difference", "AUC plain", "AUC secure"],
        rows,
    )


def fitness_table(results: Results) -> None:
    rows = []
    for cost in results.fitness:
        clear = next(c for c in results.fitness if c.clients == cost.clients and not c.secure)
        rows.append(
            [
                f"digits, {cost.clients} clients, {'masked' if cost.secure else 'in the clear'}",
                seconds(cost.seconds),
                f"{cost.seconds / clear.seconds:.2f}x",
                nbytes(cost.sent),
                nbytes(cost.received),
            ]
        )
    print_table(
        [
            f"fitness mode, {FITNESS_ROUNDS} rounds of {DEFAULT_GENERATIONS} generations",
            "per generation",
            "vs in the clear",
            "a client sends",
            "it receives (the rounds' populations too)",
        ],
        rows,
    )


def check_fitness(results: Results) -> bool:
    """Masked scores keep what a client sends under 1 KiB a generation, at every size (what
    it receives holds each round's population, whole, in both modes)."""
    masked = [cost for cost in results.fitness if cost.secure]
    if not masked:
        return True
    largest = max(masked, key=lambda cost: cost.sent)
    clear = next(c for c in results.fitness if c.clients == largest.clients and not c.secure)
    return target(
        f"fitness mode, masked scores, digits, {largest.clients} clients: bytes a client sends "
        "per generation (keys and echo included)",
        f"{nbytes(largest.sent)} ({nbytes(largest.sent - clear.sent)} more than in the clear; "
        f"it receives {nbytes(largest.received - clear.received)} more)",
        f"<= {nbytes(FITNESS_BYTES)}",
        largest.sent <= FITNESS_BYTES,
    )


def check_sum(results: Results) -> bool:
    ends = [end.measured for end in results.ends if end.secure]
    differences = [d for m in secure_runs(results) + ends for d in m.differences]
    difference, bound, summed = max(differences, key=lambda d: d[0] / d[1])
    return target(
        "secure sum = plain weighted mean of the same updates",
        f"largest difference {difference:.2e} against its bound {bound:.2e} ({summed} inputs) "
        f"over {len(differences)} secure rounds",
        "within the quantisation bound n x step x W / summed count + float32 rounding (32-bit "
        "ring, step = c / floor((2^31 - 1) / n), clipping c = 8, max weight W = 65,536)",
        all(d <= b for d, b, _ in differences),
    )


def check_upload(results: Results) -> bool:
    row = results.uploaded
    if row is None:
        return True
    plain, secure = results.of(row, False)[0], results.of(row, True)[0]
    update, sent = plain.upload[Subject.MODEL], secure_upload(secure)
    return target(
        f"a client's upload at {row.clients} clients on {row.model}",
        f"{nbytes(sent)} B a secure round (keys {nbytes(secure.upload[Subject.SECAGG_KEYS])}, "
        f"shares {nbytes(secure.upload[Subject.SECAGG_SHARES])}, masked vector "
        f"{nbytes(secure.upload[Subject.SECAGG_MASKED])}, ready and reveal) against "
        f"{nbytes(update)} B plain: {sent / update:.3f}x, 32-bit ring",
        f"at most {UPLOAD_RATIO}x",
        sent <= UPLOAD_RATIO * update,
    )


def check_round_time(results: Results) -> bool:
    row = results.timed
    if row is None:
        return True
    ratio = round_ratio(results, row)
    return target(
        f"round time at {row.clients} clients on digits, key agreement included",
        f"{ratio:.2f}x plain (median over {row.repeats} interleaved turns of each turn's "
        f"median round; clients train the GA's default {DEFAULT_GENERATIONS} generations a "
        "round)",
        f"at most {ROUND_RATIO}x",
        ratio <= ROUND_RATIO,
    )


def check_killed(results: Results) -> bool:
    killed = results.killed
    if killed is None:
        return True
    done = killed.killed and len(killed.differences) == 1
    difference, bound, summed = killed.differences[0] if done else (math.nan, math.nan, 0)
    return target(
        f"a round with 1 of {results.killed_of} clients killed mid-round (after its shares, "
        "before its masked input)",
        f"committed with {summed} inputs summed, largest difference {difference:.2e} from "
        f"their plain weighted mean (bound {bound:.2e})"
        if done
        else "no round committed",
        f"completes with the {results.killed_of - 1} others' sum",
        done and summed == results.killed_of - 1 and difference <= bound,
    )


def check_end_to_end(results: Results) -> bool:
    if not results.ends:
        return True
    plain = statistics.mean(e.holdout for e in results.ends if not e.secure)
    secure = statistics.mean(e.holdout for e in results.ends if e.secure)
    seeds = sorted({e.seed for e in results.ends})
    return target(
        "digits end to end with --secure-aggregation",
        f"held-out accuracy {secure:.3f} against plain fedavg's {plain:.3f} "
        f"({secure - plain:+.3f}; mean over split seeds {' '.join(map(str, seeds))}, same seeds)",
        f"within {ACCURACY_GAP * 100:.0f} point",
        abs(secure - plain) <= ACCURACY_GAP,
    )


def check_leakage(results: Results) -> bool:
    """Each masked vector's correlation with its client's update under 4/sqrt(d). A masked
    vector is uniform in the ring, so r is about normal with standard deviation 1/sqrt(d):
    by chance alone, one vector in ~16,000 (``CHANCE``) crosses the line."""
    met = True
    for params in sorted({m.params for m in secure_runs(results)}):
        pairs = [p for m in secure_runs(results) if m.params == params for p in m.correlations]
        largest, limit = max(abs(r) for r, _ in pairs), 4 / math.sqrt(params)
        met &= target(
            f"what a curious server sees, d = {params:,}",
            f"largest |r| {largest:.4f} between a masked vector and its client's true update, "
            f"over {len(pairs)} vectors (by chance {len(pairs) * CHANCE:.2f} would cross the "
            f"line; unmasked, the same updates quantised: r >= "
            f"{min(r for _, r in pairs):.6f}; plain mode sends the update itself, r = 1)",
            f"|r| < 4/sqrt(d) = {limit:.4f}",
            largest < limit,
        )
    return met


def print_membership(results: Results) -> None:
    for secure in (False, True):
        ends = [e for e in results.ends if e.secure == secure]
        if ends:
            print(
                f"MEASURED membership inference (loss threshold, Yeom et al. 2018) on the saved "
                f"{'secure' if secure else 'plain'} digits model: AUC "
                f"{statistics.mean(e.membership for e in ends):.3f} (mean over seeds; 0.5 is "
                f"chance), a client's own samples up to "
                f"{max(a for e in ends for a in e.membership_by_client):.3f}"
            )
    if results.ends:
        print(
            "Secure aggregation does not protect against that: it hides each update from the "
            "server, not what the final model, which every client receives, reveals of its "
            "training data.\n"
        )


def report(results: Results) -> bool:
    """The tables, then the targets; True when every target is met."""
    time_tables(results)
    byte_table(results)
    sum_table(results)
    if results.ends:
        end_to_end_table(results)
    if results.fitness:
        fitness_table(results)
    print_membership(results)
    checks = (
        check_fitness,
        check_sum,
        check_upload,
        check_round_time,
        check_killed,
        check_end_to_end,
        check_leakage,
    )
    return all([check(results) for check in checks])


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS))
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="per cost run")
    parser.add_argument(
        "--repeats", type=int, default=REPEATS, help="turns of each where the targets are"
    )
    parser.add_argument("--generations", type=int, default=GENERATIONS, help="per cost round")
    parser.add_argument("--e2e-rounds", type=int, default=E2E_ROUNDS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="end to end")
    return parser


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.rounds < 2:
        cli.error("--rounds must be at least 2: the first round also connects, and is not timed")
    # Clients log their training and the secure rounds their stages: the tables say it all.
    logging.getLogger("common").setLevel(logging.ERROR)
    print_header(
        f"bench.secagg: plain fedavg and secure rounds taking turns, {args.rounds} rounds a cost "
        f"run ({args.generations} generations a round), {args.e2e_rounds} rounds end to end"
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedga-secagg-") as tmp:
        results = collect(args, Path(tmp))
    print(f"took {(time.perf_counter() - started) / 60:.1f} minutes\n")
    return 0 if report(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
