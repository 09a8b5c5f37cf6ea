"""The OpenAPI document types every answer as it is served: an operationId of its own on every
route, a schema for every 2xx body (no bare string for JSON), the content types actually sent.
On fake services (`FakeTransport`): no NATS needed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_fakes import PDF, PNG, qr, session, sheet
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute

from contracts import identity, linking
from gateway.app import create_app
from gateway.clients import Clients
from gateway.clients.fake import FakeTransport
from gateway.settings import GatewaySettings

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def build(tmp_path: Path) -> Litestar:
    fake = FakeTransport({identity.SESSION: session, linking.CLASS_SHEET: sheet, linking.PUPIL_QR: qr})
    return create_app(GatewaySettings(data_dir=tmp_path, dev_mail_dir=tmp_path / "mail"), clients=Clients.over(fake))


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=build(tmp_path)), base_url="http://portal.test"
    ) as client:
        yield client


@pytest.fixture
async def doc(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return doc["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_every_route_pages_included_names_its_operation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PORTAL_BENCH_ROUTES", "1")
    app = build(tmp_path)
    # The gateway's own handlers, not Litestar's (OPTIONS, the schema, static files).
    handlers: list[HTTPRouteHandler] = [
        handler
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if handler.handler_id.startswith("gateway.")
    ]
    assert len(handlers) > 60
    missing = sorted(h.handler_name for h in handlers if not isinstance(h.operation_id, str))
    assert missing == [], missing
    ids = [h.operation_id for h in handlers]
    assert len(ids) == len(set(ids)), "operation ids are unique"
    assert {"page_home", "page_class", "dev_mail_index", "bench_hello", "platform_section"} <= set(ids)


async def test_every_operation_has_an_operation_id_of_its_own(doc: dict[str, Any]) -> None:
    ops = operations(doc)
    assert len(ops) > 30
    ids = [op.get("operationId") for _, _, op in ops]
    # Litestar's generated ids are CamelCase paths ("ApiV1MeMe"): snake_case ones were given.
    assert all(isinstance(i, str) and SNAKE.match(i) for i in ids), [i for i in ids if not (i and SNAKE.match(i))]
    assert len(ids) == len(set(ids))


async def test_every_2xx_answer_is_typed(doc: dict[str, Any]) -> None:
    for method, path, op in operations(doc):
        answers = {status: r for status, r in op["responses"].items() if status.startswith("2")}
        assert answers, (method, path)
        for status, response in answers.items():
            where = (method, path, status)
            if status == "204":
                assert not response.get("content"), where
                continue
            content = response.get("content")
            assert content, where
            for media, body in content.items():
                assert body.get("schema"), (*where, media)
                if media == "application/json":
                    schema = resolve(doc, body["schema"])
                    assert schema.get("type") in ("object", "array"), (*where, schema)
                    if schema["type"] == "array":
                        assert resolve(doc, schema["items"]).get("type") == "object", where
                    else:
                        assert schema.get("properties"), where


async def test_the_main_reads_and_documents_are_documented_as_served(doc: dict[str, Any]) -> None:
    paths = doc["paths"]
    overview = paths["/api/v1/me/overview"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "children" in resolve(doc, overview)["properties"]
    one = paths["/api/v1/me/children/{pupil_id}/overview"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    assert {
        "pupil_id",
        "outstanding_homework",
        "unread_messages",
        "stars_this_week",
        "next_due",
        "links",
        "as_of",
    } <= set(resolve(doc, one)["properties"])
    sheet_types = paths["/api/v1/classes/{class_id}/qr-sheet"]["get"]["responses"]["200"]["content"]
    assert set(sheet_types) == {"text/html", "application/pdf"}
    assert sheet_types["application/pdf"]["schema"] == {"type": "string", "format": "binary"}
    assert set(paths["/api/v1/pupils/{pupil_id}/qr.png"]["get"]["responses"]["200"]["content"]) == {"image/png"}
    assert set(paths["/api/v1/pupils/{pupil_id}/qr.svg"]["get"]["responses"]["200"]["content"]) == {"image/svg+xml"}
    add_child = paths["/api/v1/me/children"]["post"]["responses"]
    assert add_child["200"]["content"] == add_child["201"]["content"], "already linked: the same child"


@pytest.mark.parametrize(
    ("path", "media", "body"),
    [
        ("/api/v1/classes/y3/qr-sheet?format=pdf", "application/pdf", PDF),
        ("/api/v1/classes/y3/qr-sheet", "text/html", None),
        ("/api/v1/pupils/amy/qr.png", "image/png", PNG),
        ("/api/v1/pupils/amy/qr.svg", "image/svg+xml", b"<svg/>"),
    ],
)
async def test_documents_are_served_in_a_documented_content_type(
    http: httpx.AsyncClient, doc: dict[str, Any], path: str, media: str, body: bytes | None
) -> None:
    response = await http.get(path, headers={"Authorization": "Bearer tok"})
    assert response.status_code == 200, response.text
    served = response.headers["content-type"].split(";")[0]
    assert served == media
    template = re.sub(r"/y3/", "/{class_id}/", re.sub(r"/amy/", "/{pupil_id}/", path.split("?")[0]))
    assert served in doc["paths"][template]["get"]["responses"]["200"]["content"]
    if body is not None:
        assert response.content == body
