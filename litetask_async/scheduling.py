"""Periodic schedules: when is a schedule's latest tick, and when is its next one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter

from .exceptions import ConfigurationError


@dataclass(frozen=True)
class Schedule:
    """``cron`` (five fields, UTC) or ``every`` seconds (ticks at multiples of it since the epoch)."""

    cron: str | None = None
    every: float | None = None

    @classmethod
    def build(cls, cron: str | None, every: float | timedelta | None) -> Schedule:
        if (cron is None) == (every is None):
            raise ConfigurationError("give exactly one of cron= or every=")
        if cron is not None:
            if not croniter.is_valid(cron):
                raise ConfigurationError(f"not a valid cron expression: {cron!r}")
            return cls(cron=cron)
        seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)  # type: ignore[arg-type]
        if not 0 < seconds < math.inf:  # also refuses NaN
            raise ConfigurationError(f"every= must be a positive, finite number of seconds, got {every!r}")
        return cls(every=seconds)

    def latest_tick(self, now: float) -> float:
        """The most recent tick at or before ``now`` (epoch seconds)."""
        if self.every is not None:
            return math.floor(now / self.every) * self.every
        assert self.cron is not None
        start = datetime.fromtimestamp(now, tz=UTC) + timedelta(microseconds=1)
        return float(croniter(self.cron, start).get_prev(float))

    def next_tick(self, now: float) -> float:
        """The first tick after ``now``."""
        if self.every is not None:
            return (math.floor(now / self.every) + 1) * self.every
        assert self.cron is not None
        return float(croniter(self.cron, datetime.fromtimestamp(now, tz=UTC)).get_next(float))
