"""What the server and client cores report to their callers (a log, a window, a test)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.aggregate import Verdict


class Outcome(StrEnum):
    """How a run's training ended: the server's ``GlobalModel.outcome``, told to its clients
    with ``done``, and its process's exit code (``common.app.EXIT_CODES``). Members equal
    their strings, as they stood in logs and on the wire before they had names."""

    DONE = "done"  # the global model reached --target-accuracy
    GAVE_UP = "gave_up"  # --max-rounds rounds ran without reaching it
    PATIENCE = "patience"  # --patience rounds passed without a better model
    STOPPED = "stopped"  # a person stopped it: Stop Training, Ctrl-C or SIGTERM


class EventKind(StrEnum):
    """What happened. Members equal their names' strings, so logs and tests may print or
    compare those; an Event of any other kind is refused (ValueError)."""

    # The server's: a client came, asked (echo or model), its update was scored on the test
    # data before it counted, a round was committed, training ended (done, gave up, out of
    # patience, stopped by request), a client was told done, a client left; in fitness mode
    # also a generation of its GA ended (``generation``), or waits for --min-clients, and a
    # client's scores counted in a round for the first time (``scored``, without accuracy).
    # In weights mode, what the rule did with each update of a round (``judged``, before the
    # round's ``update``, with its ``verdict``), or that an update beyond its client's share
    # was answered without being applied (``judged``, detail ``over share``); a round closed
    # without aggregating, too short for the rule to tolerate --byzantine (``short``).
    CONNECTED = "connected"
    REQUEST = "request"
    SCORED = "scored"
    UPDATE = "update"
    # The endings are the Outcome members by value, declared there once:
    # ``EventKind(outcome)`` is the kind of an ending's event.
    DONE = Outcome.DONE.value
    GAVE_UP = Outcome.GAVE_UP.value
    PATIENCE = Outcome.PATIENCE.value
    STOPPED = Outcome.STOPPED.value
    ANSWERED_DONE = "answered_done"
    DISCONNECTED = "disconnected"
    WAITING = "waiting"
    JUDGED = "judged"
    SHORT = "short"
    # The client's, besides connected, done (how the server said training ended, in words,
    # in ``detail``) and stopped (by ``stop()``): reconnecting, a model arrived, a GA
    # generation ended, the update was sent, the server said why its reply waits
    # (``waiting``, its words in ``detail``), training failed.
    CONNECTING = "connecting"
    MODEL = "model"
    GENERATION = "generation"
    SENT = "sent"
    ERROR = "error"


@dataclass(frozen=True)
class Event:
    """One thing that happened. ``kind`` names it (an ``EventKind``, or its string); the
    other fields are filled when relevant."""

    kind: EventKind
    peer: str = ""
    round: int = 0
    accuracy: float | None = None
    loss: float | None = None
    fitness: float | None = None
    # a generation ended: its number; a model arrived: the most generations its round runs;
    # the update was sent: the generations run (fewer when the GA stopped early)
    generation: int = 0
    samples: int | None = None  # a scored update's sample count, when its client sent one
    detail: str = ""
    verdict: Verdict | None = None  # judged: what the rule did with the update

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", EventKind(self.kind))  # a mistyped kind: ValueError
