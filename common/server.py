"""The server's sockets and threads: the window's socket steps, an accept loop
(``ListenThread``) and one handler thread per client (``SocketThread``).

Shaped like ``socketserver``: ``serve_forever``/``shutdown``, a context manager, the real
bound address after binding port 0. Threads report through an ``on_event`` callback. The
settings live in ``common.server_config``, the model the handlers update in
``common.global_model``; their names are importable from here too, as in the tutorial.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable

from common import protocol, security
from common.auto import Auto, known
from common.errors import BindError
from common.events import Event, EventKind
from common.fitness_federation import FITNESS, FitnessFederation
from common.global_model import OVER_SHARE, EventCallback, GlobalModel
from common.protocol import Connection, Message, ProtocolError, SchemaError, Subject
from common.protocol.messages import (
    WAITING_VERSION,
    ClientUpdate,
    ModelRequest,
    ScoreRequest,
    ServerReply,
    Waiting,
)
from common.secure_rounds import SecureRounds
from common.server_config import (
    SECURE_REFUSED,
    NetworkConfig,
    OutputConfig,
    SecurityConfig,
    ServerConfig,
    TrainingConfig,
)

# The names moved to their own modules, still importable from here (the tutorial's
# ``from common.server import GlobalModel``, and the callers that came before the split).
__all__ = [
    "OVER_SHARE",
    "SECURE_REFUSED",
    "BindError",
    "GlobalModel",
    "ListenThread",
    "NetworkConfig",
    "OutputConfig",
    "SecurityConfig",
    "ServerConfig",
    "SocketThread",
    "TrainingConfig",
    "bind_socket",
    "create_listening_socket",
    "new_socket",
    "start_listening",
]

log = logging.getLogger(__name__)


def new_socket(family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket that may rebind a port still in TIME_WAIT, like ``socketserver.TCPServer``
    with ``allow_reuse_address`` (the window's Create Socket step)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _resolve(host: str, port: int, family: int = socket.AF_UNSPEC):
    try:
        infos = socket.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise BindError(f"The address {host!r} is not a known host name or IP address.") from None
    family, _, _, _, address = infos[0]
    return family, address


def _bind_error(exc: OSError, host: str, port: int) -> BindError:
    if exc.errno == errno.EADDRINUSE:
        return BindError(f"Port {port} on {host} is already in use.")
    if exc.errno == errno.EACCES:
        return BindError(f"Port {port} needs more privileges than this user has.")
    if exc.errno == errno.EADDRNOTAVAIL:
        return BindError(f"The address {host} does not belong to this machine.")
    return BindError(f"Cannot listen on {host}:{port}: {exc.strerror}.")


def bind_socket(sock: socket.socket, host: str, port: int) -> None:
    """Bind ``sock`` to ``host:port`` in its own address family (the Bind Socket step).

    On failure ``sock`` stays open and unbound, so a corrected address can be tried again.
    """
    _, address = _resolve(host, port, sock.family)
    try:
        sock.bind(address)
    except OSError as exc:
        raise _bind_error(exc, host, port) from exc


def start_listening(sock: socket.socket) -> None:
    """Listen on a bound socket (the Listen to Connections step)."""
    try:
        sock.listen()
    except OSError as exc:
        raise _bind_error(exc, *sock.getsockname()[:2]) from exc


def create_listening_socket(host: str, port: int) -> socket.socket:
    """The three window steps in one go, in the family the host name resolves to first."""
    family, _ = _resolve(host, port)
    sock = new_socket(family)
    try:
        bind_socket(sock, host, port)
        start_listening(sock)
    except BindError:
        sock.close()
        raise
    return sock


class SocketThread(threading.Thread):
    """Serves one client: receive a request, reply, until the client leaves or misbehaves."""

    def __init__(
        self,
        connection: socket.socket,
        client_info,
        buffer_size: int = 1024,
        recv_timeout: float = 10.0,
        *,
        server: ListenThread,
    ):
        super().__init__(name=f"SocketThread-{client_info[0]}:{client_info[1]}", daemon=True)
        self.server = server  # its settings, model and listeners, as socketserver's handlers
        self.global_model = server.global_model
        network = server.config.network
        self.connection = Connection(
            connection,
            buffer_size=buffer_size,
            recv_timeout=recv_timeout,
            idle_timeout=network.idle_timeout,
            min_rate=network.min_rate,
            secret=server.config.security.secret,
            server_side=True,
            max_message_bytes=(
                protocol.default_max_message_bytes(
                    self.global_model.num_params, self.global_model.num_solutions
                )
                if isinstance(network.max_message_bytes, Auto)
                else network.max_message_bytes
            ),
        )
        self.client_info = client_info
        self.peer = self.connection.peer
        self.answered_done = False  # this client has been told training is over
        self.closed = False
        self._stopping = threading.Event()

    def reply(self, message: Message) -> ServerReply:
        every = self.server.config.network.notice_interval
        if self.server.federation is not None:
            return self.server.federation.reply(self.peer, message, self._notifier(message), every)
        if message.subject is Subject.ECHO:
            return self.global_model.reply_to_echo()
        if message.subject is not Subject.MODEL:
            raise SchemaError(
                f"{message.subject.value!r} messages are for fitness mode; this server "
                "runs weights mode (--federation weights)"
            )
        update = ClientUpdate.from_data(message.data, self.global_model.num_params)
        return self.global_model.apply_update(update, self.peer, self._notifier(message), every)

    def _notifier(self, message: Message) -> Callable[[Waiting], None] | None:
        """How to tell this client why its reply is held, if it can hear it: only clients
        announcing WAITING_VERSION know ``waiting``; a plain-pickle peer would take it for
        its reply."""
        version = message.data.get("protocol_version")
        if not isinstance(version, int) or version < WAITING_VERSION:
            return None
        return lambda notice: self.connection.send(notice.to_message())

    def _hold(self, reply: ModelRequest, notify: Callable[[Waiting], None] | None) -> bool:
        """--round-delay: hold ``reply`` that long, with notices as a round's wait has; True
        if stop() came meanwhile."""
        network = self.server.config.network
        end = time.monotonic() + network.round_delay
        while (remaining := end - time.monotonic()) > 0:
            if self._stopping.wait(
                remaining if notify is None else min(remaining, network.notice_interval)
            ):
                return True
            if notify is not None and end > time.monotonic():
                notify(Waiting(reply.round or 0, 0, end - time.monotonic()))
        return False

    def run(self) -> None:
        self.global_model.join(self.peer)
        self.server.on_event(Event(EventKind.CONNECTED, peer=self.peer))
        reason = ""
        try:
            while True:
                message = self.connection.receive(protocol.CLIENT_TO_SERVER)
                self.server.on_event(
                    Event(EventKind.REQUEST, peer=self.peer, detail=message.subject.value)
                )
                response = self.reply(message)
                notify = self._notifier(message)
                if isinstance(response, (ModelRequest, ScoreRequest)) and notify is not None:
                    # The promise the client's patience is sized by: every wait sends notices.
                    response = dataclasses.replace(
                        response, notice_interval=self.server.config.network.notice_interval
                    )
                if isinstance(response, ModelRequest) and self._hold(response, notify):
                    break
                self.connection.send(response.to_message())
                if response.subject is Subject.DONE:
                    self.answered_done = True
                    self.server.handler_changed()
                    self.server.on_event(Event(EventKind.ANSWERED_DONE, peer=self.peer))
        except protocol.PeerClosed:
            log.info("client %s disconnected", self.peer)
        except ProtocolError as exc:
            if self._stopping.is_set():  # stop() closed the connection under the receive
                log.info("closed the connection to client %s", self.peer)
            else:
                reason = str(exc)
                log.warning("dropping client %s: %s", self.peer, reason)
        except Exception as exc:  # a bug must cost one connection, not the server
            reason = f"internal error: {exc!r}"
            log.exception("dropping client %s after an internal error", self.peer)
        finally:
            self.connection.close()
            self.closed = True
            self.global_model.forget(self.peer)
            if self.server.federation is not None:
                self.server.federation.leave(self.peer)
            self.server.on_event(Event(EventKind.DISCONNECTED, peer=self.peer, detail=reason))
            self.server.handler_changed()

    def stop(self) -> None:
        self._stopping.set()
        self.connection.close()


class ListenThread(threading.Thread):
    """Accepts connections and starts one ``SocketThread`` per client until ``shutdown()``.

    Pass a socket that is already listening (the window's Create/Bind/Listen steps), or
    let it create one on the config's ``network.host``/``network.port``.

    Methods for the caller:

    - __init__(global_model, config=None, *, listening_socket=None, on_event=None)
    - start()                      serve_forever() in this thread; or call it in your own
    - serve_forever(poll_interval=0.2)
    - shutdown(timeout=10.0)       stop accepting, close every connection, join every thread
    - with ListenThread(...) as server:   start() on entry, shutdown() on exit
    - all_answered(), wait_all_answered(timeout=None)   training over, every client told
    - server_address (the real one after binding port 0), handlers, peers_told_done,
      last_connected, global_model, config, federation (fitness mode's or secure rounds',
      else None)

    Methods for its handlers (``SocketThread``, each in its client's thread):

    - on_event(event)              the caller's callback, for the handlers' events too
    - handler_changed()            a client was answered ``done`` or left

    Methods that run under its handlers' lock (``_handlers_lock``, the list of handlers):
    ``_start_handler`` (the accept loop's: prune, count against --max-clients, add),
    ``handlers`` and ``handler_changed``; ``wait_all_answered`` waits on ``_changed``,
    which ``handler_changed`` notifies. The model's own lock is ``GlobalModel``'s: the
    handlers take it through the model's methods, never this thread.
    """

    def __init__(
        self,
        global_model: GlobalModel,
        config: ServerConfig | None = None,
        *,
        listening_socket: socket.socket | None = None,
        on_event: EventCallback | None = None,
    ):
        super().__init__(name="ListenThread", daemon=True)
        self.config = config or ServerConfig()
        self.global_model = global_model
        network, tls = self.config.network, self.config.security
        self.socket = listening_socket or create_listening_socket(network.host, network.port)
        self.server_address = self.socket.getsockname()[:2]
        self._tls = security.server_tls_context(tls.tls_cert, tls.tls_key) if tls.tls_cert else None
        self.on_event = on_event or (lambda event: None)  # its handlers report here too
        self._handlers: list[SocketThread] = []
        self._handlers_lock = threading.Lock()
        self.peers_told_done: set[str] = set()  # every client answered ``done`` so far
        self._changed = threading.Condition()
        self._stop_requested = threading.Event()
        self.last_connected = time.monotonic()  # of the latest client, or of the start
        training = self.config.training.resolved()
        self.federation = (
            FitnessFederation(
                global_model,
                min_clients=known(training.min_clients),
                round_timeout=training.round_timeout,
                seed=training.seed,
                # AUTO: the exact sum, no member's scores trimmed
                byzantine=0 if isinstance(training.byzantine, Auto) else training.byzantine,
                secure=training.secure_aggregation,
                on_event=self.on_event,
            )
            if training.federation == FITNESS
            else SecureRounds(
                global_model,
                min_clients=known(training.min_clients),
                round_timeout=training.round_timeout,
                threshold=training.secagg_threshold,
                on_event=self.on_event,
            )
            if training.secure_aggregation
            else None
        )

    def __enter__(self) -> ListenThread:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def run(self) -> None:
        self.serve_forever()

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        if self.federation is not None:
            self.federation.start()
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            while not self._stop_requested.is_set():
                if not selector.select(poll_interval):
                    continue
                try:
                    connection, client_info = self.socket.accept()
                except OSError:
                    continue  # the client gave up between select and accept
                self._start_handler(connection, client_info)

    def _start_handler(self, connection: socket.socket, client_info) -> None:
        network = self.config.network
        with self._handlers_lock:
            self._handlers = [h for h in self._handlers if h.is_alive()]
            serving = len(self._handlers)
        if serving >= network.max_clients:
            log.warning(
                "refusing client %s:%s: already serving %d clients (--max-clients)",
                *client_info[:2],
                serving,
            )
            connection.close()
            return
        log.info("client %s:%s connected", *client_info[:2])
        self.last_connected = time.monotonic()
        if self._tls is not None:  # the handshake itself runs in the client's own thread
            connection = self._tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        handler = SocketThread(
            connection, client_info, network.buffer_size, network.recv_timeout, server=self
        )
        with self._handlers_lock:
            self._handlers.append(handler)
        handler.start()

    def handler_changed(self) -> None:
        """A handler's client was answered ``done`` or left."""
        with self._handlers_lock:
            self.peers_told_done.update(h.peer for h in self._handlers if h.answered_done)
        with self._changed:
            self._changed.notify_all()

    @property
    def handlers(self) -> list[SocketThread]:
        with self._handlers_lock:
            return list(self._handlers)

    def all_answered(self) -> bool:
        """Training is over and every connected client has been told ``done``."""
        return self.global_model.finished.is_set() and all(
            h.answered_done or h.closed for h in self.handlers
        )

    def wait_all_answered(self, timeout: float | None = None) -> bool:
        with self._changed:
            return self._changed.wait_for(self.all_answered, timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every client connection, and join all threads."""
        self._stop_requested.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        self.socket.close()
        for handler in self.handlers:
            handler.stop()
        if self.federation is not None:  # after: its waiting handlers find their ends closed
            self.federation.shutdown(timeout)
        for handler in self.handlers:
            if handler.is_alive():
                handler.join(timeout)
