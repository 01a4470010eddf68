"""Every exception fedga raises on purpose, in one tree (as httpx's ``_exceptions.py``).

::

    FedgaError
    ├── UserError              a user's mistake or a missing resource: str() is one plain
    │   │                      sentence, shown as it is, never a traceback
    │   ├── ConfigError        a setting (flag, window field, Flower run config, secret or
    │   │                      TLS file) cannot be used
    │   ├── DataError          a data file cannot be used
    │   ├── ModelFileError     a --model file cannot be used
    │   ├── CheckpointError    a checkpoint cannot be read
    │   ├── BindError          the server cannot listen on the address
    │   ├── ConnectError       the server cannot be reached
    │   └── DeploymentError    a process of a local Flower deployment did not come up
    └── ProtocolError          a peer broke the protocol or the connection failed: that
        │                      connection ends, the server keeps serving the others
        ├── PeerClosed         the peer closed between messages (a normal end)
        ├── ConnectionLost
        ├── ReceiveTimeout
        ├── MessageTooLarge
        ├── DecodeError
        │   └── ForbiddenGlobal
        ├── SchemaError
        │   └── ModelRefused   a model description we do not build
        ├── Refused            a peer that cannot take part in what the server runs
        ├── AuthError
        ├── TLSError
        └── SecAggError    secure aggregation cannot go on as asked (common.secagg)
            ├── SecAggRefused   a party refuses a message or request the protocol forbids
            │                   now: a reveal that would unmask a client, a late or repeated
            │                   message, a share that fails its authentication
            └── RoundAbandoned  fewer than the threshold of clients remain: the round ends
                                (no connection needs to), the model stays as it was

    Terminated (BaseException, outside the tree: no ``except Exception`` or
                ``except FedgaError`` may swallow a SIGTERM)

Each class owns the sentence a person reads when it ends their run, ``plain_reason``: a
user error's ``str()``, and for a protocol error what a client says of its server (only a
client's run ends by one: a server drops that connection and serves the others).

The modules that raise these re-export them under their old homes (``common.data.DataError``,
``common.protocol.SchemaError``, ...), so either import works.
"""

from __future__ import annotations


class FedgaError(Exception):
    """The root of every exception fedga raises on purpose."""

    @property
    def plain_reason(self) -> str:
        """One plain sentence for the person whose run this ended; this base: ``str()``."""
        return str(self)


# ---- a user's mistakes ------------------------------------------------------------------


class UserError(FedgaError):
    """Something the user can fix; the message is one plain sentence."""


class ConfigError(UserError):
    """A setting cannot be used; the message is one plain sentence."""


class DataError(UserError):
    """A data file cannot be used; the message is one plain sentence naming the file."""


class ModelFileError(UserError):
    """A --model file cannot be used; the message is one plain sentence."""


class CheckpointError(UserError):
    """A checkpoint could not be read; the message is one plain sentence."""


class BindError(UserError):
    """The server could not listen on the address; the message is one plain sentence."""


class ConnectError(UserError):
    """The server could not be reached; the message is one plain sentence."""


class DeploymentError(UserError):
    """A process of the deployment did not come up; the message is one plain sentence."""


# ---- the protocol -----------------------------------------------------------------------


class ProtocolError(FedgaError):
    """A peer broke the protocol or the connection failed; that connection ends."""

    @property
    def plain_reason(self) -> str:
        """What a client says when this ends its connection to the server."""
        return f"Lost the server: {self}."


class PeerClosed(ProtocolError):
    """The peer closed the connection between messages (a normal end)."""

    @property
    def plain_reason(self) -> str:
        return "The server closed the connection before training was done."


class ConnectionLost(ProtocolError):
    """The connection broke (reset, refused, or closed in the middle of a message)."""


class ReceiveTimeout(ProtocolError):
    """No message began within the idle timeout, or one stalled for recv-timeout between
    chunks, or arrived slower than min-rate on average."""


class MessageTooLarge(ProtocolError):
    """A message needed more bytes than the budget allows."""


class DecodeError(ProtocolError):
    """The bytes are not a pickle we accept."""


class ForbiddenGlobal(DecodeError):
    """The pickle names a callable outside the allowed table."""


class SchemaError(ProtocolError):
    """The message decoded but its subject, keys or values are wrong."""


class ModelRefused(SchemaError):
    """The model description is not one we build."""

    @property
    def plain_reason(self) -> str:
        return f"Refused the server's model: {self}."


class Refused(ProtocolError):
    """The peer cannot take part in what this server runs (a plain-pickle peer in fitness
    mode, say); the message says why."""


class AuthError(ProtocolError):
    """The peer did not prove it holds the shared secret, or the two sides disagree on using one."""

    @property
    def plain_reason(self) -> str:
        return _unsafe(self)


class TLSError(ProtocolError):
    """The TLS handshake failed."""

    @property
    def plain_reason(self) -> str:
        return _unsafe(self)


def _unsafe(exc: AuthError | TLSError) -> str:
    """The server was reached, but could not be trusted."""
    return f"Could not talk to the server safely: {exc}."


class SecAggError(ProtocolError):
    """Secure aggregation cannot go on as asked; the message says why."""


class SecAggRefused(SecAggError):
    """A party refuses a message or request the protocol forbids at this point: a reveal that
    would unmask a client, a message late, repeated or from another round, a share that fails
    its authentication. The round goes on without that message."""


class RoundAbandoned(SecAggError):
    """Fewer than ``threshold`` clients remain at ``stage``: the round cannot be unmasked and
    ends with the model unchanged. Not a peer's fault: no connection needs to close."""

    def __init__(self, stage: str, remaining: int, threshold: int) -> None:
        super().__init__(
            f"The secure round was abandoned at {stage}: {remaining} clients were left "
            f"and it needs {threshold}."
        )
        self.stage = stage
        self.remaining = remaining
        self.threshold = threshold


# ---- outside the tree -------------------------------------------------------------------


class Terminated(BaseException):
    """SIGTERM arrived; raised in the main thread so cleanup runs in ``finally`` blocks.

    A BaseException, like KeyboardInterrupt, so no ``except Exception`` swallows it (logging
    does, when the signal lands inside a log call)."""
