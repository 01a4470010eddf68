"""The file dialog behind every Browse and Save button (``PathDialog``).

Import only through ``common.gui.run_*``, which configures Kivy first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from kivy.metrics import dp
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.filechooser import FileChooserListView
from kivy.uix.popup import Popup

from common.gui.widgets import (
    ROW_HEIGHT,
    caption_label,
    log_positions_when_drawn,
    logged_field,
    row_box,
    wrapping_label,
)

log = logging.getLogger(__name__)


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
        buttons = row_box(ROW_HEIGHT)
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
