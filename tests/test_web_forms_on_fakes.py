"""Web forms on fake services (no NATS): what a browser can submit that no field of ours would
produce must answer the form again with the field named, never an error page."""

from __future__ import annotations

from pathlib import Path

import httpx
from gateway_fakes import session

from contracts import identity, linking
from contracts.kit.rpc import invalid
from gateway.app import create_app
from gateway.auth import COOKIE_NAME, CSRF_FORM_FIELD, csrf_token_for
from gateway.clients import Clients
from gateway.clients.fake import FakeTransport
from gateway.settings import GatewaySettings

SETTINGS = linking.SchoolSettings(
    school_id="oak",
    max_carers_per_code=2,
    printed_code_days=365,
    invitation_days=14,
    aup_text="Be kind.",
    aup_version="v1",
    homework_url="https://platform.example/homework?pupil={pupil_id}",
    files_url="https://platform.example/files?pupil={pupil_id}",
    messages_url="https://platform.example/messages?pupil={pupil_id}",
    email_parent_on_removal=True,
)


async def get_settings(req: linking.SchoolSettingsRequest) -> linking.SchoolSettings:
    return SETTINGS


async def update_settings(req: linking.UpdateSchoolSettingsRequest) -> linking.SchoolSettings:
    # As linking does: anything that is not a whole number is named, nothing is changed.
    bad = {
        k: "must be a whole number"
        for k, v in req.settings.items()
        if k.endswith(("_code", "_days")) and not isinstance(v, int)
    }
    if bad:
        raise invalid(**bad)
    return SETTINGS


async def test_a_number_field_holding_a_superscript_two_is_named_not_a_500(tmp_path: Path) -> None:
    fake = FakeTransport(
        {
            identity.SESSION: session,
            linking.GET_SCHOOL_SETTINGS: get_settings,
            linking.UPDATE_SCHOOL_SETTINGS: update_settings,
        }
    )
    app = create_app(GatewaySettings(data_dir=tmp_path), clients=Clients.over(fake))
    token = "tok-admin"
    form = {
        CSRF_FORM_FIELD: csrf_token_for(token),
        "max_carers_per_code": "²",
        "printed_code_days": "365",
        "invitation_days": "14",
        "aup_text": "Be kind.",
        "homework_url": SETTINGS.homework_url,
        "files_url": SETTINGS.files_url,
        "messages_url": SETTINGS.messages_url,
        "email_parent_on_removal": "yes",
    }
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000", cookies={COOKIE_NAME: token}
    ) as http:
        answer = await http.post("/schools/oak/settings", data=form)
    assert answer.status_code in (400, 422), answer.status_code
    assert "text/html" in answer.headers["content-type"]
    assert "whole number" in answer.text, "the form again, naming the field"
    sent = fake.asked(linking.UPDATE_SCHOOL_SETTINGS)
    assert [r.settings["max_carers_per_code"] for r in sent] == ["²"], "passed on as typed, for linking to name"
