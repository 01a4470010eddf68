"""Python imports this at start-up when this folder is on ``PYTHONPATH`` (tests only). It
prints a line on stderr the moment the process first imports Keras or TensorFlow, so a test
sees whether a launch loads them, and when: before or after its window is on screen."""

import sys

_WATCHED = {"keras", "tensorflow"}


def _on_import(event: str, args: tuple) -> None:
    if event == "import" and args[0] in _WATCHED:
        _WATCHED.discard(args[0])
        print(f"heavy import: {args[0]}", file=sys.stderr, flush=True)


sys.addaudithook(_on_import)
