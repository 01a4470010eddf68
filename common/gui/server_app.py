"""The Server App window: the tutorial's socket buttons, then a live accuracy chart and the
connected clients with their state."""
from __future__ import annotations

from kivy.core.text import Label as CoreLabel
from kivy.graphics import Color, Ellipse, Line, Rectangle
from kivy.metrics import dp, sp
from kivy.properties import ListProperty
from kivy.uix.widget import Widget

from common.gui.controllers import ServerController
from common.gui.window import TutorialApp, wrapping_label

GRID = (0.35, 0.35, 0.35)
CURVE = (0.30, 0.80, 0.45)
TEXT = (0.85, 0.85, 0.85)
CLIENT_ROWS = 4  # as many as the list's height holds


class AccuracyChart(Widget):
    """Global accuracy (0 to 1) after each accepted update, drawn with canvas lines."""

    points = ListProperty()  # (round, accuracy) pairs, round 0 being the untrained model

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bind(pos=self._redraw, size=self._redraw, points=self._redraw)

    def _text(self, text: str, x: float, y: float, anchor_x: str, anchor_y: str) -> None:
        label = CoreLabel(text=text, font_size=sp(13), color=(*TEXT, 1))
        label.refresh()
        width, height = label.texture.size
        x -= {"left": 0, "center": width / 2, "right": width}[anchor_x]
        y -= {"bottom": 0, "middle": height / 2, "top": height}[anchor_y]
        Color(1, 1, 1)
        Rectangle(texture=label.texture, pos=(x, y), size=label.texture.size)

    def _redraw(self, *_args) -> None:
        self.canvas.clear()
        # Room on the left for the y ticks and below for the x ticks and caption.
        left, bottom = self.x + dp(40), self.y + dp(40)
        width, height = self.right - dp(16) - left, self.top - dp(10) - bottom
        if width <= 0 or height <= 0:
            return
        last_round = max((r for r, _ in self.points), default=0)

        def x_of(round_: int) -> float:
            return left + width * round_ / max(1, last_round)

        def y_of(accuracy: float) -> float:
            return bottom + height * accuracy

        with self.canvas:
            for accuracy in (0.0, 0.25, 0.5, 0.75, 1.0):
                Color(*GRID)
                Line(points=[left, y_of(accuracy), left + width, y_of(accuracy)], width=1)
                self._text(f"{accuracy:g}", left - dp(6), y_of(accuracy), "right", "middle")
            self._text("0", left, bottom - dp(4), "center", "top")
            if last_round:
                self._text(str(last_round), left + width, bottom - dp(4), "center", "top")
            self._text("accepted updates (rounds)", left + width / 2, self.y, "center", "bottom")
            Color(*CURVE)
            xy = [v for r, a in self.points for v in (x_of(r), y_of(a))]
            if len(xy) >= 4:
                Line(points=xy, width=dp(1.5))
            dot = dp(7)
            for r, a in self.points:
                Ellipse(pos=(x_of(r) - dot / 2, y_of(a) - dot / 2), size=(dot, dot))


class ServerApp(TutorialApp):
    """The tutorial's Server App, plus what the server core reports while clients train."""

    controller: ServerController

    def __init__(self, controller: ServerController):
        super().__init__(controller, title="Server App")

    def build(self):
        controller = self.controller
        root = self.tutorial_rows(("IPv4 Address", "Port Number"),
                                  ("bind", "Bind Socket", controller.bind),
                                  ("listen", "Listen to Connections", controller.listen),
                                  secured="listen")
        self.summary_label = wrapping_label(height=dp(28), font_size="16sp", bold=True)
        root.add_widget(self.summary_label)
        self.chart = AccuracyChart()
        root.add_widget(self.chart)
        root.add_widget(wrapping_label("Clients", height=dp(24), halign="left", bold=True))
        self.clients_label = wrapping_label(height=dp(84), halign="left", valign="top")
        root.add_widget(self.clients_label)
        return root

    def refresh(self) -> None:
        super().refresh()
        view = self.controller.view
        self.summary_label.text = view.summary
        self.chart.points = list(view.history)
        rows = [f"{peer}    {state}" for peer, state in view.clients.items()]
        # The newest rows fit; older ones (long gone clients, usually) are counted.
        if len(rows) > CLIENT_ROWS:
            rows = [f"... {len(rows) - CLIENT_ROWS + 1} earlier"] + rows[-(CLIENT_ROWS - 1):]
        self.clients_label.text = "\n".join(rows) or "none yet"
