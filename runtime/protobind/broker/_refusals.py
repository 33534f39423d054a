"""Refused messages, counted, and logged at a bounded rate: a count per interval, never a line each.

A server on a broker cannot answer every message it refuses (a message without a reply address
has nobody to tell), so its log is the only trace; but a sender that floods it with bad messages
must not turn that log into one line per message. :class:`RefusalLog` is what the broker engine
(:mod:`protobind.broker.server`, so every broker) and the NATS connection's error callback log
through.
"""

from __future__ import annotations

import asyncio
import logging
import time

__all__ = ["RefusalLog"]

#: Seconds between two lines about the same (subject, reason).
INTERVAL = 10.0
#: (subject, reason) pairs tracked at once; past that, refusals share one entry per reason.
MAX_KEYS = 64
#: The subject shown for refusals counted in a reason's shared entry.
OTHER_SUBJECTS = "other subjects"


class _Entry:
    __slots__ = ("detail", "logged_at", "pending")

    def __init__(self, logged_at: float) -> None:
        self.logged_at = logged_at
        self.pending = 0  # refusals counted since the last line
        self.detail = ""


class RefusalLog:
    """Counts refusals and logs them at most once per ``interval`` seconds per (subject, reason).

    The first refusal of a (subject, reason) is logged at once, with ``template`` (three ``%s``:
    the subject, the reason, the detail). Further ones within ``interval`` seconds are counted, and
    one line at the end of the interval says how many came (with the last one's detail); a
    (subject, reason) quiet for a whole interval is forgotten, and its next refusal is again logged
    at once. At most ``max_keys`` pairs are tracked: refusals on further subjects are counted in
    one entry per reason, so a sender that varies the subject still gets a bounded number of lines.

    ``total`` and ``counts`` (reason -> refusals) count every refusal, logged or not. Call
    :meth:`close` when done: it logs the counts not logged yet.
    """

    def __init__(
        self,
        logger: logging.Logger,
        template: str,
        *,
        interval: float = INTERVAL,
        max_keys: int = MAX_KEYS,
        level: int = logging.WARNING,
    ) -> None:
        self.logger = logger
        self.template = template
        self.interval = interval
        self.max_keys = max_keys
        self.level = level
        self.total = 0
        self.counts: dict[str, int] = {}
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, subject: str, reason: str, detail: str, *, answered: bool = False) -> None:
        """Count one refusal; log it unless the sender was ``answered`` (it knows already) or a
        line about the same (subject, reason) went out less than ``interval`` seconds ago."""
        self.total += 1
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if answered:
            return
        entries = self._entries
        key = (subject, reason)
        entry = entries.get(key)
        if entry is None and len(entries) >= self.max_keys:
            key = (OTHER_SUBJECTS, reason)
            entry = entries.get(key)
        now = time.monotonic()
        if entry is None:
            entries[key] = _Entry(now)
            self.logger.log(self.level, self.template, key[0], reason, detail)
            self._schedule()
        elif now - entry.logged_at >= self.interval:
            self._report(key, entry, now, detail)
        else:
            entry.pending += 1
            entry.detail = detail

    def _report(self, key: tuple[str, str], entry: _Entry, now: float, detail: str | None = None) -> None:
        """One line for ``entry``: its pending count, plus the refusal being logged now if any."""
        count = entry.pending if detail is None else entry.pending + 1
        self.logger.log(
            self.level,
            self.template + " (%d like it in the last %.0f s)",
            key[0],
            key[1],
            entry.detail if detail is None else detail,
            count,
            now - entry.logged_at,
        )
        entry.logged_at = now
        entry.pending = 0

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the counts come out with the next line or at close()
        self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = time.monotonic()
        for key, entry in list(self._entries.items()):
            if now - entry.logged_at < self.interval:
                continue
            if entry.pending:
                self._report(key, entry, now)
            else:
                del self._entries[key]  # quiet for an interval: its next refusal is logged at once
        if self._entries:
            self._schedule()

    def close(self) -> None:
        """Log the counts not logged yet, and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = time.monotonic()
        for key, entry in self._entries.items():
            if entry.pending:
                self._report(key, entry, now)
        self._entries.clear()
