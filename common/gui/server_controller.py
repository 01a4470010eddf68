"""The server window's controller (``ServerController``): the tutorial's socket steps,
then building the model from the setup fields, listening, Stop Training and the saves;
the server core's events turned into what the window shows (``common.gui.server_view``).
Plain Python, no Kivy (``common.gui.controller`` says how it is driven)."""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable

from common.errors import BindError, ConfigError, UserError
from common.events import Event, EventKind
from common.fitness_federation import FITNESS
from common.global_model import GlobalModel
from common.gui.controller import CallSoon, Controller
from common.gui.server_view import ENDINGS, ClientRow, RowState, ServerView
from common.gui.setup_fields import SetupField, applies, fields_for, follows, not_used, parse_texts
from common.results import History
from common.server import ListenThread, bind_socket, new_socket, start_listening
from common.server_config import ServerConfig

log = logging.getLogger(__name__)

SAVE_SUFFIXES = {"model": ".keras", "history": ".csv", "plot": ".png"}  # what each Save writes
CLIENT_ID = re.compile(r"^(.*)-[0-9a-f]{8}$")  # a fedga client's id: its name and a nonce


class ServerController(Controller):
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
        return fields_for(self.config.settings())

    follows = staticmethod(follows)  # common.gui.setup_fields's, for the window
    applies = staticmethod(applies)

    def _from_thread(self, attempt: int) -> Callable[[Event], None]:
        return lambda event: self._call_soon(self._on_event, attempt, event)

    def create(self) -> None:
        self.socket = new_socket()  # IPv4, as the tutorial's field asks for
        self._show("Socket Created", enable=("bind", "close"))

    def bind(self, host_text: str, port_text: str) -> None:
        port = self._port(port_text, "bind")
        if port is None:
            return
        assert self.socket is not None, "Bind is enabled only after Create Socket"
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
        shown = {spec.name: spec.text for spec in self.setup_fields()}
        shown |= {name: text for name, text in texts.items() if name in shown}
        try:
            setup = parse_texts({k: v for k, v in texts.items() if k not in security_names})
            setup |= not_used(shown)  # a greyed-out field's text is not used
            config = self.config.with_settings(**settings, **setup)
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
        assert self.socket is not None  # bound; Close would have bumped the attempt
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
        log.info("listening on %s:%d; %s", host, port, config.training.summary())
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
        if training.test_data:
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
        assert model is not None and history is not None, "Save is enabled once training ended"
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
            model = self.global_model
            assert model is not None and event.accuracy is not None  # listening: built, scored
            view.history.append((event.round, event.accuracy, event.loss))
            best = model.best
            view.best_round = best.round
            view.summary = (
                f"Round {event.round}: global accuracy {event.accuracy:.2f} "
                f"(best {best.accuracy:.2f}, round {best.round})"
            )
            view.round_closed()
        elif event.kind is EventKind.SHORT:
            view.summary = f"Round {event.round + 1} not aggregated: {event.detail}"
            view.round_closed()
        elif event.kind is EventKind.WAITING:
            view.summary = (
                f"Round {event.round}: {event.detail} ready (Min clients); waiting for more"
                if view.secure and not view.fitness  # a secure round's, not a generation's
                else f"Round {event.round}, generation {event.generation}: scored by "
                f"{event.detail} (Min clients); waiting for more"
            )
        elif event.kind in ENDINGS:
            view.summary = ENDINGS[event.kind].format(round=event.round, accuracy=event.accuracy)
            assert self.global_model is not None  # its ending
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
