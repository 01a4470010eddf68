"""The error tree in common/errors.py, the old import paths of its classes, and the protocol
package's split: code that never touches a socket does not load the socket layer."""

import subprocess
import sys
from pathlib import Path

import pytest

from common import errors

ROOT = Path(__file__).resolve().parent.parent

# Where each class was imported from before the tree existed; callers still import it there.
OLD_HOMES = {
    "common.data": ["DataError"],
    "common.model": ["ModelFileError"],
    "common.checkpoint": ["CheckpointError"],
    "common.server": ["BindError"],
    "common.client": ["ConnectError"],
    "common.security": ["ConfigError"],
    "common.modelspec": ["ModelRefused"],
    "common.cli": ["Terminated"],
    "common.protocol": [
        "ProtocolError",
        "PeerClosed",
        "ConnectionLost",
        "ReceiveTimeout",
        "MessageTooLarge",
        "DecodeError",
        "ForbiddenGlobal",
        "SchemaError",
        "AuthError",
        "TLSError",
    ],
}


@pytest.mark.parametrize("module", sorted(OLD_HOMES))
def test_old_homes_export_the_tree_s_classes(module):
    imported = __import__(module, fromlist=["_"])
    for name in OLD_HOMES[module]:
        assert getattr(imported, name) is getattr(errors, name), f"{module}.{name}"


def _family(cls: type) -> set[type]:
    return {cls} | {member for sub in cls.__subclasses__() for member in _family(sub)}


def test_every_fedga_error_is_a_user_error_or_a_protocol_error():
    families = _family(errors.UserError) | _family(errors.ProtocolError)
    assert _family(errors.FedgaError) == families | {errors.FedgaError}
    defined = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert defined == families | {errors.FedgaError, errors.Terminated}


# What a client shows when each error ends its run (RecvThread.error, the window's label).
PLAIN_REASONS = [
    (errors.ConnectError("Could not reach the server."), "Could not reach the server."),
    (errors.ConfigError("--port must be a number."), "--port must be a number."),
    (errors.PeerClosed("closed"), "The server closed the connection before training was done."),
    (
        errors.ModelRefused("the model has more than 10 weights"),
        "Refused the server's model: the model has more than 10 weights.",
    ),
    (
        errors.TLSError("TLS handshake failed: CERTIFICATE_VERIFY_FAILED"),
        "Could not talk to the server safely: TLS handshake failed: CERTIFICATE_VERIFY_FAILED.",
    ),
    (
        errors.AuthError("the peer did not prove the secret"),
        "Could not talk to the server safely: the peer did not prove the secret.",
    ),
    (errors.ConnectionLost("connection reset"), "Lost the server: connection reset."),
    (errors.ReceiveTimeout("no message in 5 s"), "Lost the server: no message in 5 s."),
    (errors.SchemaError("round -1 is not a count"), "Lost the server: round -1 is not a count."),
    (errors.ForbiddenGlobal("os.system"), "Lost the server: os.system."),
]


@pytest.mark.parametrize("error,sentence", PLAIN_REASONS, ids=lambda e: type(e).__name__)
def test_each_error_says_its_own_sentence(error, sentence):
    assert error.plain_reason == sentence


def test_every_error_of_the_tree_says_why_in_its_sentence():
    """So a class added to the tree inherits a sentence that carries its message (PeerClosed's
    needs none; RoundAbandoned, built from its counts, ends a server's round, not a run)."""
    for cls in _family(errors.FedgaError) - {errors.PeerClosed, errors.RoundAbandoned}:
        assert "why" in cls("why").plain_reason, cls


def test_terminated_escapes_every_catch_all_but_base_exception():
    assert issubclass(errors.Terminated, BaseException)
    assert not issubclass(errors.Terminated, Exception)  # so not a FedgaError either


def test_the_two_config_errors_are_one():
    pytest.importorskip("flwr")
    from common.flower.server_app import ConfigError
    from common.security import ConfigError as SecurityConfigError

    assert ConfigError is SecurityConfigError is errors.ConfigError


def _run(code: str) -> list[str]:
    # A fresh interpreter: this one has long since loaded socket.
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.split()


def _loads_socket(module: str) -> bool:
    return _run(f"import sys, {module}; print('socket' in sys.modules)") == ["True"]


@pytest.mark.parametrize("module", ["common.training", "common.modelspec", "common.protocol"])
def test_code_that_never_touches_a_socket_does_not_load_the_socket_layer(module):
    assert not _loads_socket(module)


def test_the_socket_layer_loads_when_a_connection_is_asked_for():
    assert _loads_socket("common.protocol.connection")
    assert _run(
        "import sys; from common.protocol import Connection; "
        "print(Connection.__module__, 'socket' in sys.modules)"
    ) == ["common.protocol.connection", "True"]
