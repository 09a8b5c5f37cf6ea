"""The bus as a trust boundary: a real nats-server run with what `portal nats-config` writes.

Each part's user is tried for what it must not do (the server refuses it), and the table the
configuration is made from is checked against the contracts and the code that calls them.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import ConsumerConfig

from contracts import identity, linking, notify, overview, platform
from contracts.base import Rpc
from contracts.kit import permissions
from contracts.kit.streams import ensure_streams
from contracts.streams import NOTIFY_REQUESTS, PLATFORM
from portal.natsconfig import CONFIG_NAME, all_needs, write_config
from portal.natsserver import NatsServer, free_port

ROOT = Path(__file__).resolve().parents[1]
PORTAL = str(Path(sys.executable).parent / "portal")


@dataclass
class Secured:
    server: NatsServer
    creds: Path

    def seed(self, part: str) -> str:
        return (self.creds / f"{part}.nk").read_text().strip()


@dataclass
class Client:
    nc: nats.NATS
    refused: list[str] = field(default_factory=list)

    async def refusals(self) -> list[str]:
        """What the server refused so far (it answers a refusal before it answers a flush; nats-py
        may read it only after the first flush's answer, hence two)."""
        await self.nc.flush(timeout=5)
        await self.nc.flush(timeout=5)
        return self.refused


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    creds = tmp_path_factory.mktemp("nats-config")
    port = free_port()
    config = write_config(creds, port=port, store_dir=creds / "store")
    server = NatsServer(port=port, store_dir=creds / "store", config=config, log_file=creds / "nats.log").start()
    yield Secured(server, creds)
    server.stop()


@pytest.fixture
async def connect(secured: Secured) -> AsyncIterator:
    clients: list[nats.NATS] = []

    async def as_part(part: str) -> Client:
        client = Client(nc=nats.NATS())

        async def error_cb(exc: Exception) -> None:
            client.refused.append(str(exc))

        await client.nc.connect(
            secured.server.url,
            nkeys_seed_str=secured.seed(part),
            inbox_prefix=permissions.inbox_prefix(part),
            error_cb=error_cb,
            allow_reconnect=False,
        )
        clients.append(client.nc)
        return client

    yield as_part
    for nc in clients:
        await nc.close()


def refused(refusals: list[str], kind: str, subject: str) -> bool:
    # nats-py hands the server's words over in lower case.
    return any(f'permissions violation for {kind} to "{subject}"'.lower() in r.lower() for r in refusals)


# --- the generated configuration -------------------------------------------------------------


def test_nats_config_writes_a_valid_configuration_and_private_seeds(tmp_path: Path) -> None:
    result = subprocess.run(
        [PORTAL, "nats-config", "--out", str(tmp_path / "bus"), "--port", "4333"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    conf = tmp_path / "bus" / CONFIG_NAME
    text = conf.read_text()
    assert "port: 4333" in text and "sync_interval: always" in text
    for part in permissions.PARTS:
        seed = tmp_path / "bus" / f"{part}.nk"
        assert seed.stat().st_mode & 0o777 == 0o600
        assert seed.read_text().startswith("SU")
        assert seed.read_text().strip() not in text  # the configuration holds public keys only
    server = subprocess.run(
        [str(NatsServer(port=1, store_dir=tmp_path).command()[0]), "-c", str(conf), "-t"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert server.returncode == 0, server.stderr + server.stdout
    # Run again: the seeds stay (the parts keep connecting), the configuration is written anew.
    before = (tmp_path / "bus" / "gateway.nk").read_text()
    again = subprocess.run(
        [PORTAL, "nats-config", "--out", str(tmp_path / "bus")], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "bus" / "gateway.nk").read_text() == before


def _subscribers(needs: dict[str, permissions.Needs], subject: str) -> set[str]:
    return {p for p, n in needs.items() if any(_covers(s, subject) for s in n.subscribe)}


def _publishers(needs: dict[str, permissions.Needs], subject: str) -> set[str]:
    return {p for p, n in needs.items() if any(_covers(s, subject) for s in n.publish)}


def _covers(pattern: str, subject: str) -> bool:
    """Whether NATS's `pattern` matches every token of `subject` (wildcards in `subject` too)."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def test_every_request_is_heard_by_its_service_only_and_asked_by_someone() -> None:
    needs = all_needs()
    for rpc in permissions.declared_rpcs():
        assert _subscribers(needs, rpc.subject) == {rpc.service}, rpc.subject
        askers = _publishers(needs, rpc.subject)
        assert "operator" in askers, rpc.subject
        internal = rpc in permissions.OPERATOR_ONLY or rpc in permissions.SERVICE_ONLY
        assert ("gateway" in askers) != internal, rpc.subject
    # Only identity hears identity's requests (passwords, session tokens); the gateway no request
    # but its own status (`portal status` counting its replicas).
    assert _subscribers(needs, "rpc.identity.login.v1") == {"identity"}
    assert [s for s in needs["gateway"].subscribe if s.startswith("rpc.")] == ["rpc.gateway.status.v1"]
    for rpc in (*permissions.OPERATOR_ONLY, *permissions.SERVICE_ONLY):
        assert "gateway" not in _publishers(needs, rpc.subject), rpc.subject


def test_each_service_may_dead_letter_what_its_outbox_cannot_publish_and_nobody_else_its() -> None:
    needs = all_needs()
    for service in ("identity", "linking", "notify", "overview"):
        assert _publishers(needs, f"deadletter.{service}.outbox") == {service}
        assert service in _publishers(needs, "$JS.API.STREAM.NAMES")


def test_only_notify_reads_email_requests_and_the_platform_only_publishes_platform_events() -> None:
    needs = all_needs()
    readers = {
        p
        for p, n in needs.items()
        if _subscribers({p: n}, "notify.request.invitation.v1")
        or any(
            s.startswith(
                (
                    f"$JS.API.CONSUMER.CREATE.{NOTIFY_REQUESTS.name}",
                    f"$JS.API.CONSUMER.MSG.NEXT.{NOTIFY_REQUESTS.name}",
                    f"$JS.API.STREAM.MSG.GET.{NOTIFY_REQUESTS.name}",
                    f"$JS.API.DIRECT.GET.{NOTIFY_REQUESTS.name}",
                )
            )
            for s in n.publish
        )
    }
    assert readers == {"notify"}
    assert needs["platform"].publish == ["platform.>"]
    # Its own client's inbox, whatever its prefix, but none of the portal's parts' replies.
    assert needs["platform"].subscribe == ["_INBOX.>"]
    assert sorted(needs["platform"].subscribe_deny) == sorted(
        f"{permissions.inbox_prefix(p)}.>" for p in permissions.PARTS if p != "platform"
    )
    assert not _publishers({"gateway": needs["gateway"]}, platform.STAFF_UPSERTED)
    assert not _publishers({"gateway": needs["gateway"]}, identity.SESSION_REVOKED)


def _rpc_constants(module: object) -> dict[str, str]:
    return {k: v.subject for k, v in vars(module).items() if isinstance(v, Rpc)}


@pytest.mark.parametrize(
    ("part", "sources"),
    [
        ("gateway", ["gateway/src"]),
        ("notify", ["services/notify/src/notify/sender.py", "services/notify/src/notify/digest.py"]),
        ("operator", ["deploy/src"]),
    ],
)
def test_what_a_part_asks_in_its_code_is_in_its_permissions(part: str, sources: list[str]) -> None:
    # Read from the code: `<module>.<NAME>` of each request constant the part's sources name.
    constants = {
        m: _rpc_constants(mod)
        for m, mod in (("identity", identity), ("linking", linking), ("notify", notify), ("overview", overview))
    }
    files = [f for src in sources for f in ([ROOT / src] if src.endswith(".py") else (ROOT / src).rglob("*.py"))]
    asked = set()
    for f in files:
        text = f.read_text()
        for module, names in constants.items():
            aliases = {module, *re.findall(rf"from contracts import {module} as (\w+)", text)}
            for name, subject in names.items():
                if any(re.search(rf"\b{a}\.{name}\b", text) for a in aliases) or re.search(
                    rf"from contracts\.{module} import[^\n]*\b{name}\b", text
                ):
                    asked.add(subject)
    assert asked, "the scan found nothing: it no longer reads the code"
    allowed = set(all_needs()[part].publish)
    assert asked <= allowed, sorted(asked - allowed)


# --- a real nats-server with that configuration ----------------------------------------------


async def test_an_anonymous_client_is_refused(secured: Secured) -> None:
    with pytest.raises(Exception) as caught:
        await nats.connect(secured.server.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    assert "Authorization" in str(caught.value) or isinstance(caught.value, nats.errors.NoServersError)
    result = subprocess.run(
        [PORTAL, "dead-letters", "list"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}, "PORTAL_NATS_URL": secured.server.url},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "PORTAL_NATS_CREDS_DIR" in result.stderr


async def test_the_gateway_cannot_hear_identity_requests(connect) -> None:
    identity_user = await connect("identity")
    gateway = await connect("gateway")

    async def answer(msg) -> None:
        await msg.respond(b'{"ok": true}')

    await identity_user.nc.subscribe(identity.LOGIN.subject, queue="identity", cb=answer)
    heard: list[bytes] = []

    async def spy(msg) -> None:
        heard.append(msg.data)

    await gateway.nc.subscribe("rpc.identity.>", cb=spy)
    assert refused(await gateway.refusals(), "Subscription", "rpc.identity.>")
    # The gateway may still ask: the answer comes back to it, and its own spy hears nothing.
    reply = await gateway.nc.request(
        identity.LOGIN.subject, b'{"email": "a@b.example", "password": "secret"}', timeout=5
    )
    assert reply.data == b'{"ok": true}'
    assert heard == []
    # Nor may another part read the gateway's replies (a login's session token).
    platform_user = await connect("platform")
    await platform_user.nc.subscribe("_INBOX.gateway.>")
    assert refused(await platform_user.refusals(), "Subscription", "_INBOX.gateway.>")


async def test_the_gateway_cannot_publish_platform_or_identity_events(connect) -> None:
    identity_user = await connect("identity")
    await ensure_streams(identity_user.nc.jetstream(), [PLATFORM])
    operator = await connect("operator")
    before = (await operator.nc.jetstream().stream_info(PLATFORM.name)).state.messages

    gateway = await connect("gateway")
    await gateway.nc.publish(platform.STAFF_UPSERTED, b'{"staff_id": "x", "role": "trust_admin"}')
    await gateway.nc.publish(identity.SESSION_REVOKED, b"{}")
    refusals = await gateway.refusals()
    assert refused(refusals, "Publish", platform.STAFF_UPSERTED)
    assert refused(refusals, "Publish", identity.SESSION_REVOKED)
    with pytest.raises(nats.errors.Error):
        await gateway.nc.jetstream().publish(platform.STAFF_UPSERTED, b"{}", timeout=1)
    assert (await operator.nc.jetstream().stream_info(PLATFORM.name)).state.messages == before


async def test_nobody_but_notify_reads_email_requests(connect) -> None:
    identity_user = await connect("identity")
    js = identity_user.nc.jetstream()
    await ensure_streams(js, [NOTIFY_REQUESTS])
    await js.publish(notify.request_subject("verification"), b'{"secret": "a link"}', timeout=5)

    for part in ("gateway", "operator", "platform", "linking", "overview"):
        user = await connect(part)
        await user.nc.subscribe(notify.REQUEST_ALL)
        with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError)):
            await user.nc.jetstream().add_consumer(
                NOTIFY_REQUESTS.name, ConsumerConfig(durable_name=f"spy-{part}"), timeout=1
            )
        with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.NoRespondersError)):
            await user.nc.request(f"$JS.API.STREAM.MSG.GET.{NOTIFY_REQUESTS.name}", b'{"seq": 1}', timeout=1)
        refusals = await user.refusals()
        assert refused(refusals, "Subscription", notify.REQUEST_ALL), (part, refusals)
        # nats-py asks $JS.API.CONSUMER.DURABLE.CREATE.<stream>.<durable> (or CONSUMER.CREATE on newer servers).
        assert any(
            'for publish to "$js.api.consumer.' in r.lower() and f"notify_requests.spy-{part}" in r.lower()
            for r in refusals
        ), (part, refusals)
        assert refused(refusals, "Publish", f"$JS.API.STREAM.MSG.GET.{NOTIFY_REQUESTS.name}"), part


async def test_the_platform_publishes_its_events_and_nothing_else(connect) -> None:
    identity_user = await connect("identity")
    await ensure_streams(identity_user.nc.jetstream(), [PLATFORM])
    platform_user = await connect("platform")
    ack = await platform_user.nc.jetstream().publish(platform.STARS_AWARDED, b"{}", timeout=5)
    assert ack.stream == PLATFORM.name

    await platform_user.nc.subscribe("rpc.>")
    await platform_user.nc.publish(identity.LOGIN.subject, b"{}")
    await platform_user.nc.publish(identity.CREATE_STAFF.subject, b"{}")
    await platform_user.nc.publish(identity.SESSION_REVOKED, b"{}")
    refusals = await platform_user.refusals()
    assert refused(refusals, "Subscription", "rpc.>")
    assert refused(refusals, "Publish", identity.LOGIN.subject)
    assert refused(refusals, "Publish", identity.CREATE_STAFF.subject)
    assert refused(refusals, "Publish", identity.SESSION_REVOKED)


async def test_the_platform_with_its_clients_default_inbox_gets_acks_but_no_portal_replies(secured: Secured) -> None:
    """The learning platform's publisher is not ours: with its client's default `_INBOX.` prefix
    its JetStream acknowledgements arrive, and it still cannot read any part's replies."""
    identity_user = await nats.connect(
        secured.server.url, nkeys_seed_str=secured.seed("identity"), inbox_prefix=permissions.inbox_prefix("identity")
    )
    await ensure_streams(identity_user.jetstream(), [PLATFORM])
    await identity_user.close()
    refusals: list[str] = []

    async def error_cb(exc: Exception) -> None:
        refusals.append(str(exc))

    nc = await nats.connect(
        secured.server.url, nkeys_seed_str=secured.seed("platform"), error_cb=error_cb, allow_reconnect=False
    )
    try:
        ack = await nc.jetstream().publish(platform.STARS_AWARDED, b"{}", timeout=5)
        assert ack.stream == PLATFORM.name
        for part in ("identity", "gateway", "operator"):
            await nc.subscribe(f"{permissions.inbox_prefix(part)}.>")
        await nc.subscribe("_INBOX.>")  # allowed, but the parts' prefixes stay denied
        await nc.flush(timeout=5)
        await nc.flush(timeout=5)
        for part in ("identity", "gateway", "operator"):
            assert refused(refusals, "Subscription", f"{permissions.inbox_prefix(part)}.>"), (part, refusals)
    finally:
        await nc.close()


def test_a_part_with_another_parts_seed_stops_at_start_naming_the_subject(secured: Secured, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    # identity's file holds linking's seed: a mix-up of files when deploying.
    (creds / "identity.nk").write_text(secured.seed("linking") + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(
        PORTAL_NATS_URL=secured.server.url,
        PORTAL_NATS_CREDS_DIR=str(creds),
        PORTAL_DATA_DIR=str(tmp_path / "data"),
        PORTAL_LOG_FORMAT="json",
    )
    result = subprocess.run(
        [PORTAL, "service", "identity"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "nats_permission_refused" in out
    assert 'permissions violation for subscription to \\"rpc.identity.' in out.lower(), out[-3000:]

    # And a missing seed file is named at once.
    (creds / "identity.nk").unlink()
    result = subprocess.run(
        [PORTAL, "service", "identity"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2
    assert "identity.nk" in result.stdout + result.stderr
