"""Time windows of the monitoring jobs: `--since`, `--until`, `--last` and `--every` as the CLI spells them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


@dataclass(frozen=True)
class Window:
    """A half-open time interval [since, until) in UTC, the rows a job looks at."""

    since: datetime
    until: datetime

    def label(self) -> str:
        return f"{self.since.isoformat(timespec='seconds')} → {self.until.isoformat(timespec='seconds')}"

    def slug(self) -> str:
        """A file-name-safe stamp of the window's end, for report names."""
        return self.until.strftime("%Y%m%dT%H%M%SZ")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``24h``, ``7d``, ``2w`` → a timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h, 24h, 7d)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return timedelta(seconds=seconds)


def parse_instant(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (naive means UTC), ``now``, or a duration meaning that long ago (``2h`` = two hours ago)."""
    now = now or datetime.now(UTC)
    stripped = text.strip()
    if stripped.lower() == "now":
        return now
    if _DURATION.match(stripped):
        return now - parse_duration(stripped)
    try:
        moment = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO 8601 like 2025-01-31T12:00, 'now', or '2h' for 2 hours ago)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def resolve_window(
    since: str | None = None,
    until: str | None = None,
    last: str | None = None,
    *,
    default_last: str = "1h",
    now: datetime | None = None,
) -> Window:
    """The window the options describe.

    ``--last D`` is the window's length: alone it ends now, after ``--since`` it starts there. ``--until`` and
    ``--last`` exclude each other; with nothing given the window is the last ``default_last``.
    """
    now = now or datetime.now(UTC)
    if until is not None and last is not None:
        raise ValueError("give --until or --last, not both")
    start = parse_instant(since, now) if since is not None else None
    if until is not None:
        end = parse_instant(until, now)
        start = start if start is not None else end - parse_duration(default_last)
    elif start is not None:
        end = start + parse_duration(last) if last is not None else now
    else:
        end = now
        start = end - parse_duration(last or default_last)
    if end <= start:
        raise ValueError(f"empty window: {start.isoformat()} is not before {end.isoformat()}")
    return Window(start, end)
