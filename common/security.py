"""Opt-in protection of the wire: a shared secret that authenticates every message, and TLS.

With a secret, each side first sends a hello with a fresh random nonce, and every message
then travels in an envelope: magic, length, and an HMAC-SHA256 over (direction, both nonces,
sequence number, length, payload). It is checked with ``hmac.compare_digest`` before any
byte is unpickled, so forged, replayed (other connection), reflected (other direction) and
reordered (other sequence) messages are all refused. TLS encrypts and authenticates the
server; the secret authenticates the clients too. Without either, the wire stays the
tutorial's plain pickle.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import struct
from pathlib import Path

from common.errors import ConfigError

SECRET_ENV = "FEDGA_SECRET"
MAGIC_HELLO = b"FGAh"
MAGIC_MESSAGE = b"FGAm"
NONCE_BYTES = 16
HELLO = struct.Struct(f">4s{NONCE_BYTES}s")
ENVELOPE = struct.Struct(">4sQ32s")  # magic, payload length, HMAC-SHA256 tag
TO_SERVER, TO_CLIENT = b"C", b"S"
PICKLE_PROTO_OPCODE = 0x80  # how every pickle of protocol 2 or later begins


def load_secret(secret_file: str | None) -> bytes | None:
    """The shared secret from ``--secret-file`` or else ``$FEDGA_SECRET`` (never a flag's
    value: it would show in ``ps``); None when neither is given."""
    if secret_file:
        try:
            secret = Path(secret_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"Cannot read the secret file {secret_file}: {exc.strerror}."
            ) from None
        source = f"the secret file {secret_file}"
    elif os.environ.get(SECRET_ENV):
        secret, source = os.environ[SECRET_ENV].encode(), f"${SECRET_ENV}"
    else:
        return None
    if len(secret) < 16:
        raise ConfigError(f"The secret in {source} is shorter than 16 bytes.")
    return secret


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def message_tag(
    secret: bytes, direction: bytes, nonces: bytes, sequence: int, payload: bytes | bytearray
) -> bytes:
    mac = hmac.new(
        secret, direction + nonces + struct.pack(">QQ", sequence, len(payload)), hashlib.sha256
    )
    mac.update(payload)
    return mac.digest()


def check_settings(
    secret_file: str | None = None,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
) -> bytes | None:
    """Check one side's settings before anything connects, each path None or empty for off:
    the server's certificate and key, or the client's CA; return the secret (``load_secret``).
    The flags and the windows' fields both come through here; ConfigError says what is wrong."""
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise ConfigError(
                "The TLS certificate and the TLS key go together: give both or neither."
            )
        server_tls_context(tls_cert, tls_key)
    if tls_ca:
        client_tls_context(tls_ca)
    return load_secret(secret_file)


# OpenSSL's reasons in words; a malformed PEM file comes with none ("[SSL] PEM lib").
_TLS_REASONS = {
    None: "a file is not in PEM format",
    "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
    "NO_CERTIFICATE_OR_CRL_FOUND": "it holds no certificate",
}


def _tls_problem(exc: OSError) -> str:
    """Why a TLS file cannot be used, without OpenSSL's source locations."""
    if not isinstance(exc, ssl.SSLError):
        return exc.strerror or str(exc)
    return _TLS_REASONS.get(exc.reason) or exc.reason.replace("_", " ").lower()


def server_tls_context(cert_file: str, key_file: str | None) -> ssl.SSLContext:
    """Serves ``cert_file``'s certificate with ``key_file``'s key (None: the key is in
    ``cert_file`` too, as ``ssl`` allows)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except OSError as exc:  # ssl.SSLError is an OSError
        key = f" with key {key_file}" if key_file else ""
        raise ConfigError(
            f"Cannot use the TLS certificate {cert_file}{key}: {_tls_problem(exc)}."
        ) from None
    return context


def client_tls_context(ca_file: str) -> ssl.SSLContext:
    """Verifies the server's certificate against ``ca_file`` and its name against the host."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except OSError as exc:
        raise ConfigError(f"Cannot use the TLS CA file {ca_file}: {_tls_problem(exc)}.") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
