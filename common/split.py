"""Split one data set into N client files, IID or with label skew, with a fixed seed.

    python -m common.split DATA [--labels Y.npy | --label-column C] --clients N --out DIR
                           [--dirichlet ALPHA] [--seed S]

Writes DIR/client_1.npz ... DIR/client_N.npz (arrays ``inputs`` and ``outputs``), ready for
``client.py --data``. Without ``--dirichlet`` the split is IID; with it, each class is shared
out by proportions drawn from Dirichlet(ALPHA): small ALPHA (0.1) gives each client a few
classes, large ALPHA (100) approaches IID.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from common.data import DataError, Dataset, load_dataset

log = logging.getLogger("fedga.split")


def class_labels(outputs: np.ndarray) -> np.ndarray:
    """Integer class per sample, from integer labels or one-hot rows."""
    outputs = np.asarray(outputs)
    return (
        np.argmax(outputs, axis=1)
        if outputs.ndim == 2 and outputs.shape[1] > 1
        else outputs.reshape(-1).astype(np.int64)
    )


def split_indices(
    labels: np.ndarray, clients: int, rng: np.random.Generator, alpha: float | None = None
) -> list[np.ndarray]:
    """Sample indices per client: IID when ``alpha`` is None, else Dirichlet label skew."""
    if alpha is None:
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), clients)]
    parts: list[list[int]] = [[] for _ in range(clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * clients)) * len(members)).astype(int)[:-1]
        for part, chunk in zip(parts, np.split(members, cuts)):
            part.extend(chunk.tolist())
    return [np.sort(np.array(part, dtype=np.int64)) for part in parts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.split",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "data",
        help=".npz with inputs and outputs, X.npy (with --labels), or .csv (with --label-column)",
    )
    parser.add_argument("--labels", help="labels .npy for an inputs .npy")
    parser.add_argument("--label-column", help="CSV column holding the labels (name or index)")
    parser.add_argument("--clients", type=int, required=True, help="number of client files")
    parser.add_argument("--out", required=True, help="folder for client_1.npz ... client_N.npz")
    parser.add_argument(
        "--dirichlet",
        type=float,
        metavar="ALPHA",
        help="label skew: Dirichlet concentration (default: IID split)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.clients < 1 or (args.dirichlet is not None and args.dirichlet <= 0):
        parser.error("--clients must be at least 1 and --dirichlet greater than 0")
    try:
        data = load_dataset(args.data, args.labels, args.label_column)
        labels = class_labels(data.outputs)
        parts = split_indices(
            labels, args.clients, np.random.default_rng(args.seed), args.dirichlet
        )
        empty = [number for number, part in enumerate(parts, 1) if len(part) == 0]
        if empty:
            raise DataError(
                f"client(s) {', '.join(map(str, empty))} would get no samples: use "
                "fewer clients or a larger --dirichlet."
            )
    except DataError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    write_clients(
        Path(args.out),
        [Dataset(data.inputs[part], data.outputs[part]) for part in parts],
        int(labels.max()) + 1,
    )
    return 0


def write_clients(out: Path, parts: list[Dataset], num_classes: int) -> None:
    """``out/client_1.npz`` ... one file per part, each logged with its class counts."""
    out.mkdir(parents=True, exist_ok=True)
    for number, part in enumerate(parts, 1):
        save_dataset(out / f"client_{number}.npz", part, num_classes)


def save_dataset(path: Path, data: Dataset, num_classes: int) -> None:
    """An .npz that ``client.py --data`` and ``--test-data`` read, logged with its class counts
    (so a skewed split shows)."""
    np.savez(path, inputs=data.inputs, outputs=data.outputs)
    labels = class_labels(data.outputs)
    counts = " ".join(f"{c}:{np.count_nonzero(labels == c)}" for c in range(num_classes))
    log.info("%s  %d samples  classes %s", path, len(labels), counts)


if __name__ == "__main__":
    sys.exit(main())
