"""Stage timing for one decision (internal): how long each pipeline stage took; and
the gateway clock read for what is recorded outside a decision.

The pipeline marks its stages by assigning ``state.stage``; ``TimedState`` turns each
assignment into a lap of ``time.perf_counter()``, so the stages are measured exactly
where they are marked without a second set of markers in ``Gateway._evaluate``. It is
used only when a gateway has an observer (metrics): without one the pipeline keeps the
plain ``DecisionState`` and pays nothing. A stage that ends the decision (an exception)
is timed up to the moment it ended; ``finish`` closes the last lap.
"""

from __future__ import annotations

import decimal
import numbers
from collections.abc import Callable
from time import perf_counter
from typing import Any, Final

from execgate._state import DecisionState
from execgate.errors import AuditError

__all__ = ["ClockError", "TimedState", "clock_problem", "clock_seconds", "whole_seconds"]


# 9999-12-31T23:59:59Z: past it, a record's time has no RFC 3339 form (and past 2**53,
# no canonical JSON one: the record could not be written at all).
_LAST_SECOND: Final = 253_402_300_799


class ClockError(ValueError):
    """A clock's reading that is no time a record can hold."""


def whole_seconds(reading: object) -> int:
    """A clock's reading in whole seconds: a real number (not a bool, not text: an int, a
    float, a Fraction, a Decimal) from 0 to the last second of the year 9999; anything
    else (NaN too) is ``ClockError``."""
    if isinstance(reading, bool) or not isinstance(reading, numbers.Real | decimal.Decimal):
        raise ClockError(f"it gave {type(reading).__name__}, not a number of seconds")
    number: Any = reading
    try:
        inside = 0 <= number <= _LAST_SECOND
    except decimal.InvalidOperation:  # a signalling NaN
        inside = False
    if not inside:
        try:
            shown = str(number)[:32]
        except ValueError:  # an int of more digits than str() will write
            shown = "a number too long to show"
        raise ClockError(f"its reading is outside 1970..9999 ({shown})")
    return int(number)


def clock_seconds(now: Callable[[], float]) -> int:
    """The gateway clock ``now`` in whole seconds, for a record outside a decision (an
    outcome, a review, a reload): a clock that fails or gives no number is
    ``AuditError``, and nothing is recorded. A decision turns the same into
    ``fail_closed``."""
    try:
        return whole_seconds(now())
    except Exception as exc:  # NaN, infinity, an OSError: no time to record
        raise AuditError(
            f"the gateway clock cannot be read ({clock_problem(exc)}): nothing was recorded"
        ) from exc


def clock_problem(exc: Exception) -> str:
    """What is wrong with the clock: ``ClockError``'s own words, else only the type of
    what the clock raised (its message may say anything)."""
    return str(exc) if isinstance(exc, ClockError) else type(exc).__name__


class TimedState(DecisionState):
    """A ``DecisionState`` that times the intervals between stage markers."""

    __slots__ = ("_current", "_since", "laps")

    def __init__(self, decision_id: str, now: int) -> None:
        self.laps: dict[str, float] = {}
        self._current = ""
        self._since = perf_counter()
        super().__init__(decision_id=decision_id, now=now)

    @property
    def stage(self) -> str:
        return self._current

    @stage.setter
    def stage(self, name: str) -> None:
        self.finish()
        self._current = name

    def finish(self) -> dict[str, float]:
        """Close the running lap; the seconds spent in each stage so far."""
        now = perf_counter()
        if self._current:
            self.laps[self._current] = self.laps.get(self._current, 0.0) + (now - self._since)
        self._since = now
        return self.laps
