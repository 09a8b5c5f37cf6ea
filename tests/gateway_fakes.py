"""Fake linking and identity handlers for gateway tests on a `FakeTransport`: a school admin's
session, a class's QR sheet (HTML or PDF) and a pupil's QR code (SVG or PNG)."""

from __future__ import annotations

import base64

from contracts import identity, linking
from contracts.identity import Principal

ADMIN = Principal(
    account_id="adm-1",
    session_id="s-1",
    role="school_admin",
    email="h@oak.example",
    name="Head",
    school_id="oak",
    expires_in=3600,
)
PDF = b"%PDF-1.7 a sheet"
PNG = b"\x89PNG a code"


async def session(req: identity.SessionRequest) -> Principal:
    return ADMIN


async def sheet(req: linking.ClassSheetRequest) -> linking.Document:
    if req.format == "pdf":
        return linking.Document(
            content_type="application/pdf", filename="y3.pdf", data_base64=base64.b64encode(PDF).decode()
        )
    return linking.Document(
        content_type="text/html", filename="y3.html", text="<html><style>p{}</style><p>Amy</p></html>"
    )


async def qr(req: linking.PupilQrRequest) -> linking.Document:
    if req.format == "png":
        return linking.Document(
            content_type="image/png", filename="amy.png", data_base64=base64.b64encode(PNG).decode()
        )
    return linking.Document(content_type="image/svg+xml", filename="amy.svg", text="<svg/>")
