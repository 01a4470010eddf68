"""bench.startup's baseline: with this folder on ``PYTHONPATH``, Python imports this at
start-up and every entry point loads Keras first, as they all did before the server and the
windows learnt to do without TensorFlow."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import common  # noqa: E402,F401  (TensorFlow's quiet settings, before it loads)
import keras  # noqa: E402,F401
