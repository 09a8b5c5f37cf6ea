"""JetStream stream definitions: one for the platform, one per service for its own events.

No stream captures `rpc.>`: a stream listening on a request subject would answer the caller
with a store receipt instead of the service's reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

DAY = 24 * 3600.0
MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass(frozen=True)
class StreamDef:
    """What a stream captures and how long it keeps it (by age and by size: the oldest
    messages go first once either limit is reached; a full work queue refuses new ones)."""

    name: str
    subjects: tuple[str, ...]
    description: str
    max_age: float = 30 * DAY
    work_queue: bool = False
    duplicate_window: float = 120.0
    max_bytes: int = GIB

    def config(self, *, replicas: int = 1, max_bytes: int | None = None) -> StreamConfig:
        """The nats-py configuration of this stream; `max_bytes` (PORTAL_STREAM_MAX_BYTES)
        replaces the stream's own size limit when given."""
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            retention=RetentionPolicy.WORK_QUEUE if self.work_queue else RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            # A full work queue refuses new messages instead of dropping the oldest: an email
            # request nobody has handled yet must not vanish; its outbox row waits and retries.
            discard=DiscardPolicy.NEW if self.work_queue else DiscardPolicy.OLD,
            max_age=self.max_age,
            duplicate_window=self.duplicate_window,
            max_bytes=max_bytes or self.max_bytes,
            num_replicas=replicas,
        )


PLATFORM = StreamDef(
    "PLATFORM",
    ("platform.>",),
    "Events of the learning platform (roster, homework, messages, stars).",
    max_age=90 * DAY,
    max_bytes=8 * GIB,
)
IDENTITY = StreamDef("IDENTITY", ("identity.>",), "Events of the identity service.")
LINKING = StreamDef("LINKING", ("linking.>",), "Events of the linking service.")
NOTIFY = StreamDef("NOTIFY", ("notify.email.>",), "Outcomes of outbound email (delivered, failed).")
NOTIFY_REQUESTS = StreamDef(
    "NOTIFY_REQUESTS",
    ("notify.request.>",),
    "Email requests, dropped once notify has handled them (they carry addresses).",
    max_age=7 * DAY,
    work_queue=True,
    max_bytes=GIB,
)
OVERVIEW = StreamDef("OVERVIEW", ("overview.>",), "Events of the overview service.")
DEADLETTERS = StreamDef(
    "DEADLETTERS",
    ("deadletter.>",),
    "Messages a consumer gave up on, kept for operators to inspect and replay.",
    max_age=30 * DAY,
)

ALL: tuple[StreamDef, ...] = (
    PLATFORM,
    IDENTITY,
    LINKING,
    NOTIFY,
    NOTIFY_REQUESTS,
    OVERVIEW,
    DEADLETTERS,
)
