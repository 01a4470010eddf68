"""What became of every update, read from the server's log against what each client sent:
the one definition of a lost update that the fault tests count by.

From the server's log lines (``common.global_model``): an update is *applied* when a round
names it (a per-update rule's ``round=N client=... update=K``, a round-based rule's ``round N:
... updates=K,K``), and *refused* when a ``client=... update=K not applied: REASON`` line names
it (a round closed short names its updates in both). From the clients: an update is *answered*
when its client got a reply to it, which is every update it sent but its last, and the last
too once the server said done. An update is **lost** when it was answered but neither applied
nor refused, and **duplicated** when applied more than once. With each client's ``sent``
events (the server round each update's model came from), an update a round-based rule
applied to any round but the next one after its model's is **misplaced**.
"""

from __future__ import annotations

from common.client import ClientOutcome
import re
from collections import Counter
from dataclasses import dataclass, field

PER_UPDATE = re.compile(r"^round=(\d+) client=\S+ update_accuracy=\S+ accuracy=\S+ update=(\S+)")
ROUND = re.compile(r"^round (\d+): \d+ of \d+ updates.*; updates=(\S*)$")
NOT_APPLIED = re.compile(r"^client=\S+ update=(\S+) not applied: (.+)$")
CLOSED_SHORT = "its round closed short"


@dataclass
class Ledger:
    applied: Counter = field(default_factory=Counter)  # update key -> times applied
    rounds: dict[str, int] = field(default_factory=dict)  # update key -> round applied to
    refused: dict[str, str] = field(default_factory=dict)  # update key -> the reason logged
    answered: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)
    trained_on: dict[str, int] = field(default_factory=dict)  # key -> server round of its model
    round_based: bool = False

    @property
    def lost(self) -> set[str]:
        return self.answered - set(self.applied) - set(self.refused)

    @property
    def duplicated(self) -> set[str]:
        return {key for key, times in self.applied.items() if times > 1}

    @property
    def misplaced(self) -> dict[str, tuple[int, int]]:
        """Round-based: update key -> (round its model came from, round it was applied to)."""
        if not self.round_based:
            return {}
        return {
            key: (self.trained_on[key], applied)
            for key, applied in self.rounds.items()
            if key in self.trained_on and applied != self.trained_on[key] + 1
        }

    @property
    def phantom(self) -> set[str]:
        """Applied but never sent by any client we know: must be empty."""
        return set(self.applied) - self.sent


def ledger(server_lines: list[str], clients, client_events=()) -> Ledger:
    """The ledger of a run: the server's log messages, its clients (``RecvThread``s, once
    ended) and, to check rounds, each client's ``EventLog`` in the same order."""
    book = Ledger()
    for line in server_lines:
        if match := PER_UPDATE.match(line):
            book.applied[match[2]] += 1
            book.rounds[match[2]] = int(match[1])
        elif match := ROUND.match(line):
            book.round_based = True
            for key in filter(None, match[2].split(",")):
                book.applied[key] += 1
                book.rounds[key] = int(match[1])
        elif match := NOT_APPLIED.match(line):
            book.refused[match[1]] = match[2]
    for key, reason in book.refused.items():
        if reason.startswith(CLOSED_SHORT):  # named by its round's line, but not applied
            book.applied[key] -= 1
            del book.rounds[key]
    book.applied = +book.applied  # drop the zero counts
    for index, client in enumerate(clients):
        keys = [f"{client.client_id}#{s}" for s in range(1, client._sequence + 1)]
        book.sent.update(keys)
        book.answered.update(keys if client.outcome is ClientOutcome.DONE else keys[:-1])
        if index < len(client_events):
            sent_events = [e for e in client_events[index].all() if e.kind == "sent"]
            book.trained_on.update(zip(keys, (e.round for e in sent_events)))
    return book
