"""The committed AsyncAPI document of each service is the one FastStream generates now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.kit.service import asyncapi_document
from contracts.rpc import SERVICES
from identity import app as identity_app
from linking import app as linking_app
from notify import app as notify_app
from overview import app as overview_app

ROOT = Path(__file__).resolve().parent.parent
MODULES = {"identity": identity_app, "linking": linking_app, "notify": notify_app, "overview": overview_app}


@pytest.mark.parametrize("name", SERVICES)
def test_committed_asyncapi_document_is_current(name: str) -> None:
    committed = ROOT / "services" / name / "asyncapi.json"
    assert committed.exists(), f"{committed} is missing: run `make asyncapi`"
    current = asyncapi_document(MODULES[name])
    assert json.loads(committed.read_text()) == current, f"{committed} is stale: run `make asyncapi` and commit it"
    assert current["asyncapi"].startswith("3.")
    assert f"rpc.{name}.health.v1" in {ch["address"] for ch in current["channels"].values()}


@pytest.mark.parametrize("name", SERVICES)
def test_every_request_documents_its_reply(name: str) -> None:
    doc = asyncapi_document(MODULES[name])
    requests = {
        key: ch["address"] for key, ch in doc["channels"].items() if (ch.get("address") or "").startswith("rpc.")
    }
    assert requests, "the service answers requests"
    for key, subject in requests.items():
        reply = doc["operations"][key].get("reply")
        assert reply, f"{subject} does not say what it answers"
        channel = doc["channels"][reply["channel"]["$ref"].rsplit("/", 1)[1]]
        answer = doc["components"]["messages"][channel["messages"]["Reply"]["$ref"].rsplit("/", 1)[1]]
        schema = answer["payload"]["$ref"].rsplit("/", 1)[1]
        assert schema in doc["components"]["schemas"], f"{subject}: reply schema {schema} is not in the document"
        assert "ErrorReply" in channel["messages"], f"{subject}: its error reply is not documented"
