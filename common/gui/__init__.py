"""The Kivy windows: the tutorial's Server App and Client App on top of the headless core.

Plain Python, which the tests drive without a display: ``controller`` (what both windows'
controllers share), ``server_controller`` with ``server_view`` and ``setup_fields``,
``client_controller`` with ``client_view``, and ``sizes``. Kivy: ``tutorial_app`` (the base
both windows share), ``widgets``, ``path_dialog``, ``chart``, and the windows
``server_app`` and ``client_app``. The ``run_*`` functions below configure Kivy before
importing those modules, because Kivy reads its window size and position when its window
module is first imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from common.client import ClientConfig
from common.data import DataFile, Dataset
from common.gui.sizes import CLIENT_SIZE, SERVER_SIZE
from common.server_config import ServerConfig


def _make_kivy_home() -> None:
    # Kivy's import checks that its home and mods folders exist, then makes them: two
    # windows started together on a first run race there, and the loser dies of
    # FileExistsError. Making them first, tolerating each other, closes the race.
    if "KIVY_NO_CONFIG" in os.environ:
        return
    home = os.path.expanduser(os.environ.get("KIVY_HOME", os.path.join("~", ".kivy")))
    os.makedirs(os.path.join(home, "mods"), exist_ok=True)


def _prepare_kivy(size: tuple[int, int], position: tuple[int, int] | None) -> None:
    # Kivy logs through the handlers and format configure_logging set up, not its own;
    # its start-up report is for --log-level DEBUG, its own debug lines (a config upgrade
    # step per version, ...) for nobody: they would bury the windows' field lines.
    os.environ.setdefault("KIVY_LOG_MODE", "PYTHON")
    debugging = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    logging.getLogger("kivy").setLevel(logging.INFO if debugging else logging.WARNING)
    _make_kivy_home()
    from kivy.config import Config

    Config.set("graphics", "width", str(size[0]))
    Config.set("graphics", "height", str(size[1]))
    if position is not None:
        Config.set("graphics", "position", "custom")
        Config.set("graphics", "left", str(position[0]))
        Config.set("graphics", "top", str(position[1]))
    # A right click would otherwise leave a red multitouch-emulation dot on the window.
    Config.set("input", "mouse", "mouse,disable_multitouch")


def run_server_window(
    config: ServerConfig, make_global_model: Callable, position: tuple[int, int] | None = None
) -> int:
    """Open the Server App window; return the exit code once it is closed."""
    _prepare_kivy(SERVER_SIZE, position)
    from common.gui.server_controller import ServerController
    from common.gui.server_app import ServerApp
    from common.gui.tutorial_app import call_soon, run_app

    return run_app(ServerApp(ServerController(config, make_global_model, call_soon=call_soon)))


def run_client_window(
    config: ClientConfig,
    data: Dataset | None,
    data_file: DataFile,
    position: tuple[int, int] | None = None,
) -> int:
    """Open a Client App window ("Client App 1" for client1) with ``data``, read from
    ``data_file`` (None: its data row starts empty); return the exit code once closed."""
    _prepare_kivy(CLIENT_SIZE, position)
    from common.gui.client_app import ClientApp
    from common.gui.client_controller import ClientController
    from common.gui.tutorial_app import call_soon, run_app

    title = "Client App " + config.name.removeprefix("client")
    return run_app(
        ClientApp(ClientController(config, data, data_file, call_soon=call_soon), title=title)
    )
