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
