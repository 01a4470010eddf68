"""Opt-in security over real sockets: the shared-secret envelope both ways, replays, TLS, and
the connection limit. Certificates come from the README's openssl recipe (tests/conftest.py)."""

from __future__ import annotations

import logging

import pytest

from bench.plain_peers import plain_recv, plain_send
from common import protocol, security
from common.data import XOR_TEST_DATA
from tests.conftest import raw_connection

SECRET = b"correct horse battery staple"
ECHO = protocol.encode(protocol.Message(protocol.Subject.ECHO, {"best_model_weights_vector": None}))


def _dropped(events, peer):
    return events.wait_for(lambda e: e.kind == "disconnected" and e.peer == peer)


@pytest.mark.parametrize("federation", ["weights", "fitness"])
def test_training_with_a_shared_secret_reaches_done(server_factory, client_factory, federation):
    listener, events = server_factory(secret=SECRET, federation=federation, min_clients=1)
    client, client_events = client_factory(
        listener.server_address, data=XOR_TEST_DATA, secret=SECRET
    )
    assert client_events.wait_for(lambda e: e.kind == "done").accuracy == 1.0


def test_client_with_a_wrong_secret_is_told_so(server_factory, client_factory):
    listener, _ = server_factory(secret=SECRET)
    client, events = client_factory(listener.server_address, secret=b"another secret, 16+ bytes")
    error = events.wait_for(lambda e: e.kind == "error")
    assert "the server does not know our shared secret" in error.detail


def test_plain_client_against_a_secret_server_is_refused(server_factory, caplog):
    listener, events = server_factory(secret=SECRET)
    with raw_connection(listener.server_address) as sock:
        peer = "%s:%d" % sock.getsockname()
        sock.sendall(ECHO)
        assert "peer sent plain pickle but a secret is required" in _dropped(events, peer).detail
    assert "peer sent plain pickle but a secret is required" in caplog.text


def test_secret_client_against_a_plain_server_is_refused(server_factory, client_factory):
    listener, events = server_factory()
    client, client_events = client_factory(listener.server_address, secret=SECRET)
    dropped = events.wait_for(lambda e: e.kind == "disconnected")
    assert "peer sent an authenticated message but no secret is set here" in dropped.detail
    error = client_events.wait_for(lambda e: e.kind == "error")
    assert "it may use no secret" in error.detail


class _ManualPeer:
    """A client that speaks the envelope by hand, to send what an honest client never would."""

    def __init__(self, address):
        self.sock = raw_connection(address)
        self.nonce = security.new_nonce()
        self.sock.sendall(security.HELLO.pack(security.MAGIC_HELLO, self.nonce))
        reply = _recv_exactly(self.sock, security.HELLO.size + 32)
        _, server_nonce = security.HELLO.unpack(reply[: security.HELLO.size])
        self.nonces = self.nonce + server_nonce
        self.peer = "%s:%d" % self.sock.getsockname()

    def envelope(self, payload, sequence, direction=security.TO_SERVER, secret=SECRET):
        tag = security.message_tag(secret, direction, self.nonces, sequence, payload)
        return security.ENVELOPE.pack(security.MAGIC_MESSAGE, len(payload), tag) + payload


def _recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "server closed early"
        data += chunk
    return data


@pytest.mark.parametrize(
    "attack", ["replayed", "reflected", "reordered", "wrong secret", "other connection"]
)
def test_forged_and_replayed_messages_are_refused(server_factory, attack):
    listener, events = server_factory(secret=SECRET)
    peer = _ManualPeer(listener.server_address)
    with peer.sock:
        if attack == "replayed":
            first = peer.envelope(ECHO, 0)
            peer.sock.sendall(first)
            _recv_exactly(peer.sock, security.ENVELOPE.size)  # the honest reply's header
            peer.sock.sendall(first)
        elif attack == "reflected":
            peer.sock.sendall(peer.envelope(ECHO, 0, direction=security.TO_CLIENT))
        elif attack == "reordered":
            peer.sock.sendall(peer.envelope(ECHO, 1))
        elif attack == "wrong secret":
            peer.sock.sendall(peer.envelope(ECHO, 0, secret=b"x" * 32))
        else:
            other = _ManualPeer(listener.server_address)
            with other.sock:
                peer.sock.sendall(other.envelope(ECHO, 0))
        assert "failed authentication" in _dropped(events, peer.peer).detail


# ---- TLS (certificates: the conftest fixture) ---------------------------------------------


@pytest.fixture
def tls_server(server_factory, certificates):
    return server_factory(
        tls_cert=str(certificates / "server.pem"), tls_key=str(certificates / "server.key")
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_run_reaches_done(tls_server, client_factory, certificates, host):
    listener, _ = tls_server
    port = listener.server_address[1]
    client, events = client_factory(
        (host, port), data=XOR_TEST_DATA, tls_ca=str(certificates / "ca.pem")
    )
    assert events.wait_for(lambda e: e.kind == "done").accuracy == 1.0


def test_tls_client_refuses_a_server_it_cannot_verify(tls_server, client_factory, certificates):
    listener, _ = tls_server
    client, events = client_factory(listener.server_address, tls_ca=str(certificates / "other.pem"))
    assert "CERTIFICATE_VERIFY_FAILED" in events.wait_for(lambda e: e.kind == "error").detail


def test_plain_tcp_peer_against_a_tls_server_is_refused(
    tls_server, client_factory, certificates, caplog
):
    listener, events = tls_server
    with raw_connection(listener.server_address) as sock:
        peer = "%s:%d" % sock.getsockname()
        sock.sendall(ECHO)
        assert "TLS handshake failed" in _dropped(events, peer).detail
    client, client_events = client_factory(
        listener.server_address, data=XOR_TEST_DATA, tls_ca=str(certificates / "ca.pem")
    )
    assert client_events.wait_for(lambda e: e.kind == "done").accuracy == 1.0


# ---- connection limit -------------------------------------------------------------------


def test_connections_beyond_max_clients_are_refused(server_factory, caplog):
    listener, events = server_factory(max_clients=1)
    with raw_connection(listener.server_address) as first:
        events.wait_for(lambda e: e.kind == "connected")
        with raw_connection(listener.server_address) as second:
            assert second.recv(1) == b""  # closed by the server at once
        plain_send(first, "echo", {"best_model_weights_vector": None})
        assert plain_recv(first)["subject"] == "model"  # the first is still served
    assert any(
        r.levelno == logging.WARNING and "(--max-clients)" in r.getMessage() for r in caplog.records
    )
