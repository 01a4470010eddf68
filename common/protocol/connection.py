"""One connection's reads and writes: a buffered socket reader that hands the unpickler
exactly one message under a byte budget and a deadline, the optional TLS and shared-secret
handshakes, and ``OSError`` translated to ``ProtocolError`` children at the socket boundary.

A message ends at the pickle's STOP opcode (there is no framing), so a streaming unpickler
reads one message from a persistent buffered reader; bytes past its end stay buffered.
"""

from __future__ import annotations

import hmac
import io
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
                f"message needs more than {self._budget} bytes (--max-message-bytes)"
            )
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

    def __init__(
        self,
        sock: socket.socket,
        *,
        buffer_size: int = 1024,
        recv_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        max_message_bytes: int = CLIENT_MAX_MESSAGE_BYTES,
        secret: bytes | None = None,
        server_side: bool = False,
    ):
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
            server_proof = self._reader.read(32)
            expected = security.message_tag(self._secret, security.TO_CLIENT, self._nonces, 0, b"")
            if not hmac.compare_digest(server_proof, expected):
                raise AuthError("the server does not know our shared secret")

    def _receive_hello(self, hello) -> bytes:
        self._reader.start(hello.size + 32, self.idle_timeout, self.recv_timeout)
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

    def _receive_payload(self) -> bytes | bytearray:
        header = self._reader.read(security.ENVELOPE.size)
        magic, length, tag = security.ENVELOPE.unpack(header)
        if magic != security.MAGIC_MESSAGE:
            raise AuthError(self._mismatch(header))
        payload = self._reader.read(length)  # refused before allocating if over the budget
        direction = security.TO_SERVER if self._server_side else security.TO_CLIENT
        expected = security.message_tag(
            self._secret, direction, self._nonces, self._received, payload
        )
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
        self._reader.start(budget, self.idle_timeout, self.recv_timeout)
        source: io.BytesIO | _MessageReader
        if self._secret:
            source = io.BytesIO(self._receive_payload())
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
        try:  # settimeout too: it fails on a socket that close() has already closed
            self.sock.settimeout(self.recv_timeout + len(payload) / 2**20)  # ~1 MiB/s floor
            self.sock.sendall(payload)
            self.bytes_sent += len(payload)
        except OSError as exc:
            raise ConnectionLost(f"could not send to {self.peer}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the socket; also unblocks a thread waiting in receive()."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected
        self.sock.close()
