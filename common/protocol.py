"""The wire protocol: message shapes, safe decoding, and one connection's reads and writes.

Messages are the tutorial's pickled dicts ``{"subject": ..., "data": {...}}`` with no
framing, so peers that send plain ``pickle.dumps`` interoperate. A message ends at the
pickle's STOP opcode: a streaming unpickler reads exactly one message from a persistent
buffered reader, under a byte budget and a deadline. Only the NumPy constructors that
arrays, dtypes and scalars need can be named by a pickle; nothing else is importable.
"""
from __future__ import annotations

import enum
import hmac
import io
import logging
import math
import pickle
import socket
import ssl
import time
from dataclasses import dataclass, field

import numpy as np
from numpy._core import multiarray as _multiarray
from numpy._core import numeric as _numeric

from common import security
from common.operators import OPERATORS

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
PICKLE_PROTOCOL = 4  # what Python 3.8-3.13 peers write by default
CLIENT_MAX_MESSAGE_BYTES = 256 * 2**20  # a client learns the model size only from its first message


class Subject(str, enum.Enum):
    ECHO = "echo"
    MODEL = "model"
    DONE = "done"


@dataclass(frozen=True)
class Schema:
    """Keys a message's ``data`` must have, and the ones it may have."""

    required: frozenset[str]
    optional: frozenset[str] = field(default_factory=frozenset)


# Keys any message may carry; peers that do not know them ignore them.
COMMON_OPTIONAL_KEYS = frozenset({"client_id", "protocol_version"})

# The server's GA settings, sent with each model; plain-pickle peers ignore them, and a
# message may lack any of them (an older server's): the client's own settings apply.
GA_SETTING_KEYS = frozenset({"num_generations", "num_parents_mating", "mutation_percent_genes",
                             "operators", "mutation_step", "stop_fitness"})

CLIENT_TO_SERVER = {
    Subject.ECHO: Schema(frozenset({"best_model_weights_vector"}), COMMON_OPTIONAL_KEYS),
    # sequence: the sender's count of its model updates, so a resent one is applied once
    Subject.MODEL: Schema(frozenset({"best_model_weights_vector"}),
                          COMMON_OPTIONAL_KEYS | {"sequence", "num_samples"}),
}
SERVER_TO_CLIENT = {
    Subject.MODEL: Schema(
        frozenset({"population_weights", "model_json", "num_solutions"}),
        COMMON_OPTIONAL_KEYS | {"round", "accuracy"} | GA_SETTING_KEYS,
    ),
    Subject.DONE: Schema(frozenset(), COMMON_OPTIONAL_KEYS | {"round", "accuracy"}),
}


# ---- errors -----------------------------------------------------------------------------


class ProtocolError(Exception):
    """A peer broke the protocol or the connection failed; that connection ends."""


class PeerClosed(ProtocolError):
    """The peer closed the connection between messages (a normal end)."""


class ConnectionLost(ProtocolError):
    """The connection broke (reset, refused, or closed in the middle of a message)."""


class ReceiveTimeout(ProtocolError):
    """No message began within the idle timeout, or one did not finish within recv-timeout."""


class MessageTooLarge(ProtocolError):
    """A message needed more bytes than the budget allows."""


class DecodeError(ProtocolError):
    """The bytes are not a pickle we accept."""


class ForbiddenGlobal(DecodeError):
    """The pickle names a callable outside the allowed table."""


class SchemaError(ProtocolError):
    """The message decoded but its subject, keys or values are wrong."""


class AuthError(ProtocolError):
    """The peer did not prove it holds the shared secret, or the two sides disagree on using one."""


class TLSError(ProtocolError):
    """The TLS handshake failed."""


# ---- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    subject: Subject
    data: dict

    def to_wire(self) -> dict:
        return {"subject": self.subject.value, "data": self.data}


def encode(message: Message) -> bytes:
    return pickle.dumps(message.to_wire(), protocol=PICKLE_PROTOCOL)


def validate(obj, schemas: dict[Subject, Schema]) -> Message:
    """Check a decoded object against the schemas of one direction; unknown keys are dropped."""
    if not isinstance(obj, dict):
        raise SchemaError(f"message is a {type(obj).__name__}, not a dict")
    if "subject" not in obj:
        raise SchemaError("message has no 'subject'")
    try:
        subject = Subject(obj["subject"])
    except ValueError:
        subject = None
    if subject not in schemas:
        expected = ", ".join(repr(s.value) for s in schemas)
        raise SchemaError(f"unexpected subject {obj['subject']!r} (expected {expected})")
    data = obj.get("data")
    if data is None and subject is Subject.DONE:
        data = {}  # the tutorial's server sends {"subject": "done", "data": None}
    if not isinstance(data, dict):
        raise SchemaError(f"{subject.value!r} message has no 'data' dict")
    schema = schemas[subject]
    missing = schema.required - data.keys()
    if missing:
        raise SchemaError(f"{subject.value!r} message lacks {', '.join(sorted(missing))}")
    unknown = data.keys() - schema.required - schema.optional
    if unknown:
        log.info("ignoring unknown keys in %r message: %s", subject.value,
                 ", ".join(sorted(map(str, unknown))))
    known = {k: v for k, v in data.items() if k not in unknown}
    return Message(subject, known)


def check_weights_vector(vector, length: int, what: str = "best_model_weights_vector") -> np.ndarray:
    """Return ``vector`` as float32 if it is 1-D, real, finite and ``length`` long."""
    if not isinstance(vector, np.ndarray) or vector.dtype.kind not in "fiu":
        raise SchemaError(f"{what} is not a numeric NumPy array")
    if vector.shape != (length,):
        raise SchemaError(f"{what} has shape {vector.shape}, expected ({length},)")
    if not np.all(np.isfinite(vector)):
        raise SchemaError(f"{what} holds NaN or infinity")
    return vector.astype(np.float32, copy=False)


def check_population(population, num_solutions, num_params: int) -> np.ndarray:
    """Return the server's population as a float32 (num_solutions, num_params) array."""
    if not isinstance(num_solutions, int) or not 1 <= num_solutions <= 100_000:
        raise SchemaError(f"num_solutions {num_solutions!r} is not a sane count")
    try:
        population = np.asarray(population)
    except ValueError as exc:
        raise SchemaError(f"population_weights is ragged: {exc}") from exc
    if population.shape != (num_solutions, num_params) or population.dtype.kind not in "fiu":
        raise SchemaError(f"population_weights has shape {population.shape}, expected "
                          f"({num_solutions}, {num_params}) numbers")
    if not np.all(np.isfinite(population)):
        raise SchemaError("population_weights holds NaN or infinity")
    return population.astype(np.float32, copy=False)


def update_key(data: dict) -> tuple[str, int] | None:
    """A model update's (client_id, sequence), or None from a peer that sends no sequence
    (plain-pickle peers: each of their updates counts)."""
    if "sequence" not in data:
        return None
    client_id, sequence = data.get("client_id"), data["sequence"]
    if not isinstance(client_id, str) or not 0 < len(client_id) <= 256:
        raise SchemaError("a message with a sequence needs a client_id of 1-256 characters")
    if not isinstance(sequence, (int, np.integer)) or isinstance(sequence, bool) or sequence < 0:
        raise SchemaError(f"sequence {sequence!r} is not a count")
    return client_id, int(sequence)


def sample_count(data: dict) -> int:
    """How many samples a model update was trained on, for fedavg's weights; 1 when unsent."""
    count = data.get("num_samples", 1)
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) \
            or not 1 <= count <= 10**12:
        raise SchemaError(f"num_samples {count!r} is not a count")
    return int(count)


def check_ga_settings(data: dict, num_solutions: int) -> dict:
    """The GA settings a ``model`` message carries, checked to be sane numbers."""
    settings = {key: data[key] for key in GA_SETTING_KEYS if key in data}
    limits = {"num_generations": (int, 1, 100_000), "num_parents_mating": (int, 1, num_solutions),
              "mutation_percent_genes": ((int, float), 0, 100),
              "mutation_step": ((int, float), 0, 100), "stop_fitness": ((int, float), 0, 1e12)}
    for key, value in settings.items():
        if key == "operators":
            if not isinstance(value, str) or value not in OPERATORS:
                raise SchemaError(f"operators {value!r} is not one of {', '.join(OPERATORS)}")
            continue
        kind, low, high = limits[key]
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            raise SchemaError(f"{key} {value!r} is not a number from {low} to {high}")
    return settings


def default_max_message_bytes(num_params: int, num_solutions: int) -> int:
    """A budget that fits a population of ``num_solutions`` float64 vectors and then some."""
    return (num_solutions + 2) * 8 * num_params + 2**20


# ---- restricted unpickling --------------------------------------------------------------

_ALLOWED_DTYPE_KINDS = "biufc"  # bool, ints, floats, complex: no object, void, strings


class _NdarrayType:
    """Stands in for ``numpy.ndarray`` in a pickle: usable by _reconstruct, not callable."""


_NDARRAY = _NdarrayType()


def _plain_dtype(dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise DecodeError(f"expected a dtype, got {type(dtype).__name__}")
    if dtype.kind not in _ALLOWED_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype:
        raise DecodeError(f"dtype {dtype} is not allowed")
    return dtype


def _dtype(obj, align=False, copy=False):
    if not isinstance(obj, str) or len(obj) > 8:
        raise DecodeError("dtype spec must be a short string")
    return _plain_dtype(np.dtype(obj, bool(align), bool(copy)))


def _reconstruct(subtype, shape, dtype_code):
    # ndarray.__reduce__ writes _reconstruct(ndarray, (0,), b'b') and fills the array in BUILD.
    if subtype is not _NDARRAY or shape != (0,) or dtype_code != b"b":
        raise DecodeError("only empty ndarray placeholders may be reconstructed")
    return _multiarray._reconstruct(np.ndarray, (0,), dtype_code)


def _scalar(dtype, data=None):
    _plain_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise DecodeError("scalar data does not match its dtype")
    return _multiarray.scalar(dtype, data)


def _frombuffer(buffer, dtype, shape, order):
    _plain_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(shape, tuple):
        raise DecodeError("bad array buffer")
    if math.prod(shape) * dtype.itemsize != len(buffer):
        raise DecodeError("array buffer size does not match its shape")
    return _numeric._frombuffer(buffer, dtype, shape, order)


def _codecs_encode(text, encoding="utf-8"):
    # Protocol 2 pickles carry bytes as latin-1 text (numpy writes them so).
    if not isinstance(text, str) or encoding != "latin1":
        raise DecodeError("only latin1 text may be encoded to bytes")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    (module, name): value
    for prefix in ("numpy._core", "numpy.core")
    for module, name, value in (
        (f"{prefix}.multiarray", "_reconstruct", _reconstruct),
        (f"{prefix}.multiarray", "scalar", _scalar),
        (f"{prefix}.numeric", "_frombuffer", _frombuffer),
    )
} | {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler: it reads a declared length before allocating it, so our
    reader's budget check comes first (the C one allocates a BINBYTES8 length up front)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"pickle names {module}.{name}, which is not allowed") from None

    def persistent_load(self, pid):
        raise DecodeError("persistent ids are not allowed")

    def load_build(self):
        state = self.stack[-1]
        inst = self.stack[-2]
        if type(inst) is np.ndarray:
            if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)
                    and isinstance(state[4], (bytes, bytearray))):
                raise DecodeError("bad ndarray state")
            if math.prod(state[1]) * _plain_dtype(state[2]).itemsize != len(state[4]):
                raise DecodeError("array data does not match its shape")
            if isinstance(state[4], bytearray):
                self._adopt_array_data(inst, state)
                return
        elif isinstance(inst, np.dtype):
            # A plain dtype's state only restates its byte order; anything more is refused.
            if not (isinstance(state, tuple) and len(state) == 8 and state[1] in "<>|="
                    and state[2:] == (None, None, None, -1, -1, 0)):
                raise DecodeError("bad dtype state")
        else:
            raise DecodeError(f"BUILD on {type(inst).__name__} is not allowed")
        super().load_build()
        if isinstance(inst, np.dtype):
            _plain_dtype(inst)

    dispatch[pickle.BUILD[0]] = load_build

    def _adopt_array_data(self, placeholder: np.ndarray, state: tuple) -> None:
        # A large read arrives as the bytearray it was received into. ndarray.__setstate__
        # takes only bytes, which would cost one more copy of the whole array, so the array
        # is made over the bytearray instead and put wherever the placeholder was.
        _, shape, dtype, fortran_order, data = state
        array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
        if not dtype.isnative:
            array = array.astype(dtype.newbyteorder("="))  # as __setstate__ does on reading
        self.stack.pop()
        self.stack[-1] = array
        for key, value in self.memo.items():
            if value is placeholder:
                self.memo[key] = array

    def load_bytearray8(self):
        (length,) = pickle.unpack("<Q", self.read(8))
        data = self.read(length)  # read() checks the budget first
        self.append(data if isinstance(data, bytearray) else bytearray(data))

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


# ---- one connection ---------------------------------------------------------------------


class _MessageReader:
    """Buffered reads from a socket for one message at a time, under a budget and deadline.

    ``read``/``readline`` are what the unpickler calls; bytes past the end of a message
    stay buffered for the next one.
    """

    def __init__(self, sock: socket.socket, buffer_size: int):
        self._sock = sock
        self._buffer_size = buffer_size
        self._buffer = bytearray()
        self._budget = 0
        self._used = 0
        self._idle_timeout = 0.0
        self._recv_timeout = 0.0
        self._deadline: float | None = None  # set once the message's first byte is here

    def start(self, budget: int, idle_timeout: float, recv_timeout: float) -> None:
        self._budget, self._used = budget, 0
        self._idle_timeout, self._recv_timeout = idle_timeout, recv_timeout
        # The idle clock runs until the first byte; from then on the whole message has a deadline.
        self._deadline = time.monotonic() + recv_timeout if self._buffer else None

    def _charge(self, n: int) -> None:
        if self._used + n > self._budget:
            raise MessageTooLarge(
                f"message needs more than {self._budget} bytes (--max-message-bytes)")
        self._used += n

    def _recv_into(self, view: memoryview) -> int:
        now = time.monotonic()
        if self._deadline is None:
            timeout = self._idle_timeout
        else:
            timeout = self._deadline - now
            if timeout <= 0:
                raise ReceiveTimeout(f"message not complete within {self._recv_timeout:g} s")
        try:
            self._sock.settimeout(timeout)  # inside: it fails once close() closed the socket
            n = self._sock.recv_into(view)
        except socket.timeout:
            if self._deadline is None:
                raise ReceiveTimeout(f"no message within {self._idle_timeout:g} s") from None
            raise ReceiveTimeout(f"message not complete within {self._recv_timeout:g} s") from None
        except OSError as exc:
            raise ConnectionLost(f"connection broke: {exc.strerror or exc}") from exc
        if n == 0:
            if self._deadline is not None:
                raise ConnectionLost("peer closed the connection in the middle of a message")
            raise PeerClosed("peer closed the connection")
        if self._deadline is None:
            self._deadline = time.monotonic() + self._recv_timeout
        return n

    def _fill(self) -> None:
        chunk = bytearray(self._buffer_size)
        n = self._recv_into(memoryview(chunk))
        self._buffer += memoryview(chunk)[:n]

    def read(self, n: int) -> bytes | bytearray:
        self._charge(n)
        if n <= self._buffer_size:
            while len(self._buffer) < n:
                self._fill()
            data = bytes(self._buffer[:n])
            del self._buffer[:n]
            return data
        # A large read goes straight into one buffer of its final size: linear in n. It is
        # returned as that bytearray, not copied into bytes: array data is used in place.
        out = bytearray(n)
        view = memoryview(out)
        have = min(n, len(self._buffer))
        view[:have] = self._buffer[:have]
        del self._buffer[:have]
        while have < n:
            have += self._recv_into(view[have:])
        return out

    def prefix(self, n: int) -> bytes:
        """The message's first ``n`` bytes, left unread (at most the buffer size)."""
        while len(self._buffer) < n:
            self._fill()
        return bytes(self._buffer[:n])

    def readline(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            if self._used + len(self._buffer) >= self._budget:
                self._charge(len(self._buffer) + 1)  # raises MessageTooLarge
            self._fill()
        return bytes(self.read(end + 1))


class Connection:
    """One peer: sends encoded messages, receives validated ones. Thread-compatible, not
    thread-safe: one thread reads, and writes happen from that same thread.

    With ``secret``, messages travel in authenticated envelopes (see ``common.security``);
    on a TLS socket the handshake runs before the first message. Both happen lazily, in
    the thread that first sends or receives, so a slow peer never stalls an accept loop.
    """

    def __init__(self, sock: socket.socket, *, buffer_size: int = 1024, recv_timeout: float = 10.0,
                 idle_timeout: float = 300.0, max_message_bytes: int = CLIENT_MAX_MESSAGE_BYTES,
                 secret: bytes | None = None, server_side: bool = False):
        self.sock = sock
        self.recv_timeout = recv_timeout
        self.idle_timeout = idle_timeout
        self.max_message_bytes = max_message_bytes
        self._reader = _MessageReader(sock, buffer_size)
        self._secret = secret
        self._server_side = server_side
        self._ready = not secret and not isinstance(sock, ssl.SSLSocket)
        self._nonces = b""  # client's then server's, once the hellos are exchanged
        self._sent = self._received = 0
        try:
            address = sock.getpeername()
        except OSError:
            address = None
        self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "local peer"

    # -- handshakes --

    def _prepare(self) -> None:
        if self._ready:
            return
        if isinstance(self.sock, ssl.SSLSocket):
            try:
                self.sock.settimeout(self.recv_timeout)
                self.sock.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                raise TLSError(f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}") from exc
        if self._secret:
            self._exchange_hellos()
        self._ready = True

    def _exchange_hellos(self) -> None:
        mine = security.new_nonce()
        if self._server_side:
            theirs = self._receive_hello(security.HELLO)
            self._nonces = theirs + mine
            # The server's hello proves it knows the secret, so a client learns of a wrong
            # secret at once instead of by a closed connection.
            proof = security.message_tag(self._secret, security.TO_CLIENT, self._nonces, 0, b"")
            self._send_raw(security.HELLO.pack(security.MAGIC_HELLO, mine) + proof)
        else:
            self._send_raw(security.HELLO.pack(security.MAGIC_HELLO, mine))
            theirs = self._receive_hello(security.HELLO)
            self._nonces = mine + theirs
            proof = self._reader.read(32)
            expected = security.message_tag(self._secret, security.TO_CLIENT, self._nonces, 0, b"")
            if not hmac.compare_digest(proof, expected):
                raise AuthError("the server does not know our shared secret")

    def _receive_hello(self, hello) -> bytes:
        self._reader.start(hello.size + 32, self.idle_timeout, self.recv_timeout)
        try:
            data = self._reader.read(hello.size)
        except (PeerClosed, ConnectionLost) as exc:
            raise AuthError("peer closed the connection instead of answering the secret's "
                            "hello: it may use no secret") from exc
        magic, nonce = hello.unpack(data)
        if magic != security.MAGIC_HELLO:
            raise AuthError(self._mismatch(data))
        return nonce

    @staticmethod
    def _mismatch(data: bytes) -> str:
        if data[0] == security.PICKLE_PROTO_OPCODE:
            return "peer sent plain pickle but a secret is required"
        return "peer sent neither an authenticated message nor plain pickle"

    # -- messages --

    def _receive_payload(self) -> bytes | bytearray:
        header = self._reader.read(security.ENVELOPE.size)
        magic, length, tag = security.ENVELOPE.unpack(header)
        if magic != security.MAGIC_MESSAGE:
            raise AuthError(self._mismatch(header))
        payload = self._reader.read(length)  # refused before allocating if over the budget
        direction = security.TO_SERVER if self._server_side else security.TO_CLIENT
        expected = security.message_tag(self._secret, direction, self._nonces, self._received,
                                        payload)
        if not hmac.compare_digest(tag, expected):
            raise AuthError("message failed authentication: wrong secret, or replayed, "
                            "reflected or reordered")
        self._received += 1
        return payload

    def receive(self, schemas: dict[Subject, Schema]) -> Message:
        """Read one message and validate it; raises a ProtocolError child on any failure."""
        self._prepare()
        budget = self.max_message_bytes + (security.ENVELOPE.size if self._secret else 0)
        self._reader.start(budget, self.idle_timeout, self.recv_timeout)
        if self._secret:
            source = io.BytesIO(self._receive_payload())
        else:
            if self._reader.prefix(4) in (security.MAGIC_HELLO, security.MAGIC_MESSAGE):
                raise AuthError("peer sent an authenticated message but no secret is set here")
            source = self._reader
        try:
            obj = _RestrictedUnpickler(source).load()
        except ProtocolError:
            raise
        except EOFError as exc:
            raise DecodeError("message ended early") from exc
        except Exception as exc:  # the unpickler's errors on hostile bytes are many and varied
            raise DecodeError(f"undecodable message: {type(exc).__name__}: {exc}") from exc
        return validate(obj, schemas)

    def send(self, message: Message) -> None:
        self._prepare()
        payload = encode(message)
        if self._secret:
            direction = security.TO_CLIENT if self._server_side else security.TO_SERVER
            tag = security.message_tag(self._secret, direction, self._nonces, self._sent, payload)
            self._sent += 1
            payload = security.ENVELOPE.pack(security.MAGIC_MESSAGE, len(payload), tag) + payload
        self._send_raw(payload)

    def _send_raw(self, payload: bytes) -> None:
        try:  # settimeout too: it fails on a socket that close() has already closed
            self.sock.settimeout(self.recv_timeout + len(payload) / 2**20)  # ~1 MiB/s floor
            self.sock.sendall(payload)
        except OSError as exc:
            raise ConnectionLost(f"could not send to {self.peer}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the socket; also unblocks a thread waiting in receive()."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected
        self.sock.close()
