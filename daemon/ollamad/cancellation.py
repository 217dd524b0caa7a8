"""A request's cancellation: set once, from any thread, and felt at once.

Setting it wakes whoever waits on it (a retry backoff) and runs the
*interrupts* registered at that moment: a worker blocked reading Ollama's
answer registers one that shuts its HTTP connection down, so the read
returns now instead of at Ollama's next chunk. Ollama stops generating when
its client leaves, so this is also what frees Ollama's slot.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

Interrupt = Callable[[], None]


class Cancellation:
    """Like :class:`threading.Event` (``set``, ``is_set``, ``wait``), plus interrupts."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._interrupts: list[Interrupt] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def set(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            interrupts, self._interrupts = self._interrupts, []
        for interrupt in interrupts:
            _run(interrupt)

    @contextlib.contextmanager
    def interrupting(self, interrupt: Interrupt) -> Iterator[None]:
        """While inside, a :meth:`set` calls ``interrupt`` (at once if already set)."""
        with self._lock:
            already = self._event.is_set()
            if not already:
                self._interrupts.append(interrupt)
        if already:
            _run(interrupt)
        try:
            yield
        finally:
            with self._lock:
                if interrupt in self._interrupts:
                    self._interrupts.remove(interrupt)


def _run(interrupt: Interrupt) -> None:
    try:
        interrupt()
    except Exception:  # an interrupt is best effort; the flag is what counts
        log.exception("interrupting a cancelled call failed")
