"""The base both windows share (``TutorialApp``): the tutorial's column of socket steps and
its status line, driven by a controller, plus the main-thread hand-off its core threads
report through (``call_soon``) and running the window to its exit code (``run_app``).

Import only through ``common.gui.run_*``, which configures Kivy first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from kivy.app import App
from kivy.clock import mainthread
from kivy.core.window import Window
from kivy.metrics import dp, sp
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.textinput import TextInput
from kivy.uix.widget import Widget

from common.app import EXIT_DONE, EXIT_INTERRUPTED
from common.data import second_field
from common.gui.path_dialog import PathDialog
from common.gui.widgets import (
    CAPTION_HEIGHT,
    CAPTIONED_HEIGHT,
    ROW_HEIGHT,
    caption_label,
    fitting_label,
    log_positions,
    logged_field,
    row_box,
    wrapping_label,
)

log = logging.getLogger(__name__)

SECOND_FIELD_WIDTH = dp(170)


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
        row = row_box(ROW_HEIGHT)
        for name, hint, text in (("host", host_hint, host), ("port", port_hint, str(port))):
            row.add_widget(self.text_field(name, hint, text))
        return row

    def security_row(self) -> BoxLayout:
        """The controller's security fields side by side, each under its caption (a
        pre-filled field shows no hint), pre-filled from the flags."""
        captions, inputs = row_box(CAPTION_HEIGHT), row_box(ROW_HEIGHT)
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
        row = row_box(CAPTIONED_HEIGHT)
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
            needed = second_field(field.text)
            block = None if needed is None else blocks.get(needed)
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
