"""Aggregation rules: pure NumPy on flat weight vectors, no sockets, no Keras, no state."""
from __future__ import annotations

import numpy as np


def model_averaging(global_vector: np.ndarray, update_vector: np.ndarray) -> np.ndarray:
    """The tutorial's running average: the new global model is the mean of the two."""
    return (global_vector + update_vector) / 2
