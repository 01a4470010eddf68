"""A client's training step, shared by the built-in client (``RecvThread``) and the Flower
ClientApp: check the model a server describes, fit the local data to it once (and poison it
then, for a client running a data-poisoning attack, ``common.attacks``), run the GA.

``request`` is a server's ``model`` message as a ``ModelRequest``, whichever transport
carried it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


from common.attacks import Attack
from common.data import Dataset, fit_to_model
from common.ga import GAConfig, RoundSeeds, TrainingResult, one_blas_thread, train
from common.model import ForwardPass
from common.protocol.messages import ModelRequest


class LocalTrainer:
    """Trains the populations a server sends on this client's data, which never leaves it.

    Raises ``ProtocolError`` for a malformed request, ``ModelRefused`` for a model this
    client will not build, and ``DataError`` when the data does not fit the model.
    """

    def __init__(
        self,
        data: Dataset,
        data_source: str,
        *,
        ga: GAConfig,
        max_params: int,
        ga_overrides: dict | None = None,
        seed: int | None = None,
        attack: Attack | None = None,
    ):
        self.data, self._data_source = data, data_source
        self.attack = attack  # a lab feature: common.attacks
        self.ga, self.ga_overrides = ga, ga_overrides or {}
        self._round_seeds = RoundSeeds(seed)
        self.max_params = max_params
        one_blas_thread()
        self._forward_passes: dict[str, ForwardPass] = {}  # by model_json: build each once
        self._poisoned = False

    def forward_for(self, model_json: str) -> ForwardPass:
        if model_json not in self._forward_passes:
            forward = ForwardPass.from_json(model_json, self.max_params)  # checked first
            # The model is known only now: check the data against it before any training.
            self.data = fit_to_model(
                self.data, forward.num_features, forward.num_outputs, self._data_source
            )
            # Once: a second model refits the data already poisoned.
            if self.attack is not None and not self._poisoned:
                self.data, self._poisoned = self.attack.poison_data(self.data), True
            self._forward_passes[model_json] = forward
        return self._forward_passes[model_json]

    def settings_for(self, request: ModelRequest) -> GAConfig:
        """The GA settings a round runs: the server's, with this client's overrides."""
        return dataclasses.replace(self.ga, **(dict(request.ga_settings) | self.ga_overrides))

    def train(
        self,
        request: ModelRequest,
        *,
        on_generation: Callable[[int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        data: Dataset | None = None,
    ) -> TrainingResult:
        """Run the round's GA on this client's data (or on ``data``, part of it)."""
        forward = self.forward_for(request.model_json)
        request.check_columns(forward.num_params)
        ga = self.settings_for(request)
        return train(
            forward,
            request.population_weights,
            self.data if data is None else data,
            ga,
            on_generation=on_generation,
            should_stop=should_stop,
            seed=self._round_seeds.next(),
        )
