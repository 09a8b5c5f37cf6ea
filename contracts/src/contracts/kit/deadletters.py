"""Operators' view of dead letters: list them, replay one to its original subject."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from contracts.streams import DEADLETTERS

# Headers a dead letter carries about the message it keeps.
DL_PREFIX = "deadletter"
H_SUBJECT = "Portal-DL-Subject"
H_STREAM = "Portal-DL-Stream"
H_SEQ = "Portal-DL-Seq"
H_CONSUMER = "Portal-DL-Consumer"
H_SERVICE = "Portal-DL-Service"
H_ERROR = "Portal-DL-Error"
H_DELIVERIES = "Portal-DL-Deliveries"
H_MSG_ID = "Portal-DL-Msg-Id"
H_AT = "Portal-DL-At"
# Present when the dead letter keeps only part of the message (no secrets): it cannot be replayed.
H_REDACTED = "Portal-DL-Redacted"


@dataclass
class DeadLetter:
    """One message a consumer gave up on."""

    id: int
    service: str
    consumer: str
    subject: str
    stream: str
    stream_seq: str
    deliveries: str
    error: str
    at: str
    size: int
    redacted: bool = False


def _from_raw(seq: int, headers: dict[str, str], data: bytes) -> DeadLetter:
    return DeadLetter(
        id=seq,
        service=headers.get(H_SERVICE, ""),
        consumer=headers.get(H_CONSUMER, ""),
        subject=headers.get(H_SUBJECT, ""),
        stream=headers.get(H_STREAM, ""),
        stream_seq=headers.get(H_SEQ, ""),
        deliveries=headers.get(H_DELIVERIES, ""),
        error=headers.get(H_ERROR, ""),
        at=headers.get(H_AT, ""),
        size=len(data or b""),
        redacted=headers.get(H_REDACTED) == "true",
    )


async def list_dead_letters(js: JetStreamContext, *, limit: int = 1000) -> list[DeadLetter]:
    """Every dead letter still kept, oldest first."""
    try:
        info = await js.stream_info(DEADLETTERS.name)
    except NotFoundError:
        return []
    out: list[DeadLetter] = []
    if info.state.messages == 0:
        return out
    seq = info.state.first_seq
    while seq <= info.state.last_seq and len(out) < limit:
        try:
            msg = await js.get_msg(DEADLETTERS.name, seq)
        except NotFoundError:
            seq += 1
            continue
        out.append(_from_raw(seq, dict(msg.headers or {}), msg.data or b""))
        seq += 1
    return out


class DeadLetterNotFound(LookupError):
    """No dead letter has that id."""


class DeadLetterRedacted(ValueError):
    """The dead letter keeps only the message's ids (it carried a link or code): nothing to send again."""


async def replay_dead_letter(js: JetStreamContext, dl_id: int) -> DeadLetter:
    """Publish a dead letter again on its original subject, then remove it.

    Consumers are idempotent on `event_id`, so those that had applied the message skip it and
    the one that failed tries again.
    """
    try:
        msg = await js.get_msg(DEADLETTERS.name, dl_id)
    except NotFoundError as exc:
        raise DeadLetterNotFound(dl_id) from exc
    headers = dict(msg.headers or {})
    dl = _from_raw(dl_id, headers, msg.data or b"")
    if not dl.subject:
        raise DeadLetterNotFound(dl_id)
    if dl.redacted:
        raise DeadLetterRedacted(dl_id)
    original_id = headers.get(H_MSG_ID, f"{dl.stream}:{dl.stream_seq}")
    await js.publish(
        dl.subject,
        msg.data or b"",
        headers={"Nats-Msg-Id": f"replay:{dl_id}:{original_id}", "Portal-Replay-Of": str(dl_id)},
        timeout=5,
    )
    await js.delete_msg(DEADLETTERS.name, dl_id)
    return dl
