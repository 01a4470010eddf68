"""Kivy plumbing both windows share: the main-thread hand-off, the base App, and widgets.

Import only through ``common.gui.run_*``, which configures Kivy first.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from kivy.app import App
from kivy.clock import mainthread
from kivy.core.window import Window
from kivy.metrics import dp, sp
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.label import Label
from kivy.uix.textinput import TextInput

from common.cli import EXIT_DONE, EXIT_INTERRUPTED

log = logging.getLogger(__name__)

ROW_HEIGHT = dp(40)
CAPTION_HEIGHT = dp(18)


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
    """A window driven by a controller from ``common.gui.controllers``.

    Subclasses build their widgets below ``tutorial_rows`` and extend ``refresh``, which the
    controller calls on every change. Buttons are kept under the controller's button names.
    """

    def __init__(self, controller, *, title: str):
        super().__init__(title=title)
        self.controller = controller
        self.buttons: dict[str, Button] = {}
        self.fields: dict[str, TextInput] = {}
        self.security_names: list[str] = []  # the fields of the controller's security settings
        self.status_label = fitting_label(controller.status, height=dp(56), font_size=sp(17))

    def on_start(self) -> None:
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
        for name, widget in {**self.buttons, **self.fields}.items():
            x, y = widget.to_window(*widget.center)
            # X counts y from the top, Kivy from the bottom.
            log.info("widget %s at x=%d y=%d", name, x, window.height - y)

    def refresh(self) -> None:
        for name, button in self.buttons.items():
            button.disabled = not self.controller.enabled[name]
        for name in self.security_names:
            self.fields[name].disabled = self.controller.settings_in_use
        self.status_label.text = self.controller.status

    def tutorial_rows(self, field_hints: tuple[str, str], address_step: tuple[str, str, Callable],
                      next_step: tuple[str, str, Callable], *, secured: str) -> BoxLayout:
        """The tutorial's column: Create Socket, the address fields, the step that uses them
        (called with the fields' texts), the next step, Close Socket, the status label.

        The controller's security fields sit right above the step named ``secured``, which
        is called with their texts by name too."""
        controller, config = self.controller, self.controller.config
        root = BoxLayout(orientation="vertical", padding=dp(10), spacing=dp(6))
        root.add_widget(self.button("create", "Create Socket", controller.create))
        root.add_widget(self.address_fields(*field_hints, config.host, config.port))
        for (name, text, step), address in ((address_step, True), (next_step, False)):
            if name == secured:
                root.add_widget(self.security_row())
            root.add_widget(self.button(name, text, self._reading(step, address=address,
                                                                  security=name == secured)))
        root.add_widget(self.button("close", "Close Socket", controller.close))
        root.add_widget(self.status_label)
        return root

    def _reading(self, step: Callable, *, address: bool, security: bool) -> Callable[[], None]:
        """``step`` called with the fields' texts as the click happens: the address fields'
        as two arguments, the security fields' by name."""
        def call() -> None:
            fields = self.fields
            args = (fields["host"].text, fields["port"].text) if address else ()
            texts = {name: fields[name].text for name in self.security_names} if security else {}
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
        block = BoxLayout(orientation="vertical", size_hint_y=None, spacing=dp(2),
                          height=CAPTION_HEIGHT + dp(2) + ROW_HEIGHT)
        block.add_widget(captions)
        block.add_widget(inputs)
        return block

    def text_field(self, name: str, hint: str, text: str) -> TextInput:
        # Kivy greys disabled text to half black, like a hint: a value in use stays readable.
        field = TextInput(hint_text=hint, text=text, multiline=False, write_tab=False,
                          padding=[dp(8), dp(10)], disabled_foreground_color=(0, 0, 0, 0.75))
        field.bind(focus=lambda _field, focused: _log_focus(name, field, focused))
        self.fields[name] = field
        return field


def _log_focus(name: str, field: TextInput, focused: bool) -> None:
    # Keys go to the field that has focus when Kivy reads them, and a click moves the focus
    # only at the next frame: these lines show where typing landed and what a field ended up
    # holding. Every field holds an address, a port or a file's path, never a secret itself.
    if focused:
        log.debug("field %s focused", name)
    else:
        log.debug("field %s left with text %r", name, field.text)


def _row(height: float) -> BoxLayout:
    return BoxLayout(orientation="horizontal", size_hint_y=None, height=height, spacing=dp(6))


def fitting_label(text: str, *, height: float, font_size: float,
                  min_font_size: float = sp(11)) -> Label:
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


def wrapping_label(text: str = "", *, height: float | None = None, halign: str = "center",
                   valign: str = "middle", **kwargs) -> Label:
    """A label that wraps at its own width; fixed ``height`` unless None (then it stretches)."""
    label = Label(text=text, halign=halign, valign=valign, **kwargs)
    if height is not None:
        label.size_hint_y, label.height = None, height
    label.bind(size=lambda widget, size: setattr(widget, "text_size", size))
    return label
