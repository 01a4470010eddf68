"""A server's settings as dataclasses with the tutorial's defaults, in the groups
``socketserver`` would keep apart: where and how clients are served (``NetworkConfig``), the
wire's protection (``SecurityConfig``), what is trained and until when (``TrainingConfig``),
where results go (``OutputConfig``); ``ServerConfig`` holds the four and translates the flat
setting names flags, the window and Flower's run config use. No sockets, no model here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.aggregate import (
    AGGREGATIONS,
    SETTINGS,
    Aggregation,
    aggregation_named,
    flag_name,
    listed,
)
from common.auto import AUTO, Auto, given, known
from common.errors import ConfigError
from common.fitness_federation import FITNESS, FITNESS_SETTING, WEIGHTS
from common.ga import LEFT_TO_MODEL, REAL_DATA, GAConfig
from common.secagg.messages import check_threshold


@dataclass
class NetworkConfig:
    """Where and how clients are served."""

    host: str = "localhost"
    port: int = 10000
    buffer_size: int = 1024
    recv_timeout: float = 10.0  # the most seconds between a message's chunks
    idle_timeout: float = 300.0
    min_rate: float = 8.0  # KiB/s: a message slower than this on average is cut
    max_message_bytes: int | Auto = AUTO  # AUTO: derived from the model size
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


# What AUTO resolves to for the settings secure aggregation changes (plain, secure): a rule
# that needs only the round's sum, and rounds of at least 3.
BY_SECURITY: dict[str, tuple[Any, Any]] = {
    "aggregation": ("running-best", "fedavg"),
    "min_clients": (2, 3),
}
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
    # AUTO: BY_SECURITY's.
    aggregation: str | Auto = AUTO
    # The rule's settings (common.aggregate.SETTINGS), for the rules that take them; AUTO:
    # the rule's default (e.g. server_learning_rate: fedavgm's, fedadam's or fedyogi's).
    server_learning_rate: float | Auto = AUTO
    server_momentum: float | Auto = AUTO
    beta1: float | Auto = AUTO
    beta2: float | Auto = AUTO
    tau: float | Auto = AUTO
    byzantine: int | Auto = AUTO
    clip_norm: float | Auto = AUTO
    max_claimed_samples: float | Auto = AUTO
    # Secure aggregation (common.secure_rounds): the server learns only each round's sum.
    secure_aggregation: bool = False
    secagg_threshold: int | Auto = AUTO  # AUTO: ceil(2n/3) of each secure round's n clients
    # How many clients a step of training waits for, and how long it waits for the slower
    # ones. One name each serves every mode, because a run has one kind of step and each
    # setting means the same of it (the help of --min-clients and --round-timeout says it
    # per mode, docs/flags.md too):
    # - a round-based rule's round closes at min_clients updates, or round_timeout after its
    #   first (tutorial clients give up after 10 s of silence);
    # - a secure round invites its clients once min_clients trained (or round_timeout after
    #   the first, if at least 3 and the threshold did); each of its stages closes when all
    #   still in answered, or round_timeout after it opened;
    # - a fitness-mode generation is scored by at least min_clients; a client that has not
    #   scored it round_timeout after the first did is left out (with secure aggregation,
    #   the same in each stage of the masked scores);
    # - a per-update rule has no round: min_clients is unused, and a client's fair share of
    #   updates (GlobalModel._over_share) lapses round_timeout after its last applied one.
    # AUTO: BY_SECURITY's.
    min_clients: int | Auto = AUTO
    round_timeout: float = 5.0
    checkpoint: str | None = None  # save the global state here after every accepted update
    resume: bool = False  # start from the checkpoint instead of a fresh model
    # The GA settings sent to clients; those AUTO are left to the model.
    ga: GAConfig = LEFT_TO_MODEL

    def resolved(self) -> TrainingConfig:
        """These settings with those left ``AUTO`` filled in where the config alone decides:
        the aggregation and min clients by secure aggregation (``BY_SECURITY``), the GA's by
        the model (the tutorial's for its XOR model, no model nor test data; else those tuned
        on real data). The one place they are resolved. The rule's settings stay AUTO for the
        rule (``aggregation_rule``), the threshold for each secure round (its clients)."""
        by_security = {
            name: values[self.secure_aggregation]
            for name, values in BY_SECURITY.items()
            if getattr(self, name) is AUTO
        }
        xor = self.model is None and self.test_data is None
        ga = self.ga.for_model(GAConfig() if xor else REAL_DATA)
        return dataclasses.replace(self, ga=ga, **by_security)

    def aggregation_rule(self) -> Aggregation:
        """A new instance of the ``aggregation`` rule with the settings given here (not
        AUTO); ``ConfigError``, one plain sentence, for a setting it does not take, a bad
        value, or (weights mode) rounds of ``min_clients`` too few for it to tolerate its
        ``byzantine`` attackers."""
        config = self.resolved()
        config._check_secure_aggregation()
        settings = given({name: getattr(config, name) for name in SETTINGS})
        if config.federation == FITNESS:
            settings.pop(FITNESS_SETTING, None)  # fitness mode's own: how its scores combine
        rule = aggregation_named(known(config.aggregation), **settings)
        min_clients = known(config.min_clients)
        refusal = rule.refusal(min_clients) if config.federation == WEIGHTS else ""
        if refusal:
            raise ConfigError(f"With min-clients {min_clients}, {refusal}")
        return rule

    def _check_secure_aggregation(self) -> None:
        """``ConfigError``, one plain sentence, for what cannot run with secure aggregation:
        whatever must see an update or a count on its own, and rounds too small to hide one.
        Of a resolved config."""
        if not self.secure_aggregation:
            if self.secagg_threshold is not AUTO:
                raise ConfigError("--secagg-threshold needs --secure-aggregation.")
            return
        rule = AGGREGATIONS.get(known(self.aggregation))
        if self.federation == FITNESS:  # its scores are masked (common.secagg.scores)
            if self.secagg_threshold is not AUTO:
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
            if getattr(self, name) is not AUTO:
                raise ConfigError(
                    f"Secure aggregation masks what each client sends and its sample count, so "
                    f"--{flag_name(name)} cannot run with it."
                )
        min_clients = known(self.min_clients)
        if min_clients < 3:
            raise ConfigError(
                "Secure aggregation needs --min-clients of at least 3 (of two clients, each "
                f"could read the other's update from the sum), not {min_clients}."
            )
        if not isinstance(self.secagg_threshold, Auto):
            check_threshold(self.secagg_threshold, min_clients)

    def summary(self) -> str:
        """The settings in effect, resolved (the GA's for the model, the rule's own), named
        as the flags: one line for the log when the server starts listening."""

        def shown(name: str, value: Any) -> str:
            return f"{flag_name(name)}={value:{'g' if isinstance(value, float) else ''}}"

        config = self.resolved()
        secure = config.secure_aggregation
        if config.federation == FITNESS:
            shared = [shown("federation", FITNESS)]
        else:
            rule = config.aggregation_rule().shown(SECURE_REFUSED if secure else ())
            shared = [shown("aggregation", rule)]
        if secure:
            shared.append("secure-aggregation=on")
            if config.federation != FITNESS:
                threshold = config.secagg_threshold
                shared.append(
                    shown("secagg_threshold", "ceil(2n/3)" if threshold is AUTO else threshold)
                )
        training = ("min_clients", "round_timeout", "num_solutions", "target_accuracy")
        shared += [
            shown(name, getattr(config, name)) for name in (*training, "max_rounds", "patience")
        ]
        ga = config.ga
        return "settings in effect: %s; GA: %s" % (
            ", ".join(shared),
            ", ".join(shown(f.name, getattr(ga, f.name)) for f in dataclasses.fields(ga)),
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
    training: TrainingConfig = field(default_factory=TrainingConfig)
    outputs: OutputConfig = field(default_factory=OutputConfig)

    @classmethod
    def of(cls, **settings: Any) -> ServerConfig:
        """The defaults with ``settings`` changed, each by its flat name."""
        return cls().with_settings(**settings)

    def settings(self) -> dict[str, Any]:
        """Every setting by its flat name; one left to the run is ``AUTO``."""
        flat: dict[str, Any] = {}
        for group in (self.network, self.security, self.training, self.outputs):
            flat |= {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}
        ga = flat.pop("ga")
        return flat | {f.name: getattr(ga, f.name) for f in dataclasses.fields(ga)}

    def with_settings(self, **settings: Any) -> ServerConfig:
        """A copy with ``settings`` changed, each by its flat name (``TypeError`` for an
        unknown one). A setting given as ``AUTO`` is left to the run."""
        ga_names = {f.name for f in dataclasses.fields(GAConfig)}
        ga = {name: value for name, value in settings.items() if name in ga_names}
        training = self.training
        if ga:
            training = dataclasses.replace(training, ga=dataclasses.replace(training.ga, **ga))
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
