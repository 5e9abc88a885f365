"""Metric updates written in bulk (server._tally): the exposition is exactly what plain
prometheus-client calls give, updates reach the metrics at the end of the loop turn (or
at once with no loop), and a histogram without the internals the bulk write needs is
observed value by value instead."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from execgate.server._tally import Tally

BOUNDS = (0.001, 0.01, 0.1, 1.0)
# On a bound, between bounds, past the last one, zero, negative, repeated values.
VALUES = (0.001, 0.0005, 0.01, 0.05, 0.1, 1.0, 1.5, 30.0, 0.0, -0.5, 0.05, 0.001)


def _metrics() -> tuple[CollectorRegistry, Counter, Histogram]:
    registry = CollectorRegistry()
    counter = Counter("c", "a counter", ["a", "b"], registry=registry)
    histogram = Histogram("h", "a histogram", ["stage"], buckets=BOUNDS, registry=registry)
    return registry, counter, histogram


def _exposition(registry: CollectorRegistry) -> list[str]:
    # Without the _created lines: they hold the time each child was made.
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def _feed_plain(counter: Counter, histogram: Histogram) -> None:
    for n, value in enumerate(VALUES):
        counter.labels("x", "y" if n % 3 else "z").inc()
        histogram.labels("s1" if n % 2 else "s2").observe(value)


def _feed_tally(tally: Tally, counter: Counter, histogram: Histogram) -> None:
    for n, value in enumerate(VALUES):
        tally.count(counter, ("x", "y" if n % 3 else "z"))
        tally.observe(histogram, ("s1" if n % 2 else "s2",), value)


def test_bulk_writes_give_the_exposition_of_plain_calls() -> None:
    plain = _metrics()
    _feed_plain(plain[1], plain[2])

    bulk = _metrics()
    tally = Tally()

    async def turn() -> None:
        _feed_tally(tally, bulk[1], bulk[2])
        # Nothing written yet: the updates wait for the end of the turn.
        assert not bulk[0].get_sample_value("c_total", {"a": "x", "b": "y"})
        assert not bulk[0].get_sample_value("h_count", {"stage": "s1"})
        await asyncio.sleep(0)  # the end of this turn: the flush runs
        await asyncio.sleep(0)
        assert _exposition(bulk[0]) == _exposition(plain[0])

    asyncio.run(turn())


def test_observe_each_is_observe_for_every_value() -> None:
    plain, bulk = _metrics(), _metrics()
    tally = Tally()
    for value in VALUES:
        plain[2].labels("s1").observe(value)
        plain[2].labels("s2").observe(value * 2)
    tally.observe_each(bulk[2], [((s,), v * f) for v in VALUES for s, f in (("s1", 1), ("s2", 2))])
    tally.flush()
    assert _exposition(bulk[0]) == _exposition(plain[0])


def test_with_no_running_loop_updates_are_written_at_once() -> None:
    registry, counter, histogram = _metrics()
    tally = Tally()
    tally.count(counter, ("x", "y"))
    tally.observe(histogram, ("s1",), 0.05)
    assert registry.get_sample_value("c_total", {"a": "x", "b": "y"}) == 1
    assert registry.get_sample_value("h_bucket", {"stage": "s1", "le": "0.1"}) == 1
    assert registry.get_sample_value("h_sum", {"stage": "s1"}) == 0.05


def test_one_write_per_loop_turn() -> None:
    """Many updates in one turn are one write per series, and flush writes what is
    pending whenever it is called (a scrape, the app's shutdown)."""
    registry, counter, _ = _metrics()
    tally = Tally()
    writes: list[float] = []

    async def run() -> None:
        child: Any = counter.labels("x", "y")
        real = child.inc

        def inc(amount: float = 1) -> None:
            writes.append(amount)
            real(amount)

        child.inc = inc
        for _ in range(50):
            tally.count(counter, ("x", "y"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert writes == [50]
        tally.count(counter, ("x", "y"))
        tally.flush()  # before the turn ends
        assert writes == [50, 1]

    asyncio.run(run())
    assert registry.get_sample_value("c_total", {"a": "x", "b": "y"}) == 51


class _Child:
    """A histogram child that hides prometheus-client's internals: only ``observe``."""

    def __init__(self, seen: list[float]) -> None:
        self._seen = seen

    def observe(self, value: float) -> None:
        self._seen.append(value)


class _OpaqueHistogram:
    def __init__(self) -> None:
        self.seen: dict[tuple[str, ...], list[float]] = {}

    def labels(self, *labels: str) -> _Child:
        return _Child(self.seen.setdefault(labels, []))


def test_a_histogram_without_bulk_internals_is_observed_value_by_value() -> None:
    """Should prometheus-client's internals change shape, every value is still observed
    (only the speed is lost)."""
    histogram: Any = _OpaqueHistogram()
    tally = Tally()

    async def turn() -> None:
        for n, value in enumerate(VALUES):
            tally.observe(histogram, ("s1" if n % 2 else "s2",), value)
        # Observed as they came, not at the end of the turn.
        assert histogram.seen == {("s1",): list(VALUES[1::2]), ("s2",): list(VALUES[::2])}

    asyncio.run(turn())
    tally.flush()
    assert sum(map(len, histogram.seen.values())) == len(VALUES)


def test_nan_gives_what_plain_calls_give() -> None:
    """A NaN goes in the sum and in no bucket, as prometheus-client has it."""
    plain, bulk = _metrics(), _metrics()
    values = (*VALUES, float("nan"), 0.02)
    for value in values:
        plain[2].labels("s1").observe(value)
    tally = Tally()
    for value in values:
        tally.observe(bulk[2], ("s1",), value)
    tally.flush()
    assert _exposition(bulk[0]) == _exposition(plain[0])
    assert plain[0].get_sample_value("h_count", {"stage": "s1"}) == len(values) - 1


def test_a_series_that_cannot_be_written_loses_only_its_own_updates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, counter, histogram = _metrics()
    tally = Tally()
    broken: Any = counter.labels("x", "broken")

    def full(amount: float = 1) -> None:
        raise OSError("no space left on device")

    broken.inc = full

    async def turn() -> None:  # one turn: the three are written together
        tally.count(counter, ("x", "broken"))
        tally.count(counter, ("x", "y"))
        tally.observe(histogram, ("s1",), 0.05)
        tally.flush()  # raises nothing

    asyncio.run(turn())
    assert registry.get_sample_value("c_total", {"a": "x", "b": "y"}) == 1
    assert registry.get_sample_value("h_count", {"stage": "s1"}) == 1
    assert registry.get_sample_value("c_total", {"a": "x", "b": "broken"}) == 0
    assert "metric updates lost: ('x', 'broken'): OSError" in caplog.text


class _UnmadeHistogram(_OpaqueHistogram):
    """A histogram whose new series cannot be made (its file cannot grow: a full disk)."""

    def labels(self, *labels: str) -> _Child:
        if labels == ("full",):
            raise OSError("no space left on device")
        return super().labels(*labels)


def test_a_series_that_cannot_be_made_loses_only_its_own_observations(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Observing is part of answering a request (after its answer is sent): a series
    that cannot be made raises nothing, so the request's access log line is still
    written and the worker goes on."""
    histogram: Any = _UnmadeHistogram()
    tally = Tally()
    tally.observe_each(histogram, ((("full",), 0.5), (("s1",), 0.25)))
    tally.observe(histogram, ("full",), 0.5)
    tally.flush()
    assert histogram.seen == {("s1",): [0.25]}
    assert "metric updates lost: ('full',): OSError" in caplog.text
