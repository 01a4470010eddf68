"""The data-set export: scikit-learn's bundled sets split for a federated run."""

from __future__ import annotations

import numpy as np
import pytest

from common.data import load_dataset
from common.datasets import SHARES, export, main
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
