"""The history CSV and its plot, from real update events."""

from __future__ import annotations

import csv
import threading

import matplotlib.image

from common.aggregate import CLIPPED, EXCLUDED, USED, Verdict
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


def test_a_rounds_verdicts_go_into_its_row(tmp_path):
    history = History(str(tmp_path / "history.csv"))
    verdicts = [
        Verdict("p1", 1.5, 2.0, 10.0, USED),
        Verdict("p2", 9.0, 8.5, 300.0, CLIPPED, "norm 9 -> 1.5"),
        Verdict("p3", 2.0, float("nan"), None, EXCLUDED),
    ]
    for name, verdict in zip(("a-0000000a", "b-0000000b", "c-0000000c"), verdicts):
        history(Event("judged", peer=verdict.client, round=1, detail=name, verdict=verdict))
    history(Event("update", peer="3 clients", round=1, accuracy=0.5, loss=1.0))
    history(Event("update", peer="3 clients", round=2, accuracy=0.6, loss=0.9))  # none judged
    with open(tmp_path / "history.csv", newline="") as handle:
        first, second = csv.DictReader(handle)
    assert (first["used"], first["clipped"], first["excluded"]) == (
        "a-0000000a",
        "b-0000000b: norm 9 -> 1.5",
        "c-0000000c",
    )
    assert first["change_norms"] == "a-0000000a=1.5;b-0000000b=9;c-0000000c=2"
    assert first["distances"] == "a-0000000a=2;b-0000000b=8.5"  # c's alone: NaN, left out
    assert first["krum_scores"] == "a-0000000a=10;b-0000000b=300"
    assert second["used"] == second["change_norms"] == ""
