"""The Flower ClientApp: one node's training step is ``common.training.LocalTrainer``, the
built-in client's own, on data that stays on the node.

A node's data, like ``client.py --data``: the file in its node config (``flower-supernode
--node-config "data='client_1.npz'"``); else ``client_<partition-id + 1>.npz`` in the run's
``data`` folder (made by ``python -m common.split``); else the tutorial's XOR samples,
client1's for even partitions and client2's for odd ones.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from common.data import CLIENT_DATA, Dataset, load_dataset
from common.flower import log_to_stderr
from common.flower.records import (
    fit_result,
    is_secure,
    request_from,
    request_from_fit,
    update_content,
)
from common.ga import GAConfig
from common.modelspec import DEFAULT_MAX_PARAMS
from common.training import LocalTrainer

log = logging.getLogger("fedga.flower")


def node_data(data_file: str, data_folder: str, partition: int) -> tuple[Dataset, str]:
    """The node's own data set and where it came from (for error messages)."""
    if data_file:
        return load_dataset(data_file), data_file
    if data_folder:
        path = str(Path(data_folder) / f"client_{partition + 1}.npz")
        return load_dataset(path), path
    name = f"client{partition % 2 + 1}"
    return CLIENT_DATA[name], f"the tutorial's {name} XOR samples"


@functools.cache  # per process: each node's data is read, and its model built, once
def _trainer(data_file: str, data_folder: str, partition: int) -> LocalTrainer:
    data, source = node_data(data_file, data_folder, partition)
    return LocalTrainer(data, source, ga=GAConfig(), max_params=DEFAULT_MAX_PARAMS)


def secure_when_asked(message: Message, context: Context, call_next) -> Message:
    """A mod: Flower's SecAgg+ for a secure round's messages, the rest untouched, so one
    ClientApp (the one pyproject.toml names) serves both kinds of run."""
    from flwr.client.mod import secaggplus_mod

    if is_secure(message.content):
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def make_client_app(data_folder: str | None = None) -> ClientApp:
    """A ClientApp; ``data_folder`` (else the run config's ``data``) holds per-node files."""
    app = ClientApp(mods=[secure_when_asked])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        log_to_stderr(f"node {context.node_id}")
        node = context.node_config
        trainer = _trainer(
            str(node.get("data", "")),
            data_folder or str(context.run_config.get("data", "")),
            int(node.get("partition-id", 0)),
        )
        secure = is_secure(message.content)
        request = (request_from_fit if secure else request_from)(message.content)
        result = trainer.train(request)
        log.info(
            "node %s trained round %s: best fitness %.4g",
            context.node_id,
            request.round,
            result.best_fitness,
        )
        answer = (fit_result if secure else update_content)(result, len(trainer.data))
        return Message(answer, reply_to=message)

    return app


app = make_client_app()
