"""What a finished training leaves behind: one CSV row per accepted update, and a plot.

``History`` is an event callback (the server core's ``update`` events); ``plot_history``
draws accuracy and loss over rounds with matplotlib's Agg backend, so it needs no display.
"""
from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

from common.events import Event

FIELDS = ("time", "round", "client", "accuracy", "loss")


class History:
    """Appends a row per ``update`` event to a CSV file, flushed so a crash loses nothing."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._lock = threading.Lock()  # events arrive from every client's thread
        with self.path.open("w", newline="") as handle:
            csv.writer(handle).writerow(FIELDS)

    def __call__(self, event: Event) -> None:
        if event.kind != "update":
            return
        row = (f"{time.time():.3f}", event.round, event.peer, f"{event.accuracy:.6f}",
               "" if event.loss is None else f"{event.loss:.6g}")
        with self._lock, self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow(row)


def plot_history(history_csv: str, png: str) -> None:
    """Accuracy (and loss, where recorded) over rounds, from a History CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rounds = [int(row["round"]) for row in rows]
    figure, accuracy_axis = plt.subplots(figsize=(7, 4), dpi=100)
    accuracy_axis.plot(rounds, [float(row["accuracy"]) for row in rows], color="tab:green",
                       marker=".", label="global accuracy")
    accuracy_axis.set_xlabel("round (accepted update)")
    accuracy_axis.set_ylabel("accuracy")
    accuracy_axis.set_ylim(0, 1.05)
    losses = [(r, float(row["loss"])) for r, row in zip(rounds, rows) if row["loss"]]
    if losses:
        loss_axis = accuracy_axis.twinx()
        loss_axis.plot(*zip(*losses), color="tab:red", marker=".", label="global loss")
        loss_axis.set_ylabel("loss")
    accuracy_axis.set_title("fedga training")
    figure.legend(loc="lower right", bbox_to_anchor=(1, 0), bbox_transform=accuracy_axis.transAxes)
    figure.tight_layout()
    figure.savefig(png)
    plt.close(figure)
