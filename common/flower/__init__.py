"""The same training on Flower (``flwr``), for more nodes than one server's threads serve.

Optional: install ``requirements-flower.txt``; the core and the windows never import this.
The ClientApp trains with ``common.training`` (our GA on the node's own data); the ServerApp's
strategy drives ``common.server.GlobalModel``, so aggregation (``common.aggregate``),
evaluation (``common.model``), the target accuracy and ``--max-rounds`` are the built-in
server's own. Flower carries the same message data as our protocol, in records
(``records``).

    python -m common.flower simulate --nodes 50        # one process, simulated nodes
    flwr run . fedga-local --stream                    # on a SuperLink and SuperNodes
"""

import logging
import sys

OUR_LOGGERS = ("fedga", "common")  # the CLI's logger and the modules' own


def log_to_stderr(role: str) -> None:
    """In a process Flower started, send our INFO lines to stderr, which Flower streams
    (``flwr run --stream``, a SuperNode's log); Flower's own logger stays as it is."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [{role}] %(levelname)s %(message)s",
                                           "%H:%M:%S"))
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
