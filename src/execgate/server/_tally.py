"""Counts and observations kept in the process, written to prometheus-client in bulk.

Every decision makes about twenty metric updates (its count, one observation per stage,
the HTTP request's count and duration). In multiprocess mode each update is a write to a
memory-mapped file under a lock, with a pid check: about a tenth of a forward-auth
call's CPU. ``Tally`` adds them up in plain dictionaries instead and writes the sums
once per event-loop turn (``call_soon`` from the first update of a turn): under load a
turn finishes dozens of requests, so their updates become a few writes; a lone request
is written at the end of its own turn, as good as at once. An update made in a thread
with no running loop is written at once.

Writing a histogram's bucket counts and sum in bulk needs prometheus-client's
``_buckets``, ``_sum`` and ``_upper_bounds`` (its public API observes one value at a
time). They have had this shape since 0.4; when a child lacks them, ``Tally`` observes
each value as it comes, unbatched, so a change there costs speed, never counts. Tests
compare the bulk path's exposition with plain ``observe`` calls.

What a turn holds is lost if the process dies before the turn ends (SIGKILL); a scrape
in this process writes what is pending first, and the app's shutdown flushes the rest.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Histogram

__all__ = ["Tally"]

_log = logging.getLogger(__name__)


def _bulk_bounds(child: Any) -> tuple[float, ...] | None:
    """The finite bucket bounds of a histogram child that has the internals a bulk
    write needs (``_upper_bounds`` ending in +Inf, one ``_buckets`` value for each, and
    ``_sum``), else None."""
    buckets = getattr(child, "_buckets", None)
    upper = getattr(child, "_upper_bounds", None)
    if not (
        isinstance(buckets, list)
        and isinstance(upper, list | tuple)
        and len(upper) == len(buckets)
        and upper
        and upper[-1] == math.inf
        and all(callable(getattr(b, "inc", None)) for b in buckets)
        and callable(getattr(getattr(child, "_sum", None), "inc", None))
    ):
        return None
    return tuple(upper[:-1])


class Tally:
    """Pending updates of a few counters and histograms, flushed together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[Counter, tuple[str, ...]], int] = {}
        # (histogram, labels) -> [sum, count in each bucket, +Inf last]
        self._observed: dict[tuple[Histogram, tuple[str, ...]], list[Any]] = {}
        # (histogram, labels) -> (its child, its finite bounds; None: no bulk writes)
        self._children: dict[
            tuple[Histogram, tuple[str, ...]], tuple[Any, tuple[float, ...] | None]
        ] = {}
        self._queued_on: asyncio.AbstractEventLoop | None = None

    def count(self, counter: Counter, labels: tuple[str, ...]) -> None:
        key = (counter, labels)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1
            self._soon()

    def observe(self, histogram: Histogram, labels: tuple[str, ...], value: float) -> None:
        self.observe_each(histogram, ((labels, value),))

    def observe_each(
        self, histogram: Histogram, observations: Iterable[tuple[tuple[str, ...], float]]
    ) -> None:
        """Observe each ``(labels, value)`` in ``histogram``."""
        with self._lock:
            for labels, value in observations:
                key = (histogram, labels)
                known = self._children.get(key)
                if known is None:
                    try:  # a new series (in multiprocess mode, a file that may not grow)
                        child = histogram.labels(*labels)
                    except Exception as exc:  # noqa: BLE001 - as in _write: never raised
                        _log.warning("metric updates lost: %s: %s", labels, type(exc).__name__)
                        continue
                    known = self._children[key] = (child, _bulk_bounds(child))
                child, bounds = known
                if bounds is None:
                    child.observe(value)
                    continue
                pending = self._observed.get(key)
                if pending is None:
                    pending = self._observed[key] = [0.0] + [0] * (len(bounds) + 1)
                pending[0] += value
                if value == value:  # not NaN, which prometheus-client puts in no bucket
                    # The first bucket whose bound is >= value (prometheus-client's
                    # rule); past the last bound, +Inf.
                    pending[1 + bisect_left(bounds, value)] += 1
            self._soon()

    def _soon(self) -> None:
        """Have the pending updates written at the end of this loop turn (or now, with
        no running loop). Called with the lock held."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write()
            return
        if self._queued_on is not loop:
            self._queued_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write everything pending (a scrape, shutdown, the end of a loop turn)."""
        with self._lock:
            self._write()

    def _write(self) -> None:
        """Write and forget what is pending. A series that cannot be written (its file
        cannot grow, say) loses its updates and is logged; the others are still written,
        and nothing is raised: metrics never fail a request or a scrape."""
        self._queued_on = None
        counts, self._counts = self._counts, {}
        observed, self._observed = self._observed, {}
        failed: list[str] = []
        for (counter, labels), n in counts.items():
            try:
                counter.labels(*labels).inc(n)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                failed.append(f"{labels}: {type(exc).__name__}")
        for key, (total, *buckets) in observed.items():
            child = self._children[key][0]
            try:
                child._sum.inc(total)
                for bucket, n in zip(child._buckets, buckets, strict=True):
                    if n:
                        bucket.inc(n)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                failed.append(f"{key[1]}: {type(exc).__name__}")
        if failed:
            _log.warning("metric updates lost: %s", ", ".join(sorted(set(failed))))
