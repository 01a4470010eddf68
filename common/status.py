"""A live status line for headless runs on a terminal, kept below the log lines.

On a terminal the last line shows training as it goes (round, accuracy, a generations bar)
and is redrawn under every log line; when the output is not a terminal nothing of this is
written and the log lines stay plain.
"""

from __future__ import annotations

import logging
import threading
from typing import TextIO

from common.events import Event, EventKind

CLEAR_LINE = "\r\x1b[K"
BAR_WIDTH = 20


class StatusLine(logging.StreamHandler):
    """A log handler that keeps one status line under the log lines it writes."""

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        self._text = ""
        self._status_lock = threading.Lock()  # events arrive from every client's thread

    def emit(self, record: logging.LogRecord) -> None:
        with self._status_lock:
            self.stream.write(CLEAR_LINE)
            super().emit(record)
            self.stream.write(self._text)
            self.flush()

    def show(self, text: str) -> None:
        with self._status_lock:
            self._text = text
            self.stream.write(CLEAR_LINE + text)
            self.flush()


class ServerStatus:
    """Event callback: round, global accuracy and connected clients."""

    def __init__(self, line: StatusLine):
        self._line, self._clients, self._text = line, 0, "waiting for clients"

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.CONNECTED:
            self._clients += 1
        elif event.kind is EventKind.DISCONNECTED:
            self._clients -= 1
        elif event.kind is EventKind.UPDATE:
            self._text = f"round {event.round}  accuracy {event.accuracy:.4f}"
        else:
            return
        self._line.show(f"[server] {self._text}  clients {self._clients}")


class ClientStatus:
    """Event callback: the round and a bar over its GA generations (as many as the server's
    settings for the round say, which each model message carries)."""

    def __init__(self, line: StatusLine, name: str):
        self._line, self._name, self._generations = line, name, 0

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.MODEL:
            self._generations = event.generation
        if event.kind is not EventKind.GENERATION:
            return
        filled = min(BAR_WIDTH, BAR_WIDTH * event.generation // max(1, self._generations))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self._line.show(
            f"[{self._name}] round {event.round} [{bar}] generation "
            f"{event.generation}  best fitness {event.fitness:.4g}"
        )
