"""The Client App window: the tutorial's socket buttons, then the round being trained, the GA's
progress through its generations and the best fitness so far."""
from __future__ import annotations

from kivy.metrics import dp
from kivy.uix.progressbar import ProgressBar
from kivy.uix.widget import Widget

from common.gui.controllers import ClientController
from common.gui.window import TutorialApp, wrapping_label


class ClientApp(TutorialApp):
    """The tutorial's Client App, plus the training progress the client core reports."""

    controller: ClientController

    def build(self):
        controller = self.controller
        root = self.tutorial_rows(("Server IPv4 Address", "Server Port Number"),
                                  ("connect", "Connect to Server", controller.connect),
                                  ("train", "Receive & Train Model", controller.train),
                                  secured="connect")
        self.progress_label = wrapping_label(height=dp(28), font_size="16sp")
        root.add_widget(self.progress_label)
        self.progress_bar = ProgressBar(max=controller.view.generations, size_hint_y=None,
                                        height=dp(24))
        root.add_widget(self.progress_bar)
        root.add_widget(Widget())  # takes the spare height, so the rows start at the top
        return root

    def refresh(self) -> None:
        super().refresh()
        view = self.controller.view
        self.progress_bar.value = view.generation
        if view.round is None:
            self.progress_label.text = "Not training yet"
            return
        fitness = "-" if view.best_fitness is None else f"{view.best_fitness:.3g}"
        self.progress_label.text = (f"Round {view.round}    generation {view.generation} of "
                                    f"{view.generations}    best fitness {fitness}")
