"""Our protocol's message data in Flower records, and back, checked as the socket path checks
it: a request is what a server's ``model`` message holds, an update what a client's does."""
from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.errors import SchemaError
from common.ga import TrainingResult
from common.protocol.messages import check_weights_vector, sample_count

POPULATION, UPDATE = "population_weights", "best_model_weights_vector"


def request_content(request: dict) -> RecordDict:
    """A ``model`` message's data: the population as arrays, the rest as config."""
    settings = {key: value for key, value in request.items() if key != POPULATION}
    return RecordDict({"population": ArrayRecord({POPULATION: Array(request[POPULATION])}),
                       "config": ConfigRecord(settings)})


def request_from(content: RecordDict) -> dict:
    return {**content["config"], POPULATION: content["population"][POPULATION].numpy()}


def update_content(result: TrainingResult, num_samples: int) -> RecordDict:
    """A client's answer: its best weights, and what fedavg and the history need."""
    return RecordDict({
        "update": ArrayRecord({UPDATE: Array(np.asarray(result.best_vector))}),
        "metrics": MetricRecord({"num_samples": num_samples,
                                 "best_fitness": result.best_fitness,
                                 "generations": result.generations}),
    })


def update_from(content: RecordDict, num_params: int) -> tuple[np.ndarray, int, dict]:
    """(best weights, sample count, metrics) of a node's answer; ``ProtocolError`` if malformed."""
    try:
        vector = content["update"][UPDATE].numpy()
        metrics = dict(content["metrics"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"a node's answer lacks its update: {exc}") from None
    return check_weights_vector(vector, num_params), sample_count(metrics), metrics
