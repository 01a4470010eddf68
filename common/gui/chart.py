"""A line chart drawn with canvas lines (``LineChart``): the server window's accuracy and
loss per round, a client window's local loss per generation.

Import only through ``common.gui.run_*``, which configures Kivy first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kivy.core.text import Label as CoreLabel
from kivy.graphics import Color, Ellipse, Line, Rectangle
from kivy.metrics import dp, sp
from kivy.properties import ListProperty
from kivy.uix.widget import Widget

GRID = (0.35, 0.35, 0.35)
TEXT = (0.85, 0.85, 0.85)


@dataclass(frozen=True)
class Series:
    """One line of a ``LineChart``: (x, y) points on an axis from ``low`` to ``high``."""

    caption: str
    colour: tuple[float, float, float]
    points: Sequence[tuple[float, float]]
    low: float
    high: float


def loss_range(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """A loss axis from 0 to a little above the largest loss (1 if there is none)."""
    return 0.0, max([y for _, y in points], default=0.0) * 1.1 or 1.0


class LineChart(Widget):
    """Up to two series over a shared x axis, drawn with canvas lines: the first on the
    left axis, the second on the right; ``marked_x`` draws a vertical marker there."""

    series = ListProperty()
    marked = ListProperty()  # [x, caption] of the marker, or empty

    def __init__(self, x_caption: str, **kwargs):
        super().__init__(**kwargs)
        self.x_caption = x_caption
        self.bind(pos=self._redraw, size=self._redraw, series=self._redraw, marked=self._redraw)

    def _text(
        self, text: str, x: float, y: float, anchor_x: str, anchor_y: str, colour=TEXT
    ) -> float:
        label = CoreLabel(text=text, font_size=sp(12), color=(*colour, 1))
        label.refresh()
        width, height = label.texture.size
        x -= {"left": 0, "center": width / 2, "right": width}[anchor_x]
        y -= {"bottom": 0, "middle": height / 2, "top": height}[anchor_y]
        Color(1, 1, 1)
        Rectangle(texture=label.texture, pos=(x, y), size=label.texture.size)
        return width

    def _redraw(self, *_args) -> None:
        self.canvas.clear()
        # Room for the y ticks on both sides, the x ticks and caption below, a legend above.
        left, bottom = self.x + dp(44), self.y + dp(34)
        width, height = self.right - dp(44) - left, self.top - dp(22) - bottom
        if width <= 0 or height <= 0:
            return
        xs = [x for series in self.series for x, _ in series.points]
        first, last = min(xs, default=0), max(xs, default=1)
        span = (last - first) or 1

        def x_of(x: float) -> float:
            return left + width * (x - first) / span

        with self.canvas:
            for share in (0.0, 0.5, 1.0):
                Color(*GRID)
                Line(
                    points=[left, bottom + height * share, left + width, bottom + height * share],
                    width=1,
                )
                for series, edge, anchor in zip(
                    self.series, (left - dp(4), left + width + dp(4)), ("right", "left")
                ):
                    value = series.low + (series.high - series.low) * share
                    self._text(
                        f"{value:.3g}",
                        edge,
                        bottom + height * share,
                        anchor,
                        "middle",
                        series.colour,
                    )
            self._text(f"{first:g}", left, bottom - dp(3), "center", "top")
            self._text(f"{last:g}", left + width, bottom - dp(3), "center", "top")
            self._text(self.x_caption, left + width / 2, self.y, "center", "bottom")
            legend_x = left
            for series in self.series:
                legend_x += self._text(
                    series.caption, legend_x, self.top, "left", "top", series.colour
                ) + dp(16)
            if self.marked:
                x, caption = self.marked
                Color(0.95, 0.8, 0.25)
                Line(
                    points=[x_of(x), bottom, x_of(x), bottom + height],
                    width=dp(1),
                    dash_length=dp(4),
                    dash_offset=dp(3),
                )
                near_right = x_of(x) > left + width * 0.8  # the caption goes left of the line
                self._text(
                    caption,
                    x_of(x) + (-dp(3) if near_right else dp(3)),
                    bottom + height - dp(2),
                    "right" if near_right else "left",
                    "top",
                    (0.95, 0.8, 0.25),
                )
            for series in self.series:
                scale = (series.high - series.low) or 1

                def y_of(y: float) -> float:
                    return bottom + height * min(1.0, max(0.0, (y - series.low) / scale))

                Color(*series.colour)
                xy = [v for x, y in series.points for v in (x_of(x), y_of(y))]
                if len(xy) >= 4:
                    Line(points=xy, width=dp(1.3))
                dot = dp(5)
                for x, y in series.points if len(series.points) <= 60 else ():  # apart: dots
                    Ellipse(pos=(x_of(x) - dot / 2, y_of(y) - dot / 2), size=(dot, dot))
