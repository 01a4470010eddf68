"""The history CSV and its plot, from real update events."""

from __future__ import annotations

import csv
import threading

import matplotlib.image

from common.events import Event
from common.results import History, plot_history


def test_history_rows_from_concurrent_events_and_a_plot(tmp_path):
    history = History(str(tmp_path / "history.csv"))
    history(Event("connected", peer="a"))  # not an update: no row

    def client(name, rounds):
        for number in rounds:
            history(Event("update", peer=name, round=number, accuracy=number / 20, loss=1 / number))

    threads = [
        threading.Thread(target=client, args=(f"c{i}", range(i + 1, 21, 2))) for i in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with open(tmp_path / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(row["round"]) for row in rows) == list(range(1, 21))
    assert {row["client"] for row in rows} == {"c0", "c1"}
    plot_history(str(tmp_path / "history.csv"), str(tmp_path / "plot.png"))
    image = matplotlib.image.imread(tmp_path / "plot.png")
    assert image.shape[:2] == (400, 700) and image.std() > 0.05  # drawn, not blank
