"""`portal status`: every part's replicas, outbox backlog, consumers' pending counts and dead
letters, as the operator's NATS user sees them; exit 1 when any part is missing or stalled.

Every replica of every part answers `rpc.<part>.status.v1` (no queue group), so one request per
part, answered for `--wait` seconds, counts the replicas. A part is

- missing when no replica answered;
- stalled when a replica says it cannot do its work (a failing check: its database, its outbox
  relay or a consumer failing for more than a few seconds, notify's SMTP server), when the oldest
  event of its outbox has waited longer than `--stalled-after`, or when one of its consumers has
  messages pending and has acknowledged none for that long.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

    from contracts.rpc import ConsumerStatus, StatusReply


@dataclass
class PartState:
    """What the replicas of one part answered, and what is wrong with it."""

    part: str
    replies: list[StatusReply] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """`ok`, `stalled` or `missing`."""
        if not self.replies:
            return "missing"
        return "stalled" if self.problems else "ok"

    @property
    def outbox(self) -> tuple[int | None, float | None]:
        """The outbox backlog and its oldest age (replicas share the outbox: the largest reading)."""
        pending = [r.outbox_pending for r in self.replies if r.outbox_pending is not None]
        oldest = [r.outbox_oldest_seconds for r in self.replies if r.outbox_oldest_seconds is not None]
        return (max(pending) if pending else None, max(oldest) if oldest else None)

    def consumers(self) -> list[ConsumerStatus]:
        """Each consumer once: the most pending any replica saw, and the least idle time (a replica
        that saw progress is right that there was some)."""
        from contracts.rpc import ConsumerStatus

        merged: dict[str, ConsumerStatus] = {}
        for reply in self.replies:
            for c in reply.consumers:
                seen = merged.get(c.consumer)
                if seen is None:
                    merged[c.consumer] = c
                    continue
                pending = [p for p in (seen.pending, c.pending) if p is not None]
                idle = [i for i in (seen.idle_seconds, c.idle_seconds) if i is not None]
                merged[c.consumer] = ConsumerStatus(
                    consumer=c.consumer,
                    stream=c.stream,
                    pending=max(pending) if pending else None,
                    idle_seconds=min(idle) if idle else None,
                )
        return [merged[name] for name in sorted(merged)]


def judge(state: PartState, stalled_after: float) -> None:
    """Fill in `state.problems`."""
    if not state.replies:
        state.problems.append("no replica answered")
        return
    for reply in state.replies:
        for check, value in reply.checks.items():
            if value != "ok":
                state.problems.append(f"{reply.instance}: {check}: {value}")
    pending, oldest = state.outbox
    if pending and oldest is not None and oldest > stalled_after:
        state.problems.append(f"outbox: {pending} events, the oldest waiting {_age(oldest)}")
    for c in state.consumers():
        if c.pending is None:
            state.problems.append(f"consumer {c.consumer}: JetStream did not say its pending count")
        elif c.pending and c.idle_seconds is not None and c.idle_seconds > stalled_after:
            state.problems.append(
                f"consumer {c.consumer}: {c.pending} pending, none acknowledged for {_age(c.idle_seconds)}"
            )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


async def collect(nc: NatsClient, parts: tuple[str, ...], wait: float) -> dict[str, PartState]:
    """Ask every part's replicas at once; what they answered within `wait` seconds."""
    from contracts.rpc import ERROR_HEADER, StatusReply, status

    states = {p: PartState(p) for p in parts}
    inbox = nc.new_inbox()

    async def on_reply(msg: Msg) -> None:
        part = msg.subject.rsplit(".", 1)[1]
        # A status header: "no responders" (503), not an answer.
        if part not in states or (msg.headers and ("Status" in msg.headers or ERROR_HEADER in msg.headers)):
            return
        try:
            states[part].replies.append(StatusReply.model_validate_json(msg.data))
        except ValueError:
            return

    sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)
    try:
        for part in parts:
            await nc.publish(status(part).subject, b"{}", reply=f"{inbox}.{part}")
        await nc.flush()
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    for s in states.values():
        s.replies.sort(key=lambda r: r.instance)
    return states


async def dead_letters(nc: NatsClient) -> dict[str, int] | None:
    """Dead letters kept, by `<service> <consumer>` (None when the stream cannot be read)."""
    from nats.js.errors import NotFoundError

    from contracts.kit.deadletters import DL_PREFIX
    from contracts.streams import DEADLETTERS

    try:
        info = await nc.jetstream().stream_info(DEADLETTERS.name, subjects_filter=f"{DL_PREFIX}.>")
    except NotFoundError:
        return {}
    except Exception:  # noqa: BLE001 - shown as unknown
        return None
    out: dict[str, int] = {}
    for subject, count in (info.state.subjects or {}).items():
        _, service, consumer = subject.split(".", 2)
        out[f"{service} {consumer}"] = count
    return dict(sorted(out.items()))


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    cells = [tuple(str(v) for v in row) for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def render(states: dict[str, PartState], letters: dict[str, int] | None) -> list[str]:
    """The tables `portal status` prints."""
    lines = _table(
        ("part", "replicas", "state", "outbox", "oldest", "version"),
        [
            (
                s.part,
                len(s.replies),
                s.state,
                "-" if s.outbox[0] is None else s.outbox[0],
                _age(s.outbox[1]) if s.outbox[0] else "-",
                ",".join(sorted({r.version for r in s.replies})) or "-",
            )
            for s in states.values()
        ],
    )
    consumers = [(c.consumer, s.part, c.stream, "?" if c.pending is None else c.pending, _age(c.idle_seconds))
                 for s in states.values() for c in s.consumers()]  # fmt: skip
    if consumers:
        lines += ["", *_table(("consumer", "part", "stream", "pending", "idle"), consumers)]
    lines.append("")
    if letters is None:
        lines.append("dead letters: unknown (the DEADLETTERS stream did not answer)")
    elif not letters:
        lines.append("dead letters: none")
    else:
        lines.append(f"dead letters: {sum(letters.values())} (`portal dead-letters list`)")
        lines += _table(("service", "consumer", "count"), [(*k.split(" ", 1), n) for k, n in letters.items()])
    return lines


def as_json(states: dict[str, PartState], letters: dict[str, int] | None) -> dict[str, Any]:
    """What `portal status --json` prints."""
    return {
        "ok": all(s.state == "ok" for s in states.values()),
        "parts": {
            s.part: {
                "state": s.state,
                "replicas": len(s.replies),
                "problems": s.problems,
                "outbox_pending": s.outbox[0],
                "outbox_oldest_seconds": s.outbox[1],
                "consumers": [c.model_dump() for c in s.consumers()],
                "instances": [r.model_dump() for r in s.replies],
            }
            for s in states.values()
        },
        "dead_letters": letters,
    }


def status(
    wait: float = typer.Option(1.0, "--wait", min=0.1, max=30, help="Seconds to collect the replicas' answers."),
    stalled_after: float = typer.Option(
        60.0,
        "--stalled-after",
        min=1,
        help="Seconds an outbox event may wait, or a consumer with messages pending may go without acknowledging "
        "one, before its part counts as stalled.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the state as JSON instead of tables."),
) -> None:
    """Every part's replicas, outbox backlog and its oldest age, each consumer's pending count, and
    dead letters; exits 1 when any part is missing or stalled (each named on stderr)."""
    from contracts.rpc import PARTS
    from portal.cli import _nats_url, _run_with_nats

    url = _nats_url()

    async def ask(nc: NatsClient) -> tuple[dict[str, PartState], dict[str, int] | None]:
        states, letters = await asyncio.gather(collect(nc, PARTS, wait), dead_letters(nc))
        return states, letters

    states, letters = _run_with_nats(url, ask)
    for s in states.values():
        judge(s, stalled_after)
    if json_out:
        typer.echo(json.dumps(as_json(states, letters), indent=2))
    else:
        for line in render(states, letters):
            typer.echo(line)
    bad = [s for s in states.values() if s.state != "ok"]
    for s in bad:
        typer.echo(f"portal: {s.part} is {s.state}: {'; '.join(s.problems)}", err=True)
    if bad:
        raise typer.Exit(1)
