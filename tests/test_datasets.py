"""The data-set export: bundled and generated sets split for a federated run."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from common.data import load_dataset
from common.datasets import DATA_SETS, SHARES, Export, export, main
from common.modelspec import dense_chain


def _rows(arrays) -> np.ndarray:
    rows = np.concatenate(arrays)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_the_clients_partition_the_training_part_standardised_on_it_alone(alpha):
    result = export("wine", clients=3, seed=2, alpha=alpha)
    np.testing.assert_array_equal(
        _rows([c.inputs for c in result.clients]), _rows([result.train.inputs])
    )
    total = len(result.train) + len(result.server_test) + len(result.holdout)
    assert total == 178 and len(result.train) == pytest.approx(SHARES[0] * total, abs=1)
    np.testing.assert_allclose(result.train.inputs.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(result.train.inputs.std(axis=0), 1, atol=1e-4)
    # The scaler never saw the other parts: their means are off zero, as fresh data's are.
    assert np.abs(result.holdout.inputs.mean(axis=0)).max() > 0.05
    train, held = (set(map(bytes, part.inputs)) for part in (result.train, result.holdout))
    assert not train & held


def test_the_model_fits_the_features_and_classes():
    result = export("digits", clients=2, seed=0)
    assert dense_chain(result.model_json) == [(64, 32, True, "relu"), (32, 10, True, "softmax")]
    assert result.holdout.outputs.shape[1] == 10 and np.all(result.holdout.outputs.sum(1) == 1)


def test_the_command_writes_files_the_server_and_clients_read(tmp_path):
    assert (
        main(
            [
                "breast-cancer",
                "--clients",
                "3",
                "--dirichlet",
                "0.5",
                "--out",
                str(tmp_path),
                "--seed",
                "1",
            ]
        )
        == 0
    )
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [
        "client_1.npz",
        "client_2.npz",
        "client_3.npz",
        "holdout.npz",
        "model.json",
        "server_test.npz",
    ]
    assert sum(len(load_dataset(str(tmp_path / f"client_{n}.npz"))) for n in (1, 2, 3)) == 341
    assert dense_chain((tmp_path / "model.json").read_text())[0] == (30, 16, True, "relu")


# Making MNIST-1D takes 1-3 s here (and importing its package ~0.7 s): its tests are slow.
@pytest.mark.parametrize(
    ("name", "samples", "features", "classes", "hidden"),
    [
        pytest.param("mnist1d", 5000, 40, 10, 100, marks=pytest.mark.slow),
        ("synthetic", 2000, 20, 4, 32),
    ],
)
def test_a_new_set_splits_into_the_files_the_others_make(
    tmp_path, name, samples, features, classes, hidden
):
    argv = [name, "--clients", "3", "--dirichlet", "0.5", "--out", str(tmp_path), "--seed", "1"]
    assert main(argv) == 0
    files = ["client_1.npz", "client_2.npz", "client_3.npz", "server_test.npz", "holdout.npz"]
    parts = [load_dataset(str(tmp_path / file)) for file in files]
    assert sum(map(len, parts)) == samples
    assert sum(map(len, parts[:3])) == pytest.approx(SHARES[0] * samples, abs=1)
    assert len(parts[4]) == pytest.approx(SHARES[2] * samples, abs=1)
    for part in parts:
        assert part.inputs.shape[1] == features and part.outputs.shape[1] == classes
    # Stratified: each class has the same share of the held-out part as of the whole.
    whole = np.concatenate([part.outputs for part in parts]).mean(axis=0)
    assert np.all(whole > 0)
    np.testing.assert_allclose(parts[4].outputs.mean(axis=0), whole, atol=0.005)
    assert dense_chain((tmp_path / "model.json").read_text()) == [
        (features, hidden, True, "relu"),
        (hidden, classes, True, "softmax"),
    ]


def _parts(result: Export) -> list:
    return [*result.clients, result.server_test, result.holdout]


@pytest.mark.parametrize("name", [pytest.param("mnist1d", marks=pytest.mark.slow), "synthetic"])
def test_the_same_seed_splits_a_new_set_alike(name):
    first, second = (export(name, clients=3, seed=1, alpha=0.5) for _ in range(2))
    assert first.model_json == second.model_json
    for one, two in zip(_parts(first), _parts(second), strict=True):
        np.testing.assert_array_equal(one.inputs, two.inputs)
        np.testing.assert_array_equal(one.outputs, two.outputs)


def test_every_seed_splits_the_same_synthetic_data():
    def whole(result: Export) -> tuple[np.ndarray, np.ndarray]:
        inputs = np.concatenate([part.inputs for part in _parts(result)]).astype(np.float64)
        labels = np.concatenate([part.outputs for part in _parts(result)]).argmax(axis=1)
        # Each split is standardised on its own training part: standardise the whole alike.
        return (inputs - inputs.mean(axis=0)) / inputs.std(axis=0), labels

    one, two = (export("synthetic", clients=3, seed=seed) for seed in (1, 2))
    assert not np.array_equal(one.holdout.outputs, two.holdout.outputs)  # two other splits
    (inputs_1, labels_1), (inputs_2, labels_2) = whole(one), whole(two)
    nearest = cdist(inputs_1, inputs_2).argmin(axis=1)
    assert sorted(nearest) == list(range(len(inputs_2)))  # one row each
    np.testing.assert_allclose(inputs_1, inputs_2[nearest], atol=1e-4)
    np.testing.assert_array_equal(labels_1, labels_2[nearest])


@pytest.mark.slow
def test_making_mnist1d_leaves_the_global_random_streams_as_they_were():
    numpy_state, python_state = np.random.get_state(), random.getstate()
    # The loader, not export: scikit-learn's first import draws from random (via rich).
    inputs, labels = DATA_SETS["mnist1d"].load()
    assert inputs.shape == (5000, 40) and np.array_equal(np.bincount(labels), [500] * 10)
    assert random.getstate() == python_state
    for now, before in zip(np.random.get_state(), numpy_state, strict=True):
        np.testing.assert_array_equal(now, before)
