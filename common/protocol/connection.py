"""One connection's reads and writes: a buffered socket reader that hands the unpickler
exactly one message under a byte budget and a minimum-rate deadline, sends under the same
deadline, TCP keepalive on the socket, the optional TLS and shared-secret handshakes, and
``OSError`` translated to ``ProtocolError`` children at the socket boundary.

A message ends at the pickle's STOP opcode (there is no framing), so a streaming unpickler
reads one message from a persistent buffered reader; bytes past its end stay buffered.

The deadlines, in both directions (as Apache mod_reqtimeout's ``MinRate``): before a
message's first byte a reader waits ``idle_timeout``; from then on no gap between chunks may
exceed ``recv_timeout`` (the tutorial's inactivity timeout), and the whole message has
``recv_timeout`` plus one second per ``min_rate`` KiB that arrived. A slow honest link keeps
extending its deadline; a peer trickling bytes below the floor (a slowloris) is cut.
"""

from __future__ import annotations

import hmac
import io
import logging
import socket
import ssl
import time

from common import security
from common.errors import (
    AuthError,
    ConnectionLost,
    DecodeError,
    MessageTooLarge,
    PeerClosed,
    ProtocolError,
    ReceiveTimeout,
    TLSError,
)
from common.protocol.messages import (
    CLIENT_MAX_MESSAGE_BYTES,
    Message,
    Schema,
    Subject,
    encode,
    validate,
)
from common.protocol.unpickler import RestrictedUnpickler

log = logging.getLogger(__name__)

KIB = 1024
SEND_CHUNK = 64 * KIB  # bytes per send() call, so the send deadline can grow between calls
# TCP keepalive: an idle connection is probed after KEEPALIVE_IDLE s, every KEEPALIVE_INTERVAL
# s, and given up after KEEPALIVE_COUNT unanswered probes: a peer gone without a FIN (NAT
# timeout, pulled cable, a laptop lid) is found in about a minute instead of --idle-timeout.
KEEPALIVE_IDLE = 30
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 3


def keepalive(sock: socket.socket) -> None:
    """Turn TCP keepalive on for ``sock``, with the probe timing above where the platform
    lets us set it. Transparent to the peer: probes are empty segments its TCP answers."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ):
            option = getattr(socket, name, None)  # not on every platform (macOS: before 3.10)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as exc:  # a socketpair (AF_UNIX) in tests, or a socket already closed
        log.debug("no TCP keepalive on this socket: %s", exc)


def _slower_than(min_rate: float) -> str:
    return f"slower than {min_rate:g} KiB/s (--min-rate)"


class _MessageReader:
    """Buffered reads from a socket for one message at a time, under a budget and the
    minimum-rate deadline (see the module's docstring).

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
        self._min_rate = 8.0  # KiB/s
        self._deadline: float | None = None  # set once the message's first byte is here

    def start(self, budget: int, idle_timeout: float, recv_timeout: float, min_rate: float) -> None:
        self._budget, self._used = budget, 0
        self._idle_timeout, self._recv_timeout = idle_timeout, recv_timeout
        self._min_rate = min_rate
        # The idle clock runs until the first byte; from then on the message's deadline.
        self._deadline = time.monotonic() + recv_timeout if self._buffer else None

    def _charge(self, n: int) -> None:
        if self._used + n > self._budget:
            raise MessageTooLarge(
                f"message needs more than {self._budget} bytes (--max-message-bytes)"
            )
        self._used += n

    def _too_slow(self) -> ReceiveTimeout:
        return ReceiveTimeout(f"message arriving {_slower_than(self._min_rate)}")

    def _recv_into(self, view: memoryview) -> int:
        if self._deadline is None:
            timeout = self._idle_timeout
        else:
            timeout = min(self._recv_timeout, self._deadline - time.monotonic())
            if timeout <= 0:
                raise self._too_slow()
        try:
            self._sock.settimeout(timeout)  # inside: it fails once close() closed the socket
            n = self._sock.recv_into(view)
        except socket.timeout:
            if self._deadline is None:
                raise ReceiveTimeout(f"no message within {self._idle_timeout:g} s") from None
            if timeout < self._recv_timeout:  # the rate's deadline came before the gap's
                raise self._too_slow() from None
            raise ReceiveTimeout(
                f"no data for {self._recv_timeout:g} s in the middle of a message"
            ) from None
        except OSError as exc:
            raise ConnectionLost(f"connection broke: {exc.strerror or exc}") from exc
        if n == 0:
            if self._deadline is not None:
                raise ConnectionLost("peer closed the connection in the middle of a message")
            raise PeerClosed("peer closed the connection")
        if self._deadline is None:
            self._deadline = time.monotonic() + self._recv_timeout
        self._deadline += n / (self._min_rate * KIB)  # the bytes that came buy more time
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

    Reads and sends run under the minimum-rate deadline (``recv_timeout`` between chunks,
    ``min_rate`` KiB/s on average after a grace of ``recv_timeout``; see the module's
    docstring); the socket gets TCP keepalive (``keepalive``).

    With ``secret``, messages travel in authenticated envelopes (see ``common.security``);
    on a TLS socket the handshake runs before the first message. Both happen lazily, in
    the thread that first sends or receives, so a slow peer never stalls an accept loop.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        buffer_size: int = 1024,
        recv_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        min_rate: float = 8.0,
        max_message_bytes: int = CLIENT_MAX_MESSAGE_BYTES,
        secret: bytes | None = None,
        server_side: bool = False,
    ):
        self.sock = sock
        keepalive(sock)
        self.recv_timeout = recv_timeout
        self.idle_timeout = idle_timeout
        self.min_rate = min_rate  # KiB/s: the floor below which a message is cut
        self.max_message_bytes = max_message_bytes
        self._reader = _MessageReader(sock, buffer_size)
        self._secret = secret
        self._server_side = server_side
        self._ready = not secret and not isinstance(sock, ssl.SSLSocket)
        self._nonces = b""  # client's then server's, once the hellos are exchanged
        self._sent = self._received = 0
        self.bytes_sent = 0  # on the wire, envelopes included: what a run's traffic costs
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
                raise TLSError(
                    f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
                ) from exc
        if self._secret:
            self._exchange_hellos(self._secret)
        self._ready = True

    def _exchange_hellos(self, secret: bytes) -> None:
        mine = security.new_nonce()
        if self._server_side:
            theirs = self._receive_hello(security.HELLO)
            self._nonces = theirs + mine
            # The server's hello proves it knows the secret, so a client learns of a wrong
            # secret at once instead of by a closed connection.
            proof = security.message_tag(secret, security.TO_CLIENT, self._nonces, 0, b"")
            self._send_raw(security.HELLO.pack(security.MAGIC_HELLO, mine) + proof)
        else:
            self._send_raw(security.HELLO.pack(security.MAGIC_HELLO, mine))
            theirs = self._receive_hello(security.HELLO)
            self._nonces = mine + theirs
            server_proof = self._reader.read(32)
            expected = security.message_tag(secret, security.TO_CLIENT, self._nonces, 0, b"")
            if not hmac.compare_digest(server_proof, expected):
                raise AuthError("the server does not know our shared secret")

    def _receive_hello(self, hello) -> bytes:
        self._reader.start(hello.size + 32, self.idle_timeout, self.recv_timeout, self.min_rate)
        try:
            data = self._reader.read(hello.size)
        except (PeerClosed, ConnectionLost) as exc:
            raise AuthError(
                "peer closed the connection instead of answering the secret's "
                "hello: it may use no secret"
            ) from exc
        magic, nonce = hello.unpack(data)
        if magic != security.MAGIC_HELLO:
            raise AuthError(self._mismatch(data))
        return nonce

    @staticmethod
    def _mismatch(data: bytes | bytearray) -> str:
        if data[0] == security.PICKLE_PROTO_OPCODE:
            return "peer sent plain pickle but a secret is required"
        return "peer sent neither an authenticated message nor plain pickle"

    # -- messages --

    def _receive_payload(self, secret: bytes) -> bytes | bytearray:
        header = self._reader.read(security.ENVELOPE.size)
        magic, length, tag = security.ENVELOPE.unpack(header)
        if magic != security.MAGIC_MESSAGE:
            raise AuthError(self._mismatch(header))
        payload = self._reader.read(length)  # refused before allocating if over the budget
        direction = security.TO_SERVER if self._server_side else security.TO_CLIENT
        expected = security.message_tag(secret, direction, self._nonces, self._received, payload)
        if not hmac.compare_digest(tag, expected):
            raise AuthError(
                "message failed authentication: wrong secret, or replayed, reflected or reordered"
            )
        self._received += 1
        return payload

    def receive(self, schemas: dict[Subject, Schema]) -> Message:
        """Read one message and validate it; raises a ProtocolError child on any failure."""
        self._prepare()
        budget = self.max_message_bytes + (security.ENVELOPE.size if self._secret else 0)
        self._reader.start(budget, self.idle_timeout, self.recv_timeout, self.min_rate)
        source: io.BytesIO | _MessageReader
        if self._secret:
            source = io.BytesIO(self._receive_payload(self._secret))
        else:
            if self._reader.prefix(4) in (security.MAGIC_HELLO, security.MAGIC_MESSAGE):
                raise AuthError("peer sent an authenticated message but no secret is set here")
            source = self._reader
        try:
            obj = RestrictedUnpickler(source).load()
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
        """Send all of ``payload`` under the minimum-rate deadline: not sendall(), whose
        timeout bounds the whole call, but send() in chunks, each byte sent buying time."""
        view = memoryview(payload)
        deadline = time.monotonic() + self.recv_timeout
        sent = 0
        timeout = self.recv_timeout
        try:
            while sent < len(view):
                timeout = min(self.recv_timeout, deadline - time.monotonic())
                if timeout <= 0:
                    raise socket.timeout
                # settimeout inside: it fails on a socket that close() has already closed
                self.sock.settimeout(timeout)
                n = self.sock.send(view[sent : sent + SEND_CHUNK])
                sent += n
                deadline += n / (self.min_rate * KIB)
        except socket.timeout:
            if timeout < self.recv_timeout:  # the rate's deadline came before the gap's
                reason = f"it took our message {_slower_than(self.min_rate)}"
            else:
                reason = f"it took nothing for {self.recv_timeout:g} s"
            raise ConnectionLost(f"could not send to {self.peer}: {reason}") from None
        except OSError as exc:
            raise ConnectionLost(f"could not send to {self.peer}: {exc.strerror or exc}") from exc
        finally:
            self.bytes_sent += sent

    def close(self) -> None:
        """Close the socket; also unblocks a thread waiting in receive()."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected
        self.sock.close()
