"""The server keeps its best model (highest accuracy on its data, ties: lower loss), saves
that one, checkpoints it, and stops with --patience when no better one came for N rounds."""

from __future__ import annotations

import threading

import keras
import numpy as np
import pytest

from common import checkpoint
from common.data import XOR_TEST_DATA
from common.events import Outcome
from common.global_model import GlobalModel
from common.model import weights_to_vector, xor_network
from common.ports import free_port
from common.protocol import ClientUpdate
from common.score import main as score_main
from common.server_config import TrainingConfig
from tests.test_cli import Script


def _xor_solution(confidence: float = 1.0) -> np.ndarray:
    """Hand-set weights that solve XOR: hidden units relu(x1 - x2) and relu(x2 - x1), the
    second class's logit (10 (h1 + h2) - 5) x ``confidence``: below 1, the same answers with
    a higher loss."""
    kernel = np.zeros((2, 4), np.float32)
    kernel[:, 0], kernel[:, 1] = (1, -1), (-1, 1)
    out = np.zeros((4, 2), np.float32)
    out[:2, 1] = 10
    return weights_to_vector(
        [kernel, np.zeros(4), confidence * out, confidence * np.array([0, -5])]
    )


def test_the_best_model_not_the_last_is_kept_checkpointed_and_saved(tmp_path):
    path = tmp_path / "state.npz"
    model = GlobalModel(
        xor_network(1),
        XOR_TEST_DATA,
        TrainingConfig(  # target out of reach
            aggregation="fedavg", patience=2, target_accuracy=1.5, checkpoint=str(path)
        ),
    )
    good, weaker = _xor_solution(), _xor_solution(0.3)
    model.apply_round({"a": ClientUpdate(good)})
    assert (model.best.round, model.best.accuracy) == (1, 1.0)
    model.apply_round({"a": ClientUpdate(weaker)})  # as accurate, higher loss: not better
    assert model.accuracy == 1.0 and model.best.round == 1 and not model.finished.is_set()
    model.apply_round({"a": ClientUpdate(np.zeros_like(good))})  # 2 rounds without a better one
    assert model.finished.is_set() and model.outcome is Outcome.PATIENCE and model.round == 3
    assert model.reply_to_echo().subject.value == "done"

    saved = checkpoint.load(path, model.num_params)
    assert saved.round == 3 and saved.best.round == 1
    np.testing.assert_array_equal(saved.best.vector, good)
    resumed = GlobalModel(
        xor_network(1), XOR_TEST_DATA, TrainingConfig(checkpoint=str(path), resume=True)
    )
    np.testing.assert_array_equal(resumed.best.vector, good)

    model.save_model(str(tmp_path / "best.keras"))
    probabilities = keras.saving.load_model(tmp_path / "best.keras")(XOR_TEST_DATA.inputs)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(probabilities),
        model.forward(good[None, :], XOR_TEST_DATA.inputs)[0],
        atol=1e-6,
    )


def test_a_version_1_checkpoint_resumes_with_its_model_as_the_best(tmp_path):
    path = tmp_path / "old.npz"
    vector = _xor_solution()
    np.savez(
        path,
        vector=vector,
        round=np.int64(4),
        accuracy=np.float64(1.0),
        client_ids=np.array([], dtype=np.str_),
        sequences=np.array([], dtype=np.int64),
    )
    assert checkpoint.load(path, len(vector)).best is None
    resumed = GlobalModel(
        xor_network(1),
        XOR_TEST_DATA,
        TrainingConfig(checkpoint=str(path), resume=True, target_accuracy=1.5),
    )
    assert (resumed.best.round, resumed.best.accuracy) == (4, 1.0)


@pytest.mark.slow
def test_patience_ends_a_headless_run_with_its_own_exit_code():
    port = str(free_port())
    flags = ("--headless", "--host", "127.0.0.1", "--port", port, "--seed", "2")
    with (
        Script(
            "server.py",
            *flags,
            "--patience",
            "3",
            "--target-accuracy",
            "1.5",
            "--expected-clients",
            "2",
        ) as server,
        Script("client1.py", *flags) as client1,
        Script("client2.py", *flags) as client2,
    ):
        codes = [script.finish() for script in (server, client1, client2)]
    assert codes == [3, 3, 3], server.output()  # its clients heard how training ended
    assert "stopping: no better model for 3 rounds (--patience)" in server.output()
    assert "the server stopped: no better model for its patience rounds" in client1.output()


def test_score_reports_a_saved_models_accuracy_on_other_data(tmp_path, capsys):
    xor_network(1).save(_xor_solution(), str(tmp_path / "best.keras"))
    np.savez(
        tmp_path / "xor.npz",
        inputs=XOR_TEST_DATA.inputs,
        outputs=np.argmax(XOR_TEST_DATA.outputs, axis=1),
    )  # integer labels, as users have
    assert score_main([str(tmp_path / "best.keras"), str(tmp_path / "xor.npz")]) == 0
    assert "accuracy=1.0000" in capsys.readouterr().out


def test_stop_answers_a_waiting_round_done_and_keeps_the_best():
    """Stop Training mid-round: the update waiting for its round is answered done at once
    (not after the round timeout) and not counted; the best model stays."""
    events, arrived = [], threading.Event()

    def record(event) -> None:
        events.append(event)
        if event.kind == "scored":
            arrived.set()

    model = GlobalModel(
        xor_network(1),
        XOR_TEST_DATA,
        TrainingConfig(aggregation="fedavg", min_clients=2, round_timeout=60, target_accuracy=1.5),
        on_event=record,
    )
    model.apply_round({"a": ClientUpdate(_xor_solution())})
    replies = []
    waiting = threading.Thread(
        target=lambda: replies.append(
            model.apply_update(ClientUpdate(_xor_solution(0.3), 3, ("b-1", 1)), "b")
        )
    )
    waiting.start()
    assert arrived.wait(10)  # the update is scored as it arrives, before its round closes
    scored = next(e for e in events if e.kind == "scored")
    assert (scored.peer, scored.round, scored.accuracy, scored.samples, scored.detail) == (
        "b",
        2,
        1.0,
        3,
        "b-1",
    )
    model.stop()
    waiting.join(10)
    assert not waiting.is_alive() and replies[0].subject.value == "done"
    assert (model.outcome, model.round, model.best.round) == (Outcome.STOPPED, 1, 1)
    assert events[-1].kind == "stopped" and events[-1].accuracy == 1.0
    model.stop()  # twice is harmless
    assert [e.kind for e in events].count("stopped") == 1
