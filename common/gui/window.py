"""Kivy plumbing both windows share: the main-thread hand-off, the base App, and widgets
(captioned fields, the file dialog, a line chart).

Import only through ``common.gui.run_*``, which configures Kivy first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kivy.app import App
from kivy.clock import mainthread
from kivy.core.text import Label as CoreLabel
from kivy.core.window import Window
from kivy.graphics import Color, Ellipse, Line, Rectangle
from kivy.metrics import dp, sp
from kivy.properties import ListProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.filechooser import FileChooserListView
from kivy.uix.label import Label
from kivy.uix.popup import Popup
from kivy.uix.textinput import TextInput
from kivy.uix.widget import Widget

from common.app import EXIT_DONE, EXIT_INTERRUPTED
from common.data import second_field

log = logging.getLogger(__name__)

ROW_HEIGHT = dp(40)
CAPTION_HEIGHT = dp(18)
CAPTIONED_HEIGHT = CAPTION_HEIGHT + dp(2) + ROW_HEIGHT  # a caption over its input
SECOND_FIELD_WIDTH = dp(170)
GRID = (0.35, 0.35, 0.35)
TEXT = (0.85, 0.85, 0.85)


def call_soon(handler, *args) -> None:
    """Run ``handler(*args)`` on Kivy's main thread at the next frame; safe from any thread."""
    mainthread(handler)(*args)


def run_app(app: App) -> int:
    """Run until the window closes (its close button, Escape or SIGTERM); Ctrl-C also stops
    the threads, since Kivy then skips ``on_stop``."""
    try:
        app.run()
    except KeyboardInterrupt:
        app.controller.shutdown()
        return EXIT_INTERRUPTED
    return EXIT_DONE


class TutorialApp(App):
    """A window driven by a controller (``common.gui.controller``).

    Subclasses build their widgets below ``tutorial_rows`` and extend ``refresh``, which the
    controller calls on every change. Buttons are kept under the controller's button names
    (its ``enabled`` and ``actions``); every other named widget is in ``inputs``, locked
    while ``input_locked`` says so. The step named ``secured`` reads the ``step_inputs``.
    """

    def __init__(self, controller, *, title: str, minimum_size: tuple[int, int]):
        super().__init__(title=title)
        self.controller = controller
        self.minimum_size = minimum_size  # everything still fits, readable, at this size
        self.buttons: dict[str, Button] = {}
        self.fields: dict[str, TextInput] = {}  # the text fields among ``inputs``
        self.inputs: dict[str, Widget] = {}  # fields, spinners, Browse buttons, by name
        self.step_inputs: list[str] = []  # what the secured step reads: security fields first
        self.security_names: list[str] = []  # the fields of the controller's security settings
        self.status_label = fitting_label(controller.status, height=dp(56), font_size=sp(17))

    def on_start(self) -> None:
        Window.minimum_width, Window.minimum_height = self.minimum_size
        self.controller.on_change = self.refresh
        self.refresh()
        Window.bind(on_flip=self._on_first_flip)

    def on_stop(self) -> None:
        self.controller.shutdown()

    def _on_first_flip(self, window) -> None:
        # Timers set in build() fire before the first frame is drawn; a flip means the
        # window shows something, so clicks from here on land on real buttons.
        window.unbind(on_flip=self._on_first_flip)
        log.info("ready: %s window %dx%d", self.title, window.width, window.height)
        log_positions(
            {
                name: widget
                for name, widget in {**self.buttons, **self.inputs}.items()
                if widget.get_root_window() is not None
            }
        )

    def input_locked(self, name: str) -> bool:
        """Whether the input ``name`` is disabled now: security fields while in use."""
        return name in self.security_names and self.controller.settings_in_use

    def refresh(self) -> None:
        controller = self.controller
        switches = {**controller.enabled, **controller.actions}
        for name, button in self.buttons.items():
            button.disabled = not switches[name]
        for name, widget in self.inputs.items():
            widget.disabled = self.input_locked(name)
        self.status_label.text = controller.status

    def tutorial_rows(
        self,
        field_hints: tuple[str, str],
        address_step: tuple[str, str, Callable],
        next_step: tuple[str, str, Callable],
        *,
        secured: str,
    ) -> BoxLayout:
        """The tutorial's column: Create Socket, the address fields, the step that uses them
        (called with the fields' texts), the next step, Close Socket, the status label.

        The controller's security fields sit right above the step named ``secured``, which
        is called with their texts by name too."""
        controller = self.controller
        root = BoxLayout(orientation="vertical", padding=dp(10), spacing=dp(6))
        root.add_widget(self.button("create", "Create Socket", controller.create))
        root.add_widget(
            self.address_fields(
                *field_hints, controller.setting("host"), controller.setting("port")
            )
        )
        for (name, text, step), address in ((address_step, True), (next_step, False)):
            if name == secured:
                root.add_widget(self.security_row())
            root.add_widget(
                self.button(
                    name, text, self._reading(step, address=address, security=name == secured)
                )
            )
        root.add_widget(self.button("close", "Close Socket", controller.close))
        root.add_widget(self.status_label)
        return root

    def _reading(self, step: Callable, *, address: bool, security: bool) -> Callable[[], None]:
        """``step`` called with the fields' texts as the click happens: the address fields'
        as two arguments, the security fields' by name."""

        def call() -> None:
            fields = self.fields
            args = (fields["host"].text, fields["port"].text) if address else ()
            texts = {name: self.inputs[name].text for name in self.step_inputs} if security else {}
            step(*args, **texts)

        return call

    def button(self, name: str, text: str, on_press) -> Button:
        button = Button(text=text, size_hint_y=None, height=ROW_HEIGHT)
        button.bind(on_press=lambda _button: on_press())
        self.buttons[name] = button
        return button

    def address_fields(self, host_hint: str, port_hint: str, host: str, port: int) -> BoxLayout:
        """The tutorial's two fields side by side, pre-filled from the flags."""
        row = _row(ROW_HEIGHT)
        for name, hint, text in (("host", host_hint, host), ("port", port_hint, str(port))):
            row.add_widget(self.text_field(name, hint, text))
        return row

    def security_row(self) -> BoxLayout:
        """The controller's security fields side by side, each under its caption (a
        pre-filled field shows no hint), pre-filled from the flags."""
        captions, inputs = _row(CAPTION_HEIGHT), _row(ROW_HEIGHT)
        for spec in self.controller.security_fields():
            captions.add_widget(wrapping_label(spec.caption, halign="left", font_size="13sp"))
            inputs.add_widget(self.text_field(spec.name, spec.hint, spec.text))
            self.security_names.append(spec.name)
            self.step_inputs.append(spec.name)
        block = BoxLayout(
            orientation="vertical",
            size_hint_y=None,
            spacing=dp(2),
            height=CAPTION_HEIGHT + dp(2) + ROW_HEIGHT,
        )
        block.add_widget(captions)
        block.add_widget(inputs)
        return block

    def text_field(self, name: str, hint: str, text: str) -> TextInput:
        self.fields[name] = self.inputs[name] = field = logged_field(name, hint, text)
        return field

    def browse_button(self, name: str, on_press: Callable[[], None]) -> Button:
        button = Button(text="Browse", size_hint=(None, None), size=(dp(84), ROW_HEIGHT))
        button.bind(on_press=lambda _button: on_press())
        self.inputs[name] = button
        return button

    def captioned(self, caption: str, widget: Widget, *, width: float | None = None) -> BoxLayout:
        """``widget`` under its caption, as one block of a row (of ``width``, else stretching)."""
        block = BoxLayout(
            orientation="vertical", spacing=dp(2), size_hint_y=None, height=CAPTIONED_HEIGHT
        )
        if width is not None:
            block.size_hint_x, block.width = None, width
        block.add_widget(caption_label(caption))
        widget.size_hint_y, widget.height = None, ROW_HEIGHT
        block.add_widget(widget)
        return block

    def file_row(
        self,
        name: str,
        caption: str,
        hint: str,
        text: str,
        *,
        suffixes: Sequence[str],
        on_edited: Callable[[], None],
        seconds: Sequence[tuple[str, str, str]] = (),
    ) -> BoxLayout:
        """A file's path field with its Browse button and, beside them, the field the file
        needs by its suffix (``common.data.second_field``): each of ``seconds`` is
        (that name, field name, caption), pre-filled from ``text_of``. ``on_edited()`` runs
        once a file is chosen or any of these fields is left (Enter leaves it too)."""
        row = _row(CAPTIONED_HEIGHT)
        field = self.text_field(name, hint, text)
        row.add_widget(self.captioned(caption, field))
        browse = self.browse_button(
            f"browse_{name}",
            lambda: self.open_file_dialog(name, caption, field, on_edited, suffixes=suffixes),
        )
        row.add_widget(self.captioned("", browse, width=browse.width))
        slot = BoxLayout(size_hint_x=None, width=0)
        blocks, edited = {}, [field]
        for needed, second_name, second_caption in seconds:
            second = self.text_field(second_name, "", self.text_of(second_name))
            blocks[needed] = self.captioned(second_caption, second, width=SECOND_FIELD_WIDTH)
            edited.append(second)

        def show_second(*_args) -> None:
            slot.clear_widgets()
            block = blocks.get(second_field(field.text))
            slot.width = 0 if block is None else SECOND_FIELD_WIDTH
            if block is not None:
                slot.add_widget(block)

        field.bind(text=show_second)
        show_second()
        row.add_widget(slot)
        for each in edited:
            each.bind(focus=lambda _field, focused: None if focused else on_edited())
        return row

    def text_of(self, name: str) -> str:
        """A field's text at start: subclasses fill it from their controller."""
        return ""

    def open_file_dialog(
        self,
        name: str,
        title: str,
        field: TextInput,
        on_chosen: Callable[[], None],
        *,
        suffixes: Sequence[str],
    ) -> None:
        """The Browse dialog of ``field``: the chosen file's path goes into it, then
        ``on_chosen()``. It starts in the folder of the field's path, if any."""

        def choose(path: str) -> None:
            field.text = path
            log.debug("field %s chose %r", name, path)
            on_chosen()

        PathDialog(title, choose, suffixes=suffixes, start=field.text).open()


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


def _row(height: float) -> BoxLayout:
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


class PathDialog(Popup):
    """Choose a file: a ``FileChooserListView`` listing the files of ``suffixes`` (in either
    case) and folders, and a path field a person can type into. ``save=True`` chooses where
    to write: a folder and a file name, asking before it replaces a file. ``on_choose(path)``
    gets the path once chosen; Enter in the path field chooses too."""

    def __init__(
        self,
        title: str,
        on_choose: Callable[[str], None],
        *,
        suffixes: Sequence[str],
        start: str = "",
        save: bool = False,
    ):
        # No fading in and out: while a dialog fades out it still takes every click.
        super().__init__(title=title, size_hint=(0.96, 0.94), auto_dismiss=False, _anim_duration=0)
        self._on_choose, self._save = on_choose, save
        folder = start if os.path.isdir(start) else os.path.dirname(os.path.abspath(start))
        suffixes = tuple(s.lower() for s in suffixes)
        self.chooser = FileChooserListView(  # where the field's file is, else here
            path=folder if start and os.path.isdir(folder) else os.getcwd(),
            filters=[lambda _folder, name: name.lower().endswith(suffixes)],
        )
        self.chooser.bind(selection=self._selected)
        hint = "file name" if save else "a file's path; Enter chooses it"
        default = os.path.basename(start) if save else os.path.abspath(start) if start else ""
        self.path_field = logged_field("dialog_path", hint, default)
        self.path_field.bind(on_text_validate=lambda _field: self.choose())
        self.choose_button = Button(text="Save" if save else "Choose")
        self.choose_button.bind(on_press=lambda _button: self.choose())
        self.cancel_button = Button(text="Cancel")
        self.cancel_button.bind(on_press=lambda _button: self.dismiss())
        self.question = wrapping_label(height=dp(24))
        buttons = _row(ROW_HEIGHT)
        buttons.add_widget(self.cancel_button)
        buttons.add_widget(self.choose_button)
        content = BoxLayout(orientation="vertical", spacing=dp(6))
        content.add_widget(
            caption_label(
                "File name, in the folder shown below"
                if save
                else "Path (type it, or pick a file below)"
            )
        )
        self.path_field.size_hint_y, self.path_field.height = None, ROW_HEIGHT
        content.add_widget(self.path_field)
        content.add_widget(self.chooser)
        content.add_widget(self.question)
        content.add_widget(buttons)
        self.content = content
        self._replace_asked = ""  # the path whose replacing was asked about

    def on_open(self) -> None:
        log.info("dialog: %s", self.title)
        log_positions_when_drawn(
            lambda: {
                "dialog_path": self.path_field,
                "dialog_choose": self.choose_button,
                "dialog_cancel": self.cancel_button,
            }
        )

    def _selected(self, _chooser, selection) -> None:
        if selection:
            self.path_field.text = os.path.basename(selection[0]) if self._save else selection[0]

    def _path(self) -> str:
        text = self.path_field.text.strip()
        return os.path.join(self.chooser.path, os.path.expanduser(text)) if text else ""

    def choose(self) -> None:
        path = self._path()
        if not path:
            return
        if os.path.isdir(path):  # a folder typed in: show it
            self.chooser.path, self.path_field.text = path, "" if self._save else path
            return
        if self._save and os.path.exists(path) and self._replace_asked != path:
            self._replace_asked = path
            self.question.text = f"{os.path.basename(path)} exists: Save again replaces it."
            self.choose_button.text = "Replace"
            log.info("dialog: asks before replacing %s", path)
            return
        self.dismiss()
        self._on_choose(path)


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
