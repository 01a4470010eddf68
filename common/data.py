"""Local data sets: the tutorial's XOR splits (one per client) and the server's test set,
and a user's own data files (.npz, a pair of .npy files, or .csv) checked against a model.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import DataError


@dataclass(frozen=True)
class Dataset:
    inputs: np.ndarray
    outputs: np.ndarray  # one-hot rows

    def __len__(self) -> int:
        return len(self.inputs)


def _xor(rows: list[tuple[int, int]]) -> Dataset:
    inputs = np.array(rows, dtype=np.float32)
    outputs = np.eye(2, dtype=np.float32)[[a ^ b for a, b in rows]]  # XOR 0 -> [1, 0], 1 -> [0, 1]
    return Dataset(inputs, outputs)


CLIENT_DATA = {
    "client1": _xor([(1, 1), (1, 0)]),
    "client2": _xor([(0, 1), (0, 0)]),
}
XOR_TEST_DATA = _xor([(1, 1), (1, 0), (0, 1), (0, 0)])


# The field a data file needs beside its path, by its suffix: a .npy file holds only inputs.
SECOND_FIELD = {".npy": "labels", ".csv": "label_column"}
DATA_SUFFIXES = (".npz", ".npy", ".csv")


def second_field(path: str) -> str | None:
    """``labels`` for a .npy file, ``label_column`` for a .csv file, else None."""
    return SECOND_FIELD.get(Path(path.strip()).suffix.lower())


@dataclass(frozen=True)
class DataFile:
    """A data file as a window's fields name it; an empty text means not given."""

    path: str = ""
    labels: str = ""  # for a .npy file
    label_column: str = ""  # for a .csv file

    def load(self) -> Dataset:
        """The data set, reading only the field its kind of file needs; DataError if not."""
        extra = second_field(self.path)
        return load_dataset(
            self.path.strip(),
            self.labels.strip() or None if extra == "labels" else None,
            self.label_column.strip() or None if extra == "label_column" else None,
        )


def describe(dataset: Dataset) -> str:
    """One line a person can check a data file by: "120 samples, 4 features, classes 0: 40,
    1: 41, 2: 39" (a skewed split shows in the counts)."""
    inputs, outputs = np.asarray(dataset.inputs), np.asarray(dataset.outputs)
    features = inputs.shape[1] if inputs.ndim == 2 else "x".join(map(str, inputs.shape[1:]))
    labels = (
        np.argmax(outputs, axis=-1)
        if outputs.ndim == 2 and outputs.shape[1] > 1
        else outputs.reshape(len(outputs), -1)[:, 0]
    )
    values, counts = np.unique(labels, return_counts=True)
    if len(values) > 20:
        classes = f"{len(values)} distinct labels"
    else:
        classes = "classes " + ", ".join(
            f"{value:g}: {count}" for value, count in zip(values, counts)
        )
    return f"{len(inputs)} samples, {features} features, {classes}"


def load_dataset(
    path: str, labels_path: str | None = None, label_column: str | None = None
) -> Dataset:
    """Read ``inputs`` and ``outputs`` from an .npz, from X.npy + Y.npy, or from a .csv whose
    ``label_column`` (a header name or a 0-based index) holds the labels."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"The data file {path} does not exist.")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(file, allow_pickle=False) as arrays:
                missing = {"inputs", "outputs"} - set(arrays.files)
                if missing:
                    raise DataError(
                        f"{path} lacks the array(s) {', '.join(sorted(missing))}; "
                        "it needs 'inputs' and 'outputs'."
                    )
                return Dataset(arrays["inputs"], arrays["outputs"])
        if suffix == ".npy":
            if labels_path is None:
                raise DataError(f"{path} holds only inputs: give the labels with --labels Y.npy.")
            if not Path(labels_path).is_file():
                raise DataError(f"The labels file {labels_path} does not exist.")
            return Dataset(
                np.load(file, allow_pickle=False), np.load(labels_path, allow_pickle=False)
            )
        if suffix == ".csv":
            return _load_csv(file, label_column)
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read {path}: {exc}.") from None
    raise DataError(f"{path} is not a .npz, .npy or .csv file.")


def _load_csv(file: Path, label_column: str | None) -> Dataset:
    if label_column is None:
        raise DataError(
            f"{file} is a CSV file: say which column holds the labels with --label-column."
        )
    with file.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows:
        raise DataError(f"{file} is empty.")
    header = rows[0]
    has_header = not _is_number(header[0])
    if label_column.isdigit():
        index = int(label_column)
    elif has_header and label_column in header:
        index = header.index(label_column)
    else:
        raise DataError(f"{file} has no column {label_column!r}.")
    body = rows[1:] if has_header else rows
    if not body:
        raise DataError(f"{file} has a header and no rows of data.")
    try:
        table = np.array(body, dtype=np.float32)
    except ValueError:
        raise DataError(_csv_fault(file, body, index, first_row=1 + has_header)) from None
    if index >= table.shape[1]:
        raise DataError(f"{file} has {table.shape[1]} columns; there is no column {index}.")
    return Dataset(np.delete(table, index, axis=1), table[:, index])


def _csv_fault(file: Path, body: list[list[str]], label_index: int, first_row: int) -> str:
    """Why ``body`` (the rows under the header, the first being line ``first_row``) is not a
    table of numbers, in one sentence naming the line: a row of another length, or the first
    value that is not a number (in the label column: class names, which need numbering)."""
    for line, row in enumerate(body, start=first_row):
        if len(row) != len(body[0]):
            return f"{file}, line {line}: {len(row)} values where the first row has {len(body[0])}."
        for column, value in enumerate(row):
            if _is_number(value):
                continue
            if column == label_index:
                return (
                    f"{file}, line {line}: the label {value!r} is not a class number; "
                    "labels must be numbered 0, 1, ... alike in every file of the run."
                )
            return f"{file}, line {line}, column {column}: {value!r} is not a number."
    return f"{file} does not read as a table of numbers."


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fit_to_model(dataset: Dataset, num_features: int, num_outputs: int, source: str) -> Dataset:
    """Check ``dataset`` against a model of ``num_features`` inputs and ``num_outputs`` outputs,
    one-hot encoding integer labels; raises DataError naming ``source`` and both shapes."""
    inputs, outputs = np.asarray(dataset.inputs), np.asarray(dataset.outputs)
    if inputs.ndim != 2 or inputs.shape[1] != num_features:
        raise DataError(
            f"{source}: inputs have shape {inputs.shape}, but the model expects "
            f"(samples, {num_features})."
        )
    if inputs.dtype.kind not in "biuf" or not np.all(np.isfinite(inputs)):
        raise DataError(f"{source}: inputs must be finite numbers.")
    if len(outputs) != len(inputs):
        raise DataError(f"{source}: {len(inputs)} input rows but {len(outputs)} labels.")
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1 and num_outputs > 1):
        labels = outputs.reshape(-1)
        if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
            raise DataError(f"{source}: labels are not whole class numbers.")
        labels = labels.astype(np.int64)
        if labels.min() < 0 or labels.max() >= num_outputs:
            raise DataError(
                f"{source}: labels run from {labels.min()} to {labels.max()}, but "
                f"the model has {num_outputs} outputs (classes 0 to "
                f"{num_outputs - 1})."
            )
        outputs = np.eye(num_outputs, dtype=np.float32)[labels]
    elif outputs.ndim != 2 or outputs.shape[1] != num_outputs:
        raise DataError(
            f"{source}: outputs have shape {outputs.shape}, but the model expects "
            f"(samples, {num_outputs})."
        )
    return Dataset(inputs.astype(np.float32), outputs.astype(np.float32))
