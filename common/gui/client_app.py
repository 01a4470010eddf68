"""The Client App window: the tutorial's socket buttons, then this client's data file, the
round being trained, the GA's progress through its generations with the best fitness so
far, and a chart of the local loss over the generations of the current round."""

from __future__ import annotations

from kivy.metrics import dp
from kivy.uix.progressbar import ProgressBar

from common.data import DATA_SUFFIXES
from common.gui.chart import LineChart, Series, loss_range
from common.gui.client_controller import ClientController
from common.gui.sizes import CLIENT_MINIMUM
from common.gui.tutorial_app import TutorialApp
from common.gui.widgets import wrapping_label

LOSS = (0.95, 0.45, 0.35)
DATA_NAMES = ("data", "labels", "label_column", "browse_data")


class ClientApp(TutorialApp):
    """The tutorial's Client App, plus its data row and the training progress the client
    core reports."""

    controller: ClientController

    def __init__(self, controller: ClientController, *, title: str):
        super().__init__(controller, title=title, minimum_size=CLIENT_MINIMUM)

    def build(self):
        controller = self.controller
        root = self.tutorial_rows(
            ("Server IPv4 Address", "Server Port Number"),
            ("connect", "Connect to Server", controller.connect),
            ("train", "Receive & Train Model", controller.train),
            secured="connect",
        )
        hint = (
            ".npz, .npy or .csv file"
            if controller.data is None
            else f"empty: the tutorial's {controller.config.name} samples"
        )
        root.add_widget(
            self.file_row(
                "data",
                "Data file (.npz, .npy, .csv)",
                hint,
                controller.data_file.path,
                suffixes=DATA_SUFFIXES,
                on_edited=self._load,
                seconds=(
                    ("labels", "labels", "Labels file (.npy)"),
                    ("label_column", "label_column", "Label column (.csv)"),
                ),
            )
        )
        self.data_label = wrapping_label(height=dp(22), font_size="14sp", shorten=True)
        root.add_widget(self.data_label)
        self.progress_label = wrapping_label(height=dp(28), font_size="16sp")
        root.add_widget(self.progress_label)
        self.progress_bar = ProgressBar(
            max=controller.view.generations, size_hint_y=None, height=dp(24)
        )
        root.add_widget(self.progress_bar)
        self.chart = LineChart("generation of this round")
        root.add_widget(self.chart)
        return root

    def text_of(self, name: str) -> str:
        return getattr(self.controller.data_file, name)

    def _load(self) -> None:
        fields = self.fields
        self.controller.load_data(
            fields["data"].text, fields["labels"].text, fields["label_column"].text
        )

    def input_locked(self, name: str) -> bool:
        return super().input_locked(name) or (name in DATA_NAMES and self.controller.data_in_use)

    def refresh(self) -> None:
        super().refresh()
        view = self.controller.view
        self.data_label.text = view.data
        # A round that ended early is complete: its bar full, its label says why.
        self.progress_bar.max = max(1, view.generations)
        self.progress_bar.value = view.generations if view.ended_early else view.generation
        # A copy: the chart redraws when its series differ from the last ones it drew.
        losses = list(view.losses)
        caption = "the server's best loss, on all clients' data" if view.scoring else "local loss"
        self.chart.series = [Series(caption, LOSS, losses, *loss_range(losses))]
        if view.round is None:
            self.progress_label.text = "Not training yet"
            return
        fitness = "-" if view.best_fitness is None else f"{view.best_fitness:.3g}"
        early = ", ended early: loss low" if view.ended_early else ""
        self.progress_label.text = (
            f"Round {view.round}    generation {view.generation} of "
            f"{view.generations}{early}    best fitness {fitness}"
        )
