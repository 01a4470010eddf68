"""``RoundDriver``: the life of a server-side driver thread that runs rounds of its own while
the clients' ``SocketThread``s wait on it (fitness mode's GA, secure aggregation's rounds)."""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

from common.protocol.messages import Done, ServerReply, Waiting

log = logging.getLogger(__name__)
Notify = Callable[[Waiting], None]  # sends a client a ``waiting`` notice


class Stoppable(Protocol):
    """What a driver needs of ``common.global_model.GlobalModel`` to end with training."""

    finished: threading.Event

    def add_stop_listener(self, listener: Callable[[], None]) -> None: ...

    def done(self) -> Done: ...  # the answer to every request once training ended


class RoundDriver(ABC):
    """Runs ``_rounds`` in a thread of its own (``start``/``shutdown``) until training ends.
    Clients' threads wait on ``_changed``; whatever ends the rounds (``shutdown``, training
    finished or stopped, a bug) wakes them, and ``_over`` tells them so."""

    what: str  # for the log: "fitness mode", "secure aggregation"

    def __init__(self, global_model: Stoppable) -> None:
        self._finished = global_model.finished
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        global_model.add_stop_listener(self._wake)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _over(self) -> bool:
        return self._stopping or self._finished.is_set()

    def _answer(
        self,
        ready: Callable[[], ServerReply | None],
        waiting: Callable[[], Waiting],
        notify: Notify | None,
        every: float,
    ) -> ServerReply:
        """A client's reply, once ``ready`` (called with ``_changed`` held) gives one;
        meanwhile, every ``every`` seconds, ``notify`` (if given) hears what it waits for
        (``waiting``, called with it held too), sent without it: a slow link must not hold
        up the others."""
        while True:
            with self._changed:
                due = time.monotonic() + every
                while (reply := ready()) is None:
                    remaining = None if notify is None else due - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        notice = waiting()
                        break
                    self._changed.wait(remaining)
                else:
                    return reply
            assert notify is not None
            notify(notice)

    @abstractmethod
    def _rounds(self) -> None:
        """Run rounds until ``_over``."""

    def _run(self) -> None:
        try:
            self._rounds()
        except Exception:  # a bug must end training visibly, not leave clients waiting
            log.exception("%s stopped after an internal error", self.what)
        finally:
            with self._changed:  # no more rounds: waiting clients hear done, or lose us
                self._stopping = True
                self._changed.notify_all()
