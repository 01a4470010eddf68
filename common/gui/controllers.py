"""What the windows show and which buttons they enable, as plain Python state machines.

No Kivy here: a window binds its widgets to a controller and forwards clicks to it, and the
tests drive the same controller without a display. Core threads report through
``call_soon``, which must run the handler on the thread that owns the controller (Kivy's
main thread in a window, the test's thread in a test); every attribute a window reads is
only ever changed there.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from common import security
from common.cli import parse_port
from common.client import ClientConfig, ConnectError, Reconnector, RecvThread, connect
from common.data import Dataset
from common.events import Event
from common.server import (BindError, GlobalModel, ListenThread, ServerConfig, bind_socket,
                           new_socket, start_listening)

log = logging.getLogger(__name__)

CallSoon = Callable[..., None]  # call_soon(handler, *args): run handler(*args) on the owner thread

INITIAL_STATUS = "Socket Status"  # the tutorial's label before any click


@dataclass(frozen=True)
class SecurityField:
    """A text field for one security setting, as the window shows it."""

    name: str  # the config field it fills, and the keyword its step takes the text by
    caption: str
    hint: str  # shown while the field is empty: what empty means
    text: str  # pre-filled from the config (the flags)


class _Controller:
    """Buttons, a status line, security fields and a change callback shared by both windows."""

    BUTTONS: tuple[str, ...] = ()
    SECURITY: tuple[tuple[str, str], ...] = ()  # (config field, caption) of each security field
    TLS_FIELD = ""  # the one of them that turns TLS on

    def __init__(self, call_soon: CallSoon):
        self._call_soon = call_soon
        self.on_change: Callable[[], None] = lambda: None
        self.status = INITIAL_STATUS
        self.enabled = {name: name == "create" for name in self.BUTTONS}  # tutorial: Create first
        self.settings_in_use = False  # the security fields' values are in use: not editable

    def security_fields(self) -> list[SecurityField]:
        """The security fields, filled from the config; empty means off."""
        env_secret = os.environ.get(security.SECRET_ENV)
        hints = {"secret_file": f"empty: ${security.SECRET_ENV}" if env_secret
                 else "empty: no secret"}
        return [SecurityField(name, caption, hints.get(name, "empty: no TLS"),
                              getattr(self.config, name) or "")
                for name, caption in self.SECURITY]

    def _show(self, status: str, *, enable: tuple[str, ...]) -> None:
        """Set the status line and enable exactly the ``enable`` buttons."""
        self.status = status
        self.enabled = {name: name in enable for name in self.BUTTONS}
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
        paths = {name: getattr(self.config, name) for name, _ in self.SECURITY}
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
        config, parts = self.config, []
        if getattr(config, self.TLS_FIELD):
            parts.append("TLS")
        if config.secret is not None:
            parts.append("shared secret" if config.secret_file else
                         f"shared secret from ${security.SECRET_ENV}")
        return f" ({', '.join(parts)})" if parts else ""


@dataclass
class ServerView:
    """What the server window shows beyond its status line."""

    summary: str = ""
    history: list[tuple[int, float]] = field(default_factory=list)  # (round, global accuracy)
    clients: dict[str, str] = field(default_factory=dict)  # peer -> state, in arrival order
    address: str = ""  # where the server listens, once it does


class ServerController(_Controller):
    """The tutorial's server steps: Create Socket, Bind Socket, Listen to Connections, Close.

    ``make_global_model(config, on_event)`` builds the model once; it outlives Close and Create, as
    the tutorial's global model does. Listen reads the security fields: they are about the
    connections it accepts, and a mistake in them leaves the socket bound, to try again.
    """

    BUTTONS = ("create", "bind", "listen", "close")
    SECURITY = (("secret_file", "Secret file"), ("tls_cert", "TLS certificate"),
                ("tls_key", "TLS key"))
    TLS_FIELD = "tls_cert"

    def __init__(self, config: ServerConfig,
                 make_global_model: Callable[[ServerConfig, Callable[[Event], None]], GlobalModel],
                 *, call_soon: CallSoon):
        super().__init__(call_soon)
        self.config = config
        self.global_model = make_global_model(config, self._from_thread)
        self.socket: socket.socket | None = None
        self.listener: ListenThread | None = None
        model = self.global_model
        self.view = ServerView(summary=f"Global accuracy {model.accuracy:.2f} before training",
                               history=[(model.round, model.accuracy)])

    def _from_thread(self, event: Event) -> None:
        self._call_soon(self._on_event, event)

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
        """Listen with the security fields' texts (``secret_file``, ``tls_cert``, ``tls_key``)."""
        settings = self._security(texts, "listen")
        if settings is None:
            return
        try:
            start_listening(self.socket)
        except BindError as exc:
            self._show(str(exc), enable=("close",))
            return
        self.config = dataclasses.replace(self.config, **settings)
        self.listener = ListenThread(self.global_model, self.config,
                                     listening_socket=self.socket, on_event=self._from_thread)
        self.listener.start()
        host, port = self.listener.server_address
        self.view.address = f"{host}:{port}"
        self.settings_in_use = True
        self._show(f"Socket is Listening for Connections on {self.view.address}"
                   f"{self._protection()}", enable=("close",))

    def close(self) -> None:
        if self.listener is not None:
            self.listener.shutdown()  # closes the socket and every client connection
            self.listener = None
        elif self.socket is not None:
            self.socket.close()
        self.socket = None
        self.settings_in_use = False
        self._show("Socket Closed", enable=("create",))

    def shutdown(self) -> None:
        """The window is closing: stop every thread."""
        if self.socket is not None:
            self.close()

    def _on_event(self, event: Event) -> None:
        view, clients = self.view, self.view.clients
        if event.kind == "connected":
            clients[event.peer] = "connected"
        elif event.kind == "request" and event.detail == "echo":
            clients[event.peer] = "training"
        elif event.kind == "update":
            clients[event.peer] = f"sent model, round {event.round}"
            view.history.append((event.round, event.accuracy))
            view.summary = f"Round {event.round}: global accuracy {event.accuracy:.2f}"
        elif event.kind == "done":
            view.summary = (f"Training done: global accuracy {event.accuracy:.2f} "
                            f"after {event.round} rounds")
            log.info("summary: %s", view.summary)
        elif event.kind == "gave_up":
            view.summary = (f"Gave up after {event.round} rounds (--max-rounds): "
                            f"global accuracy {event.accuracy:.2f}")
            log.info("summary: %s", view.summary)
        elif event.kind == "patience":
            view.summary = (f"Stopped after {event.round} rounds (--patience): best global "
                            f"accuracy {event.accuracy:.2f}")
            log.info("summary: %s", view.summary)
        elif event.kind == "answered_done":
            clients[event.peer] = "done"
        elif event.kind == "disconnected":
            if event.detail:
                clients[event.peer] = f"dropped: {event.detail}"
            elif clients.get(event.peer) == "done":
                clients[event.peer] = "done, disconnected"
            else:
                clients[event.peer] = "disconnected"
        else:
            return  # e.g. a model request: the update event that follows says more
        self.on_change()


@dataclass
class ClientView:
    """What a client window shows beyond its status line."""

    round: int | None = None  # the server's round the model being trained comes from
    generation: int = 0
    generations: int = 0  # per round
    best_fitness: float | None = None


class ClientController(_Controller):
    """The tutorial's client steps: Create Socket, Connect to Server, Receive & Train Model,
    Close Socket.

    ``connect`` opens the socket itself, retrying refused attempts for
    ``config.connect_timeout`` seconds, so Create Socket only enables Connect: a socket whose
    connect failed cannot be reused. It also reads the security fields. Training survives a
    lost server: it reconnects ``config.retries`` times, as headless clients do.
    """

    BUTTONS = ("create", "connect", "train", "close")
    SECURITY = (("secret_file", "Secret file"), ("tls_ca", "TLS CA file"))
    TLS_FIELD = "tls_ca"

    def __init__(self, config: ClientConfig, data: Dataset, *, call_soon: CallSoon):
        super().__init__(call_soon)
        self.config = config
        self.data = data
        self.view = ClientView(generations=config.ga.num_generations)
        self.socket: socket.socket | None = None
        self.thread: RecvThread | None = None
        self._connector: threading.Thread | None = None
        self._cancel = threading.Event()  # ends a pending connect
        # Close bumps the attempt, so a late result from an abandoned connect or training
        # thread cannot change what the window shows.
        self._attempt = 0
        self._reconnecting = False  # the training thread lost the server and is reconnecting

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
        self._show(f"Successful Connection to the Server{self._protection()}",
                   enable=("train", "close"))

    def _connect_failed(self, attempt: int, reason: str) -> None:
        if attempt == self._attempt:
            self.settings_in_use = False
            self._show(f"Error Connecting to the Server: {reason}", enable=("connect", "close"))

    def train(self) -> None:
        attempt, config = self._attempt, self.config
        self.thread = RecvThread(
            config.buffer_size, config.recv_timeout, sock=self.socket, data=self.data,
            config=config, on_event=lambda event: self._call_soon(self._on_event, attempt, event),
            reconnect=Reconnector(config.host, config.port, config.retries))
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
        self.settings_in_use = self._reconnecting = False
        self._show("Socket Closed", enable=("create",))

    def shutdown(self, timeout: float = 10.0) -> None:
        """The window is closing: stop every thread and wait for them."""
        self.close()
        for thread in (self._connector, self.thread):
            if thread is not None and thread.is_alive():
                thread.join(timeout)

    def _on_event(self, attempt: int, event: Event) -> None:
        if attempt != self._attempt:
            return
        view = self.view
        if event.kind == "model":
            view.round, view.generation = event.round, 0
            self._show(f"Training the model of round {event.round}", enable=("close",))
        elif event.kind == "generation":
            view.generation, view.best_fitness = event.generation, event.fitness
            self.on_change()
        elif event.kind == "sent":
            # The GA may stop early once the local loss is low: the round is complete anyway.
            view.generation, view.best_fitness = view.generations, event.fitness
            self._show(f"Sent the trained model of round {event.round}; waiting for the server",
                       enable=("close",))
        elif event.kind == "done":
            accuracy = "" if event.accuracy is None else f": accuracy {event.accuracy:.2f}"
            self._show(f"Training is done{accuracy}", enable=("close",))
        elif event.kind == "connecting":  # lost the server: this is the next attempt
            self._reconnecting = True
            self._show(f"Lost the server; reconnecting ({event.detail})", enable=("close",))
        elif event.kind == "connected" and self._reconnecting:
            self._reconnecting = False
            self._show("Reconnected to the Server; waiting for its reply", enable=("close",))
        elif event.kind == "error":
            self._show(event.detail, enable=("close",))
