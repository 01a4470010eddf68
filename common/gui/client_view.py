"""What a client window shows beyond its status line (``ClientView``): its data, the round
being trained, the GA's progress and its local loss per generation. Plain Python, no Kivy."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClientView:
    """What a client window shows beyond its status line."""

    data: str = ""  # the loaded data described in a line, or what to do without any
    round: int | None = None  # the server's round the model being trained comes from
    generation: int = 0
    generations: int = 0  # the most this round runs (the server's setting)
    ended_early: bool = False  # the round's GA stopped before them: its local loss was low
    # Fitness mode: the generations are the server's, scored here; their losses are over
    # every client's data (the server's fitness), not this client's alone.
    scoring: bool = False
    best_fitness: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # this round's, by generation


NO_DATA = "No data yet: choose a data file"


def fitness_loss(fitness: float) -> float:
    """The GA's local loss back from its fitness, the tutorial's ``1 / (loss + 1e-8)``."""
    return 1.0 / fitness - 1e-8
