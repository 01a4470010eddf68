"""The windows open without TensorFlow, and Keras work after a window is on screen (saving a
``.keras`` model when the server window closes) does not crash the process: TensorFlow loaded
after Mesa's OpenGL once died with SIGSEGV (see ``common.model.load_keras``)."""
from __future__ import annotations

import os
import time

import keras
import numpy as np

from common.data import XOR_TEST_DATA
from common.modelspec import dense_chain_json
from tests.gui.test_windows_e2e import (STOP_RESERVE, TIME_LIMIT, Window,  # noqa: F401
                                        display, pytestmark)  # (display: a fixture)
from tests.test_startup import HEAVY_IMPORT, PROBED


def test_windows_open_without_tensorflow_and_a_window_saves_with_keras(display, tmp_path):
    (tmp_path / "model.json").write_text(dense_chain_json(2, [(8, "tanh"), (2, "softmax")]))
    np.savez(tmp_path / "xor.npz", inputs=XOR_TEST_DATA.inputs, outputs=XOR_TEST_DATA.outputs)
    env = {**PROBED, "DISPLAY": display, "KIVY_HOME": str(tmp_path / "kivy"),
           "KIVY_NO_ARGS": "1"}
    deadline = time.monotonic() + TIME_LIMIT - STOP_RESERVE
    server = Window("server.py", ["--model", "model.json", "--test-data", "xor.npz",
                                  "--save-model", "final.keras"], env, tmp_path / "server.log",
                    tmp_path, deadline)
    client = Window("client1.py", [], env, tmp_path / "client1.log", tmp_path, deadline)
    try:
        for window in (server, client):
            window.wait_ready(())
            assert not [line for line in window.lines if HEAVY_IMPORT in line], window.lines
    finally:
        codes = [server.stop(), client.stop()]  # SIGTERM: the server then saves its model
    assert codes == [0, 0], "\n".join(server.lines)
    assert not [line for line in client.lines if HEAVY_IMPORT in line]
    ready = next(i for i, line in enumerate(server.lines) if "ready:" in line)
    keras_loaded = server.lines.index(HEAVY_IMPORT + "keras")
    assert ready < keras_loaded, server.lines  # Keras came after the GL window, and lived
    model = keras.saving.load_model(tmp_path / "final.keras")
    assert model.count_params() == 8 * 2 + 8 + 8 * 2 + 2
    assert os.path.getsize(tmp_path / "final.keras") > 0
