"""A parent's preferences (`/me/preferences`): how often the digest email comes, and the
language of their pages and emails. Identity keeps them; sessions carry the language, so a
change drops this replica's cached session at once (the others hear identity's event)."""

from __future__ import annotations

from typing import Self

from litestar import Request, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody
from pydantic import BaseModel, ConfigDict, model_validator

from contracts.identity import Digest, Language, Principal
from gateway import flows
from gateway.auth import SECURITY, credentials, parents_only
from gateway.caches.sessions import get_auth
from gateway.clients import Clients
from gateway.models import Preferences
from gateway.openapi import error_responses

TAGS = ["account"]
PARENTS_ONLY = [parents_only]


class PreferencesBody(BaseModel):
    """The preferences to change; those left out stay. An unknown key or value is refused (422)."""

    # A misspelt key would otherwise be a change that silently did nothing.
    model_config = ConfigDict(extra="forbid")

    digest: Digest | None = None
    language: Language | None = None

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.digest is None and self.language is None:
            raise ValueError("Give digest, language or both")
        return self


@get(
    "/me/preferences",
    tags=TAGS,
    summary="My preferences",
    operation_id="get_my_preferences",
    security=SECURITY,
    guards=PARENTS_ONLY,
    responses=error_responses(401, 404, 503),
)
async def get_preferences(clients: NamedDependency[Clients], principal: NamedDependency[Principal]) -> Preferences:
    """`digest` (`weekly`, `daily` or `off`) and `language` (`en` or `cy`)."""
    return Preferences.of(await clients.identity.preferences(principal.account_id))


@put(
    "/me/preferences",
    tags=TAGS,
    summary="Change my preferences",
    operation_id="set_my_preferences",
    security=SECURITY,
    guards=PARENTS_ONLY,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def set_preferences(
    state: State,
    request: Request,
    clients: NamedDependency[Clients],
    principal: NamedDependency[Principal],
    data: JSONBody[PreferencesBody],
) -> Preferences:
    """Change `digest`, `language` or both; the answer is the preferences as they now are. Pages
    and emails are in the new language from the next request on."""
    creds = credentials(request)
    changed = await flows.set_preferences(
        clients,
        get_auth(state),
        principal,
        creds.token if creds is not None else None,
        digest=data.digest,
        language=data.language,
    )
    return Preferences.of(changed)


ROUTES = [get_preferences, set_preferences]
