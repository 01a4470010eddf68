"""Benchmarks: each module is a command (``python -m bench.fitness`` and so on) that prints a
table, ratios measured side by side in one process, and one ``TARGET`` line per target.

Absolute times on a shared machine drift from minute to minute; ratios of measurements
interleaved in the same run do not, so the targets are stated as ratios where they can be.
"""

import common  # noqa: F401  (quiet TensorFlow environment before a benchmark loads Keras)
