"""Windows started together on a first run: Kivy's import makes its home and mods folders
with a check-then-mkdir, and a process that lost that race died before its window opened
(seen in CI, server and client1 started together). The windows make both folders before
Kivy's import; this checks they are the folders Kivy then uses, so its mkdir never runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.gui.test_windows_e2e import ROOT, WAIT

PREPARE = """
import json, os
from common.gui import _make_kivy_home
_make_kivy_home()
made = sorted(os.path.join(root, name) for root, names, _ in os.walk(os.environ["HOME"])
              for name in names)
import kivy
print(json.dumps({"made": made, "kivy": [kivy.kivy_home_dir, kivy.kivy_usermodules_dir]}))
"""


@pytest.mark.parametrize("kivy_home", [None, "~/elsewhere/kivy"])
def test_the_windows_make_the_folders_kivy_would_race_to_make(tmp_path, kivy_home):
    env = {**os.environ, "HOME": str(tmp_path), "KIVY_NO_ARGS": "1"}
    env.pop("KIVY_NO_CONFIG", None)
    env.pop("KIVY_HOME", None)
    if kivy_home is not None:
        env["KIVY_HOME"] = kivy_home
    printed = subprocess.run(
        [sys.executable, "-c", PREPARE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    ).stdout
    folders = json.loads(printed.splitlines()[-1])
    assert folders["kivy"][0].startswith(str(tmp_path))
    assert set(folders["kivy"]) <= set(folders["made"])
