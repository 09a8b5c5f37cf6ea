"""What each part may publish and subscribe to on NATS, derived from what it declares.

A service's needs are read off its wired runtime (`ServiceRuntime`): the requests it serves,
the streams it makes sure of, the consumers it pulls from (and their dead letters). What a
runtime cannot show (whom a part asks, what it emits through its outbox, the core notices it
sends) is the table below, written with the contracts' own constants, so that a new request or
event is named once and reaches the permissions with it. `portal nats-config` writes the
result as nats-server authorisation; each part checks its own subscriptions at start-up.

Replies: a part that serves requests may answer on the requester's reply subject
(`allow_responses`), and nothing else there. A part reads replies (and JetStream
acknowledgements) on its own inbox prefix `_INBOX.<part>.`, so no part can read another's
replies (a login's session token, say).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from contracts import identity, linking, notify, overview
from contracts.base import Rpc
from contracts.kit.deadletters import DL_PREFIX
from contracts.kit.outbox import OUTBOX_CONSUMER
from contracts.rpc import PARTS as RUNNING_PARTS
from contracts.rpc import SERVICES, health, retention, status
from contracts.streams import ALL as ALL_STREAMS
from contracts.streams import DEADLETTERS, IDENTITY, LINKING, NOTIFY, NOTIFY_REQUESTS, OVERVIEW, PLATFORM

JS_API = "$JS.API"
PARTS = (*SERVICES, "gateway", "operator", "platform")


class NatsPermissionRefused(RuntimeError):
    """NATS refused a part something it needs: its user lacks a permission."""


def permission_refusal(exc: BaseException) -> str | None:
    """The server's words when `exc` is a refused publish or subscription (they name the subject)."""
    # nats-py hands the server's error over in lower case.
    text = str(exc)
    return text.removeprefix("nats: ") if "permissions violation" in text.lower() else None


def inbox_prefix(part: str) -> str:
    """The reply subjects of `part`: only it may subscribe to them."""
    return f"_INBOX.{part}"


def _rpcs(*modules: Any) -> list[Rpc[Any, Any]]:
    return [v for m in modules for v in vars(m).values() if isinstance(v, Rpc)]


def declared_rpcs() -> list[Rpc[Any, Any]]:
    """Every request the contracts declare, health, retention and status included."""
    per_service = [f(s) for s in SERVICES for f in (health, retention)]
    per_part = [status(p) for p in RUNNING_PARTS]
    return list(dict.fromkeys([*_rpcs(identity, linking, notify, overview), *per_service, *per_part]))


# Requests asked only by the `portal` command (an operator), never by a browser's gateway.
OPERATOR_ONLY: tuple[Rpc[Any, Any], ...] = (
    identity.CREATE_STAFF,
    identity.DELETE_PARENT,
    linking.ALERTS,
    linking.ROSTER_STATUS,
    linking.ROSTER_SNAPSHOT,
    *(retention(s) for s in SERVICES),
    *(status(p) for p in RUNNING_PARTS),
    notify.DIGEST_RUN,
)

# Requests between services that no browser's request needs: the digest's recipients, their
# addresses with unsubscribe tokens, their children and the children's content.
SERVICE_ONLY: tuple[Rpc[Any, Any], ...] = (
    identity.DIGEST_RECIPIENTS,
    identity.DIGEST_ADDRESSES,
    linking.DIGEST_CHILDREN,
    overview.DIGEST,
)

# What a part serves that no runtime declares: the gateway answers `portal status` too.
SERVES: dict[str, tuple[Rpc[Any, Any], ...]] = {"gateway": (status("gateway"),)}

# Whom each part asks. The gateway asks everything a person may ask through it; the operator
# everything. A request declared in contracts/ and missing here is a test failure.
CALLS: dict[str, tuple[Rpc[Any, Any], ...]] = {
    "identity": (),
    "linking": (),
    "notify": (identity.CONTACTS, *SERVICE_ONLY),
    "overview": (),
    "gateway": tuple(r for r in declared_rpcs() if r not in OPERATOR_ONLY and r not in SERVICE_ONLY),
    "operator": tuple(declared_rpcs()),
    "platform": (),
}

# Events each part emits through its outbox (JetStream publishes) besides its dead letters.
EMITS: dict[str, tuple[str, ...]] = {
    "identity": (*IDENTITY.subjects, *NOTIFY_REQUESTS.subjects),
    "linking": (*LINKING.subjects, *NOTIFY_REQUESTS.subjects),
    "notify": NOTIFY.subjects,
    "overview": OVERVIEW.subjects,
    "gateway": (),
    # Roster imports, the demo's activity, and replaying a dead letter to where it came from
    # (a dead letter of an email request keeps no content and is never replayed).
    "operator": (*PLATFORM.subjects, *IDENTITY.subjects, *LINKING.subjects, *NOTIFY.subjects, *OVERVIEW.subjects),
    "platform": PLATFORM.subjects,
}

# Core NATS (no stream): published and heard as they happen.
NOTICES_PUBLISHED: dict[str, tuple[str, ...]] = {"overview": (overview.CHANGED_NOTICE,)}
NOTICES_HEARD: dict[str, tuple[str, ...]] = {
    "overview": (overview.CHANGED_NOTICE,),
    # The caches' events: revoked sessions, changed accounts, link changes, overview changes.
    "gateway": (identity.SESSION_REVOKED, identity.ACCOUNT_CHANGED, linking.LINK_ALL, overview.CHANGED_NOTICE),
    # `portal staff disable` waits for the revocation the gateways hear.
    "operator": (identity.SESSION_REVOKED,),
}

# JetStream API the operator uses: dead letters (list, replay, delete) and progress of
# consumers (a roster import waits until applied). Reading a stream's messages is granted for
# DEADLETTERS only: NOTIFY_REQUESTS carries links and codes, and only notify reads it.
OPERATOR_JS: tuple[str, ...] = (
    f"{JS_API}.INFO",
    *(f"{JS_API}.STREAM.INFO.{s.name}" for s in ALL_STREAMS),
    f"{JS_API}.CONSUMER.INFO.*.*",
    f"{JS_API}.STREAM.MSG.GET.{DEADLETTERS.name}",
    f"{JS_API}.STREAM.MSG.DELETE.{DEADLETTERS.name}",
)


@dataclass
class Needs:
    """What one part may publish and subscribe to (NATS subjects, wildcards allowed)."""

    part: str
    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    # Answers requests on their reply subjects.
    responds: bool = False
    # Subjects refused even where `subscribe` allows them.
    subscribe_deny: list[str] = field(default_factory=list)

    def add(self, *, publish: Iterable[str] = (), subscribe: Iterable[str] = ()) -> None:
        for s in publish:
            if s not in self.publish:
                self.publish.append(s)
        for s in subscribe:
            if s not in self.subscribe:
                self.subscribe.append(s)


def stream_api(stream: str) -> list[str]:
    """Making sure a stream exists as defined (`contracts.kit.streams.ensure_streams`)."""
    return [f"{JS_API}.STREAM.{verb}.{stream}" for verb in ("INFO", "CREATE", "UPDATE")]


def consumer_api(stream: str, durable: str) -> list[str]:
    """Creating a durable consumer, pulling from it and acknowledging what it delivers."""
    return [
        f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}.>",
        f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
        f"{JS_API}.CONSUMER.INFO.{stream}.{durable}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def common_needs(part: str) -> Needs:
    """What a part needs that no runtime declares: its inbox, whom it asks, what it emits."""
    needs = Needs(part)
    if part == "platform":
        # The platform's publisher is not ours: it may keep its client's default `_INBOX.` prefix
        # for its JetStream acknowledgements, but never read the portal's parts' replies
        # (session tokens, contacts), which come under prefixes of their own.
        needs.add(subscribe=["_INBOX.>"])
        needs.subscribe_deny = [f"{inbox_prefix(p)}.>" for p in PARTS if p != "platform"]
    else:
        needs.add(subscribe=[f"{inbox_prefix(part)}.>"])
    needs.add(publish=[r.subject for r in CALLS.get(part, ())])
    needs.add(publish=EMITS.get(part, ()), subscribe=NOTICES_HEARD.get(part, ()))
    needs.add(publish=NOTICES_PUBLISHED.get(part, ()))
    if served := SERVES.get(part, ()):
        needs.add(subscribe=[r.subject for r in served])
        needs.responds = True
    if part == "operator":
        needs.add(publish=OPERATOR_JS)
        # A roster import publishes into PLATFORM and makes sure of it first, as linking does:
        # on a new deployment the roster may well come before linking's first start.
        needs.add(publish=stream_api(PLATFORM.name))
    return needs


def runtime_needs(runtime: Any) -> Needs:
    """Everything a service replica needs, read off its wired `ServiceRuntime`."""
    needs = common_needs(runtime.name)
    needs.responds = True
    needs.add(subscribe=[r.rpc.subject for r in runtime.responders])
    for stream in runtime.streams:
        needs.add(publish=stream_api(stream.name))
    for consumer in runtime.consumers:
        needs.add(publish=consumer_api(consumer.stream.name, consumer.durable))
        needs.add(publish=[consumer.dead_letter_subject])
    # The outbox relay: a row no stream takes is looked up (STREAM.NAMES), then dead-lettered.
    needs.add(publish=[f"{JS_API}.STREAM.NAMES", f"{DL_PREFIX}.{runtime.name}.{OUTBOX_CONSUMER}"])
    return needs
