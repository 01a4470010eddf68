"""Our protocol's message data in Flower records, and back, checked as the socket path checks
it: a request is what a server's ``model`` message holds, an update what a client's does."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.errors import SchemaError
from common.ga import TrainingResult
from common.protocol.messages import ClientUpdate, ModelRequest

POPULATION, UPDATE = "population_weights", "best_model_weights_vector"


def request_content(request: ModelRequest) -> RecordDict:
    """A ``model`` message's data: the population as arrays, the rest as config."""
    data = request.to_data()
    population = data.pop(POPULATION)
    return RecordDict(
        {"population": ArrayRecord({POPULATION: Array(population)}), "config": ConfigRecord(data)}
    )


def request_from(content: RecordDict) -> ModelRequest:
    """The request in a node's message; ``ProtocolError`` if malformed."""
    try:
        data = {**content["config"], POPULATION: content["population"][POPULATION].numpy()}
        return ModelRequest.from_data(data)
    except (KeyError, TypeError) as exc:
        raise SchemaError(f"the server's request lacks {exc}") from None


def update_content(result: TrainingResult, num_samples: int) -> RecordDict:
    """A client's answer: its best weights, and what fedavg and the history need."""
    return RecordDict(
        {
            "update": ArrayRecord({UPDATE: Array(np.asarray(result.best_vector))}),
            "metrics": MetricRecord(
                {
                    "num_samples": num_samples,
                    "best_fitness": result.best_fitness,
                    "generations": result.generations,
                }
            ),
        }
    )


def update_from(content: RecordDict, num_params: int) -> tuple[ClientUpdate, dict]:
    """(update, metrics) of a node's answer; ``ProtocolError`` if malformed."""
    try:
        vector = content["update"][UPDATE].numpy()
        metrics = dict(content["metrics"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"a node's answer lacks its update: {exc}") from None
    update = ClientUpdate.from_data({UPDATE: vector, **metrics}, num_params)
    return update, metrics
