"""Readable at the smallest size: each window, opened at its minimum size under Xvfb with every
optional field showing, has no label (buttons and tab headers included) whose whole text is
larger than the label, and no two inputs overlap; on both of the server's tabs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.gui.test_windows_e2e import MISSING, ROOT, WAIT, display  # noqa: F401  (a fixture)

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}")

# Run in a process of its own: Kivy opens one window per process, at the size configured
# before its window module is imported. It prints one JSON line per checked view.
CHECK = r'''
import json, sys
from common.gui import _prepare_kivy
from common.gui.sizes import CLIENT_MINIMUM, SERVER_MINIMUM

which = sys.argv[1]
minimum = SERVER_MINIMUM if which == "server" else CLIENT_MINIMUM
_prepare_kivy(minimum, None)
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.uix.button import Button
from kivy.uix.label import Label
from kivy.uix.textinput import TextInput

from common.app import build_global_model
from common.client import ClientConfig
from common.data import DataFile
from common.gui.tutorial_app import call_soon
from common.server_config import ServerConfig

if which == "server":
    from common.gui.server_controller import ServerController
    from common.gui.server_app import ServerApp
    # .npy test data: its labels field shows; fedavg: min clients is enabled.
    app = ServerApp(ServerController(ServerConfig.of(test_data="test.npy", aggregation="fedavg"),
                                     build_global_model, call_soon=call_soon))
else:
    from common.gui.client_app import ClientApp
    from common.gui.client_controller import ClientController
    app = ClientApp(ClientController(ClientConfig(name="client"), None, DataFile("data.csv"),
                                     call_soon=call_soon), title="Client App")


def rectangle(widget):
    x, y = widget.to_window(widget.x, widget.y)
    return x, y, x + widget.width, y + widget.height


def text_size(label):
    """The texture of the label's whole text: a shortened label ("Data fi...") shows less."""
    if not label.shorten:
        return label.texture_size
    whole = Label(text=label.text, font_size=label.font_size, bold=label.bold)
    whole.texture_update()
    return whole.texture_size


def check(view):
    shown = [w for w in app.root.walk() if w.get_root_window() is not None]
    too_small = [f"{type(w).__name__} {w.text!r}: text {tuple(text_size(w))} in "
                 f"{tuple(map(round, w.size))}" for w in shown
                 if isinstance(w, Label) and w.text
                 and (text_size(w)[0] > w.width + 1 or text_size(w)[1] > w.height + 1)]
    inputs = [w for w in shown if isinstance(w, (TextInput, Button))]
    overlapping = []
    for i, a in enumerate(inputs):
        for b in inputs[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = rectangle(a), rectangle(b)
            if min(ax1, bx1) - max(ax0, bx0) > 0.5 and min(ay1, by1) - max(ay0, by0) > 0.5:
                overlapping.append(f"{getattr(a, 'text', '')!r} and {getattr(b, 'text', '')!r}")
    print(json.dumps({"view": view, "size": list(Window.size),
                      "minimum": [Window.minimum_width, Window.minimum_height],
                      "inputs": len(inputs), "too_small": too_small,
                      "overlapping": overlapping}), flush=True)


def once_drawn(then):
    """``then()`` at the next frame: Kivy lays widgets out before it draws them."""
    def on_flip(window):
        window.unbind(on_flip=on_flip)
        then()
    Window.bind(on_flip=on_flip)


def setup_checked():
    check("setup" if which == "server" else "client")
    if which == "server":
        app.tabs.switch_to(app.training_tab)
        once_drawn(training_checked)
    else:
        app.stop()


def training_checked():
    check("training")
    app.stop()


once_drawn(setup_checked)
app.run()
'''


@pytest.mark.parametrize(
    "which, views", [("server", ["setup", "training"]), ("client", ["client"])]
)
def test_every_label_fits_and_no_inputs_overlap_at_the_minimum_size(
    display, tmp_path, which, views
):
    env = {
        **os.environ,
        "DISPLAY": display,
        "KIVY_HOME": str(tmp_path / "kivy"),
        "KIVY_NO_ARGS": "1",
        "KIVY_LOG_MODE": "PYTHON",
    }
    result = subprocess.run(
        [sys.executable, "-c", CHECK, which],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [report["view"] for report in reports] == views, result.stderr[-3000:]
    for report in reports:
        assert report["size"] == report["minimum"], report  # opened at its minimum size
        assert report["inputs"] >= 10, report
        assert report["too_small"] == [], report
        assert report["overlapping"] == [], report
