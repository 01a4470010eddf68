"""The server's durable state: the global weights, round count, accuracy, the last applied
update sequence number per client id, the best model, and the aggregation rule's own state
(a server optimiser's moments), in one ``.npz`` file.

``save`` replaces the file atomically (``common.atomic``), so after a crash the file holds
either the previous state or the new one, never half of either; a temp file left by a crash
in the middle of a save is overwritten and renamed away by the next save. ``load`` reads
with ``allow_pickle=False``: a checkpoint is plain arrays, and a tampered one cannot run code.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.atomic import replacing
from common.errors import CheckpointError


# 2 added the best model, 3 the rule's state; a file without a version is 1
FORMAT_VERSION = 3
RULE_PREFIX = "rule_"  # the rule's state arrays, each under this prefix and its own name


@dataclass(frozen=True)
class Best:
    """The global model that scored highest on the server's data so far (ties: lower loss)."""

    vector: np.ndarray
    round: int
    accuracy: float
    loss: float

    def beaten_by(self, accuracy: float, loss: float) -> bool:
        return (accuracy, -loss) > (self.accuracy, -self.loss)


@dataclass
class Checkpoint:
    """What a server needs to carry on where it stopped."""

    vector: np.ndarray
    round: int
    accuracy: float
    sequences: dict[str, int] = field(default_factory=dict)  # client id -> last applied sequence
    best: Best | None = None  # None in a version 1 file: the current model is the best known
    rule: str = ""  # the aggregation whose state ``rule_state`` is ("" before version 3)
    rule_state: dict[str, np.ndarray] = field(default_factory=dict)  # Aggregation.state()


def save(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically and durably."""
    ids = list(checkpoint.sequences)
    best = checkpoint.best or Best(checkpoint.vector, checkpoint.round, checkpoint.accuracy, np.inf)
    rule_state: dict[str, Any] = {
        RULE_PREFIX + name: value for name, value in checkpoint.rule_state.items()
    }
    # A file object: given a name, np.savez would append ".npz" to one without it.
    with replacing(path) as temp, open(temp, "wb") as file:
        np.savez(
            file,
            format=np.int64(FORMAT_VERSION),
            vector=checkpoint.vector,
            round=np.int64(checkpoint.round),
            accuracy=np.float64(checkpoint.accuracy),
            client_ids=np.array(ids, dtype=np.str_),
            sequences=np.array([checkpoint.sequences[i] for i in ids], dtype=np.int64),
            best_vector=best.vector,
            best_round=np.int64(best.round),
            best_accuracy=np.float64(best.accuracy),
            best_loss=np.float64(best.loss),
            rule=np.str_(checkpoint.rule),
            **rule_state,
        )


def load(path: str | os.PathLike, num_params: int) -> Checkpoint:
    """Read a checkpoint for a model of ``num_params`` weights; CheckpointError if it is
    missing, unreadable, or not one of ours."""
    try:
        # Our own file object: np.load leaks the one it opens when the zip is corrupt.
        with open(path, "rb") as file:
            arrays = np.load(file, allow_pickle=False)
            if not isinstance(arrays, np.lib.npyio.NpzFile):  # a lone .npy array
                raise ValueError("it holds one array, not a .npz archive")
            vector = arrays["vector"]
            round_, accuracy = arrays["round"], arrays["accuracy"]
            ids, sequences = arrays["client_ids"], arrays["sequences"]
            version = int(arrays["format"]) if "format" in arrays.files else 1
            if version > FORMAT_VERSION:
                raise ValueError(
                    f"it is format {version}, newer than this fedga reads ({FORMAT_VERSION})"
                )
            stored_best = (
                None
                if version < 2
                else (
                    arrays["best_vector"],
                    arrays["best_round"],
                    arrays["best_accuracy"],
                    arrays["best_loss"],
                )
            )
            rule = str(arrays["rule"]) if version >= 3 else ""
            rule_state = {
                name.removeprefix(RULE_PREFIX): arrays[name]
                for name in arrays.files
                if name.startswith(RULE_PREFIX)
            }
    except FileNotFoundError:
        raise CheckpointError(f"The checkpoint {os.fspath(path)} does not exist.") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"The checkpoint {os.fspath(path)} is unreadable: {exc}.") from exc
    if (
        vector.shape != (num_params,)
        or vector.dtype.kind != "f"
        or not np.all(np.isfinite(vector))
        or round_.shape != ()
        or round_.dtype.kind != "i"
        or round_ < 0
        or accuracy.shape != ()
        or accuracy.dtype.kind != "f"
        or ids.ndim != 1
        or ids.dtype.kind != "U"
        or sequences.shape != ids.shape
        or sequences.dtype.kind != "i"
    ):
        raise CheckpointError(
            f"The checkpoint {os.fspath(path)} does not fit this model "
            f"({num_params} weights) or is not a fedga checkpoint."
        )
    best = None
    if stored_best is not None:
        best_vector, best_round, best_accuracy, best_loss = stored_best
        if (
            best_vector.shape != vector.shape
            or best_vector.dtype.kind != "f"
            or not np.all(np.isfinite(best_vector))
            or best_round.dtype.kind != "i"
            or best_accuracy.dtype.kind != "f"
            or best_loss.dtype.kind != "f"
        ):
            raise CheckpointError(f"The checkpoint {os.fspath(path)} has a damaged best model.")
        best = Best(
            best_vector.astype(np.float32), int(best_round), float(best_accuracy), float(best_loss)
        )
    for value in rule_state.values():  # a count, or a vector of the model's size
        if (
            value.shape not in ((), vector.shape)
            or value.dtype.kind not in "fi"
            or not np.all(np.isfinite(value))
        ):
            raise CheckpointError(f"The checkpoint {os.fspath(path)} has a damaged {rule} state.")
    return Checkpoint(
        vector=vector.astype(np.float32),
        round=int(round_),
        accuracy=float(accuracy),
        sequences=dict(zip(ids.tolist(), sequences.tolist())),
        best=best,
        rule=rule,
        rule_state=rule_state,
    )
