"""The wire protocol, one concern per module:

- ``messages``: subjects, schemas, encoding and the checks on a message's values;
- ``unpickler``: the restricted unpickler that decodes a peer's bytes;
- ``connection``: one socket's reads and writes (the only module that imports ``socket``);
- the errors live in ``common.errors``, with the rest of the tree.

Everything is importable from here as before (``from common.protocol import Connection``).
``Connection`` loads on first use, so code that never touches a socket (training, the model
checks, the Flower records) can import this package without loading the socket layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.errors import (
    AuthError,
    ConnectionLost,
    DecodeError,
    ForbiddenGlobal,
    MessageTooLarge,
    PeerClosed,
    ProtocolError,
    ReceiveTimeout,
    SchemaError,
    TLSError,
)
from common.protocol.messages import (
    CLIENT_MAX_MESSAGE_BYTES,
    CLIENT_TO_SERVER,
    COMMON_OPTIONAL_KEYS,
    GA_SETTING_KEYS,
    PICKLE_PROTOCOL,
    PROTOCOL_VERSION,
    SECURE_AGGREGATION_VERSION,
    SERVER_TO_CLIENT,
    ClientUpdate,
    Done,
    Echo,
    Invitation,
    Message,
    ModelRequest,
    Ready,
    Schema,
    SecureMessage,
    ServerReply,
    Subject,
    Waiting,
    check_ga_settings,
    check_population,
    check_weights_vector,
    default_max_message_bytes,
    encode,
    sample_count,
    server_reply,
    update_key,
    validate,
)

if TYPE_CHECKING:
    from common.protocol.connection import Connection

__all__ = [
    "CLIENT_MAX_MESSAGE_BYTES",
    "CLIENT_TO_SERVER",
    "COMMON_OPTIONAL_KEYS",
    "GA_SETTING_KEYS",
    "PICKLE_PROTOCOL",
    "PROTOCOL_VERSION",
    "SECURE_AGGREGATION_VERSION",
    "SERVER_TO_CLIENT",
    "AuthError",
    "ClientUpdate",
    "Connection",
    "ConnectionLost",
    "DecodeError",
    "Done",
    "Echo",
    "ForbiddenGlobal",
    "Invitation",
    "Message",
    "MessageTooLarge",
    "ModelRequest",
    "PeerClosed",
    "ProtocolError",
    "ReceiveTimeout",
    "Ready",
    "Schema",
    "SchemaError",
    "SecureMessage",
    "ServerReply",
    "Subject",
    "Waiting",
    "TLSError",
    "check_ga_settings",
    "check_population",
    "check_weights_vector",
    "default_max_message_bytes",
    "encode",
    "sample_count",
    "server_reply",
    "update_key",
    "validate",
]


def __getattr__(name: str) -> type:
    # PEP 562: the socket layer loads when Connection is first asked for, not with the package.
    if name == "Connection":
        from common.protocol.connection import Connection

        return Connection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
