"""A service's AsyncAPI 3 document: FastStream writes the channels, this adds every request's reply.

FastStream documents what a subscriber receives but not what it answers. The replies are
generated here from the same `Rpc` declarations the services serve and the callers call, so
the document cannot disagree with the code: each `rpc.*` operation gets an AsyncAPI 3 `reply`
naming its reply message and the error reply, sent to the requester's inbox.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from contracts.base import Rpc
from contracts.rpc import ERROR_HEADER, ErrorReply

_SCHEMAS = "#/components/schemas/{model}"


def document_rpc(spec_broker: Any, rpc: Rpc[Any, Any], *, queue: str) -> None:
    """Describe what `rpc` receives on a broker that is never started (the document's source)."""

    async def documented(body: Any) -> None:
        """Documentation only."""

    # Set after the fact: FastStream reads the request's schema from the annotation.
    documented.__annotations__ = {"body": rpc.request, "return": None}
    spec_broker.subscriber(rpc.subject, queue=queue, title=rpc.title, description=rpc.description)(documented)


def _add_schema(doc: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schema = model.model_json_schema(ref_template=_SCHEMAS)
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas.setdefault(model.__name__, schema)
    return {"$ref": _SCHEMAS.format(model=model.__name__)}


def add_replies(doc: dict[str, Any], rpcs: Iterable[Rpc[Any, Any]]) -> None:
    """Give each operation that serves one of `rpcs` its reply (in place)."""
    by_subject = {rpc.subject: rpc for rpc in rpcs}
    channels = doc.setdefault("channels", {})
    messages = doc.setdefault("components", {}).setdefault("messages", {})
    error_payload = _add_schema(doc, ErrorReply)
    for key, channel in list(channels.items()):
        rpc = by_subject.get(channel.get("address", ""))
        if rpc is None or key not in doc.get("operations", {}):
            continue
        reply_key, error_key = f"{rpc.title}:Reply", f"{rpc.title}:ErrorReply"
        messages[reply_key] = {
            "title": reply_key,
            "summary": f"The answer: {rpc.reply.__name__}.",
            "payload": _add_schema(doc, rpc.reply),
        }
        codes = ", ".join(("invalid_request", *rpc.errors, "service_unavailable", "internal_error"))
        messages[error_key] = {
            "title": error_key,
            "summary": f"An error, with the header {ERROR_HEADER}: its code ({codes}).",
            "headers": {"type": "object", "properties": {ERROR_HEADER: {"type": "string"}}, "required": [ERROR_HEADER]},
            "payload": error_payload,
        }
        reply_channel = f"{key} reply"
        channels[reply_channel] = {
            "address": None,
            "description": f"The requester's inbox for {rpc.subject}.",
            "messages": {
                "Reply": {"$ref": f"#/components/messages/{reply_key}"},
                "ErrorReply": {"$ref": f"#/components/messages/{error_key}"},
            },
        }
        doc["operations"][key]["reply"] = {
            "address": {"description": "The request's NATS reply subject", "location": "$message.header#/reply"},
            "channel": {"$ref": f"#/channels/{reply_channel}"},
            "messages": [
                {"$ref": f"#/channels/{reply_channel}/messages/Reply"},
                {"$ref": f"#/channels/{reply_channel}/messages/ErrorReply"},
            ],
        }
