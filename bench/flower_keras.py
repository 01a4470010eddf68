"""What users pick instead of a GA: Flower's own FedAvg strategy with Keras ``fit`` on every
node, on Flower's simulation in this one process, with the outputs ``server.py`` writes (a
history CSV, the best model on the server's test data), so ``bench.real_data`` scores both
alike. Bench-only: the baseline fedga is measured against, not part of fedga.

    python -m bench.flower_keras --data FOLDER --model model.json --test-data server_test.npz
        [--nodes 3] [--rounds 20] [--learning-rate 0.01] [--epochs 1] [--batch-size 32]
        [--history h.csv] [--save-model best.keras] [--seed S]

Flower 1.42's Message API, as its quickstart-tensorflow shows it: each round every node puts
the global weights into a Keras model, runs ``fit`` on its own ``client_<i>.npz`` with a
fresh Adam, and answers its weights and sample count; ``FedAvg.start`` averages them by
sample count for ``--rounds`` rounds and calls ``evaluate_fn`` after each, which evaluates
the global model on the server's test data (as fedga's server does, with ``common.model``)
and keeps the best (ties: lower loss). Not handicapped: each node process compiles its model
once and zeroes the optimizer's state per round instead of building and compiling anew, which
costs the same result ~1 s more a round here (a new ``tf.function`` trace each time).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from common.checkpoint import Best
from common.data import load_dataset
from common.events import Event
from common.flower import log_to_stderr
from common.flower.__main__ import quiet_flower
from common.ga import loss
from common.model import Network, load_keras, vector_to_weights, weights_to_vector
from common.results import History

log = logging.getLogger("fedga.bench")


@functools.cache  # per node process (a Ray worker): compiled once, traced once
def _compiled(model_json: str, learning_rate: float):
    keras = load_keras()
    model = keras.models.model_from_json(model_json)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy")
    return model


def _fresh_optimizer_state(model) -> None:
    """A new Adam's state (step 0, zero moments), keeping the traced training step."""
    for variable in model.optimizer.variables:
        if variable.name != "learning_rate":
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))


def make_client_app(
    data_folder: str, model_json: str, learning_rate: float, epochs: int, batch_size: int
):
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        data = load_dataset(str(Path(data_folder) / f"client_{partition + 1}.npz"))
        model = _compiled(model_json, learning_rate)
        model.set_weights(message.content["arrays"].to_numpy_ndarrays())
        if model.optimizer.built:
            _fresh_optimizer_state(model)
        fitted = model.fit(
            data.inputs, data.outputs, epochs=epochs, batch_size=batch_size, verbose=0
        )
        return Message(
            RecordDict(
                {
                    "arrays": ArrayRecord([np.asarray(w) for w in model.get_weights()]),
                    "metrics": MetricRecord(
                        {"num-examples": len(data), "train_loss": float(fitted.history["loss"][-1])}
                    ),
                }
            ),
            reply_to=message,
        )

    return app


class NoSilentRounds(FedAvg):
    """FedAvg, except that a round where every node failed ends the run: ``start`` would
    carry on with the old weights, and the bench would time a broken run."""

    def aggregate_train(self, server_round: int, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            raise RuntimeError(f"round {server_round}: no node answered usably")
        return arrays, metrics


class CentralEvaluation:
    """FedAvg's ``evaluate_fn``: the global model on the server's test data, one history row
    per round (the columns of ``server.py --history``), and the best model so far."""

    def __init__(self, network: Network, test_data, history: str | None):
        self.network, self.test_data = network, test_data
        self.history = History(history) if history else None
        self.best: Best | None = None
        self.rounds = 0  # rounds evaluated

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        vector = weights_to_vector(arrays.to_numpy_ndarrays())
        probabilities = self.network.forward(vector[None, :], self.test_data.inputs)
        accuracy = self.network.forward.accuracy(
            vector, self.test_data.inputs, self.test_data.outputs
        )
        round_loss = float(loss(probabilities, self.test_data.outputs)[0])
        if server_round and (self.best is None or self.best.beaten_by(accuracy, round_loss)):
            self.best = Best(vector, server_round, accuracy, round_loss)
        self.rounds = server_round
        if server_round and self.history:
            self.history(
                Event(
                    "update", peer="fedavg", round=server_round, accuracy=accuracy, loss=round_loss
                )
            )
        log.info("round %d: accuracy=%.4f loss=%.4f", server_round, accuracy, round_loss)
        return MetricRecord({"accuracy": accuracy, "loss": round_loss})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flower_keras", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--data",
        required=True,
        metavar="FOLDER",
        help="client_1.npz ... client_N.npz, one per node",
    )
    parser.add_argument("--model", required=True, metavar="FILE", help="Keras JSON (Dense)")
    parser.add_argument(
        "--test-data",
        required=True,
        metavar="FILE",
        help="the server's test set: evaluated after every round",
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=None, help="initial weights' seed")
    parser.add_argument("--history", metavar="FILE.csv")
    parser.add_argument("--save-model", metavar="FILE.keras", help="the best global model")
    args = parser.parse_args(argv)
    log_to_stderr("flower-keras")
    quiet_flower("INFO")
    model_json = Path(args.model).read_text()
    network = Network.from_json(model_json, args.seed)  # Keras's initial weights, as fedga's
    evaluation = CentralEvaluation(network, load_dataset(args.test_data), args.history)
    server_app = ServerApp()

    @server_app.main()
    def server_main(grid, context) -> None:
        initial = vector_to_weights(network.initial_vector, network.forward.shapes)
        strategy = NoSilentRounds(
            fraction_evaluate=0.0, min_train_nodes=args.nodes, min_available_nodes=args.nodes
        )
        strategy.start(
            grid,
            ArrayRecord([np.asarray(w) for w in initial]),
            num_rounds=args.rounds,
            evaluate_fn=evaluation,
        )

    run_simulation(
        server_app,
        make_client_app(args.data, model_json, args.learning_rate, args.epochs, args.batch_size),
        num_supernodes=args.nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"logging_level": "ERROR", "log_to_driver": False},
        },
    )
    if evaluation.rounds < args.rounds:
        log.error("stopped after %d of %d rounds", evaluation.rounds, args.rounds)
        return 1
    best = evaluation.best
    log.info("best global model: round %d, accuracy=%.4f", best.round, best.accuracy)
    if args.save_model:
        network.save(best.vector, args.save_model)
    return 0


if __name__ == "__main__":
    # Ray's workers unpickle the ClientApp's functions by module name: import them under
    # this module's own name, not as __main__, which in a worker is Ray's.
    from bench.flower_keras import main as imported_main

    sys.exit(imported_main())
