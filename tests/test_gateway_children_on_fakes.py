"""A parent's view of one child in detail, on fake services: the three routes' answers, 404 for
anyone else's child (overview never asked), 422 for a week that is not a date."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from test_gateway_routes_on_fakes import PARENT, Gateway, error, session

from contracts import identity, linking, overview
from gateway.app import create_app
from gateway.clients import Clients
from gateway.clients.fake import FakeTransport
from gateway.settings import GatewaySettings

DUE = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


async def active(req: linking.ParentRequest) -> linking.ActivePupilsReply:
    return linking.ActivePupilsReply(pupil_ids=["p-amy"] if req.parent_id == PARENT.account_id else [])


async def homework(req: overview.ChildRequest) -> overview.HomeworkReply:
    return overview.HomeworkReply(
        items=[
            overview.HomeworkItem(
                homework_id="h1", title="Fractions", description="Page 4", due_at=DUE, status="overdue"
            ),
            overview.HomeworkItem(homework_id="h2", title="Map", due_at=DUE + timedelta(days=1), status="done"),
        ]
    )


async def messages(req: overview.ChildRequest) -> overview.MessagesReply:
    return overview.MessagesReply(
        items=[overview.MessageItem(message_id="m1", from_name="Ms Patel", subject="Trip", sent_at=DUE)]
    )


async def stars(req: overview.StarsRequest) -> overview.StarsWeek:
    monday = (req.week or date(2026, 12, 3)) - timedelta(days=(req.week or date(2026, 12, 3)).weekday())
    return overview.StarsWeek(
        week_start=monday,
        total=3,
        awards=[overview.StarAwardItem(award_id="s1", stars=3, reason="Kindness", at=DUE)],
    )


@pytest.fixture
async def gw(tmp_path) -> AsyncIterator[Gateway]:
    fake = FakeTransport(
        {
            identity.SESSION: session,
            linking.ACTIVE_PUPILS: active,
            overview.HOMEWORK: homework,
            overview.MESSAGES: messages,
            overview.STARS: stars,
        }
    )
    settings = GatewaySettings(data_dir=tmp_path, revocation_wait_seconds=0, links_cache_seconds=0)
    app = create_app(settings, clients=Clients.over(fake))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://portal.test") as http:
        yield Gateway(http, fake)


async def test_a_parent_sees_a_childs_homework_messages_and_stars(gw: Gateway) -> None:
    got = await gw.get("/api/v1/me/children/p-amy/homework", "tok-parent")
    assert got.status_code == 200 and got.headers["content-type"].startswith("application/json")
    assert got.json() == [
        {
            "homework_id": "h1",
            "title": "Fractions",
            "description": "Page 4",
            "due_at": "2026-12-04T09:00:00Z",
            "status": "overdue",
        },
        {"homework_id": "h2", "title": "Map", "description": None, "due_at": "2026-12-05T09:00:00Z", "status": "done"},
    ]
    got = await gw.get("/api/v1/me/children/p-amy/messages", "tok-parent")
    assert got.json() == [
        {"message_id": "m1", "from_name": "Ms Patel", "subject": "Trip", "sent_at": "2026-12-04T09:00:00Z"}
    ]
    got = await gw.get("/api/v1/me/children/p-amy/stars?week=2026-11-26", "tok-parent")
    assert got.json() == {
        "week_start": "2026-11-23",
        "total": 3,
        "awards": [{"award_id": "s1", "stars": 3, "reason": "Kindness", "at": "2026-12-04T09:00:00Z"}],
    }
    assert [r.week for r in gw.fake.asked(overview.STARS)] == [date(2026, 11, 26)]
    assert (await gw.get("/api/v1/me/children/p-amy/stars", "tok-parent")).status_code == 200
    assert gw.fake.asked(overview.STARS)[-1].week is None


@pytest.mark.parametrize("area", ["homework", "messages", "stars"])
async def test_anyone_elses_child_is_not_found_and_overview_is_not_asked(gw: Gateway, area: str) -> None:
    error(await gw.get(f"/api/v1/me/children/p-zoe/{area}", "tok-parent"), 404, "not_found")
    error(await gw.get(f"/api/v1/me/children/p-amy/{area}", "tok-teacher"), 404, "not_found")
    error(await gw.get(f"/api/v1/me/children/p-amy/{area}"), 401, "unauthorized")
    assert [rpc for rpc, _ in gw.fake.calls if rpc.service == "overview"] == []


@pytest.mark.parametrize(
    "week", ["last-week", "2026-13-01", "2026-02-30", "20261201", "2026-12-1", "0001-01-01", "9999-12-31"]
)
async def test_a_week_that_is_not_a_date_is_422(gw: Gateway, week: str) -> None:
    body = error(await gw.get(f"/api/v1/me/children/p-amy/stars?week={week}", "tok-parent"), 422, "validation_error")
    assert "week" in body["detail"]
    assert gw.fake.asked(overview.STARS) == []


async def test_details_are_kept_until_overview_says_the_pupil_changed() -> None:
    import asyncio

    from gateway.caches.detail import DetailCache

    cache = DetailCache(ttl=60)
    cache.live = True
    asked: list[int] = []

    async def fetch() -> bytes:
        asked.append(1)
        await asyncio.sleep(0.01)
        return b"[]"

    key = ("homework", "p-amy", "")
    # Requests arriving together share one request to overview.
    assert await asyncio.gather(*(cache.get(key, fetch, lambda _: None) for _ in range(5))) == [b"[]"] * 5
    assert len(asked) == 1
    await cache.get(key, fetch, lambda _: None)
    assert len(asked) == 1
    cache.forget("p-ben")
    await cache.get(key, fetch, lambda _: None)
    assert len(asked) == 1
    cache.forget("p-amy")
    await cache.get(key, fetch, lambda _: None)
    assert len(asked) == 2
    # A notice while a request is on its way: who asks after it does not get the older answer.
    cache.forget("p-amy")
    first = asyncio.ensure_future(cache.get(key, fetch, lambda _: None))
    await asyncio.sleep(0)
    cache.forget("p-amy")
    second = asyncio.ensure_future(cache.get(key, fetch, lambda _: None))
    await asyncio.gather(first, second)
    assert len(asked) == 4
    await cache.get(key, fetch, lambda _: None)
    assert len(asked) == 4, "the answer asked for after the notice is kept"
    # Homework falling due: kept no longer than that.
    await cache.get(("stars", "p-amy", ""), fetch, lambda _: datetime.now(UTC) - timedelta(seconds=1))
    await cache.get(("stars", "p-amy", ""), fetch, lambda _: None)
    assert len(asked) == 6


# -- the pages ---------------------------------------------------------------------------------


@pytest.fixture
async def browser(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    from test_gateway_routes_on_fakes import children

    from gateway.auth import COOKIE_NAME

    gw.fake.on(linking.PARENT_CHILDREN, children)
    transport = gw.http._transport  # the same application
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1:8000", cookies={COOKIE_NAME: "tok-parent"}
    ) as http:
        yield http


async def test_the_pages_show_homework_messages_and_stars(browser: httpx.AsyncClient) -> None:
    page = await browser.get("/children/p-amy/homework")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert "Fractions" in page.text and "Page 4" in page.text and "Overdue" in page.text and "Done" in page.text
    assert 'href="/children/p-amy/messages"' in page.text and 'href="/?child=p-amy"' in page.text
    page = await browser.get("/children/p-amy/messages")
    assert "Ms Patel" in page.text and "Trip" in page.text
    page = await browser.get("/children/p-amy/stars?week=2026-11-26")
    assert "Kindness" in page.text and "Monday 23 November 2026" in page.text
    assert 'href="/children/p-amy/stars?week=2026-11-16"' in page.text


async def test_the_pages_refuse_anyone_elses_child_a_bad_week_and_the_signed_out(
    browser: httpx.AsyncClient, gw: Gateway
) -> None:
    for area in ("homework", "messages", "stars"):
        page = await browser.get(f"/children/p-zoe/{area}")
        assert page.status_code == 404 and "text/html" in page.headers["content-type"]
        signed_out = await gw.http.get(f"/children/p-amy/{area}", follow_redirects=False)
        assert signed_out.status_code == 303
        assert signed_out.headers["location"] == f"/login?next=%2Fchildren%2Fp-amy%2F{area}"
    assert (await browser.get("/children/p-amy/stars?week=soon")).status_code == 422


async def test_the_home_card_marks_overdue_homework_and_links_the_pages(
    browser: httpx.AsyncClient, gw: Gateway
) -> None:
    async def overviews(req: overview.OverviewRequest) -> overview.OverviewReply:
        return overview.OverviewReply(
            children=[
                overview.ChildOverview(
                    pupil_id="p-amy",
                    outstanding_homework=2,
                    unread_messages=1,
                    stars_this_week=3,
                    next_due=[
                        overview.DueItem(title="Late one", due_at=DUE - timedelta(days=1)),
                        overview.DueItem(title="Next one", due_at=DUE + timedelta(days=1)),
                    ],
                    links=overview.Links(homework="h", files="f", messages="m"),
                    as_of=DUE,
                )
            ]
        )

    gw.fake.on(overview.GET, overviews)
    page = await browser.get("/?child=p-amy")
    assert page.status_code == 200
    due = page.text[page.text.index('class="due-list"') :]
    assert due.index("Overdue") < due.index("Late one") < due.index("Next one")
    assert due.count("Overdue") == 1
    for area in ("homework", "messages", "stars"):
        assert f'href="/children/p-amy/{area}"' in page.text
