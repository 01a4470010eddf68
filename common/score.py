"""Score a saved model on a data set it was not trained on.

    python -m common.score MODEL DATA [--labels Y.npy | --label-column C]

MODEL is a ``.keras`` file (``server.py --save-model``) or a Keras JSON architecture; DATA is
read as ``--test-data`` is. Prints the accuracy that decides ``done`` (binary for two outputs,
categorical for more) and the loss the GA minimises.
"""

from __future__ import annotations

import argparse
import sys

from common.data import fit_to_model, load_dataset
from common.errors import UserError
from common.ga import loss
from common.model import load_model_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m common.score", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", help="a .keras file or a Keras JSON architecture")
    parser.add_argument(
        "data",
        help=".npz with inputs and outputs, X.npy (with --labels), or .csv (with --label-column)",
    )
    parser.add_argument("--labels", help="labels .npy for an inputs .npy")
    parser.add_argument("--label-column", help="CSV column holding the labels (name or index)")
    args = parser.parse_args(argv)
    try:
        network = load_model_file(args.model)
        forward = network.forward
        data = fit_to_model(
            load_dataset(args.data, args.labels, args.label_column),
            forward.num_features,
            forward.num_outputs,
            args.data,
        )
    except UserError as exc:  # a bad file: one plain sentence
        parser.exit(1, f"{parser.prog}: {exc}\n")
    probabilities = forward(network.initial_vector[None, :], data.inputs)
    accuracy = forward.accuracy(network.initial_vector, data.inputs, data.outputs)
    print(
        f"{args.model} on {args.data}: accuracy={accuracy:.4f} "
        f"loss={float(loss(probabilities, data.outputs)[0]):.4f} ({len(data)} samples)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
