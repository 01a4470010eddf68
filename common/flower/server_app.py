"""The Flower ServerApp: a Strategy around the built-in server's ``GlobalModel``, and a round
loop that stops at the target accuracy (Flower's ``Strategy.start`` runs a fixed number of
rounds).

Each round sends every connected node what the built-in server sends a client (the model's
JSON, a population around the global weights, the GA settings), and folds the nodes' best
weights into the global model with ``GlobalModel.apply_round``: the same aggregation
(``common.aggregate``), evaluation (``common.model``), history and stopping rules.

Settings come from the run config (``flwr run --run-config "target-accuracy=0.9"``), named
as ``server.py``'s flags: model, test-data, target-accuracy, max-rounds, num-solutions,
aggregation and its settings (server-learning-rate, server-momentum, beta1, beta2, tau,
byzantine, clip-norm, max-claimed-samples), min-clients (nodes to
wait for), round-timeout (seconds to wait for the nodes' answers), seed, history, plot,
save-model and the GA settings. An empty value leaves a setting at its default: no file, the
rule's own, or (stop-fitness, step-patience) the model's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from common.aggregate import round_based
from common.auto import known
from common.errors import ConfigError
from common.flower import EMPTY_ROUNDS_ALLOWED, log_to_stderr
from common.flower.records import request_content, update_from
from common.global_model import GlobalModel
from common.operators import OPERATORS
from common.protocol import ProtocolError
from common.protocol.messages import ClientUpdate, Done, ModelRequest
from common.server_config import ServerConfig

log = logging.getLogger("fedga.flower")

# Flower runs whole rounds, so the built-in running average does not apply; fedavg by sample
# count is its round-based counterpart. A node's first round includes its TensorFlow start-up.
DEFAULTS = {"aggregation": "fedavg", "round_timeout": 120.0}
# What pyproject.toml's [tool.flwr.app.config] declares for the server (Flower refuses any
# other key in --run-config), besides ``data``, which is the nodes'.
RUN_CONFIG_KEYS = (
    "target-accuracy",
    "max-rounds",
    "num-solutions",
    "aggregation",
    "server-learning-rate",
    "server-momentum",
    "beta1",
    "beta2",
    "tau",
    "byzantine",
    "clip-norm",
    "max-claimed-samples",
    "secure-aggregation",
    "secagg-threshold",
    "min-clients",
    "round-timeout",
    "num-generations",
    "num-parents-mating",
    "mutation-percent-genes",
    "operators",
    "mutation-step",
    "model",
    "test-data",
    "test-labels",
    "test-label-column",
    "history",
    "plot",
    "save-model",
    "patience",
    "step-patience",
    "stop-fitness",
)
ENGINE_KEYS = ("data",)  # run config keys that are not server settings: the nodes' data


def server_config(run_config: dict) -> ServerConfig:
    """A ``ServerConfig`` from Flower's run config (``RUN_CONFIG_KEYS``; ``data`` is the
    nodes' and skipped); ``ConfigError`` for anything else."""
    values = {}
    for key, value in run_config.items():
        if key in ENGINE_KEYS:
            continue
        if key not in RUN_CONFIG_KEYS:
            raise ConfigError(
                f"The run config key {key!r} is not a setting of the fedga ServerApp."
            )
        # A run config has no None: an empty string leaves the setting at its default, as
        # an unset flag does (no file; AUTO: left to the run).
        if value != "":
            values[key.replace("-", "_")] = value
    if values.get("aggregation", DEFAULTS["aggregation"]) not in round_based():
        raise ConfigError(f"aggregation must be one of {', '.join(round_based())} on Flower.")
    if values.get("operators", OPERATORS[0]) not in OPERATORS:
        raise ConfigError(f"operators must be one of {', '.join(OPERATORS)}.")
    config = ServerConfig.of(**(DEFAULTS | values))
    config.training.aggregation_rule()  # its settings, checked before any node is asked
    return config


class GAStrategy(Strategy):
    """Sends the global model's population to the nodes and aggregates their best weights."""

    def __init__(self, global_model: GlobalModel, min_nodes: int = 2):
        self.global_model = global_model
        self.min_nodes = min_nodes
        self._next = global_model.reply_to_echo()  # what the next round sends
        self.node_metrics: list[dict] = []  # per accepted answer, with its round and node

    @property
    def done(self) -> bool:
        return isinstance(self._next, Done)

    @property
    def next_request(self) -> ModelRequest:
        """What the next round sends the nodes (while not ``done``)."""
        assert isinstance(self._next, ModelRequest)
        return self._next

    def apply_mean(self, mean: np.ndarray, count: float, nodes: str) -> None:
        """Fold a secure round's weighted mean of ``count`` samples into the global model."""
        self.global_model.apply_mean(mean, count, nodes, "secure sum (SecAgg+)")
        self._next = self.global_model.reply_to_echo()

    def summary(self) -> None:
        model = self.global_model
        log.info(
            "GAStrategy: %s over at least %d nodes, %d parameters, target accuracy %g",
            model.aggregation,
            self.min_nodes,
            model.num_params,
            model.target_accuracy,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if isinstance(self._next, Done):
            return []  # training is over: nothing to send
        _, nodes = sample_nodes(grid, self.min_nodes, 0)  # waits for min_nodes, then all
        content = request_content(self._next)
        return [
            Message(content, node, MessageType.TRAIN, group_id=str(server_round)) for node in nodes
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Fold the round's usable answers in; a failed or malformed one is logged and left
        out, as the built-in server drops a bad client and carries on."""
        pending: dict[str, ClientUpdate] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning(
                    "node %s failed in round %d: %s", node, server_round, reply.error.reason
                )
                continue
            try:
                update, metrics = update_from(reply.content, self.global_model.num_params)
            except ProtocolError as exc:
                log.warning(
                    "node %s sent an unusable answer in round %d: %s", node, server_round, exc
                )
                continue
            pending[f"node{node}"] = update
            self.node_metrics.append({"round": server_round, "node": node, **metrics})
        if not pending:
            return None, None
        answers = self.node_metrics[-len(pending) :]
        generations = [int(m["generations"]) for m in answers]
        fitness = [m["best_fitness"] for m in answers]
        log.info(
            "round %d: %d nodes trained %d to %d generations, best fitness %.4g to %.4g",
            server_round,
            len(pending),
            min(generations),
            max(generations),
            min(fitness),
            max(fitness),
        )
        self._next = self.global_model.apply_round(pending)
        model = self.global_model
        return (
            ArrayRecord([model.vector]),
            MetricRecord({"accuracy": model.accuracy, "updates": len(pending)}),
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates on its own test data

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


def train_until_done(grid: Grid, strategy: GAStrategy, reply_timeout: float) -> bool:
    """Run rounds until the global model reaches the target or gives up; True if it reached
    the target. Rounds that yield no usable answer are not counted, but only a few in a row
    are allowed."""
    strategy.summary()
    empty_rounds, server_round = 0, 0
    global_model = strategy.global_model
    while not strategy.done:
        server_round += 1
        replies = grid.send_and_receive(
            strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid),
            timeout=reply_timeout,
        )
        arrays, _ = strategy.aggregate_train(server_round, replies)
        if arrays is not None:
            empty_rounds = 0
            continue
        empty_rounds += 1
        log.warning("round %d: no node answered usably within %g s", server_round, reply_timeout)
        if empty_rounds >= EMPTY_ROUNDS_ALLOWED:
            log.error("giving up: %d rounds in a row without a usable answer", empty_rounds)
            return False
    return global_model.reached_target


def run(
    grid: Grid, context: Context, config: ServerConfig, global_model: GlobalModel | None = None
) -> GAStrategy:
    """Train ``global_model`` (by default the config's) on the nodes behind ``grid``, with
    Flower's SecAgg+ if the config asks for secure aggregation (in the ServerApp's
    ``context``); the results are written as ``server.py`` writes them (history, plot,
    saved model)."""
    from common.app import build_global_model, save_results

    global_model = global_model or build_global_model(config)
    training = config.training.resolved()
    strategy = GAStrategy(global_model, min_nodes=known(training.min_clients))
    log.info("%s", training.summary())
    if training.secure_aggregation:
        from common.flower.secure import train_securely

        train_securely(grid, strategy, context, training.round_timeout, training.secagg_threshold)
    else:
        train_until_done(grid, strategy, training.round_timeout)
    save_results(config, global_model)
    return strategy


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    log_to_stderr("flower-server")
    run(grid, context, server_config(dict(context.run_config)))
