"""What the server and client cores report to their callers (a log, a window, a test)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One thing that happened. ``kind`` names it; the other fields are filled when relevant.

    Server kinds: connected, request, scored (one client's update, scored on the test data
    before it counts), update, done, gave_up, patience, stopped, answered_done, disconnected.
    Client kinds: connecting, connected, model, generation, sent, done, error, stopped.
    """

    kind: str
    peer: str = ""
    round: int = 0
    accuracy: float | None = None
    loss: float | None = None
    fitness: float | None = None
    generation: int = 0
    samples: int | None = None  # a scored update's sample count, when its client sent one
    detail: str = ""
