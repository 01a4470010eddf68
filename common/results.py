"""What a finished training leaves behind: one CSV row per accepted update, and a plot.

``History`` is an event callback (the server core's ``update`` events) that keeps its rows
and, given a path (``--history``), writes each as it comes. A weights-mode row also says what
the rule did with each of the round's updates (its ``judged`` events): which clients' were
used, clipped or excluded, and each update's change norm, distance to the round's others
and Krum score, as ``client=value`` lists, so a suspicious client can be found in a file; ``plot_history`` draws accuracy
and loss over rounds with matplotlib's Agg backend, so it needs no display. The server
window's Save History and Save Plot write the same files from the rows kept.
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

from common.aggregate import ACTIONS, Verdict
from common.atomic import replacing
from common.events import Event, EventKind

FIELDS = (
    "time",
    "round",
    "client",
    "accuracy",
    "loss",
    *ACTIONS,
    "change_norms",
    "distances",
    "krum_scores",
)


class History:
    """Keeps a row per ``update`` event; with ``path``, also appends each to that CSV file,
    flushed so a crash loses nothing."""

    def __init__(self, path: str | None = None):
        self.path = None if path is None else Path(path)
        self.rows: list[tuple[str, ...]] = []
        self._lock = threading.Lock()  # events arrive from every client's thread
        # the round's verdicts, with their clients' names, until its update event
        self._judged: list[tuple[str, Verdict]] = []
        if self.path is not None:
            self._write(self.path, "w", [FIELDS])

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.JUDGED and event.verdict is not None:
            with self._lock:
                self._judged.append((event.detail or event.peer, event.verdict))
        if event.kind is not EventKind.UPDATE:
            return
        with self._lock:
            judged, self._judged = self._judged, []
            row = (
                f"{time.time():.3f}",
                str(event.round),
                event.peer,
                f"{event.accuracy:.6f}",
                "" if event.loss is None else f"{event.loss:.6g}",
                *(
                    ";".join(
                        name + (f": {v.detail}" if v.detail else "")
                        for name, v in judged
                        if v.action == action
                    )
                    for action in ACTIONS
                ),
                _values(judged, "change_norm"),
                _values(judged, "distance"),
                _values(judged, "krum_score"),
            )
            self.rows.append(row)
            if self.path is not None:
                self._write(self.path, "a", [row])

    def save(self, path: str) -> None:
        """The CSV ``--history`` writes, of every row so far."""
        with self._lock:
            self._write(Path(path), "w", [FIELDS, *self.rows])

    def plot(self, png: str) -> None:
        """The plot ``--plot`` draws, of every row so far."""
        with self._lock:
            rows = [dict(zip(FIELDS, row)) for row in self.rows]
        _draw(rows, png)

    @staticmethod
    def _write(path: Path, mode: str, rows) -> None:
        with path.open(mode, newline="") as handle:
            csv.writer(handle).writerows(rows)


def _values(judged: list[tuple[str, Verdict]], name: str) -> str:
    """``client=value`` for each verdict that has the value, ``;``-separated."""
    values = ((client, getattr(verdict, name)) for client, verdict in judged)
    return ";".join(
        f"{client}={value:.4g}" for client, value in values if value is not None and value == value
    )  # value == value: not NaN (the distance of a round's only update)


def plot_history(history_csv: str, png: str) -> None:
    """Accuracy (and loss, where recorded) over rounds, from a History CSV."""
    with open(history_csv, newline="") as handle:
        _draw(list(csv.DictReader(handle)), png)


def _draw(rows: list[dict[str, str]], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [int(row["round"]) for row in rows]
    figure, accuracy_axis = plt.subplots(figsize=(7, 4), dpi=100)
    accuracy_axis.plot(
        rounds,
        [float(row["accuracy"]) for row in rows],
        color="tab:green",
        marker=".",
        label="global accuracy",
    )
    accuracy_axis.set_xlabel("round (accepted update)")
    accuracy_axis.set_ylabel("accuracy")
    accuracy_axis.set_ylim(0, 1.05)
    losses = [(r, float(row["loss"])) for r, row in zip(rounds, rows) if row["loss"]]
    if losses:
        loss_axis = accuracy_axis.twinx()
        loss_axis.plot(*zip(*losses), color="tab:red", marker=".", label="global loss")
        loss_axis.set_ylabel("loss")
    accuracy_axis.set_title("fedga training")
    # Mid-height: a converging run's accuracy ends high and its loss low, both at the right.
    figure.legend(
        loc="center right", bbox_to_anchor=(1, 0.5), bbox_transform=accuracy_axis.transAxes
    )
    figure.tight_layout()
    with replacing(png) as temp:
        figure.savefig(temp)
    plt.close(figure)
