"""A private X display for windows on a machine with none: Xvfb started, and stopped, in one
place for ``bench.startup`` and the window tests (tests/gui). Standard library only, so that
importing it loads neither Kivy nor TensorFlow.

``-displayfd`` reports the display number once Xvfb accepts
clients (no sleep), ``-noreset`` keeps it up when the last client leaves, ``-r`` turns key
repeats off (on a busy machine xdotool may stall between a key's press and release).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

SCREEN = (1280, 1024)
WAIT = 60  # seconds for Xvfb to report its display, and to exit


class NoDisplay(RuntimeError):
    """Xvfb did not start, or did not report a display number."""


def have_xvfb() -> bool:
    return shutil.which("Xvfb") is not None


@contextmanager
def xvfb(screen: tuple[int, int] = SCREEN, wait: float = WAIT) -> Iterator[str]:
    """A private Xvfb of ``screen`` pixels for the ``with`` block; yields its ``DISPLAY``
    (``":N"``) and terminates it after."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(write_end),
            "-screen",
            "0",
            "%dx%dx24" % screen,
            "-nolisten",
            "tcp",
            "-noreset",
            "-r",
        ],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], wait)
        number = os.read(read_end, 64).decode().strip() if ready else ""
        if not number:
            raise NoDisplay(f"Xvfb did not report a display number within {wait:g} s")
        yield f":{number}"
    finally:
        os.close(read_end)
        process.terminate()
        process.wait(wait)
