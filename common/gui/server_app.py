"""The Server App window: the tutorial's socket buttons, then two tabs: *Setup* (the model,
the test data, the aggregation, when to stop, the GA settings) and *Training* (accuracy and
loss per round with the best round marked, and the clients with their last update), and
the buttons that stop training and save its results."""

from __future__ import annotations

import logging

from kivy.metrics import dp
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.gridlayout import GridLayout
from kivy.uix.spinner import Spinner
from kivy.uix.tabbedpanel import TabbedPanel, TabbedPanelItem

from common.aggregate import SETTINGS
from common.data import DATA_SUFFIXES
from common.gui.chart import LineChart, Series, loss_range
from common.gui.path_dialog import PathDialog
from common.gui.server_controller import SAVE_SUFFIXES, ServerController
from common.gui.server_view import rows_shown
from common.gui.setup_fields import AUTO_HINTS
from common.gui.sizes import SERVER_MINIMUM
from common.gui.tutorial_app import TutorialApp
from common.gui.widgets import (
    CAPTIONED_HEIGHT,
    ROW_HEIGHT,
    log_positions_when_drawn,
    wrapping_label,
)

log = logging.getLogger(__name__)

ACCURACY = (0.30, 0.80, 0.45)
LOSS = (0.95, 0.45, 0.35)
CLIENT_ROWS = 6  # as many as the list's height holds
CLIENT_COLUMNS = (
    ("Client", 0.22),
    ("Samples", 0.11),
    ("Round", 0.09),
    ("Accuracy", 0.12),
    ("Rule did", 0.22),
    ("State", 0.24),
)
SUSPICIOUS = (0.75, 0.1, 0.1, 1)  # a suspicious client's row: more than half its updates cut
MODEL_SUFFIXES = (".keras", ".json")
SAVES = (
    ("save_model", "Save Model", "model", "best.keras"),
    ("save_history", "Save History", "history", "history.csv"),
    ("save_plot", "Save Plot", "plot", "history.png"),
)


class ServerApp(TutorialApp):
    """The tutorial's Server App, plus the run's setup and what the server core reports
    while clients train."""

    controller: ServerController

    def __init__(self, controller: ServerController):
        super().__init__(controller, title="Server App", minimum_size=SERVER_MINIMUM)
        self.spinners: dict[str, Spinner] = {}
        self._training_shown = False  # the Training tab was brought up for this Listen

    def build(self):
        controller = self.controller
        root = self.tutorial_rows(
            ("IPv4 Address", "Port Number"),
            ("bind", "Bind Socket", controller.bind),
            ("listen", "Listen to Connections", controller.listen),
            secured="listen",
        )
        self.tabs = TabbedPanel(do_default_tab=False, tab_height=dp(30), tab_width=dp(110))
        self.setup_tab = TabbedPanelItem(text="Setup", content=self.setup_panel())
        self.training_tab = TabbedPanelItem(text="Training", content=self.training_panel())
        for tab in (self.setup_tab, self.training_tab):
            self.tabs.add_widget(tab)
        self.tabs.default_tab = self.setup_tab
        self.inputs.update(tab_setup=self.setup_tab, tab_training=self.training_tab)
        self.tabs.bind(current_tab=self._tab_shown)
        root.add_widget(self.tabs)
        root.add_widget(self.actions_row())
        return root

    # ---- Setup -----------------------------------------------------------------------------

    def setup_panel(self) -> BoxLayout:
        """The fields Listen to Connections builds the model from, pre-filled from the flags."""
        specs = {spec.name: spec for spec in self.controller.setup_fields()}
        self.setup_specs = specs
        panel = BoxLayout(orientation="vertical", padding=dp(6), spacing=dp(4))
        panel.add_widget(
            self.file_row(
                "model",
                specs["model"].caption,
                "empty: see below",
                specs["model"].text,
                suffixes=MODEL_SUFFIXES,
                on_edited=self.refresh,
            )
        )
        panel.add_widget(
            self.file_row(
                "test_data",
                specs["test_data"].caption,
                "empty: the four XOR samples",
                specs["test_data"].text,
                suffixes=DATA_SUFFIXES,
                on_edited=self.refresh,
                seconds=(
                    ("labels", "test_labels", specs["test_labels"].caption),
                    ("label_column", "test_label_column", specs["test_label_column"].caption),
                ),
            )
        )
        for names in (
            ("target_accuracy", "min_clients", "patience", "step_patience"),
            ("federation", "aggregation", "secure_aggregation", "secagg_threshold"),
            # The aggregation's, each enabled for the rules that take it; five a row at most
            # (the server optimisers', then the defences').
            *(tuple(SETTINGS)[start : start + 5] for start in range(0, len(SETTINGS), 5)),
            (
                "num_generations",
                "num_parents_mating",
                "mutation_percent_genes",
                "operators",
                "mutation_step",
                "stop_fitness",
            ),
        ):
            row = BoxLayout(spacing=dp(6), size_hint_y=None, height=CAPTIONED_HEIGHT)
            for name in names:
                row.add_widget(self.captioned(specs[name].caption, self.setup_input(specs[name])))
            panel.add_widget(row)
        self.model_note = wrapping_label(font_size="13sp", halign="left", valign="top")
        panel.add_widget(self.model_note)
        self.step_inputs.extend(specs)
        return panel

    def text_of(self, name: str) -> str:
        return self.setup_specs[name].text

    def setup_input(self, spec):
        if not spec.choices:
            return self.text_field(spec.name, AUTO_HINTS.get(spec.name, ""), spec.text)
        spinner = Spinner(text=spec.text, values=spec.choices)
        spinner.bind(
            text=lambda _spinner, text: self._chosen(spec.name, text),
            is_open=lambda _spinner, is_open: is_open and self._log_choices(spinner),
        )
        self.spinners[spec.name] = self.inputs[spec.name] = spinner
        return spinner

    def _chosen(self, name: str, text: str) -> None:
        log.debug("field %s chose %r", name, text)
        for other, follows in self.controller.follows(name, self._texts()).items():
            log.debug("field %s set to %r", other, follows)
            self.inputs[other].text = follows
        self.refresh()

    def _log_choices(self, spinner: Spinner) -> None:
        # The spinner's list is laid out only as it opens: say where its choices are then.
        options = spinner._dropdown.container.children
        log_positions_when_drawn(lambda: {f"choice {option.text}": option for option in options})

    def _texts(self) -> dict[str, str]:
        return {name: self.inputs[name].text for name in self.setup_specs}

    def _model_note(self) -> str:
        """Which model Listen builds (or built), so a person knows before training."""
        view, texts = self.controller.view, self._texts()
        if self.controller.listener is not None:
            return view.model
        if texts["model"].strip():
            return f"Listen builds the model in {texts['model'].strip()}."
        if texts["test_data"].strip():
            return (
                "No model file: Listen builds a default Dense model sized to the test "
                "data's features and classes."
            )
        return "No model file and no test data: the tutorial's XOR model and samples."

    def input_locked(self, name: str) -> bool:
        controller = self.controller
        if name in self.setup_specs or name.startswith("browse_"):
            return controller.settings_in_use or (
                name in self.setup_specs and not controller.applies(name, self._texts())
            )
        return super().input_locked(name)

    # ---- Training --------------------------------------------------------------------------

    def training_panel(self) -> BoxLayout:
        panel = BoxLayout(orientation="vertical", padding=dp(6), spacing=dp(4))
        self.summary_label = wrapping_label(
            height=dp(26), font_size="15sp", bold=True, shorten=True
        )
        panel.add_widget(self.summary_label)
        # What the mode hides from the server; no room taken when there is nothing to say.
        self.note_label = wrapping_label(height=0, font_size="14sp", shorten=True)
        panel.add_widget(self.note_label)
        self.chart = LineChart("round")
        panel.add_widget(self.chart)
        table = GridLayout(
            cols=len(CLIENT_COLUMNS), size_hint_y=None, height=dp(20) * (CLIENT_ROWS + 1)
        )
        self.cells = []
        for row in range(CLIENT_ROWS + 1):
            for caption, share in CLIENT_COLUMNS:
                cell = wrapping_label(
                    caption if row == 0 else "",
                    halign="left",
                    font_size="13sp",
                    bold=row == 0,
                    shorten=True,
                    size_hint_x=share,
                )
                table.add_widget(cell)
                if row:
                    self.cells.append(cell)
        panel.add_widget(table)
        self._cell_colour = tuple(self.cells[0].color)  # the theme's, for rows not suspicious
        return panel

    def _tab_shown(self, _tabs, tab) -> None:
        log_positions_when_drawn(lambda: {f"tab {tab.text}": tab})

    # ---- Stop and save -----------------------------------------------------------------------

    def actions_row(self) -> BoxLayout:
        row = BoxLayout(spacing=dp(6), size_hint_y=None, height=ROW_HEIGHT)
        row.add_widget(self.button("stop", "Stop Training", self.controller.stop_training))
        for name, text, kind, default in SAVES:
            row.add_widget(
                self.button(
                    name, text, lambda kind=kind, default=default: self._save(kind, default)
                )
            )
        return row

    def _save(self, kind: str, default: str) -> None:
        PathDialog(
            f"Save the {kind} as",
            lambda path: self.controller.save(kind, path),
            suffixes=(SAVE_SUFFIXES[kind],),
            start=default,
            save=True,
        ).open()

    def refresh(self) -> None:
        super().refresh()
        controller, view = self.controller, self.controller.view
        self.summary_label.text = view.summary
        self.note_label.text = view.note
        self.note_label.height = dp(20) if view.note else 0
        rounds = [(r, a) for r, a, _ in view.history]
        losses = [(r, loss) for r, _, loss in view.history if loss is not None]
        self.chart.series = [
            Series("accuracy", ACCURACY, rounds, 0.0, 1.0),
            Series("loss", LOSS, losses, *loss_range(losses)),
        ]
        self.chart.marked = [] if view.best_round is None else [view.best_round, "best"]
        self.model_note.text = self._model_note()
        shown = rows_shown(list(view.clients.values()), CLIENT_ROWS)
        rows = [view.cells(row) for row in shown] or [("none yet",)]
        texts = [text for row in rows for text in row]
        suspicious = [row.suspicious for row in shown]
        columns = len(CLIENT_COLUMNS)
        for index, cell in enumerate(self.cells):
            cell.text = texts[index] if index < len(texts) else ""
            row_index = index // columns
            cell.color = (
                SUSPICIOUS
                if row_index < len(suspicious) and suspicious[row_index]
                else self._cell_colour
            )
        listening = controller.listener is not None
        if listening and not self._training_shown:
            self.tabs.switch_to(self.training_tab)  # once per Listen: Setup stays a click away
        self._training_shown = listening
