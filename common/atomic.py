"""Files replaced whole: written under a temporary name in the same directory, synced, then
renamed over the target, so a reader, a crash or a second signal finds the previous file or
the new one, never part of either. The checkpoint, ``--save-model`` and ``--plot`` use it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def temp_name(path: str | os.PathLike) -> str:
    """Where ``replacing`` writes ``path`` first: a fixed name, so a leftover of a killed
    write is overwritten by the next, ending in ``path``'s own suffix, which writers that
    choose a format by the name (Keras, matplotlib) need."""
    path = os.path.abspath(path)
    return f"{path}.tmp{os.path.splitext(path)[1]}"


def _fsync(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[str]:
    """Yield the temporary path to write; once the block ends, replace ``path`` with it,
    durably. If the block raises, ``path`` is untouched and the temporary file removed."""
    path = os.path.abspath(path)
    temp = temp_name(path)
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    # The rename is durable only once the directory entry itself is on disk.
    _fsync(os.path.dirname(path))
