"""Creating the JetStream streams a part uses, idempotently: at start-up, and again whenever
NATS answers that one is missing (a wiped store, a new cluster)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError

from contracts.kit.logs import get_logger
from contracts.streams import StreamDef

log = get_logger("contracts.kit.streams")

# What start-up brings an existing stream to; its retention (limits or work queue) and storage
# cannot be changed on an existing stream and are left alone.
_COMPARED = ("subjects", "description", "max_age", "max_bytes", "duplicate_window", "num_replicas", "discard")


def _differences(current: StreamConfig, wanted: StreamConfig) -> list[str]:
    out = []
    for name in _COMPARED:
        have, want = getattr(current, name), getattr(wanted, name)
        if name == "subjects":
            have, want = sorted(have or []), sorted(want or [])
        elif name in ("max_age", "duplicate_window"):
            have, want = round(have or 0.0, 3), round(want or 0.0, 3)
        elif name == "num_replicas":
            have, want = have or 1, want or 1
        if have != want:
            out.append(name)
    return out


async def _create(js: JetStreamContext, d: StreamDef, cfg: StreamConfig) -> None:
    try:
        await js.add_stream(cfg)
    except APIError as exc:
        if (cfg.num_replicas or 1) <= 1 or isinstance(exc, BadRequestError | ServiceUnavailableError):
            raise
        # Asking one server for three replicas fails the same way every time: say so, and run
        # with what the server can give rather than not at all.
        log.error(
            "stream_replicas_refused",
            stream=d.name,
            replicas=cfg.num_replicas,
            detail=exc.description or str(exc),
            action="created with 1 replica; set PORTAL_STREAM_REPLICAS to what the NATS cluster can hold",
        )
        cfg = dataclasses.replace(cfg, num_replicas=1)
        await js.add_stream(cfg)
    log.info("stream_created", stream=d.name, replicas=cfg.num_replicas, max_bytes=cfg.max_bytes)


async def _update(js: JetStreamContext, d: StreamDef, current: StreamConfig, cfg: StreamConfig) -> None:
    changed = _differences(current, cfg)
    if not changed:
        return
    try:
        await js.update_stream(cfg)
    except APIError as exc:
        if "num_replicas" not in changed or isinstance(exc, ServiceUnavailableError):
            raise
        log.error(
            "stream_replicas_refused",
            stream=d.name,
            replicas=cfg.num_replicas,
            current=current.num_replicas,
            detail=exc.description or str(exc),
            action="the other limits are applied; set PORTAL_STREAM_REPLICAS to what the NATS cluster can hold",
        )
        cfg = dataclasses.replace(cfg, num_replicas=current.num_replicas)
        changed = _differences(current, cfg)
        if not changed:
            return
        await js.update_stream(cfg)
    log.info("stream_updated", stream=d.name, changed=changed)


async def ensure_streams(
    js: JetStreamContext,
    defs: Iterable[StreamDef],
    *,
    replicas: int = 1,
    max_bytes: int | None = None,
    attempts: int = 20,
) -> None:
    """Create each stream, or bring an existing one to its definition and the settings
    (subjects, age and size limits, duplicate window, replicas).

    Several parts start at once and create the same streams; a cluster may still be electing
    a leader. Both are retried rather than failed. A replica count the servers refuse (three on
    a single server) is logged at error level and the stream kept (or made) with what they can
    hold, so that the part still runs.
    """
    for d in defs:
        cfg = d.config(replicas=replicas, max_bytes=max_bytes)
        for attempt in range(attempts):
            try:
                try:
                    info = await js.stream_info(d.name)
                except NotFoundError:
                    await _create(js, d, cfg)
                    break
                await _update(js, d, info.config, cfg)
                break
            except (BadRequestError, ServiceUnavailableError, TimeoutError) as exc:
                if attempt == attempts - 1:
                    raise
                log.info("stream_retry", stream=d.name, error=type(exc).__name__)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
