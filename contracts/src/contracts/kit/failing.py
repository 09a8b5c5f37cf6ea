"""Since when a background loop (an outbox relay, a consumer) has been failing, and why: what
a part's health request reports, so that `/ready` does not stay green while events stall."""

from __future__ import annotations

import time

# A reconnect or a stream leader election takes a second or two; longer than this is an outage.
FAILING_AFTER_SECONDS = 5.0


class FailureClock:
    """Set by a loop on each failure and cleared on each success."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.reason = ""

    def failed(self, reason: str) -> None:
        """The loop failed (again): keep when it started failing, and the latest reason."""
        if self.since is None:
            self.since = time.monotonic()
        self.reason = reason

    def ok(self) -> None:
        """The loop did its work."""
        self.since = None
        self.reason = ""

    def check(self, after: float = FAILING_AFTER_SECONDS) -> str:
        """`ok`, or `failing for N s: <reason>` once it has failed for longer than `after`."""
        if self.since is None:
            return "ok"
        lasted = time.monotonic() - self.since
        if lasted <= after:
            return "ok"
        return f"failing for {int(lasted)} s: {self.reason}"
