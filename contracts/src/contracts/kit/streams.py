"""Creating the JetStream streams a part uses, idempotently, at start-up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from contracts.kit.logs import get_logger
from contracts.streams import StreamDef

log = get_logger("contracts.kit.streams")


async def ensure_streams(
    js: JetStreamContext, defs: Iterable[StreamDef], *, replicas: int = 1, attempts: int = 20
) -> None:
    """Create each stream, or bring an existing one to its definition.

    Several parts start at once and create the same streams; a cluster may still be electing
    a leader. Both are retried rather than failed.
    """
    for d in defs:
        cfg = d.config(replicas=replicas)
        for attempt in range(attempts):
            try:
                try:
                    info = await js.stream_info(d.name)
                except NotFoundError:
                    await js.add_stream(cfg)
                    log.info("stream_created", stream=d.name)
                    break
                current = info.config
                if (
                    sorted(current.subjects or []) != sorted(cfg.subjects or [])
                    or current.max_age != cfg.max_age
                    or current.description != cfg.description
                ):
                    await js.update_stream(cfg)
                    log.info("stream_updated", stream=d.name)
                break
            except (BadRequestError, ServiceUnavailableError, TimeoutError) as exc:
                if attempt == attempts - 1:
                    raise
                log.info("stream_retry", stream=d.name, error=type(exc).__name__)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
