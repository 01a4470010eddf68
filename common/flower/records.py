"""Our protocol's message data in Flower records, and back, checked as the socket path checks
it: a request is what a server's ``model`` message holds, an update what a client's does.
A secure round (``common.flower.secure``) carries the same in Flower's legacy ``FitIns`` and
``FitRes`` layout, the one its SecAgg+ mod masks."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

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


def fit_content(request: ModelRequest) -> FitIns:
    """A ``model`` message's data as legacy ``FitIns``: the population its parameters."""
    data = request.to_data()
    population = data.pop(POPULATION)
    return FitIns(ndarrays_to_parameters([np.asarray(population)]), data)


def is_secure(content: RecordDict) -> bool:
    """Whether a node's message is a SecAgg+ round's (the legacy layout)."""
    return RECORD_KEY_CONFIGS in content.config_records


def request_from_fit(content: RecordDict) -> ModelRequest:
    """The request in a secure round's message; ``ProtocolError`` if malformed."""
    try:
        fit = compat.recorddict_to_fitins(content, keep_input=True)
        (population,) = parameters_to_ndarrays(fit.parameters)
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"the server's secure request lacks {exc}") from None
    return ModelRequest.from_data({**fit.config, POPULATION: population})


def fit_result(result: TrainingResult, num_samples: int) -> RecordDict:
    """A node's answer as legacy ``FitRes``, which ``secaggplus_mod`` masks: its best
    weights and its sample count (which Flower's SecAgg+ sends in the clear); no metrics."""
    vector = np.asarray(result.best_vector, dtype=np.float32)
    fit = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vector]), num_samples, {})
    return compat.fitres_to_recorddict(fit, keep_input=True)
