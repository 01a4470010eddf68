"""Checkpoints: the save/load round-trip, refusals of files that are not ours, and the
server's use of them (resume, and an update resent after a crash counted once; a server
optimiser's state carried on)."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from common import atomic, checkpoint, protocol
from common.checkpoint import Checkpoint, CheckpointError
from common.data import XOR_TEST_DATA
from common.errors import ConfigError
from common.global_model import GlobalModel
from common.model import xor_network
from common.protocol import ClientUpdate
from common.server_config import TrainingConfig

NUM_PARAMS = 22  # the XOR model: 2x4 + 4 + 4x2 + 2


def _state(round_: int = 7, sequences=None) -> Checkpoint:
    vector = np.linspace(-2, 2, NUM_PARAMS, dtype=np.float32)
    return Checkpoint(
        vector, round_, 0.75, {"client1-ab": 3, "client2-cd": 5} if sequences is None else sequences
    )


@pytest.mark.parametrize(
    "sequences",
    [{"client1-ab": 3, "client2-cd": 5}, {}],
    ids=["two clients", "no sequenced client"],
)
def test_save_then_load_round_trips(tmp_path, sequences):
    path = tmp_path / "state.npz"
    checkpoint.save(path, _state(sequences=sequences))
    loaded = checkpoint.load(path, NUM_PARAMS)
    np.testing.assert_array_equal(loaded.vector, _state().vector)
    assert loaded.vector.dtype == np.float32
    assert (loaded.round, loaded.accuracy, loaded.sequences) == (7, 0.75, sequences)
    assert os.listdir(tmp_path) == ["state.npz"]  # no temp file left behind


def test_save_replaces_the_previous_state_and_a_crashed_saves_leftover(tmp_path):
    path = tmp_path / "state.npz"
    checkpoint.save(path, _state(round_=1))
    Path(atomic.temp_name(path)).write_bytes(b"half a checkpoint")  # a save killed midway
    checkpoint.save(path, _state(round_=2))
    assert checkpoint.load(path, NUM_PARAMS).round == 2
    assert os.listdir(tmp_path) == ["state.npz"]


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "state.npz"
    checkpoint.save(path, _state(round_=1))
    unsaveable = Checkpoint(_state().vector, 2, 0.5, {"client1": "three"})  # not an int
    with pytest.raises(ValueError):
        checkpoint.save(path, unsaveable)
    assert checkpoint.load(path, NUM_PARAMS).round == 1
    assert os.listdir(tmp_path) == ["state.npz"]


def test_the_rules_state_round_trips_and_a_version_2_file_has_none(tmp_path):
    path = tmp_path / "state.npz"
    moments = {"m": np.linspace(-1, 1, NUM_PARAMS), "v": np.linspace(0, 1e-9, NUM_PARAMS)}
    saved = Checkpoint(
        _state().vector, 7, 0.75, {}, rule="fedadam", rule_state={"rounds": np.int64(7), **moments}
    )
    checkpoint.save(path, saved)
    loaded = checkpoint.load(path, NUM_PARAMS)
    assert loaded.rule == "fedadam" and set(loaded.rule_state) == {"rounds", "m", "v"}
    assert loaded.rule_state["rounds"] == 7
    for name, values in moments.items():  # exactly, in float64
        np.testing.assert_array_equal(loaded.rule_state[name], values)
    # As fedga wrote it before it saved the rule's state:
    vector = _state().vector
    np.savez(
        path,
        format=np.int64(2),
        vector=vector,
        round=np.int64(3),
        accuracy=np.float64(0.5),
        client_ids=np.array([], dtype=np.str_),
        sequences=np.array([], dtype=np.int64),
        best_vector=vector,
        best_round=np.int64(2),
        best_accuracy=np.float64(0.75),
        best_loss=np.float64(0.1),
    )
    old = checkpoint.load(path, NUM_PARAMS)
    assert (old.round, old.best.round, old.rule, old.rule_state) == (3, 2, "", {})


def test_a_damaged_rule_state_is_refused(tmp_path):
    path = tmp_path / "state.npz"
    short = {"rounds": np.int64(1), "velocity": np.zeros(NUM_PARAMS - 1)}
    checkpoint.save(path, Checkpoint(_state().vector, 1, 0.5, {}, None, "fedavgm", short))
    with pytest.raises(CheckpointError, match=r"state\.npz has a damaged fedavgm state\.$"):
        checkpoint.load(path, NUM_PARAMS)


def test_missing_checkpoint_is_one_sentence(tmp_path):
    with pytest.raises(CheckpointError, match=r"^The checkpoint .*nothing\.npz does not exist\.$"):
        checkpoint.load(tmp_path / "nothing.npz", NUM_PARAMS)


def _pickled_object_array(path):
    np.savez(
        path,
        vector=np.array([object()] * NUM_PARAMS, dtype=object),
        round=1,
        accuracy=0.5,
        client_ids=np.array([], dtype=str),
        sequences=np.array([], int),
    )


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


BAD_FILES = {
    "garbage": lambda path: path.write_bytes(b"not a zip file at all"),
    "truncated": lambda path: (
        checkpoint.save(path, _state()),
        path.write_bytes(path.read_bytes()[:300]),
    ),
    "a pickle": lambda path: path.write_bytes(pickle.dumps({"vector": [0.0] * NUM_PARAMS})),
    "object array": _pickled_object_array,
    "an .npy array": lambda path: path.write_bytes(_npy(np.zeros(NUM_PARAMS, np.float32))),
    "missing key": lambda path: np.savez(path, vector=np.zeros(NUM_PARAMS, np.float32)),
    "another model": lambda path: checkpoint.save(
        path, Checkpoint(np.zeros(5, np.float32), 1, 0.5, {})
    ),
    "NaN weights": lambda path: checkpoint.save(
        path, Checkpoint(np.full(NUM_PARAMS, np.nan, np.float32), 1, 0.5, {})
    ),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_file_that_is_not_our_checkpoint_is_refused(tmp_path, name):
    path = tmp_path / "state.npz"
    BAD_FILES[name](path)
    with pytest.raises(CheckpointError, match=r"^The checkpoint .*state\.npz (is|does)"):
        checkpoint.load(path, NUM_PARAMS)


# ---- the server's use: resume, and the duplicate-sequence rule ---------------------------


def _global_model(path, resume=False, target_accuracy=2.0, **training):
    # An unreachable target by default: every update counts and training goes on.
    return GlobalModel(
        xor_network(1),
        XOR_TEST_DATA,
        TrainingConfig(
            checkpoint=str(path),
            resume=resume,
            target_accuracy=target_accuracy,
            seed=1,
            **training,
        ),
    )


def _update(gm, index=1):
    return gm.reply_to_echo().population_weights[index].copy()


def test_every_accepted_update_is_saved_and_resume_continues_from_it(tmp_path):
    path = tmp_path / "state.npz"
    gm = _global_model(path)
    gm.apply_update(ClientUpdate(_update(gm), key=("client1-ab", 1)), "peer")
    gm.apply_update(ClientUpdate(_update(gm)), "peer")  # plain-pickle: counted, not recorded
    saved = checkpoint.load(path, gm.num_params)
    np.testing.assert_array_equal(saved.vector, gm.vector)
    assert (saved.round, saved.accuracy, saved.sequences) == (2, gm.accuracy, {"client1-ab": 1})

    resumed = _global_model(path, resume=True)
    np.testing.assert_array_equal(resumed.vector, gm.vector)
    assert (resumed.round, resumed.accuracy) == (2, gm.accuracy)
    resumed.apply_update(ClientUpdate(_update(resumed), key=("client2-cd", 1)), "peer")
    assert resumed.round == 3
    assert checkpoint.load(path, gm.num_params).sequences == {"client1-ab": 1, "client2-cd": 1}


def test_an_update_resent_after_a_restart_is_not_counted_twice(tmp_path, caplog):
    path = tmp_path / "state.npz"
    gm = _global_model(path)
    update = _update(gm)
    gm.apply_update(ClientUpdate(update, key=("client1-ab", 1)), "peer")
    # The server dies before its reply left; the restarted one gets the same update again.
    resumed = _global_model(path, resume=True)
    before = resumed.vector.copy()
    reply = resumed.apply_update(ClientUpdate(update, key=("client1-ab", 1)), "peer")
    assert reply.subject is protocol.Subject.MODEL  # answered as usual
    assert resumed.round == 1
    np.testing.assert_array_equal(resumed.vector, before)
    assert "resent update=client1-ab#1, already counted: not counted again" in caplog.text
    # Older ones too; a newer one, another client's, and unsequenced ones all count.
    resumed.apply_update(ClientUpdate(update, key=("client1-ab", 0)), "peer")
    assert resumed.round == 1
    for key in (("client1-ab", 2), ("client2-cd", 1), None, None):
        resumed.apply_update(ClientUpdate(update, key=key), "peer")
    assert resumed.round == 5


def test_resuming_a_finished_run_answers_done(tmp_path):
    path = tmp_path / "state.npz"
    gm = _global_model(path, target_accuracy=0.0)  # the first update reaches the target
    gm.apply_update(ClientUpdate(_update(gm), key=("client1-ab", 1)), "peer")
    resumed = _global_model(path, resume=True, target_accuracy=0.0)
    assert resumed.finished.is_set() and resumed.reached_target
    assert resumed.reply_to_echo().subject is protocol.Subject.DONE


def test_resume_without_a_file_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        _global_model(tmp_path / "missing.npz", resume=True)


@pytest.mark.parametrize(
    "data,error",
    [
        ({"sequence": 1}, "needs a client_id"),
        ({"sequence": 1, "client_id": ""}, "needs a client_id"),
        ({"sequence": 1, "client_id": "x" * 257}, "needs a client_id"),
        ({"sequence": -1, "client_id": "c"}, "is not a count"),
        ({"sequence": 1.5, "client_id": "c"}, "is not a count"),
        ({"sequence": True, "client_id": "c"}, "is not a count"),
    ],
)
def test_update_key_refuses_malformed_sequences(data, error):
    with pytest.raises(protocol.SchemaError, match=error):
        protocol.update_key(data)


def test_update_key_of_plain_and_sequenced_updates():
    assert protocol.update_key({"best_model_weights_vector": None}) is None
    assert protocol.update_key({"client_id": "c1"}) is None  # an id alone does not dedupe
    assert protocol.update_key({"client_id": "c1", "sequence": np.int64(4)}) == ("c1", 4)


@pytest.mark.parametrize("aggregation", ["fedavgm", "fedadam", "fedyogi"])
def test_resume_carries_on_a_server_optimisers_steps_exactly(tmp_path, aggregation):
    path = tmp_path / "state.npz"
    rounds = {"aggregation": aggregation, "min_clients": 1}
    gm = _global_model(path, **rounds)
    for sequence in (1, 2):
        gm.apply_update(ClientUpdate(_update(gm), key=("client1-ab", sequence)), "peer")
    resumed = _global_model(path, resume=True, **rounds)
    update = ClientUpdate(_update(gm), key=("client1-ab", 3))
    for model in (gm, resumed):
        model.apply_update(update, "peer")
    np.testing.assert_array_equal(resumed.vector, gm.vector)  # as if it never stopped
    assert resumed.aggregation.state()["rounds"] == 3


def test_resume_without_the_optimisers_state_says_it_starts_afresh(tmp_path, caplog):
    path = tmp_path / "state.npz"
    gm = _global_model(path, aggregation="fedavg", min_clients=1)
    gm.apply_update(ClientUpdate(_update(gm)), "peer")
    resumed = _global_model(path, resume=True, aggregation="fedadam", min_clients=1)
    assert resumed.round == 1 and resumed.aggregation.state() == {}
    assert "holds no fedadam state (it was saved with fedavg): its moments start afresh" in (
        caplog.text
    )


@pytest.mark.parametrize(
    "state",
    [
        {"rounds": np.int64(1), "m": np.zeros(NUM_PARAMS)},  # no "v"
        {"rounds": np.int64(1), "m": np.zeros(NUM_PARAMS), "v": np.float64(1.0)},  # a count
    ],
    ids=["a moment missing", "a moment that is a number"],
)
def test_an_optimisers_state_that_does_not_fit_it_is_refused(tmp_path, state):
    path = tmp_path / "state.npz"
    checkpoint.save(path, Checkpoint(_state().vector, 1, 0.5, {}, None, "fedadam", state))
    with pytest.raises(CheckpointError, match=r"state\.npz has a damaged fedadam state\.$"):
        _global_model(path, resume=True, aggregation="fedadam")


def test_resume_without_a_checkpoint_is_one_sentence():
    with pytest.raises(ConfigError, match=r"^--resume needs --checkpoint PATH\.$"):
        GlobalModel(xor_network(1), XOR_TEST_DATA, TrainingConfig(resume=True))
