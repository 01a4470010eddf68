"""The windows open, build a Dense model and save it as a ``.keras`` file Keras loads, all
without TensorFlow (which, loaded after Mesa's OpenGL, once died with SIGSEGV: see
``common.model.load_keras``; a model that is not a Dense chain still loads it)."""

from __future__ import annotations

import os
import time

import keras
import numpy as np

from common.data import XOR_TEST_DATA
from common.modelspec import dense_chain_json
from common.ports import free_port
from tests.gui.test_windows_e2e import (  # noqa: F401  (display: a fixture)
    STOP_RESERVE,
    TIME_LIMIT,
    Window,
    display,
    pytestmark,
)
from tests.test_startup import HEAVY_IMPORT, PROBED


def test_windows_open_without_tensorflow_and_a_window_saves_a_file_keras_loads(display, tmp_path):
    (tmp_path / "model.json").write_text(dense_chain_json(2, [(8, "tanh"), (2, "softmax")]))
    np.savez(tmp_path / "xor.npz", inputs=XOR_TEST_DATA.inputs, outputs=XOR_TEST_DATA.outputs)
    env = {
        **PROBED,
        "DISPLAY": display,
        "KIVY_HOME": str(tmp_path / "kivy"),
        "KIVY_NO_ARGS": "1",
        "SDL_MOUSE_FOCUS_CLICKTHROUGH": "1",
    }  # (else a first click drops)
    deadline = time.monotonic() + TIME_LIMIT - STOP_RESERVE
    port = str(free_port())
    server = Window(
        "server.py",
        [
            "--model",
            "model.json",
            "--test-data",
            "xor.npz",
            "--save-model",
            "final.keras",
            "--host",
            "127.0.0.1",
            "--port",
            port,
        ],
        env,
        tmp_path / "server.log",
        tmp_path,
        deadline,
    )
    client = Window("client1.py", [], env, tmp_path / "client1.log", tmp_path, deadline)
    try:
        server.wait_ready(("create", "bind", "listen"))
        client.wait_ready(())
        for window in (server, client):
            assert not [line for line in window.lines if HEAVY_IMPORT in line], window.lines
        # Listen builds the model from the fields (the flags filled them): no Keras either.
        server.click_and_wait("create", "Socket Created")
        server.click_and_wait("bind", "Socket Bound to IPv4 & Port Number")
        server.click_and_wait("listen", f"Socket is Listening for Connections on 127.0.0.1:{port}")
        assert not [line for line in server.lines if HEAVY_IMPORT in line], server.lines
    finally:
        codes = [server.stop(), client.stop()]  # SIGTERM: the server then saves its model
    assert codes == [0, 0], "\n".join(server.lines)
    # A Dense chain's .keras file is written without Keras (common.model.write_dense_keras),
    # so a stopped window saves in the seconds a stop allows: Keras is never loaded.
    for window in (server, client):
        assert not [line for line in window.lines if HEAVY_IMPORT in line], window.lines
    model = keras.saving.load_model(tmp_path / "final.keras")
    assert model.count_params() == 8 * 2 + 8 + 8 * 2 + 2
    assert os.path.getsize(tmp_path / "final.keras") > 0
