"""A client window's controller (``ClientController``): the tutorial's socket steps, the
data row's file loaded off the main thread, and the client core's events turned into what
the window shows (``common.gui.client_view``). Plain Python, no Kivy
(``common.gui.controller`` says how it is driven)."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading

from common.client import ClientConfig, ConnectError, Reconnector, RecvThread, connect
from common.data import DataError, DataFile, Dataset, describe, second_field
from common.events import Event, EventKind
from common.fitness_federation import FITNESS, SCORES_MASKED
from common.gui.client_view import NO_DATA, ClientView, fitness_loss
from common.gui.controller import CallSoon, Controller
from common.secure_rounds import SECURE

log = logging.getLogger(__name__)

# What a client's window adds when what it sends goes masked (by its ``model`` event's detail).
CLIENT_MASKED = {
    SECURE: " (secure aggregation: its update goes masked)",
    SCORES_MASKED: " (secure aggregation: its scores go masked)",
}


class ClientController(Controller):
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
        assert self.socket is not None, "Receive & Train is enabled only once connected"
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
            assert event.fitness is not None  # a generation's best
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
