"""Users' own data files: every format loads, and every mismatch is one sentence naming it."""

from __future__ import annotations

import numpy as np
import pytest

from common.data import DataError, fit_to_model, load_dataset
from common.split import class_labels, main as split_main, split_indices


@pytest.fixture
def xor(tmp_path):
    inputs = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], np.float32)
    labels = np.array([0, 1, 1, 0])
    np.savez(tmp_path / "xor.npz", inputs=inputs, outputs=labels)
    np.save(tmp_path / "x.npy", inputs)
    np.save(tmp_path / "y.npy", labels)
    (tmp_path / "xor.csv").write_text("a,b,label\n1,1,0\n1,0,1\n0,1,1\n0,0,0\n")
    return tmp_path


@pytest.mark.parametrize(
    "path,labels,column",
    [
        ("xor.npz", None, None),
        ("x.npy", "y.npy", None),
        ("xor.csv", None, "label"),
        ("xor.csv", None, "2"),
    ],
)
def test_every_format_loads_and_one_hot_encodes(xor, path, labels, column):
    loaded = load_dataset(str(xor / path), labels and str(xor / labels), column)
    data = fit_to_model(loaded, num_features=2, num_outputs=2, source=path)
    np.testing.assert_array_equal(data.outputs, [[1, 0], [0, 1], [0, 1], [1, 0]])
    assert data.inputs.shape == (4, 2) and data.inputs.dtype == np.float32


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda d: load_dataset(str(d / "nope.npz")), "does not exist"),
        (lambda d: load_dataset(str(d / "x.npy")), "give the labels with --labels"),
        (lambda d: load_dataset(str(d / "xor.csv")), "--label-column"),
        (lambda d: load_dataset(str(d / "xor.csv"), label_column="colour"), "no column 'colour'"),
        (
            lambda d: fit_to_model(load_dataset(str(d / "xor.npz")), 3, 2, "xor.npz"),
            r"xor.npz: inputs have shape \(4, 2\), but the model expects \(samples, 3\)",
        ),
        (
            lambda d: fit_to_model(load_dataset(str(d / "xor.npz")), 2, 1, "xor.npz"),
            "labels run from 0 to 1, but the model has 1 outputs",
        ),
    ],
)
def test_mistakes_are_one_plain_sentence(xor, call, match):
    with pytest.raises(DataError, match=match):
        call(xor)


@pytest.mark.parametrize(
    "text,match",
    [
        ("a,b,kind\n1,1,yes\n", r"line 2: the label 'yes' is not a class number; labels must be"),
        ("a,b,kind\n1,1,0\n1,,1\n", r"line 3, column 1: '' is not a number"),
        ("1,1,0\n1,x,1\n", r"line 2, column 1: 'x' is not a number"),  # no header
        ("a,b,kind\n1,1,0\n1,0\n", "line 3: 2 values where the first row has 3"),
        ("a,b,kind\n", "has a header and no rows of data"),
    ],
)
def test_a_csv_that_is_not_numbers_is_refused_naming_its_line(tmp_path, text, match):
    """A user's CSV with class names or a gap gets the line to fix, not "a value somewhere"."""
    (tmp_path / "data.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        load_dataset(str(tmp_path / "data.csv"), label_column="2")


def test_dirichlet_split_skews_labels_and_keeps_every_sample():
    labels = np.repeat(np.arange(4), 250)
    rng = np.random.default_rng(0)
    skewed = split_indices(labels, 5, rng, alpha=0.1)
    iid = split_indices(labels, 5, np.random.default_rng(0))
    for parts in (skewed, iid):
        assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    share = lambda part: np.bincount(labels[part], minlength=4).max() / max(len(part), 1)  # noqa
    assert np.mean([share(p) for p in skewed]) > np.mean([share(p) for p in iid]) + 0.2


def test_split_command_writes_client_files(xor, tmp_path):
    assert (
        split_main(
            [str(xor / "xor.npz"), "--clients", "2", "--out", str(tmp_path / "out"), "--seed", "1"]
        )
        == 0
    )
    parts = [np.load(tmp_path / "out" / f"client_{n}.npz") for n in (1, 2)]
    assert sum(len(p["inputs"]) for p in parts) == 4
    assert sorted(np.concatenate([class_labels(p["outputs"]) for p in parts])) == [0, 0, 1, 1]
