"""The same training on Flower (``flwr``), for more nodes than one server's threads serve.

Optional: install ``requirements-flower.txt``; the core and the windows never import this.
The ClientApp trains with ``common.training`` (our GA on the node's own data); the ServerApp's
strategy drives ``common.global_model.GlobalModel``, so aggregation (``common.aggregate``),
evaluation (``common.model``), the target accuracy and ``--max-rounds`` are the built-in
server's own. Flower carries the same message data as our protocol, in records
(``records``).

    python -m common.flower simulate --nodes 50        # one process, simulated nodes
    flwr run . fedga-local --stream                    # on a SuperLink and SuperNodes
"""

import logging
import sys
from types import ModuleType
from typing import cast

OUR_LOGGERS = ("fedga", "common")  # the CLI's logger and the modules' own
EMPTY_ROUNDS_ALLOWED = 3  # rounds in a row with no usable answer before giving up


def log_to_stderr(role: str) -> None:
    """In a process Flower started, send our INFO lines to stderr, which Flower streams
    (``flwr run --stream``, a SuperNode's log); Flower's own logger stays as it is."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s [{role}] %(levelname)s %(message)s", "%H:%M:%S")
    )
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def keep_tensorflow_out() -> None:
    """Ray's setup of each simulation worker: ``import tensorflow`` fails there at once.
    Flower 1.42 imports TensorFlow in every Ray worker where it is installed (for GPU memory
    growth, in ``flwr.simulation.ray_transport.utils``), and our ClientApp never uses it: it
    trains with NumPy. Measured on 2 cores: ~6 s of CPU per worker, the largest part of a
    simulation's start-up on a busy machine."""
    # None there: ModuleNotFoundError on import. The import system documents such entries;
    # typeshed's sys.modules holds modules only.
    modules = cast("dict[str, ModuleType | None]", sys.modules)
    modules.setdefault("tensorflow", None)
