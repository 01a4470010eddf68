"""Widget factories both windows and the path dialog build from: the row heights, captions,
wrapping and self-fitting labels, one-line text fields that log what was typed where, and
the widget positions logged for the end-to-end test's clicks.

Import only through ``common.gui.run_*``, which configures Kivy first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kivy.core.window import Window
from kivy.metrics import dp, sp
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.label import Label
from kivy.uix.textinput import TextInput
from kivy.uix.widget import Widget

log = logging.getLogger(__name__)

ROW_HEIGHT = dp(40)
CAPTION_HEIGHT = dp(18)
CAPTIONED_HEIGHT = CAPTION_HEIGHT + dp(2) + ROW_HEIGHT  # a caption over its input


def logged_field(name: str, hint: str, text: str) -> TextInput:
    """A one-line text field that logs its focus and, when left, its text."""
    # Kivy greys disabled text to half black, like a hint: a value in use stays readable.
    field = TextInput(
        hint_text=hint,
        text=text,
        multiline=False,
        write_tab=False,
        padding=[dp(8), dp(10)],
        disabled_foreground_color=(0, 0, 0, 0.75),
    )
    field.bind(focus=lambda _field, focused: _log_focus(name, field, focused))
    return field


def log_positions(widgets: dict[str, Widget]) -> None:
    """Log where each widget's centre is, in X's coordinates (y from the top): the end-to-end
    test clicks there."""
    for name, widget in widgets.items():
        x, y = widget.to_window(*widget.center)
        log.info("widget %s at x=%d y=%d", name, x, Window.height - y)


def log_positions_when_drawn(widgets: Callable[[], dict[str, Widget]]) -> None:
    """``log_positions(widgets())`` once the next frame is on screen, when a dialog, a list
    or a tab has been laid out."""

    def on_flip(window) -> None:
        window.unbind(on_flip=on_flip)
        log_positions(widgets())

    Window.bind(on_flip=on_flip)


def _log_focus(name: str, field: TextInput, focused: bool) -> None:
    # Keys go to the field that has focus when Kivy reads them, and a click moves the focus
    # only at the next frame: these lines show where typing landed and what a field ended up
    # holding. Every field holds an address, a port or a file's path, never a secret itself.
    if focused:
        log.debug("field %s focused", name)
    else:
        log.debug("field %s left with text %r", name, field.text)


def caption_label(text: str) -> Label:
    return wrapping_label(
        text, halign="left", font_size="13sp", height=CAPTION_HEIGHT, shorten=True
    )


def row_box(height: float) -> BoxLayout:
    """A horizontal row of ``height``, its widgets side by side."""
    return BoxLayout(orientation="horizontal", size_hint_y=None, height=height, spacing=dp(6))


def fitting_label(
    text: str, *, height: float, font_size: float, min_font_size: float = sp(11)
) -> Label:
    """A wrapping label of fixed height whose font shrinks, down to ``min_font_size``, until
    the text fits: a sentence naming two long paths would otherwise lose its ends."""
    label = Label(text=text, halign="center", size_hint_y=None, height=height)

    def fit(*_args) -> None:
        label.text_size = (label.width, None)  # wrap at the width; the height is measured
        size = font_size
        while True:
            label.font_size = size
            label.texture_update()
            if label.texture_size[1] <= label.height or size <= min_font_size:
                return
            size -= sp(1)

    label.bind(size=fit, text=fit)
    fit()
    return label


def wrapping_label(
    text: str = "",
    *,
    height: float | None = None,
    halign: str = "center",
    valign: str = "middle",
    **kwargs,
) -> Label:
    """A label that wraps at its own width; fixed ``height`` unless None (then it stretches)."""
    label = Label(text=text, halign=halign, valign=valign, **kwargs)
    if height is not None:
        label.size_hint_y, label.height = None, height
    label.bind(size=lambda widget, size: setattr(widget, "text_size", size))
    return label
