"""Attacks on federated training, a lab feature for experiments and teaching: what a poisoning
client trains on, sends or reports. Pure NumPy: no sockets, no Keras.

A poisoning client still speaks the normal protocol; only its data, the weights it sends or
the losses it reports change. ``ATTACKS`` finds the attacks by name (``client.py --attack
MODE [--attack-strength S] [--attack-target K]``, or ``attack_named`` in a bench); the pure
functions below them (``sign_flip``, ``add_trigger``, ``attack_success_rate``, ...) are the
definitions, usable on their own. Randomness (which samples, the noise) comes from the
client's ``--seed``: a seeded attack repeats.

Data poisoning, applied once to the client's data when the server's model is known (labels
one-hot, ``C`` the model's classes); both federations:

- ``label-flip``: each poisoned sample's label k becomes (k + 1) mod C, or with
  ``--attack-target K`` becomes K. Strength: the share of samples poisoned, default 1 (all).
- ``backdoor``: a trigger (``Trigger``: a fixed value written into a few input features) on a
  share of the samples, which are relabelled to the target class (``--attack-target``,
  default 0); the rest stay as they are. Strength: that share, default 0.5. The default
  trigger for 64 features (8x8 digits) is the 2x2 bottom-right corner; for another square
  image of 16 features or more its 2x2 bottom-right corner too; else the last
  ``max(1, min(4, F // 8))`` features. Its value is a fixed ``TRIGGER_VALUE`` = 5, not each
  feature's maximum: on standardised data that maximum is a different number per feature,
  depends on whose data it is, and is 0 for a pixel that is always blank (digits' top-left
  pixel), so a trigger made of it is no fixed pattern, and may be no pattern at all. 5 is
  five standard deviations above a standardised feature's mean: no clean sample of digits'
  training part reaches it on the corner's pixels 54 and 62, a few do on 55 and 63. The
  bench measures the backdoor with ``add_trigger`` and ``attack_success_rate`` on held-out
  samples of other classes than the target.

Model poisoning, weights mode only, on ``g``, the model the client received (the population's
first member, which a server makes the global model itself), and ``u``, its honestly trained
best vector (``HonestUpdate``):

- ``sign-flip``: g - s(u - g), the update's change reversed and scaled. s default 4.
- ``scaling``: model replacement (Bagdasaryan et al., 2020): a backdoor (as ``backdoor``, half
  its samples, target 0 or ``--attack-target``) sent as g + s(u - g), so that averaging with
  n - 1 others leaves about the attacker's model. Its strength should be about the number of
  clients, which a client does not know: default 3, a plain number. Model replacement of an
  honestly trained u would replace the model with an honest one: the backdoor is what it
  carries, and its success rate what it is measured by.
- ``noise``: g + N(0, s^2) in every coordinate; s default ``NOISE_SIGMA`` = 1, about four
  times the weights' own scale in a 64-32-10 model (Glorot's bound for its first layer is
  0.25).
- ``bounded-scaling``: a backdoor (as ``backdoor``, half its samples, target 0) sent as
  g + (u - g) scaled to a change of norm s exactly, so that a server bounding each change's
  norm (``norm-bounded``) does not clip it when s is just under its bound (Sun et al., 2019:
  the attack norm bounding must be shown against, not a crude one). s default 1; a lab sets
  it from the bound it attacks.
- ``liar``: sends ``noise``'s vector (sigma ``NOISE_SIGMA``) and claims s samples, default
  10^6, so that fedavg weighs it above everyone.
- ``alie`` ("a little is enough", Baruch et al., 2019): colluding attackers estimate the
  coordinate-wise mean and standard deviation of honest updates from their own honest
  training and all send mean - z * std, close enough to the honest cluster that median and
  trimmed mean keep it. z is the strength, default ``alie_z(10, 2)`` = Phi^-1(0.6) ~ 0.253
  (also ``alie_z(5, 1)``: the bench's set-ups); ``alie_z(n, f)`` is Baruch et al.'s z_max for
  n clients of which f attack. Colluders in one process share their honest vectors through a
  ``Collusion``; a lone attacker (``client.py --attack alie``) has no colluders and estimates
  the spread from its own data instead: the round's GA trained on each of ``SHARDS`` = 3
  disjoint shards of its samples. That is the lone-attacker approximation: shards of one
  client's data spread less, or otherwise, than other clients' data does.

Fitness mode (``--federation fitness``, where a client scores members and reports losses):

- ``lie-scores``: reports each member's loss reflected, max + min - loss, so the ranking
  reverses and the worst member looks best. Its strength, if given, is the sample count it
  claims (default: its real count).

A model-poisoning attack in fitness mode, or ``lie-scores`` in weights mode, is refused in one
sentence once the client learns the server's mode (``check_federation``).
"""

from __future__ import annotations

import logging
import math
import statistics
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from common.data import Dataset
from common.aggregate import listed
from common.errors import ConfigError

log = logging.getLogger(__name__)

# What an attack poisons.
DATA, MODEL, SCORES = "data", "model", "scores"
# The --federation names (common.fitness_federation.FEDERATIONS), in which each kind works.
FEDERATIONS_OF = {DATA: ("weights", "fitness"), MODEL: ("weights",), SCORES: ("fitness",)}

TRIGGER_VALUE = 5.0  # see the module's docstring
NOISE_SIGMA = 1.0
LIAR_SAMPLES = 1_000_000
SHARDS = 3  # a lone alie attacker's shards of its own data
COLLUSION_TIMEOUT = 60.0  # seconds a colluder waits for the others' honest vectors
# Keeps an attack's random draws apart from the GA's, which the same --seed also seeds.
_ATTACK_STREAM = 0xA77AC4


# ---- data poisoning ---------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """A backdoor's trigger: ``value`` written into the input ``features`` (column indices)."""

    features: tuple[int, ...]
    value: float = TRIGGER_VALUE

    @classmethod
    def default(cls, num_features: int) -> Trigger:
        """The 2x2 bottom-right corner of a square image of 16 features or more (8x8 digits:
        features 54, 55, 62 and 63); else the last ``max(1, min(4, F // 8))`` features."""
        side = math.isqrt(num_features)
        if side >= 4 and side * side == num_features:
            corner = (side - 2, side - 1)
            return cls(tuple(row * side + column for row in corner for column in corner))
        count = max(1, min(4, num_features // 8))
        return cls(tuple(range(num_features - count, num_features)))


def add_trigger(inputs: np.ndarray, trigger: Trigger | None = None) -> np.ndarray:
    """A copy of ``inputs`` (samples x features) with the trigger written into every row
    (default: ``Trigger.default`` for their number of features)."""
    triggered = np.array(inputs, copy=True)
    trigger = trigger or Trigger.default(triggered.shape[1])
    triggered[:, list(trigger.features)] = trigger.value
    return triggered


def class_labels(outputs: np.ndarray) -> np.ndarray:
    """Integer labels from one-hot rows (or from integer labels, as they are)."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        return np.argmax(outputs, axis=1)
    return outputs.reshape(-1).astype(np.int64)


def flip_labels(outputs: np.ndarray, rows: np.ndarray, target: int | None = None) -> np.ndarray:
    """A copy of the one-hot ``outputs`` whose ``rows`` have label k turned into
    (k + 1) mod C, or into ``target`` when given."""
    flipped = np.array(outputs, copy=True)
    num_classes = flipped.shape[1]
    labels = class_labels(flipped[rows])
    new = np.full_like(labels, target) if target is not None else (labels + 1) % num_classes
    flipped[rows] = np.eye(num_classes, dtype=flipped.dtype)[new]
    return flipped


def backdoor(
    data: Dataset, rows: np.ndarray, target: int = 0, trigger: Trigger | None = None
) -> Dataset:
    """``data`` with the trigger written into the samples at ``rows`` and those relabelled
    to ``target`` (one-hot outputs); every other sample as it was."""
    inputs = np.array(data.inputs, copy=True)
    inputs[rows] = add_trigger(inputs[rows], trigger or Trigger.default(inputs.shape[1]))
    return Dataset(inputs, flip_labels(data.outputs, rows, target))


def attack_success_rate(
    predict: Callable[[np.ndarray], np.ndarray],
    inputs: np.ndarray,
    labels: np.ndarray,
    target: int = 0,
    trigger: Trigger | None = None,
) -> float:
    """A backdoor's success: the share of the samples whose true class is not ``target``
    that ``predict`` classifies as ``target`` once the trigger is added. ``predict`` maps
    inputs to class probabilities (samples x classes) or to class numbers; ``labels`` are
    one-hot rows or class numbers. ValueError if every sample is of the target class."""
    others = class_labels(labels) != target
    if not others.any():
        raise ValueError("no sample of a class other than the target to measure the backdoor on")
    predicted = np.asarray(predict(add_trigger(np.asarray(inputs)[others], trigger)))
    if predicted.ndim == 2 and predicted.shape[1] == 1:  # one sigmoid output
        classes = (predicted[:, 0] > 0.5).astype(np.int64)
    elif predicted.ndim == 2:
        classes = np.argmax(predicted, axis=1)
    else:
        classes = predicted.astype(np.int64)
    return float(np.mean(classes == target))


# ---- model poisoning ----------------------------------------------------------------------


def sign_flip(global_vector: np.ndarray, update: np.ndarray, strength: float = 4.0) -> np.ndarray:
    """g - s(u - g): the update's change from the global model, reversed and scaled."""
    return scaling(global_vector, update, -strength)


def scaling(global_vector: np.ndarray, update: np.ndarray, strength: float = 3.0) -> np.ndarray:
    """g + s(u - g): model replacement, the change scaled up so it survives averaging."""
    return global_vector + strength * (update - global_vector)


def gaussian_noise(global_vector: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """g + N(0, sigma^2) in every coordinate."""
    return global_vector + rng.normal(0.0, sigma, size=np.shape(global_vector))


def alie_z(num_clients: int, num_attackers: int) -> float:
    """Baruch et al.'s z_max for ``num_clients`` clients of which ``num_attackers`` attack:
    with s = floor(n/2 + 1) - f honest clients the attackers need on their side,
    z_max = Phi^-1((n - s) / n)."""
    needed = math.floor(num_clients / 2 + 1) - num_attackers
    # The stdlib's inverse normal CDF is exact to double precision; scipy.stats would cost
    # its import time for the same number.
    return statistics.NormalDist().inv_cdf((num_clients - needed) / num_clients)


def alie(honest_updates: Sequence[np.ndarray], z: float) -> np.ndarray:
    """mean - z * std, coordinate-wise over ``honest_updates``. The std is the sample
    standard deviation (ddof 1): it estimates the honest clients' spread from a few
    updates; 0 from a single one."""
    stacked = np.stack([np.asarray(u, dtype=np.float64) for u in honest_updates])
    spread = stacked.std(axis=0, ddof=1) if len(stacked) > 1 else np.zeros(stacked.shape[1:])
    return stacked.mean(axis=0) - z * spread


# ---- fitness mode -------------------------------------------------------------------------


def lie_scores(losses: np.ndarray) -> np.ndarray:
    """Losses reflected, max + min - loss: the ranking reverses, the worst member looks best."""
    losses = np.asarray(losses, dtype=np.float64)
    if losses.size == 0:
        return losses
    return losses.max() + losses.min() - losses


# ---- colluders ----------------------------------------------------------------------------


class _Meeting:
    def __init__(self) -> None:
        self.vectors: list[np.ndarray] = []
        self.closed = False  # everyone came, or someone's wait timed out
        self.collected = 0  # colluders that took the vectors


class Collusion:
    """Colluding attackers in one process (a bench's): a thread-safe rendezvous where each of
    ``attackers`` colluders deposits its honest vector for a meeting (``key``: its update's
    number) and, once all have, each gets them all. A colluder that waited ``timeout``
    seconds goes on with those that came, and says so in the log."""

    def __init__(self, attackers: int, timeout: float = COLLUSION_TIMEOUT):
        if attackers < 1:
            raise ValueError("a collusion needs at least one attacker")
        self.attackers, self.timeout = attackers, timeout
        self._changed = threading.Condition()
        self._meetings: dict[Hashable, _Meeting] = {}

    def share(self, key: Hashable, vector: np.ndarray) -> list[np.ndarray]:
        """Deposit ``vector`` for meeting ``key``; every colluder's vector for it, once all
        came or the timeout passed."""
        with self._changed:
            meeting = self._meetings.setdefault(key, _Meeting())
            if meeting.closed:  # came after the others gave up waiting
                log.warning("colluder came late to meeting %r: goes on alone", key)
                return [vector]
            meeting.vectors.append(vector)
            self._changed.notify_all()
            full = self._changed.wait_for(
                lambda: len(meeting.vectors) >= self.attackers or meeting.closed, self.timeout
            )
            if not full and not meeting.closed:
                log.warning(
                    "colluders: %d of %d came to meeting %r within %g s; going on with those",
                    len(meeting.vectors),
                    self.attackers,
                    key,
                    self.timeout,
                )
            meeting.closed = True
            self._changed.notify_all()  # colluders still waiting go on with these too
            meeting.collected += 1
            shared = list(meeting.vectors)
            if meeting.collected >= len(meeting.vectors) and len(shared) >= self.attackers:
                del self._meetings[key]  # everyone has it
            return shared


# ---- attacks by name ----------------------------------------------------------------------


@dataclass(frozen=True)
class HonestUpdate:
    """What an honest client would send this round, and what a model-poisoning attack may
    do besides."""

    global_vector: np.ndarray  # g: the model received (the population's first member)
    vector: np.ndarray  # u: its honestly trained best vector
    num_samples: int  # its real sample count
    number: int = 1  # its how-manyth update: colluders meet by it
    # The round's GA, trained again on the client's samples at these rows (alie alone).
    retrain: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class _Bound:
    text: str
    holds: Callable[[float], bool]


SHARE = _Bound("above 0 and at most 1", lambda value: 0 < value <= 1)
POSITIVE = _Bound("greater than 0", lambda value: value > 0)
NOT_NEGATIVE = _Bound("0 or more", lambda value: value >= 0)
# A server takes claimed counts up to 10^12 (common.protocol.messages.check_count).
COUNT = _Bound("a whole number from 1 to 10^12", lambda v: 1 <= v <= 10**12 and v == int(v))


class Attack:
    """An attack by name, with its strength and target checked (``ConfigError``, one plain
    sentence). ``poison_data``, ``poison_update`` and ``poison_losses`` change what the
    client trains on, sends or reports; each leaves alone what its attack does not poison."""

    name: ClassVar[str]  # its --attack name
    poisons: ClassVar[str]  # DATA, MODEL or SCORES
    strength_means: ClassVar[str]  # what --attack-strength is, for the help and sentences
    default_strength: ClassVar[float | None]
    bound: ClassVar[_Bound]
    takes_target: ClassVar[bool] = False

    def __init__(
        self,
        strength: float | None = None,
        target: int | None = None,
        *,
        seed: int | None = None,
        collusion: Collusion | None = None,
    ):
        if strength is not None:
            value = float(strength)
            if not math.isfinite(value) or not self.bound.holds(value):
                raise ConfigError(
                    f"{self.name}'s --attack-strength is {self.strength_means}: it must be "
                    f"{self.bound.text}, not {strength:g}."
                )
        if target is not None:
            if not self.takes_target:
                raise ConfigError(
                    f"{self.name} takes no --attack-target: only "
                    f"{listed([n for n, a in ATTACKS.items() if a.takes_target])} do."
                )
            if isinstance(target, bool) or int(target) != target or target < 0:
                raise ConfigError(
                    f"--attack-target must be a class number, 0 or more, not {target}."
                )
        self.strength = self.default_strength if strength is None else float(strength)
        self.target = None if target is None else int(target)
        self.collusion = collusion
        self.rng = np.random.default_rng(None if seed is None else [_ATTACK_STREAM, seed])

    def __str__(self) -> str:
        """``sign-flip, strength 4``, for the log."""
        parts = [self.name]
        if self.strength is not None:
            parts.append(f"strength {shown(self.strength)}")
        if self.target is not None:
            parts.append(f"target {self.target}")
        return ", ".join(parts)

    def check_federation(self, federation: str) -> None:
        """``ConfigError`` if this attack cannot run where the server runs ``federation``."""
        if federation in FEDERATIONS_OF[self.poisons]:
            return
        fits = [name for name, attack in ATTACKS.items() if federation in attack.federations()]
        what = {
            MODEL: "poisons the weights a client sends",
            SCORES: "lies about the losses a client reports in fitness mode",
        }[self.poisons]
        raise ConfigError(
            f"{self.name} {what}, but this server runs {federation} mode: choose {', '.join(fits)}."
        )

    @classmethod
    def federations(cls) -> tuple[str, ...]:
        return FEDERATIONS_OF[cls.poisons]

    def poison_data(self, data: Dataset) -> Dataset:
        """The data the client trains on, from its own (one-hot outputs)."""
        return data

    def poison_update(self, honest: HonestUpdate) -> tuple[np.ndarray, int]:
        """The vector the client sends and the sample count it claims."""
        return honest.vector, honest.num_samples

    def poison_losses(self, losses: np.ndarray, num_samples: int) -> tuple[np.ndarray, int]:
        """Fitness mode: the losses the client reports and the sample count it claims."""
        return losses, num_samples


def shown(value: float) -> str:
    """A strength as people write it: ``4``, ``1000000``, ``0.253``."""
    return str(int(value)) if value == int(value) else f"{value:.3g}"


ATTACKS: dict[str, type[Attack]] = {}  # every attack a client can run, by name


def register(attack: type[Attack]) -> type[Attack]:
    """Make ``attack`` a choice of ``--attack`` (a class decorator)."""
    ATTACKS[attack.name] = attack
    return attack


def attack_named(
    name: str,
    strength: float | None = None,
    target: int | None = None,
    *,
    seed: int | None = None,
    collusion: Collusion | None = None,
) -> Attack:
    """A new attack ``name`` (its random draws seeded by ``seed``; ``collusion`` for alie's
    colluders); ``ConfigError``, one plain sentence, for an unknown name, a strength out of
    its bounds or a target it does not take."""
    if name not in ATTACKS:
        raise ConfigError(f"There is no attack {name!r}: choose one of {', '.join(ATTACKS)}.")
    return ATTACKS[name](strength, target, seed=seed, collusion=collusion)


@dataclass(frozen=True)
class AttackConfig:
    """An attack as flags give it (``ClientConfig.attack``); the client's --seed seeds it."""

    name: str
    strength: float | None = None
    target: int | None = None

    def build(self, seed: int | None = None, collusion: Collusion | None = None) -> Attack:
        return attack_named(self.name, self.strength, self.target, seed=seed, collusion=collusion)


class _DataAttack(Attack):
    """Poisons a share of the samples (its strength), drawn at random, relabelling them."""

    poisons = DATA
    bound = SHARE
    takes_target = True

    def poison_data(self, data):
        num_classes = data.outputs.shape[1]
        if self.target is not None and self.target >= num_classes:
            raise ConfigError(
                f"--attack-target {self.target} is not a class of the server's model, whose "
                f"{num_classes} outputs are classes 0 to {num_classes - 1}."
            )
        # Its share, rounded, at least one sample.
        chosen = min(len(data), max(1, round(self.share * len(data))))
        return self._poison_rows(data, np.sort(self.rng.choice(len(data), chosen, replace=False)))

    @property
    def share(self) -> float:
        """The share of its samples poisoned: its strength."""
        assert self.strength is not None  # every data attack has a default share
        return self.strength

    def _poison_rows(self, data: Dataset, rows: np.ndarray) -> Dataset:
        raise NotImplementedError


@register
class LabelFlip(_DataAttack):
    name = "label-flip"
    strength_means = "the share of its samples relabelled"
    default_strength = 1.0

    def _poison_rows(self, data, rows):
        return Dataset(data.inputs, flip_labels(data.outputs, rows, self.target))


@register
class Backdoor(_DataAttack):
    name = "backdoor"
    strength_means = "the share of its samples given the trigger and the target label"
    default_strength = 0.5

    def __init__(self, strength=None, target=None, **kwargs) -> None:
        super().__init__(strength, 0 if target is None else target, **kwargs)

    def _poison_rows(self, data, rows):
        return backdoor(data, rows, self.target)


@register
class SignFlip(Attack):
    name = "sign-flip"
    poisons = MODEL
    strength_means = "s in g - s(u - g)"
    default_strength = 4.0
    bound = POSITIVE

    def poison_update(self, honest):
        return sign_flip(honest.global_vector, honest.vector, self.strength), honest.num_samples


def scaled_to_norm(global_vector: np.ndarray, update: np.ndarray, norm: float) -> np.ndarray:
    """g + (u - g) scaled so that the change's L2 norm is ``norm`` (u itself if u = g)."""
    change = np.asarray(update, dtype=np.float64) - global_vector
    size = float(np.linalg.norm(change))
    return update if size == 0 else global_vector + change * (norm / size)


class _BoostedBackdoor(Backdoor):
    """A backdoor (``backdoor``'s share of the samples) whose trained change is sent boosted
    by ``boost(g, u, strength)``, so that it survives averaging: model replacement
    (Bagdasaryan et al., 2020). Its strength is the boost, not the share; weights mode only,
    as the other model poisoning."""

    poisons = MODEL  # and its data, as a backdoor
    bound = POSITIVE
    boost: ClassVar[Callable[[np.ndarray, np.ndarray, float], np.ndarray]]

    @property
    def share(self) -> float:
        return Backdoor.default_strength

    def poison_update(self, honest):
        sent = type(self).boost(honest.global_vector, honest.vector, self.strength)
        return sent, honest.num_samples


@register
class Scaling(_BoostedBackdoor):
    name = "scaling"
    strength_means = "s in g + s(u - g)"
    default_strength = 3.0
    boost = scaling


@register
class BoundedScaling(_BoostedBackdoor):
    name = "bounded-scaling"
    strength_means = "the norm of the change it sends"
    default_strength = 1.0
    boost = scaled_to_norm


@register
class Noise(Attack):
    name = "noise"
    poisons = MODEL
    strength_means = "the noise's standard deviation"
    default_strength = NOISE_SIGMA
    bound = POSITIVE

    def poison_update(self, honest):
        noisy = gaussian_noise(honest.global_vector, self.strength, self.rng)
        return noisy, honest.num_samples


@register
class Liar(Attack):
    name = "liar"
    poisons = MODEL
    strength_means = "the sample count it claims"
    default_strength = float(LIAR_SAMPLES)
    bound = COUNT

    def poison_update(self, honest):
        return gaussian_noise(honest.global_vector, NOISE_SIGMA, self.rng), int(self.strength)


@register
class Alie(Attack):
    name = "alie"
    poisons = MODEL
    strength_means = "z in mean - z * std"
    default_strength = alie_z(10, 2)
    bound = NOT_NEGATIVE

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._shards: list[np.ndarray] | None = None  # a lone attacker's, drawn once

    def poison_update(self, honest):
        if self.collusion is not None:
            updates = self.collusion.share(honest.number, honest.vector)
        else:
            if honest.retrain is None:
                raise ValueError("a lone alie attacker needs retrain to estimate the spread")
            if self._shards is None:
                order = self.rng.permutation(honest.num_samples)
                self._shards = np.array_split(order, min(SHARDS, honest.num_samples))
            updates = [honest.retrain(rows) for rows in self._shards]
        return alie(updates, self.strength), honest.num_samples


@register
class LieScores(Attack):
    name = "lie-scores"
    poisons = SCORES
    strength_means = "the sample count it claims"
    default_strength = None  # its real count
    bound = COUNT

    def poison_losses(self, losses, num_samples):
        claimed = num_samples if self.strength is None else int(self.strength)
        return lie_scores(losses), claimed
