"""A user's own data and model, as a user runs them: files, flags, processes, results."""

from __future__ import annotations

import contextlib
import csv

import keras
import numpy as np
import pytest

from common.ports import free_port
from common.split import main as split_main
from tests.test_cli import Script

pytestmark = pytest.mark.slow  # each test starts the scripts as processes


def _blobs(path, samples_per_class=40, seed=0):
    """Three well separated classes in 2-D, integer labels."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 4], [4, 0], [-4, -4]], np.float32)
    inputs = np.concatenate([c + rng.normal(0, 0.7, (samples_per_class, 2)) for c in centres])
    labels = np.repeat(np.arange(3), samples_per_class)
    np.savez(path, inputs=inputs.astype(np.float32), outputs=labels)


def test_own_multiclass_data_and_model_train_to_target(tmp_path):
    _blobs(tmp_path / "train.npz")
    _blobs(tmp_path / "test.npz", samples_per_class=20, seed=1)
    assert (
        split_main(
            [
                str(tmp_path / "train.npz"),
                "--clients",
                "2",
                "--dirichlet",
                "1",
                "--out",
                str(tmp_path / "clients"),
                "--seed",
                "3",
            ]
        )
        == 0
    )
    model = keras.Sequential(
        [
            keras.Input(shape=(2,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    (tmp_path / "model.json").write_text(model.to_json())
    port = str(free_port())
    results = {name: str(tmp_path / name) for name in ("final.keras", "history.csv", "plot.png")}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            Script(
                "server.py",
                "--headless",
                "--host",
                "127.0.0.1",
                "--port",
                port,
                "--model",
                str(tmp_path / "model.json"),
                "--test-data",
                str(tmp_path / "test.npz"),
                "--target-accuracy",
                "0.9",
                "--save-model",
                results["final.keras"],
                "--history",
                results["history.csv"],
                "--plot",
                results["plot.png"],
            )
        )
        clients = [
            stack.enter_context(
                Script(
                    "client.py",
                    "--headless",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    port,
                    "--name",
                    f"site{n}",
                    "--data",
                    str(tmp_path / "clients" / f"client_{n}.npz"),
                )
            )
            for n in (1, 2)
        ]
        codes = [script.finish(timeout=100) for script in (server, *clients)]
    outputs = "\n".join(script.output() for script in (server, *clients))
    assert codes == [0, 0, 0], outputs
    with open(results["history.csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and float(rows[-1]["accuracy"]) >= 0.9 and rows[-1]["loss"]
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    saved = keras.saving.load_model(results["final.keras"])  # Keras reads what we wrote
    test = np.load(tmp_path / "test.npz")
    predicted = np.argmax(keras.ops.convert_to_numpy(saved(test["inputs"])), axis=1)
    assert np.mean(predicted == test["outputs"]) >= 0.9


def test_data_that_does_not_fit_the_model_is_one_line(tmp_path):
    np.savez(
        tmp_path / "wide.npz", inputs=np.zeros((4, 3), np.float32), outputs=np.array([0, 1, 1, 0])
    )
    port = str(free_port())
    with (
        Script("server.py", "--headless", "--host", "127.0.0.1", "--port", port) as server,
        Script(
            "client.py",
            "--headless",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--data",
            str(tmp_path / "wide.npz"),
            "--retries",
            "0",
        ) as client,
    ):
        assert client.finish() == 1
        server.process.terminate()
        server.finish()
    errors = [line for line in client.lines if " ERROR " in line]
    assert len(errors) == 1, client.output()
    assert "wide.npz: inputs have shape (4, 3), but the model expects (samples, 2)." in errors[0]
    assert "Traceback" not in client.output()


def test_a_model_without_test_data_is_one_line(tmp_path):
    (tmp_path / "model.json").write_text(
        keras.Sequential(
            [keras.Input(shape=(2,)), keras.layers.Dense(2, activation="softmax")]
        ).to_json()
    )
    with Script(
        "server.py", "--headless", "--port", "0", "--model", str(tmp_path / "model.json")
    ) as server:
        assert server.finish() == 1
    assert "needs its own test set: add --test-data FILE." in server.output()
    assert "Traceback" not in server.output()
