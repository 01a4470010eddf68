"""A real data set in one command: one of scikit-learn's bundled sets, MNIST-1D or a
synthetic set (all made offline, no download), standardised on its training part and split
for a federated run.

    python -m common.datasets digits --clients 3 [--dirichlet 0.5] --out digits [--seed 1]

Writes, in ``--out``:
- ``client_1.npz`` ... ``client_N.npz``: the training part (60%), IID or with Dirichlet label
  skew, one file per client (``client.py --data``);
- ``server_test.npz``: 15%, the server's ``--test-data``: what it evaluates each round, keeps
  its best model on and stops on;
- ``holdout.npz``: 25% the server never sees, to score the saved model on;
- ``model.json``: a Dense model for the set's features and classes (``server.py --model``).
The three parts are stratified by class; the scaler is fit on the training part alone, as
anything learnt from data must be.

Beside scikit-learn's ``digits``, ``breast-cancer``, ``wine`` and ``iris``, two sets where the
hidden layer matters, as a linear model scores clearly lower on them (held-out accuracy on
``--seed 1``: scikit-learn's LogisticRegression against its MLPClassifier with one hidden
layer of the model's width, both fit on the whole training part):
- ``mnist1d``: MNIST-1D (Greydanus, "Scaling down deep learning", 2020), made by the
  ``mnist1d`` package's ``make_dataset`` with its default arguments: 5,000 sequences of 40
  values, 10 classes (its train and test parts together, before our split). Making it takes
  1.0 s here on an idle core, 1.5-3 s on busy ones (and ~0.7 s to import the package): not
  worth a cache. Model 40-100-10. Logistic regression 0.312, MLP 0.513-0.540 over three
  initialisations, on 1,251 samples.
- ``synthetic``: ``sklearn.datasets.make_classification`` with ``SYNTHETIC``: 2,000 samples,
  20 features (4 informative, 2 redundant, 14 noise), 4 classes of 2 clusters each (so a
  linear boundary cannot fit every class), ``class_sep=1.8``, ``flip_y=0.03``, and
  ``random_state=22`` of its own, so every ``--seed`` splits the same data. Model 20-32-4.
  Logistic regression 0.723, MLP 0.846-0.864, on 501 samples (the 25% rounds up by one).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from common.data import Dataset
from common.modelspec import dense_chain_json
from common.split import save_dataset, split_indices, write_clients

log = logging.getLogger("fedga.datasets")

SHARES = (0.60, 0.15, 0.25)  # clients' training part, server's test data, held out

# The synthetic set's parameters; its random_state is its own, not the split's --seed.
SYNTHETIC = {
    "n_samples": 2000,
    "n_features": 20,
    "n_informative": 4,  # 2**4 corners for the 4 x 2 clusters
    "n_redundant": 2,
    "n_classes": 4,
    "n_clusters_per_class": 2,
    "class_sep": 1.8,
    "flip_y": 0.03,
    "random_state": 22,
}


def _scikit_learn(loader: str) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets

    return getattr(sklearn.datasets, loader)(return_X_y=True)


def _synthetic() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    return make_classification(**SYNTHETIC)


def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    import mnist1d.data

    # make_dataset seeds the global np.random and random for its fixed data set: give the
    # caller's streams back, so a seeded run around it draws what it would have drawn.
    states = np.random.get_state(), random.getstate()
    try:
        data = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    finally:
        np.random.set_state(states[0])
        random.setstate(states[1])
    return np.concatenate([data["x"], data["x_test"]]), np.concatenate([data["y"], data["y_test"]])


@dataclass(frozen=True)
class Bundled:
    load: Callable[[], tuple[np.ndarray, np.ndarray]]  # inputs and integer labels
    hidden: int  # units of the default model's hidden layer


DATA_SETS = {
    "breast-cancer": Bundled(partial(_scikit_learn, "load_breast_cancer"), 16),
    "digits": Bundled(partial(_scikit_learn, "load_digits"), 32),
    "iris": Bundled(partial(_scikit_learn, "load_iris"), 16),
    "mnist1d": Bundled(_mnist1d, 100),
    "synthetic": Bundled(_synthetic, 32),
    "wine": Bundled(partial(_scikit_learn, "load_wine"), 16),
}


@dataclass(frozen=True)
class Export:
    train: Dataset  # the clients' parts together: for central references
    clients: list[Dataset]
    server_test: Dataset
    holdout: Dataset
    model_json: str


def export(
    name: str, clients: int, seed: int, alpha: float | None = None, hidden: int | None = None
) -> Export:
    """The split, standardised and one-hot encoded, with its model's JSON."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    bundled = DATA_SETS[name]
    inputs, labels = bundled.load()
    train_x, rest_x, train_y, rest_y = train_test_split(
        inputs, labels, train_size=SHARES[0], stratify=labels, random_state=seed
    )
    test_x, holdout_x, test_y, holdout_y = train_test_split(
        rest_x,
        rest_y,
        train_size=SHARES[1] / (SHARES[1] + SHARES[2]),
        stratify=rest_y,
        random_state=seed,
    )
    scaler = StandardScaler().fit(train_x)
    classes = int(labels.max()) + 1

    def dataset(x: np.ndarray, y: np.ndarray) -> Dataset:
        return Dataset(scaler.transform(x).astype(np.float32), np.eye(classes, dtype=np.float32)[y])

    train = dataset(train_x, train_y)
    parts = split_indices(train_y, clients, np.random.default_rng(seed), alpha)
    return Export(
        train,
        [Dataset(train.inputs[p], train.outputs[p]) for p in parts],
        dataset(test_x, test_y),
        dataset(holdout_x, holdout_y),
        dense_chain_json(
            inputs.shape[1], [(hidden or bundled.hidden, "relu"), (classes, "softmax")]
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.datasets",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=sorted(DATA_SETS), help="the data set")
    parser.add_argument("--clients", type=int, required=True, help="number of client files")
    parser.add_argument("--out", required=True, help="folder for the files")
    parser.add_argument(
        "--dirichlet",
        type=float,
        metavar="ALPHA",
        help="label skew: Dirichlet concentration (default: IID split)",
    )
    parser.add_argument(
        "--hidden",
        type=int,
        metavar="N",
        help="units of the model's hidden layer (default: "
        + ", ".join(f"{bundled.hidden} for {name}" for name, bundled in DATA_SETS.items())
        + ")",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (
        args.clients < 1
        or (args.dirichlet is not None and args.dirichlet <= 0)
        or (args.hidden is not None and args.hidden < 1)
    ):
        parser.error("--clients and --hidden must be at least 1 and --dirichlet greater than 0")
    result = export(args.name, args.clients, args.seed, args.dirichlet, args.hidden)
    empty = [n for n, part in enumerate(result.clients, 1) if len(part) == 0]
    if empty:
        parser.exit(
            2,
            f"{parser.prog}: client(s) {', '.join(map(str, empty))} would get no "
            "samples: use fewer clients or a larger --dirichlet.\n",
        )
    out = Path(args.out)
    features, classes = result.holdout.inputs.shape[1], result.holdout.outputs.shape[1]
    write_clients(out, result.clients, classes)
    save_dataset(out / "server_test.npz", result.server_test, classes)
    save_dataset(out / "holdout.npz", result.holdout, classes)
    (out / "model.json").write_text(result.model_json)
    log.info("%s  Dense model: %d features -> %d classes", out / "model.json", features, classes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
