"""Local data sets: the tutorial's XOR splits (one per client) and the server's test set."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
