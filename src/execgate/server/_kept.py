"""A value made once and kept for a moment: what a route anyone may call answers from
when each call would otherwise read the store or sign (``/metrics``' store gauges, the
public checkpoint)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Kept(Generic[K, V]):
    """The value ``make`` last returned for ``key``, reused while less than ``max_age``
    seconds of ``clock`` old (a clock that went back does not extend it). Callers that
    arrive while it is made wait for it instead of making their own: they run in
    threads, as the store reads and signatures they stand for block. A ``make`` that
    raises keeps nothing: the next caller tries again. Another key (another gateway,
    after a reopen) is never answered from the last one's value."""

    def __init__(self, max_age: float, clock: Callable[[], float]) -> None:
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[K, float, V] | None = None

    def get(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            last = self._last
            if last is not None and last[0] is key:
                age = self._clock() - last[1]
                if 0 <= age < self._max_age:
                    return last[2]
            value = make()
            self._last = (key, self._clock(), value)
            return value
