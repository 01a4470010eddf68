"""What the windows show and which buttons they enable, as plain Python state machines.

No Kivy here: a window binds its widgets to a controller and forwards clicks to it, and the
tests drive the same controller without a display. Core threads report through
``call_soon``, which must run the handler on the thread that owns the controller (Kivy's
main thread in a window, the test's thread in a test); every attribute a window reads is
only ever changed there.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from common import security
from common.aggregate import AGGREGATIONS, CLIPPED, EXCLUDED, SETTINGS, settings_of
from common.app import number, parse_port, positive
from common.client import ClientConfig, ConnectError, Reconnector, RecvThread, connect
from common.data import DataError, DataFile, Dataset, describe, second_field
from common.errors import ConfigError, UserError
from common.events import Event, EventKind
from common.fitness_federation import FEDERATIONS, FITNESS, FITNESS_SETTING, SCORES_MASKED
from common.operators import OPERATORS
from common.results import History
from common.secure_rounds import SECURE
from common.server import (
    SECURE_DEFAULTS,
    SECURE_REFUSED,
    BindError,
    GlobalModel,
    ListenThread,
    ServerConfig,
    bind_socket,
    new_socket,
    start_listening,
)

log = logging.getLogger(__name__)

SUSPICION_WINDOW = 10  # a client row's recent updates that decide whether it is suspicious
CallSoon = Callable[..., None]  # call_soon(handler, *args): run handler(*args) on the owner thread

INITIAL_STATUS = "Socket Status"  # the tutorial's label before any click
# What the Training tab says of secure aggregation, by federation.
SECURE_NOTES = {
    False: "secure aggregation: the server sees only each round's sum",
    True: "secure aggregation: the server sees only each generation's summed scores",
}
ON_OFF = ("off", "on")  # a switch's texts, for False and True
# What a client's window adds when what it sends goes masked (by its ``model`` event's detail).
CLIENT_MASKED = {
    SECURE: " (secure aggregation: its update goes masked)",
    SCORES_MASKED: " (secure aggregation: its scores go masked)",
}
MASKED = "masked"  # a client's own sample count and accuracy in secure rounds: never seen


@dataclass(frozen=True)
class SecurityField:
    """A text field for one security setting, as the window shows it."""

    name: str  # the config field it fills, and the keyword its step takes the text by
    caption: str
    hint: str  # shown while the field is empty: what empty means
    text: str  # pre-filled from the config (the flags)


class _Controller:
    """Buttons, a status line, security fields and a change callback shared by both windows."""

    config: ServerConfig | ClientConfig  # each window's own, as its flags filled it
    BUTTONS: tuple[str, ...] = ()
    SECURITY: tuple[tuple[str, str], ...] = ()  # (config field, caption) of each security field
    TLS_FIELD = ""  # the one of them that turns TLS on

    def __init__(self, call_soon: CallSoon):
        self._call_soon = call_soon
        self.on_change: Callable[[], None] = lambda: None
        self.status = INITIAL_STATUS
        self._step_status = INITIAL_STATUS  # the last step's status, under a passing error
        self.enabled = {name: name == "create" for name in self.BUTTONS}  # tutorial: Create first
        self.actions: dict[str, bool] = {}  # the buttons added below the tutorial's: enabled?
        self.settings_in_use = False  # the security fields' values are in use: not editable

    def setting(self, name: str):
        """A setting of the config by its flat name (a flag's, a field's)."""
        return getattr(self.config, name)

    def security_fields(self) -> list[SecurityField]:
        """The security fields, filled from the config; empty means off."""
        env_secret = os.environ.get(security.SECRET_ENV)
        hints = {
            "secret_file": f"empty: ${security.SECRET_ENV}" if env_secret else "empty: no secret"
        }
        return [
            SecurityField(name, caption, hints.get(name, "empty: no TLS"), self.setting(name) or "")
            for name, caption in self.SECURITY
        ]

    def _show(self, status: str, *, enable: tuple[str, ...]) -> None:
        """Set the status line and enable exactly the ``enable`` buttons."""
        self.enabled = {name: name in enable for name in self.BUTTONS}
        self._step_status = status
        self._say(status)

    def _say(self, status: str) -> None:
        """Set the status line, the buttons as they are."""
        self.status = status
        log.info("status: %s", status)  # the windows' text in the log, for people and tests
        self.on_change()

    def _port(self, text: str, step: str) -> int | None:
        """The port field as a number, or None after saying why ``step`` cannot use it
        (the step's button stays enabled, to try again)."""
        try:
            return parse_port(text.strip())
        except ValueError as exc:
            self._show(f"Cannot {step}: {exc}.", enable=(step, "close"))
            return None

    def _security(self, texts: dict[str, str], step: str) -> dict | None:
        """The security fields' settings checked as config values (a field not in ``texts``
        keeps the config's), or None after saying why ``step`` cannot use them (its button
        stays enabled, to try again). An empty secret file means ``$FEDGA_SECRET``, if set."""
        paths = {name: self.setting(name) for name, _ in self.SECURITY}
        paths |= {name: text.strip() or None for name, text in texts.items()}
        try:
            secret = security.check_settings(**paths)
        except security.ConfigError as exc:
            self._show(str(exc), enable=(step, "close"))
            return None
        return paths | {"secret": secret}

    def _protection(self) -> str:
        """The config's protection for a status line: " (TLS, shared secret)", or "" for the
        tutorial's plain wire."""
        parts = []
        if self.setting(self.TLS_FIELD):
            parts.append("TLS")
        if self.setting("secret") is not None:
            parts.append(
                "shared secret"
                if self.setting("secret_file")
                else f"shared secret from ${security.SECRET_ENV}"
            )
        return f" ({', '.join(parts)})" if parts else ""


@dataclass(frozen=True)
class SetupField:
    """A server setting the window shows below the tutorial's column, read at Listen."""

    name: str  # the ServerConfig setting it fills, by its flat name
    caption: str
    text: str  # pre-filled from the config (the flags)
    choices: tuple[str, ...] = ()  # a spinner's values; empty: a text field


class RowState(StrEnum):
    """Where a client in the server window's list is, as its last column says."""

    CONNECTED = "connected"  # has asked nothing yet
    TRAINING = "training"  # was sent the model (or a round closed): trains it
    WAITING = "waiting"  # sent its update: the reply waits for the round to close
    DONE = "done"  # was told training is over
    DISCONNECTED = "disconnected"  # left, or was dropped (``reason``), before or after done
    DONE_DISCONNECTED = "done, disconnected"  # left after it was told done


@dataclass
class ClientRow:
    """One client in the server window's list."""

    name: str  # from its client id once an update names it, else its address
    state: RowState = RowState.CONNECTED
    reason: str = ""  # why the server dropped it, if it did
    samples: int | None = None  # as its last update reported them
    round: int | None = None  # the round its last update went into
    accuracy: float | None = None  # its last update's own accuracy on the server's test data
    verdict: str = ""  # what the rule did with its last update: "used", "clipped 4.1 -> 1.2"
    # what the rule did with its recent updates (an action of common.aggregate.ACTIONS each)
    actions: deque[str] = field(default_factory=lambda: deque(maxlen=SUSPICION_WINDOW))

    @property
    def shown_state(self) -> str:
        """Its state as the table shows it, with the reason it was dropped: a plain ``str``
        (Kivy's label calls ``type(text)`` on its text, which an enum's type refuses)."""
        return f"{self.state}: {self.reason}" if self.reason else str(self.state)

    @property
    def cut(self) -> int:
        """How many of its recent updates the rule excluded or clipped."""
        return sum(a in (CLIPPED, EXCLUDED) for a in self.actions)

    @property
    def suspicious(self) -> bool:
        """More than half of its last updates were excluded or clipped: shown, not acted on
        (the server never drops a client for it; the person watching decides)."""
        return self.cut > SUSPICION_WINDOW / 2


@dataclass
class ServerView:
    """What the server window shows beyond its status line."""

    summary: str = "Listen to Connections builds the model from the setup fields"
    model: str = ""  # which model is trained, once built
    # (round, global accuracy, global loss), round 0 being the untrained model
    history: list[tuple[int, float, float | None]] = field(default_factory=list)
    best_round: int | None = None
    clients: dict[str, ClientRow] = field(default_factory=dict)  # by peer, in arrival order
    address: str = ""  # where the server listens, once it does
    secure: bool = False  # secure aggregation: the server sees only each round's sum
    fitness: bool = False  # fitness mode: clients send scores, not weights

    @property
    def note(self) -> str:
        """What the Training tab says of the mode, if anything."""
        return SECURE_NOTES[self.fitness] if self.secure else ""

    def cells(self, row: ClientRow) -> tuple[str, ...]:
        """A client's row as the table shows it (``CLIENT_COLUMNS``' order). With secure
        aggregation its own sample count and accuracy are masked, so they say so, and no
        rule ever judges its update alone: it is never marked suspicious."""
        samples = accuracy = MASKED
        if not self.secure:
            samples = "" if row.samples is None else str(row.samples)
            accuracy = "" if row.accuracy is None else f"{row.accuracy:.2f}"
        return (
            row.name,
            samples,
            "" if row.round is None else str(row.round),
            accuracy,
            row.verdict,
            f"suspicious, {row.shown_state}" if row.suspicious else row.shown_state,
        )


def setup_text(value) -> str:
    """A setting as its setup field shows it: "" for None (a default), on or off."""
    if isinstance(value, bool):
        return ON_OFF[value]
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def or_default(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser for a setting whose default depends on the model or the aggregation rule: an
    empty field is None, which leaves it to them (``ServerConfig.with_settings``)."""
    return lambda text: parse(text) if text else None


# Setup fields by config field: (caption, parser of the text). Files are paths; "" is none.
NUMBERS = {
    "target_accuracy": ("Target accuracy", positive(float)),
    "min_clients": ("Min clients", positive(int)),
    "secagg_threshold": ("Secagg threshold", or_default(positive(int))),
    # The rules' settings, captioned by their names ("Server learning rate", "Clip norm"):
    # a number here, their bounds the rule's to check (common.aggregate.SETTINGS).
    **{
        name: (name.replace("_", " ").capitalize(), or_default(number(setting.kind)))
        for name, setting in SETTINGS.items()
    },
    "patience": ("Patience (0: never)", positive(int, zero_ok=True)),
    "num_generations": ("Generations", positive(int)),
    "num_parents_mating": ("Parents mating", positive(int)),
    "mutation_percent_genes": ("Mutation %", positive(float)),
    "mutation_step": ("Mutation step", positive(float)),
    "step_patience": ("Step patience", or_default(positive(int, zero_ok=True))),
    "stop_fitness": ("Stop fitness", or_default(positive(float, zero_ok=True))),
}
FILES = {
    "model": "Model file (.keras, JSON)",
    "test_data": "Test data file",
    "test_labels": "Test labels (.npy)",
    "test_label_column": "Label column (.csv)",
}
# Spinners: (caption, values). The registry itself, so a rule registered later is offered.
CHOICES = {
    "federation": ("Federation", FEDERATIONS),
    "aggregation": ("Aggregation", AGGREGATIONS),
    "operators": ("GA operators", OPERATORS),
}
SWITCHES = {"secure_aggregation": "Secure aggregation"}  # ON_OFF spinners of a bool setting
SETUP_ORDER = (
    *FILES,
    "target_accuracy",
    "federation",
    "aggregation",
    "secure_aggregation",
    "secagg_threshold",
    *SETTINGS,
    "min_clients",
    "patience",
    "step_patience",
    "num_generations",
    "num_parents_mating",
    "mutation_percent_genes",
    "operators",
    "mutation_step",
    "stop_fitness",
)
SAVE_SUFFIXES = {"model": ".keras", "history": ".csv", "plot": ".png"}  # what each Save writes
ENDINGS = {  # how training ended, as the summary says it (the accuracy its event carries)
    EventKind.DONE: "Training done: global accuracy {accuracy:.2f} after {round} rounds",
    EventKind.GAVE_UP: "Gave up after {round} rounds (--max-rounds): global accuracy {accuracy:.2f}",
    EventKind.PATIENCE: "Stopped after {round} rounds (--patience): best global accuracy {accuracy:.2f}",
    EventKind.STOPPED: "Stopped after {round} rounds: best global accuracy {accuracy:.2f}",
}
CLIENT_ID = re.compile(r"^(.*)-[0-9a-f]{8}$")  # a fedga client's id: its name and a nonce


class ServerController(_Controller):
    """The tutorial's server steps: Create Socket, Bind Socket, Listen to Connections, Close;
    then Stop Training, and saving the results once training ended.

    Listen reads the security and setup fields and builds the global model from them off
    the main thread, with ``make_global_model(config, on_event, history)``; only once it is
    built does the socket listen, so a mistake is one sentence before any client is served,
    and leaves the socket bound, to try again. Every Listen builds anew; the last model
    built stays, to be saved, until the next.
    """

    config: ServerConfig
    BUTTONS = ("create", "bind", "listen", "close")
    ACTIONS = ("stop", "save_model", "save_history", "save_plot")
    SECURITY = (
        ("secret_file", "Secret file"),
        ("tls_cert", "TLS certificate"),
        ("tls_key", "TLS key"),
    )
    TLS_FIELD = "tls_cert"

    def __init__(
        self,
        config: ServerConfig,
        make_global_model: Callable[..., GlobalModel],
        *,
        call_soon: CallSoon,
    ):
        super().__init__(call_soon)
        self.config = config
        self._make_global_model = make_global_model
        self.global_model: GlobalModel | None = None
        self.history: History | None = None  # the updates of the last model built
        self.socket: socket.socket | None = None
        self.listener: ListenThread | None = None
        self._builder: threading.Thread | None = None
        self._attempt = 0  # bumped by Close and by every Listen: late reports are dropped
        self._saving = False
        self.view = ServerView()
        self._update_actions()

    def setting(self, name: str):
        return self.config.settings()[name]

    def setup_fields(self) -> list[SetupField]:
        """The setup fields in the window's order, filled from the config."""
        fields = []
        for name in SETUP_ORDER:
            text = setup_text(self.setting(name))
            if name in CHOICES:
                caption, choices = CHOICES[name]
                fields.append(SetupField(name, caption, text, tuple(choices)))
            elif name in SWITCHES:
                fields.append(SetupField(name, SWITCHES[name], text, ON_OFF))
            else:
                fields.append(SetupField(name, FILES.get(name) or NUMBERS[name][0], text))
        return fields

    @staticmethod
    def follows(name: str, texts: dict[str, str]) -> dict[str, str]:
        """The texts other setup fields take now that the field ``name`` has changed to its
        text in ``texts``: secure aggregation turned on moves the aggregation and min
        clients, if still at their defaults, to those --secure-aggregation chooses (turned
        off, they stay: a plain run can use them)."""
        if name not in SWITCHES or texts.get(name) != "on":
            return {}
        plain = ServerConfig().settings()
        return {
            other: setup_text(value)
            for other, value in SECURE_DEFAULTS.items()
            if texts.get(other) == setup_text(plain[other])
        }

    @staticmethod
    def applies(name: str, texts: dict[str, str]) -> bool:
        """Whether a setup field matters given the others' texts: a labels file for .npy test
        data, a label column for .csv, the aggregation and its settings in weights mode (a
        setting for a rule that takes it), byzantine in fitness mode too (its scores'), min
        clients in fitness mode, for a round-based aggregation or secure aggregation; with
        secure aggregation its threshold, and none of the settings that must see each update
        (the config refuses an aggregation or a federation that cannot run with it)."""
        if name in ("test_labels", "test_label_column"):
            return second_field(texts.get("test_data", "")) == name.removeprefix("test_")
        fitness_mode = texts.get("federation") == FITNESS
        secure = texts.get("secure_aggregation") == "on"
        if name == "aggregation":
            return not fitness_mode
        if name == "secagg_threshold":  # fitness mode masks among all clients, no threshold
            return secure and not fitness_mode
        if name in SECURE_REFUSED and secure:
            return False
        if name == FITNESS_SETTING and fitness_mode:
            return True
        if name in SETTINGS:
            return not fitness_mode and name in settings_of(texts.get("aggregation", ""))
        if name == "min_clients":
            rule = AGGREGATIONS.get(texts.get("aggregation", ""))
            return fitness_mode or secure or rule is None or not rule.per_update
        return True

    def _setup(self, texts: dict[str, str]) -> dict | None:
        """The setup fields' texts as config values, or None after saying which is wrong."""
        values = {}
        for name, text in texts.items():
            text = text.strip()
            if name in NUMBERS:
                caption, parse = NUMBERS[name]
                try:
                    values[name] = parse(text)
                except argparse.ArgumentTypeError as exc:
                    self._show(f"{caption}: {exc}.", enable=("listen", "close"))
                    return None
            elif name in CHOICES:
                values[name] = text
            elif name in SWITCHES:
                values[name] = text == "on"
            else:
                values[name] = text or None
        return values

    def _from_thread(self, attempt: int) -> Callable[[Event], None]:
        return lambda event: self._call_soon(self._on_event, attempt, event)

    def create(self) -> None:
        self.socket = new_socket()  # IPv4, as the tutorial's field asks for
        self._show("Socket Created", enable=("bind", "close"))

    def bind(self, host_text: str, port_text: str) -> None:
        port = self._port(port_text, "bind")
        if port is None:
            return
        try:
            bind_socket(self.socket, host_text.strip(), port)
        except BindError as exc:
            self._show(str(exc), enable=("bind", "close"))  # the socket is still usable
            return
        self._show("Socket Bound to IPv4 & Port Number", enable=("listen", "close"))

    def listen(self, **texts: str) -> None:
        """Build the model from the setup fields' texts (named as ``setup_fields``), then
        listen with the security fields' texts (``secret_file``, ``tls_cert``, ``tls_key``).
        Fields not given keep the config's values."""
        security_names = {name for name, _ in self.SECURITY}
        settings = self._security({k: v for k, v in texts.items() if k in security_names}, "listen")
        if settings is None:
            return
        setup = self._setup({k: v for k, v in texts.items() if k not in security_names})
        if setup is None:
            return
        # A greyed-out setting (the rule does not take it, secure aggregation is off or
        # cannot run with it) is not used, whatever it says.
        shown = {spec.name: spec.text for spec in self.setup_fields()}
        shown |= {name: text for name, text in texts.items() if name in shown}
        setup |= {
            name: None for name in (*SETTINGS, "secagg_threshold") if not self.applies(name, shown)
        }
        config = self.config.with_settings(**settings, **setup)
        try:
            config.training.aggregation_rule()  # its settings' bounds
        except ConfigError as exc:
            self._show(str(exc), enable=("listen", "close"))
            return
        self._attempt += 1
        attempt, history = self._attempt, History(config.outputs.history)

        def work() -> None:  # off the main thread: Keras may load, a test set may be large
            try:
                model = self._make_global_model(config, self._from_thread(attempt), history)
            except UserError as exc:  # a bad model file, test set, checkpoint: one sentence
                self._call_soon(self._build_failed, attempt, str(exc))
                return
            except Exception as exc:  # a bug must leave the window usable
                log.exception("building the model failed")
                self._call_soon(self._build_failed, attempt, f"Cannot build the model: {exc!r}")
                return
            self._call_soon(self._built, attempt, config, model, history)

        self.settings_in_use = True  # the fields are being read: locked until it fails
        self._builder = threading.Thread(target=work, name="build-model", daemon=True)
        self._show("Building the model ...", enable=("close",))
        self._builder.start()

    def _build_failed(self, attempt: int, reason: str) -> None:
        if attempt == self._attempt:
            self.settings_in_use = False
            self._show(reason, enable=("listen", "close"))

    def _built(
        self, attempt: int, config: ServerConfig, model: GlobalModel, history: History
    ) -> None:
        if attempt != self._attempt:
            return  # Close came first
        try:  # fitness mode's rounds refuse what they cannot run, before anyone can connect
            listener = ListenThread(
                model, config, listening_socket=self.socket, on_event=self._from_thread(attempt)
            )
        except ConfigError as exc:
            self._build_failed(attempt, str(exc))
            return
        try:
            start_listening(self.socket)
        except BindError as exc:
            self.settings_in_use = False
            self._show(str(exc), enable=("close",))
            return
        self.config, self.global_model, self.history = config, model, history
        forward = model.forward
        self.view = ServerView(
            summary=f"Global accuracy {model.accuracy:.2f} before training",
            secure=config.training.secure_aggregation,
            fitness=config.training.federation == FITNESS,
            model=self._describe_model(
                config, forward.num_features, forward.num_outputs, model.num_params
            ),
            history=[
                (
                    model.round,
                    model.accuracy,
                    model.best.loss if model.best.round == model.round else None,
                )
            ],
        )
        log.info("model: %s", self.view.model)
        if self.view.note:
            log.info("note: %s", self.view.note)
        self.listener = listener
        self.listener.start()
        host, port = self.listener.server_address
        self.view.address = f"{host}:{port}"
        self._update_actions()
        self._show(
            f"Socket is Listening for Connections on {self.view.address}{self._protection()}",
            enable=("close",),
        )

    @staticmethod
    def _describe_model(config: ServerConfig, features: int, outputs: int, params: int) -> str:
        shape = f"{features} features -> {outputs} outputs, {params:,} parameters"
        training = config.training
        if training.model:
            return f"The model in {training.model}: {shape}"
        if training.test_data and (features, outputs) != (2, 2):
            return f"No model file: a default Dense model sized to the test data ({shape})"
        return f"The tutorial's XOR model ({shape})"

    def close(self) -> None:
        self._attempt += 1
        if self.listener is not None:
            self.listener.shutdown()  # closes the socket and every client connection
            self.listener = None
        elif self.socket is not None:
            self.socket.close()
        self.socket = None
        self.settings_in_use = False
        self._update_actions()
        self._show("Socket Closed", enable=("create",))

    def shutdown(self) -> None:
        """The window is closing: stop every thread."""
        if self.socket is not None:
            self.close()

    def stop_training(self) -> None:
        """End training now: clients are answered ``done``; the best model is kept."""
        if self.global_model is not None:
            self.global_model.stop()  # its ``stopped`` event updates the window

    def save(self, kind: str, path: str) -> None:
        """Write the last model's results off the main thread, as the flags would: ``model``
        (--save-model, the best model), ``history`` (--history) or ``plot`` (--plot). The
        file's suffix is added if missing."""
        suffix = SAVE_SUFFIXES[kind]
        path = path if path.lower().endswith(suffix) else path + suffix
        model, history = self.global_model, self.history
        write = {"model": model.save_model, "history": history.save, "plot": history.plot}[kind]
        best = model.best
        what = {
            "model": f"the best model (round {best.round}, accuracy {best.accuracy:.4f})",
            "history": "the history",
            "plot": "the plot",
        }[kind]

        def work() -> None:
            try:
                write(path)
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or exc
                self._call_soon(self._saved, f"Cannot save {what} to {path}: {reason}.")
                return
            except Exception as exc:  # a bug must not leave the window saving for ever
                log.exception("saving %s failed", what)
                self._call_soon(self._saved, f"Cannot save {what} to {path}: {exc!r}.")
                return
            self._call_soon(self._saved, f"Saved {what} to {path}")

        self._saving = True
        self._update_actions()
        self._say(f"Saving {what} to {path} ...")
        threading.Thread(target=work, name=f"save-{kind}", daemon=True).start()

    def _saved(self, status: str) -> None:
        self._saving = False
        self._update_actions()
        self._say(status)

    def _update_actions(self) -> None:
        """Stop while training runs; the Save buttons once it ended, one save at a time."""
        model = self.global_model
        ended = model is not None and model.finished.is_set()
        self.actions = {
            "stop": self.listener is not None and model is not None and not ended,
            **{name: ended and not self._saving for name in self.ACTIONS[1:]},
        }

    def _on_event(self, attempt: int, event: Event) -> None:
        if attempt != self._attempt and event.kind not in (
            EventKind.DISCONNECTED,
            EventKind.ANSWERED_DONE,
        ):
            return  # a model Listen no longer uses (its clients' last words still count)
        view, clients = self.view, self.view.clients
        row = clients.get(event.peer)
        if event.kind is EventKind.CONNECTED:
            clients[event.peer] = ClientRow(event.peer)
        elif row is not None and event.kind is EventKind.REQUEST:
            row.state = RowState.TRAINING if event.detail == "echo" else RowState.WAITING
        elif row is not None and event.kind is EventKind.SCORED:
            named = CLIENT_ID.match(event.detail)
            row.name = named[1] if named else event.detail or row.name
            row.round, row.accuracy = event.round, event.accuracy
            if event.samples is not None:
                row.samples = event.samples
        elif row is not None and event.kind is EventKind.JUDGED:
            verdict = event.verdict
            if verdict is None:  # not applied: beyond its share of a per-update rule's rounds
                row.verdict = event.detail
            else:
                row.verdict = f"{verdict.action} {verdict.detail}".rstrip()
                was_suspicious = row.suspicious
                row.actions.append(verdict.action)
                if row.suspicious != was_suspicious:
                    log.warning(
                        "client %s %s: %d of its last %d updates excluded or clipped",
                        row.name,
                        "looks suspicious" if row.suspicious else "no longer looks suspicious",
                        row.cut,
                        len(row.actions),
                    )
        elif event.kind is EventKind.UPDATE:
            view.history.append((event.round, event.accuracy, event.loss))
            best = self.global_model.best
            view.best_round = best.round
            view.summary = (
                f"Round {event.round}: global accuracy {event.accuracy:.2f} "
                f"(best {best.accuracy:.2f}, round {best.round})"
            )
            _round_answered(clients)
        elif event.kind is EventKind.SHORT:
            view.summary = f"Round {event.round + 1} not aggregated: {event.detail}"
            _round_answered(clients)
        elif event.kind is EventKind.WAITING:
            view.summary = (
                f"Round {event.round}: {event.detail} ready (Min clients); waiting for more"
                if view.secure and not view.fitness  # a secure round's, not a generation's
                else f"Round {event.round}, generation {event.generation}: scored by "
                f"{event.detail} (Min clients); waiting for more"
            )
        elif event.kind in ENDINGS:
            view.summary = ENDINGS[event.kind].format(round=event.round, accuracy=event.accuracy)
            view.best_round = self.global_model.best.round
            log.info("summary: %s", view.summary)
            self._update_actions()
        elif row is not None and event.kind is EventKind.ANSWERED_DONE:
            row.state = RowState.DONE
        elif row is not None and event.kind is EventKind.DISCONNECTED:
            told_done = row.state is RowState.DONE and not event.detail
            row.state = RowState.DONE_DISCONNECTED if told_done else RowState.DISCONNECTED
            row.reason = event.detail
        else:
            return
        self.on_change()


def rows_shown(rows: list[ClientRow], limit: int) -> list[ClientRow]:
    """The rows a table of ``limit`` rows shows: the suspicious first, then the newest
    others (older ones are long gone clients, usually), in arrival order, so none jumps."""
    suspicious = [row for row in rows if row.suspicious][:limit]
    room = limit - len(suspicious)
    others = [row for row in rows if not row.suspicious][-room:] if room else []
    chosen = {id(row) for row in suspicious + others}
    return [row for row in rows if id(row) in chosen]


def _round_answered(clients: dict[str, ClientRow]) -> None:
    """The round closed: each client waiting for it was answered and trains again."""
    for waiting in clients.values():
        if waiting.state is RowState.WAITING:
            waiting.state = RowState.TRAINING


@dataclass
class ClientView:
    """What a client window shows beyond its status line."""

    data: str = ""  # the loaded data described in a line, or what to do without any
    round: int | None = None  # the server's round the model being trained comes from
    generation: int = 0
    generations: int = 0  # the most this round runs (the server's setting)
    ended_early: bool = False  # the round's GA stopped before them: its local loss was low
    # Fitness mode: the generations are the server's, scored here; their losses are over
    # every client's data (the server's fitness), not this client's alone.
    scoring: bool = False
    best_fitness: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # this round's, by generation


NO_DATA = "No data yet: choose a data file"


def fitness_loss(fitness: float) -> float:
    """The GA's local loss back from its fitness, the tutorial's ``1 / (loss + 1e-8)``."""
    return 1.0 / fitness - 1e-8


class ClientController(_Controller):
    """The tutorial's client steps: Create Socket, Connect to Server, Receive & Train Model,
    Close Socket; and the data row, whose file is loaded (off the main thread) when chosen.

    ``connect`` opens the socket itself, retrying refused attempts for
    ``config.connect_timeout`` seconds, so Create Socket only enables Connect: a socket whose
    connect failed cannot be reused. It also reads the security fields. Training survives a
    lost server: it reconnects ``config.retries`` times, as headless clients do. The data
    row is locked from Receive & Train until Close Socket.
    """

    config: ClientConfig
    BUTTONS = ("create", "connect", "train", "close")
    SECURITY = (("secret_file", "Secret file"), ("tls_ca", "TLS CA file"))
    TLS_FIELD = "tls_ca"

    def __init__(
        self,
        config: ClientConfig,
        data: Dataset | None,
        data_file: DataFile = DataFile(),
        *,
        call_soon: CallSoon,
    ):
        super().__init__(call_soon)
        self.config = config
        self.data = data  # None until a file is loaded (client.py without --data)
        self.data_file = data_file  # pre-fills the data row
        self._loaded = data_file if data is not None else None  # the file ``data`` came from
        self.data_in_use = False  # training reads ``data``: the data row is locked
        source = os.path.basename(data_file.path) or f"the tutorial's {config.name} samples"
        self.view = ClientView(
            data=NO_DATA if data is None else f"{source}: {describe(data)}",
            generations=config.ga.num_generations,
        )
        self.socket: socket.socket | None = None
        self.thread: RecvThread | None = None
        self._connector: threading.Thread | None = None
        self._loader: threading.Thread | None = None
        self._cancel = threading.Event()  # ends a pending connect
        # Close bumps the attempt, so a late result from an abandoned connect or training
        # thread cannot change what the window shows.
        self._attempt = 0
        self._load_attempt = 0  # likewise for a file chosen before the last one loaded
        self._reconnecting = False  # the training thread lost the server and is reconnecting

    def load_data(self, path: str, labels: str = "", label_column: str = "") -> None:
        """Load the data row's file off the main thread; the status says why if it cannot
        be used, and the last good data stays. The same file again is not reloaded."""
        choice = DataFile(path.strip(), labels.strip(), label_column.strip())
        if choice == self._loaded or self.data_in_use:
            return
        if not choice.path:
            self._say(
                "Choose a data file: .npz, .npy with a labels file, or .csv with a label column."
            )
            return
        needed = second_field(choice.path)
        if needed is not None and not getattr(choice, needed):  # not a mistake: not done yet
            self.view.data = f"{choice.path}: now give " + (
                "its labels file (.npy)" if needed == "labels" else "the column of its labels"
            )
            self.on_change()
            return
        self._load_attempt += 1
        attempt = self._load_attempt

        def work() -> None:
            try:
                data = choice.load()
            except DataError as exc:
                self._call_soon(self._load_failed, attempt, str(exc))
                return
            self._call_soon(self._data_loaded, attempt, choice, data)

        self._loader = threading.Thread(target=work, name="load-data", daemon=True)
        self._loader.start()

    def _data_loaded(self, attempt: int, choice: DataFile, data: Dataset) -> None:
        if attempt != self._load_attempt or self.data_in_use:
            return
        self.data, self._loaded = data, choice
        self.view.data = f"{os.path.basename(choice.path)}: {describe(data)}"
        log.info("data: %s", self.view.data)
        self._say(self._step_status)  # a data error shown before is over

    def _load_failed(self, attempt: int, reason: str) -> None:
        if attempt == self._load_attempt:
            self._say(reason)

    def create(self) -> None:
        self._show("Socket Created", enable=("connect", "close"))

    def connect(self, host_text: str, port_text: str, **texts: str) -> None:
        """Connect to the address fields' server with the security fields' texts
        (``secret_file``, ``tls_ca``)."""
        port = self._port(port_text, "connect")
        if port is None:
            return
        settings = self._security(texts, "connect")
        if settings is None:
            return
        host, attempt, cancel = host_text.strip(), self._attempt, self._cancel
        # Training, reconnecting and TLS's host name check all use these.
        self.config = dataclasses.replace(self.config, host=host, port=port, **settings)
        self.settings_in_use = True

        def work() -> None:  # off the main thread: connect retries for seconds
            try:
                sock = connect(host, port, self.config.connect_timeout, stop=cancel)
            except ConnectError as exc:
                self._call_soon(self._connect_failed, attempt, str(exc))
                return
            self._call_soon(self._connected, attempt, sock)

        self._connector = threading.Thread(target=work, name="connect", daemon=True)
        self._show(f"Connecting to {host}:{port} ...", enable=("close",))
        self._connector.start()

    def _connected(self, attempt: int, sock: socket.socket) -> None:
        if attempt != self._attempt:
            sock.close()
            return
        self.socket = sock
        self._show(
            f"Successful Connection to the Server{self._protection()}", enable=("train", "close")
        )

    def _connect_failed(self, attempt: int, reason: str) -> None:
        if attempt == self._attempt:
            self.settings_in_use = False
            self._show(f"Error Connecting to the Server: {reason}", enable=("connect", "close"))

    def train(self) -> None:
        if self.data is None:
            self._say("Choose this client's data file before training (Browse).")
            return
        attempt, config = self._attempt, self.config
        source = self._loaded.path if self._loaded and self._loaded.path else None
        self.thread = RecvThread(
            config.buffer_size,
            config.recv_timeout,
            sock=self.socket,
            data=self.data,
            data_source=source or f"the tutorial's {config.name} samples",
            config=config,
            on_event=lambda event: self._call_soon(self._on_event, attempt, event),
            reconnect=Reconnector(config.host, config.port, config.retries),
        )
        self.data_in_use = True
        self._show("Receiving the Model from the Server", enable=("close",))
        self.thread.start()

    def close(self) -> None:
        self._attempt += 1
        self._cancel.set()
        self._cancel = threading.Event()
        if self.thread is not None:
            self.thread.stop()  # closes the socket it owns
        elif self.socket is not None:
            self.socket.close()
        self.socket = None
        self.settings_in_use = self.data_in_use = self._reconnecting = False
        self._show("Socket Closed", enable=("create",))

    def shutdown(self, timeout: float = 10.0) -> None:
        """The window is closing: stop every thread and wait for them."""
        self.close()
        for thread in (self._connector, self.thread, self._loader):
            if thread is not None and thread.is_alive():
                thread.join(timeout)

    def _on_event(self, attempt: int, event: Event) -> None:
        if attempt != self._attempt:
            return
        view = self.view
        if event.kind is EventKind.MODEL:
            view.round, view.generation, view.losses = event.round, 0, []
            view.generations, view.ended_early = event.generation, False
            view.scoring = event.detail in (FITNESS, SCORES_MASKED)
            doing = (
                f"Scoring the server's members in round {event.round}"
                if view.scoring
                else f"Training the model of round {event.round}"
            ) + CLIENT_MASKED.get(event.detail, "")
            self._show(doing, enable=("close",))
        elif event.kind is EventKind.GENERATION:
            view.generation, view.best_fitness = event.generation, event.fitness
            view.losses.append((event.generation, fitness_loss(event.fitness)))
            self.on_change()
        elif event.kind is EventKind.SENT:
            view.generation, view.best_fitness = event.generation, event.fitness
            view.ended_early = event.generation < view.generations
            sent = {
                FITNESS: f"Scored round {event.round}, sending only losses",
                SCORES_MASKED: f"Scored round {event.round}, its losses masked: the server "
                "sees only their sum",
                SECURE: f"Sent round {event.round}'s update masked: the server sees only the sum",
            }.get(event.detail, f"Sent the trained model of round {event.round}")
            self._show(f"{sent}; waiting for the server", enable=("close",))
        elif event.kind is EventKind.WAITING:  # "round 12: waiting for 2 more clients ..."
            self._show(event.detail.capitalize(), enable=("close",))
        elif event.kind is EventKind.DONE:  # "training is done: accuracy 1.00", or why not
            self._show(event.detail.capitalize(), enable=("close",))
        elif event.kind is EventKind.CONNECTING:  # lost the server: this is the next attempt
            self._reconnecting = True
            self._show(f"Lost the server; reconnecting ({event.detail})", enable=("close",))
        elif event.kind is EventKind.CONNECTED and self._reconnecting:
            self._reconnecting = False
            self._show("Reconnected to the Server; waiting for its reply", enable=("close",))
        elif event.kind is EventKind.ERROR:
            self._show(event.detail, enable=("close",))
