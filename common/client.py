"""The client core, headless: connect to a server and run the tutorial's loop in ``RecvThread``
(echo, receive the model, train it on local data, send the best weights, until ``done``).

The data never leaves this process; only weight vectors do. Progress is reported through
an ``on_event`` callback.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from common import protocol
from common.data import Dataset
from common.events import Event
from common.ga import GAConfig, train
from common.model import ForwardPass, model_from_json
from common.modelspec import DEFAULT_MAX_PARAMS, ModelRefused, count_params
from common.protocol import Connection, Message, ProtocolError, Subject

log = logging.getLogger(__name__)

CONNECT_RETRY_INTERVAL = 0.5  # seconds between attempts while the server is not up yet


@dataclass
class ClientConfig:
    host: str = "localhost"
    port: int = 10000
    buffer_size: int = 1024
    recv_timeout: float = 10.0
    idle_timeout: float = 300.0
    connect_timeout: float = 30.0
    max_message_bytes: int = protocol.CLIENT_MAX_MESSAGE_BYTES
    max_params: int = DEFAULT_MAX_PARAMS
    name: str = "client"
    ga: GAConfig = field(default_factory=GAConfig)
    seed: int | None = None


class ConnectError(Exception):
    """The server could not be reached; the message is one plain sentence."""


def connect(host: str, port: int, timeout: float,
            stop: threading.Event | None = None) -> socket.socket:
    """Connect, retrying refused attempts for ``timeout`` seconds so start order does not matter."""
    deadline = time.monotonic() + timeout
    stop = stop or threading.Event()
    while True:
        try:
            return socket.create_connection((host, port), timeout=max(1.0, timeout))
        except socket.gaierror:
            raise ConnectError(f"The server address {host!r} is not a known host name "
                               "or IP address.") from None
        except OSError as exc:
            if time.monotonic() >= deadline or stop.is_set():
                raise ConnectError(f"The server at {host}:{port} is unreachable "
                                   f"({exc.strerror or exc}).") from exc
        if stop.wait(CONNECT_RETRY_INTERVAL):
            raise ConnectError("Connecting was cancelled.")


class RecvThread(threading.Thread):
    """Runs the tutorial's client loop over one connected socket until ``done`` or an error.

    Afterwards ``outcome`` is ``"done"`` or ``"error"`` (with ``error`` in plain words) or
    ``"stopped"`` when ``stop()`` ended it.
    """

    def __init__(self, buffer_size: int = 1024, recv_timeout: float = 10.0, *,
                 sock: socket.socket, data: Dataset, config: ClientConfig | None = None,
                 on_event: Callable[[Event], None] | None = None):
        super().__init__(name=f"RecvThread-{(config or ClientConfig()).name}", daemon=True)
        self.config = config or ClientConfig()
        self.connection = Connection(sock, buffer_size=buffer_size, recv_timeout=recv_timeout,
                                     idle_timeout=self.config.idle_timeout,
                                     max_message_bytes=self.config.max_message_bytes)
        self.data = data
        self.outcome: str | None = None
        self.error: str | None = None
        self.final_accuracy: float | None = None
        self._on_event = on_event or (lambda event: None)
        self._stop_requested = threading.Event()
        self._forward_passes: dict[str, ForwardPass] = {}  # by model_json: build each model once

    def stop(self) -> None:
        """Ask the loop to end: interrupts training and unblocks a pending receive."""
        self._stop_requested.set()
        self.connection.close()

    def _forward_for(self, model_json: str) -> ForwardPass:
        if model_json not in self._forward_passes:
            count_params(model_json, self.config.max_params)  # before Keras allocates anything
            self._forward_passes[model_json] = ForwardPass(model_from_json(model_json))
        return self._forward_passes[model_json]

    def _request(self, subject: Subject, best_vector) -> Message:
        self.connection.send(Message(subject, {
            "best_model_weights_vector": best_vector,
            "client_id": self.config.name,
            "protocol_version": protocol.PROTOCOL_VERSION,
        }))
        return self.connection.receive(protocol.SERVER_TO_CLIENT)

    def _train(self, message: Message):
        data = message.data
        if not isinstance(data["model_json"], str):
            raise protocol.SchemaError("model_json is not a string")
        forward = self._forward_for(data["model_json"])
        population = protocol.check_population(
            data["population_weights"], data["num_solutions"], forward.num_params)
        server_round = data.get("round", 0)
        self._on_event(Event("model", round=server_round, accuracy=data.get("accuracy")))

        def on_generation(generation: int, best_fitness: float) -> None:
            self._on_event(Event("generation", round=server_round, generation=generation,
                                 fitness=best_fitness))

        result = train(forward, population, self.data, self.config.ga,
                       on_generation=on_generation, should_stop=self._stop_requested.is_set,
                       seed=self.config.seed)
        log.info("%s trained round %s: best fitness %.4g", self.config.name, server_round,
                 result.best_fitness)
        self._on_event(Event("sent", round=server_round, fitness=result.best_fitness))
        return result.best_vector

    def run(self) -> None:
        self._on_event(Event("connected", peer=self.connection.peer))
        try:
            subject, best_vector = Subject.ECHO, None
            while True:
                reply = self._request(subject, best_vector)
                if reply.subject is Subject.DONE:
                    self.final_accuracy = reply.data.get("accuracy")
                    self.outcome = "done"
                    log.info("%s: server says done (accuracy=%s)", self.config.name,
                             self.final_accuracy)
                    self._on_event(Event("done", accuracy=self.final_accuracy))
                    return
                best_vector = self._train(reply)
                if self._stop_requested.is_set():
                    break
                subject = Subject.MODEL
        except ProtocolError as exc:
            if not self._stop_requested.is_set():
                self.outcome, self.error = "error", _plain_reason(exc)
                log.error("%s: %s", self.config.name, self.error)
                self._on_event(Event("error", detail=self.error))
                return
        except Exception as exc:  # report a bug as a failure, not a dead thread
            self.outcome, self.error = "error", f"internal error: {exc!r}"
            log.exception("%s stopped after an internal error", self.config.name)
            self._on_event(Event("error", detail=self.error))
            return
        finally:
            self.connection.close()
        self.outcome = "stopped"
        self._on_event(Event("stopped"))


def _plain_reason(exc: ProtocolError) -> str:
    if isinstance(exc, protocol.PeerClosed):
        return "The server closed the connection before training was done."
    if isinstance(exc, ModelRefused):
        return f"Refused the server's model: {exc}."
    return f"Lost the server: {exc}."
