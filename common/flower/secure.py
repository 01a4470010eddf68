"""Flower's own secure aggregation on Flower: SecAgg+ (Bell et al., CCS 2020), as flwr 1.42
ships it, for ``python -m common.flower simulate|deploy --secure-aggregation``.

Flower's ``SecAggPlusWorkflow`` drives a legacy ``flwr.server.strategy.Strategy`` (the
``configure_fit``/``aggregate_fit`` layout) through a ``LegacyContext``, and its client mod
``secaggplus_mod`` masks what the ClientApp answers in the legacy ``FitRes`` layout. So a
secure round here is: ``SecureRound.configure_fit`` sends the global model's request as
``FitIns`` (the population as its parameters, the rest as its config), the workflow runs its
four stages, the nodes' masked sum is unmasked into each node's ``FitRes`` (every one the same
weighted mean), and ``SecureRound.aggregate_fit`` folds that mean into the ``GlobalModel`` as
one update: history, best model and target as in a plain round. Flower's ``DefaultWorkflow``
runs a fixed number of rounds, so ``train_securely`` calls the workflow once a round, in the
loop that stops at the target.

What differs from fedga's own protocol (``common.secagg``): Flower folds each 32-byte mask
seed to 32 bits and expands it with NumPy's ``RandomState`` (``pseudo_rand_gen`` in
``flwr.common.secure_aggregation.secaggplus_utils``), so a curious server could search 2^32
seeds per mask; and each node's sample count travels in the clear (``FitRes.num_examples``),
where ours is masked. Our nodes send no metrics in this mode.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from common.auto import Auto
from common.flower import EMPTY_ROUNDS_ALLOWED
from common.flower.records import fit_content
from common.protocol.messages import check_weights_vector
from common.secagg.messages import round_threshold

log = logging.getLogger("fedga.flower")

# SecAgg+ weighs each node's parameters by num_examples / MAX_WEIGHT before quantising them:
# a node with more samples overflows its clipping range. Flower's default is 1,000, below
# MNIST-1D's ~1,000 per node; 10,000 keeps a weight of 0.1 within ~1e-4 after quantisation.
MAX_WEIGHT = 10_000.0


class SecureRound(LegacyStrategy):
    """A round of ``GAStrategy`` in the legacy layout that ``SecAggPlusWorkflow`` drives."""

    def __init__(self, strategy) -> None:
        self.strategy = strategy  # common.flower.server_app.GAStrategy
        self.aggregated = False  # whether the last round's sum reached the global model

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager):
        self.aggregated = False
        if self.strategy.done:
            return []
        client_manager.wait_for(self.strategy.min_nodes)
        fit = fit_content(self.strategy.next_request)
        return [(proxy, fit) for proxy in client_manager.all().values()]

    def aggregate_fit(self, server_round: int, results, failures):
        """Every result carries the same unmasked weighted mean: one update, weighed by the
        round's total count."""
        if failures:
            log.warning("round %d: %d node(s) failed in SecAgg+", server_round, len(failures))
        if not results:
            return None, {}
        (mean,) = parameters_to_ndarrays(results[0][1].parameters)
        total = sum(fit.num_examples for _, fit in results)
        log.info("round %d: the secure sum of %d nodes (SecAgg+)", server_round, len(results))
        self.strategy.apply_mean(
            check_weights_vector(mean.astype(np.float32), self.strategy.global_model.num_params),
            total,
            f"secure sum of {len(results)} nodes",
        )
        self.aggregated = True
        return ndarrays_to_parameters([self.strategy.global_model.vector]), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []  # the server evaluates on its own test data

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def train_securely(
    grid: Grid, strategy, context: Context, reply_timeout: float, threshold: int | Auto
) -> bool:
    """``train_until_done`` with SecAgg+: one ``SecAggPlusWorkflow`` a round (the threshold
    ``--secagg-threshold``, else as ours: ceil(2n/3) of the round's n nodes), until the
    target or giving up; True if the target was reached."""
    round_of = SecureRound(strategy)
    legacy = LegacyContext(context, strategy=round_of, client_manager=SimpleClientManager())
    thread, stop, registered = start_update_client_manager_thread(grid, legacy.client_manager)
    registered.wait()
    strategy.summary()
    empty_rounds, server_round = 0, 0
    try:
        while not strategy.done:
            server_round += 1
            legacy.client_manager.wait_for(strategy.min_nodes)
            nodes = legacy.client_manager.num_available()
            legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
                {Key.CURRENT_ROUND: server_round, Key.START_TIME: 0.0}
            )
            legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
            workflow = SecAggPlusWorkflow(
                num_shares=1.0,  # every node shares with every other: SecAgg, not a graph
                reconstruction_threshold=round_threshold(threshold, nodes),
                max_weight=MAX_WEIGHT,
                timeout=reply_timeout,
            )
            workflow(grid, legacy)
            if round_of.aggregated:
                empty_rounds = 0
                continue
            empty_rounds += 1
            log.warning("round %d: the secure round ended without a sum", server_round)
            if empty_rounds >= EMPTY_ROUNDS_ALLOWED:
                log.error("giving up: %d secure rounds in a row without a sum", empty_rounds)
                return False
    finally:
        stop.set()
        thread.join()
    return strategy.global_model.reached_target
