"""What both windows' controllers share: the tutorial's buttons and status line, the
security fields, and the hand-off of core threads' reports to the owner thread.

A controller is a plain Python state machine: no Kivy here. A window binds its widgets to a
controller and forwards clicks to it, and the tests drive the same controller without a
display. Core threads report through ``call_soon``, which must run the handler on the
thread that owns the controller (Kivy's main thread in a window, the test's thread in a
test); every attribute a window reads is only ever changed there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from common import security
from common.app import parse_port
from common.client import ClientConfig
from common.server_config import ServerConfig

log = logging.getLogger(__name__)

CallSoon = Callable[..., None]  # call_soon(handler, *args): run handler(*args) on the owner thread
INITIAL_STATUS = "Socket Status"  # the tutorial's label before any click


@dataclass(frozen=True)
class SecurityField:
    """A text field for one security setting, as the window shows it."""

    name: str  # the config field it fills, and the keyword its step takes the text by
    caption: str
    hint: str  # shown while the field is empty: what empty means
    text: str  # pre-filled from the config (the flags)


class Controller:
    """Buttons, a status line, security fields and a change callback shared by both windows."""

    config: ServerConfig | ClientConfig  # each window's own, as its flags filled it
    BUTTONS: tuple[str, ...] = ()
    SECURITY: tuple[tuple[str, str], ...] = ()  # (config field, caption) of each security field
    TLS_FIELD = ""  # the one of them that turns TLS on

    def __init__(self, call_soon: CallSoon):
        self._call_soon = call_soon
        self.on_change: Callable[[], None] = lambda: None
        self.status = INITIAL_STATUS
        self._step_status = INITIAL_STATUS  # the last step's status, under a passing error
        self.enabled = {name: name == "create" for name in self.BUTTONS}  # tutorial: Create first
        self.actions: dict[str, bool] = {}  # the buttons added below the tutorial's: enabled?
        self.settings_in_use = False  # the security fields' values are in use: not editable

    def setting(self, name: str):
        """A setting of the config by its flat name (a flag's, a field's)."""
        return getattr(self.config, name)

    def security_fields(self) -> list[SecurityField]:
        """The security fields, filled from the config; empty means off."""
        env_secret = os.environ.get(security.SECRET_ENV)
        hints = {
            "secret_file": f"empty: ${security.SECRET_ENV}" if env_secret else "empty: no secret"
        }
        return [
            SecurityField(name, caption, hints.get(name, "empty: no TLS"), self.setting(name) or "")
            for name, caption in self.SECURITY
        ]

    def _show(self, status: str, *, enable: tuple[str, ...]) -> None:
        """Set the status line and enable exactly the ``enable`` buttons."""
        self.enabled = {name: name in enable for name in self.BUTTONS}
        self._step_status = status
        self._say(status)

    def _say(self, status: str) -> None:
        """Set the status line, the buttons as they are."""
        self.status = status
        log.info("status: %s", status)  # the windows' text in the log, for people and tests
        self.on_change()

    def _port(self, text: str, step: str) -> int | None:
        """The port field as a number, or None after saying why ``step`` cannot use it
        (the step's button stays enabled, to try again)."""
        try:
            return parse_port(text.strip())
        except ValueError as exc:
            self._show(f"Cannot {step}: {exc}.", enable=(step, "close"))
            return None

    def _security(self, texts: dict[str, str], step: str) -> dict | None:
        """The security fields' settings checked as config values (a field not in ``texts``
        keeps the config's), or None after saying why ``step`` cannot use them (its button
        stays enabled, to try again). An empty secret file means ``$FEDGA_SECRET``, if set."""
        paths = {name: self.setting(name) for name, _ in self.SECURITY}
        paths |= {name: text.strip() or None for name, text in texts.items()}
        try:
            secret = security.check_settings(**paths)
        except security.ConfigError as exc:
            self._show(str(exc), enable=(step, "close"))
            return None
        return paths | {"secret": secret}

    def _protection(self) -> str:
        """The config's protection for a status line: " (TLS, shared secret)", or "" for the
        tutorial's plain wire."""
        parts = []
        if self.setting(self.TLS_FIELD):
            parts.append("TLS")
        if self.setting("secret") is not None:
            parts.append(
                "shared secret"
                if self.setting("secret_file")
                else f"shared secret from ${security.SECRET_ENV}"
            )
        return f" ({', '.join(parts)})" if parts else ""
