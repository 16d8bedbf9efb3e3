"""Time windows as `vigil monitor` spells them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitoring.window import parse_duration, parse_instant, resolve_window

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("24h", 86_400),
                                               ("7d", 604_800), ("1.5h", 5400), ("2W", 1_209_600)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "15", "m15", "0m", "1 fortnight", "-1h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_instants_iso_relative_and_now() -> None:
    assert parse_instant("2025-02-28T10:00", NOW) == datetime(2025, 2, 28, 10, 0, tzinfo=UTC)
    assert parse_instant("2025-02-28T10:00:00+02:00", NOW) == datetime(2025, 2, 28, 8, 0, tzinfo=UTC)
    assert parse_instant("2025-02-28T10:00:00Z", NOW) == datetime(2025, 2, 28, 10, 0, tzinfo=UTC)
    assert parse_instant("2h", NOW) == NOW - timedelta(hours=2)
    assert parse_instant("now", NOW) == NOW
    with pytest.raises(ValueError, match="not a time"):
        parse_instant("yesterday-ish", NOW)


def test_window_forms() -> None:
    assert resolve_window(now=NOW) == resolve_window(last="1h", now=NOW)
    last = resolve_window(last="24h", now=NOW)
    assert (last.since, last.until) == (NOW - timedelta(hours=24), NOW)
    since_until = resolve_window("2025-03-01T08:00", "2025-03-01T09:30", now=NOW)
    assert since_until.until - since_until.since == timedelta(minutes=90)
    since_last = resolve_window("2025-03-01T08:00", last="30m", now=NOW)
    assert since_last.until == datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    since_only = resolve_window("3h", now=NOW)
    assert (since_only.since, since_only.until) == (NOW - timedelta(hours=3), NOW)
    until_only = resolve_window(until="2025-03-01T06:00", default_last="2h", now=NOW)
    assert until_only.since == datetime(2025, 3, 1, 4, 0, tzinfo=UTC)
    assert since_until.slug() == "20250301T093000Z"


def test_contradictory_or_empty_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        resolve_window(until="now", last="1h", now=NOW)
    with pytest.raises(ValueError, match="empty window"):
        resolve_window("2025-03-01T10:00", "2025-03-01T09:00", now=NOW)
