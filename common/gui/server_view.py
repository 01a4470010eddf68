"""What the server window shows beyond its status line (``ServerView``): the model, the
accuracy and loss per round, the summary, and a row per client (``ClientRow``) with what
the rule did with its recent updates. Plain Python, no Kivy."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from common.aggregate import CLIPPED, EXCLUDED
from common.events import EventKind

SUSPICION_WINDOW = 10  # a client row's recent updates that decide whether it is suspicious
# What the Training tab says of secure aggregation, by federation.
SECURE_NOTES = {
    False: "secure aggregation: the server sees only each round's sum",
    True: "secure aggregation: the server sees only each generation's summed scores",
}
MASKED = "masked"  # a client's own sample count and accuracy in secure rounds: never seen
ENDINGS = {  # how training ended, as the summary says it (the accuracy its event carries)
    EventKind.DONE: "Training done: global accuracy {accuracy:.2f} after {round} rounds",
    EventKind.GAVE_UP: "Gave up after {round} rounds (--max-rounds): global accuracy {accuracy:.2f}",
    EventKind.PATIENCE: "Stopped after {round} rounds (--patience): best global accuracy {accuracy:.2f}",
    EventKind.STOPPED: "Stopped after {round} rounds: best global accuracy {accuracy:.2f}",
}


class RowState(StrEnum):
    """Where a client in the server window's list is, as its last column says."""

    CONNECTED = "connected"  # has asked nothing yet
    TRAINING = "training"  # was sent the model (or a round closed): trains it
    WAITING = "waiting"  # sent its update: the reply waits for the round to close
    DONE = "done"  # was told training is over
    DISCONNECTED = "disconnected"  # left, or was dropped (``reason``), before or after done
    DONE_DISCONNECTED = "done, disconnected"  # left after it was told done


@dataclass
class ClientRow:
    """One client in the server window's list."""

    name: str  # from its client id once an update names it, else its address
    state: RowState = RowState.CONNECTED
    reason: str = ""  # why the server dropped it, if it did
    samples: int | None = None  # as its last update reported them
    round: int | None = None  # the round its last update went into
    accuracy: float | None = None  # its last update's own accuracy on the server's test data
    verdict: str = ""  # what the rule did with its last update: "used", "clipped 4.1 -> 1.2"
    # what the rule did with its recent updates (an action of common.aggregate.ACTIONS each)
    actions: deque[str] = field(default_factory=lambda: deque(maxlen=SUSPICION_WINDOW))

    @property
    def shown_state(self) -> str:
        """Its state as the table shows it, with the reason it was dropped: a plain ``str``
        (Kivy's label calls ``type(text)`` on its text, which an enum's type refuses)."""
        return f"{self.state}: {self.reason}" if self.reason else str(self.state)

    @property
    def cut(self) -> int:
        """How many of its recent updates the rule excluded or clipped."""
        return sum(a in (CLIPPED, EXCLUDED) for a in self.actions)

    @property
    def suspicious(self) -> bool:
        """More than half of its last updates were excluded or clipped: shown, not acted on
        (the server never drops a client for it; the person watching decides)."""
        return self.cut > SUSPICION_WINDOW / 2


@dataclass
class ServerView:
    """What the server window shows beyond its status line."""

    summary: str = "Listen to Connections builds the model from the setup fields"
    model: str = ""  # which model is trained, once built
    # (round, global accuracy, global loss), round 0 being the untrained model
    history: list[tuple[int, float, float | None]] = field(default_factory=list)
    best_round: int | None = None
    clients: dict[str, ClientRow] = field(default_factory=dict)  # by peer, in arrival order
    address: str = ""  # where the server listens, once it does
    secure: bool = False  # secure aggregation: the server sees only each round's sum
    fitness: bool = False  # fitness mode: clients send scores, not weights

    @property
    def note(self) -> str:
        """What the Training tab says of the mode, if anything."""
        return SECURE_NOTES[self.fitness] if self.secure else ""

    def cells(self, row: ClientRow) -> tuple[str, ...]:
        """A client's row as the table shows it (``CLIENT_COLUMNS``' order). With secure
        aggregation its own sample count and accuracy are masked, so they say so, and no
        rule ever judges its update alone: it is never marked suspicious."""
        samples = accuracy = MASKED
        if not self.secure:
            samples = "" if row.samples is None else str(row.samples)
            accuracy = "" if row.accuracy is None else f"{row.accuracy:.2f}"
        return (
            row.name,
            samples,
            "" if row.round is None else str(row.round),
            accuracy,
            row.verdict,
            f"suspicious, {row.shown_state}" if row.suspicious else row.shown_state,
        )

    def round_closed(self) -> None:
        """The round closed: each client waiting for it was answered and trains again."""
        for row in self.clients.values():
            if row.state is RowState.WAITING:
                row.state = RowState.TRAINING


def rows_shown(rows: list[ClientRow], limit: int) -> list[ClientRow]:
    """The rows a table of ``limit`` rows shows: the suspicious first, then the newest
    others (older ones are long gone clients, usually), in arrival order, so none jumps."""
    suspicious = [row for row in rows if row.suspicious][:limit]
    room = limit - len(suspicious)
    others = [row for row in rows if not row.suspicious][-room:] if room else []
    chosen = {id(row) for row in suspicious + others}
    return [row for row in rows if id(row) in chosen]
