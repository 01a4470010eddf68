"""Bounded fuzzing of the decoder: mutated valid messages only ever decode or raise a
ProtocolError, never anything else, and never run anything."""

from __future__ import annotations

import pickle
import socket

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import protocol
from common.protocol import CLIENT_TO_SERVER, SERVER_TO_CLIENT, Message, Subject

SEEDS = [
    protocol.encode(Message(Subject.ECHO, {"best_model_weights_vector": None})),
    protocol.encode(Message(Subject.MODEL, {"best_model_weights_vector": np.ones(22)})),
    protocol.encode(
        Message(
            Subject.MODEL,
            {
                "population_weights": np.ones((3, 4), np.float32),
                "model_json": "{}",
                "num_solutions": 3,
            },
        )
    ),
    pickle.dumps(
        {"subject": "model", "data": {"best_model_weights_vector": np.ones(5)}}, protocol=2
    ),
    pickle.dumps({"subject": "done", "data": None}, protocol=5),
]


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif action == "truncate":
            del data[at:]
        elif action == "splice":
            other = draw(st.sampled_from(SEEDS))
            data[at:] = other[draw(st.integers(0, len(other) - 1)) :]
    return bytes(data)


@pytest.mark.slow  # about 4 s
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=mutated(), to_server=st.booleans())
def test_decoder_raises_only_protocol_errors(payload, to_server):
    left, right = socket.socketpair()
    with left, right:
        right.sendall(payload)
        right.shutdown(socket.SHUT_WR)
        connection = protocol.Connection(
            left, recv_timeout=2, idle_timeout=2, max_message_bytes=2**16
        )
        try:
            message = connection.receive(CLIENT_TO_SERVER if to_server else SERVER_TO_CLIENT)
        except protocol.ProtocolError:
            return
        assert isinstance(message, Message)
