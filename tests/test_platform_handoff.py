"""The signed way into the platform: `/go/<pupil_id>/<area>` answers 303 to the school's link
with a short-lived JWT that a platform verifies with PyJWT against `/.well-known/jwks.json`;
anyone else's child is 404, a signed-out visitor goes to sign in and back; keys rotate by `kid`;
the demo's platform stand-in verifies the token and says who arrived."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from test_gateway_routes_on_fakes import PARENT, session

from contracts import identity, linking, overview
from gateway.app import create_app
from gateway.auth import SECURE_COOKIE_NAME as COOKIE_NAME
from gateway.clients import Clients
from gateway.clients.fake import FakeTransport
from gateway.handoff import HandoffKeyError
from gateway.settings import GatewaySettings

PUBLIC = "https://portal.example"


async def active(req: linking.ParentRequest) -> linking.ActivePupilsReply:
    return linking.ActivePupilsReply(pupil_ids=["p-amy"] if req.parent_id == PARENT.account_id else [])


def target_at(base: str):
    async def target(req: overview.ChildRequest) -> overview.HandoffTarget:
        return overview.HandoffTarget(
            pupil_id=req.pupil_id,
            school_id="oak",
            homework=f"{base}/homework?pupil={req.pupil_id}&token={{token}}",
            files=f"{base}/files?pupil={req.pupil_id}&token={{token}}",
            messages=f"{base}/m/{req.pupil_id}?token={{token}}",
        )

    return target


def write_key(path: Path, key) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def client(tmp_path: Path, base: str = "https://platform.example:8443", **settings) -> httpx.AsyncClient:
    fake = FakeTransport({identity.SESSION: session, linking.ACTIVE_PUPILS: active, overview.TARGET: target_at(base)})
    options = {"data_dir": tmp_path, "links_cache_seconds": 0, "public_url": PUBLIC, **settings}
    app = create_app(GatewaySettings(**options), clients=Clients.over(fake))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC)


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with client(tmp_path) as http:
        yield http


def platform_verifies(token: str, jwks: dict, audience: str = "https://platform.example:8443") -> dict:
    """What docs/platform-handoff.md tells a platform to do, with PyJWT."""
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    return jwt.decode(
        token,
        key,
        algorithms=["EdDSA", "ES256"],
        audience=audience,
        issuer=PUBLIC,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )


async def test_a_click_goes_to_the_platform_with_a_signed_token(http: httpx.AsyncClient) -> None:
    went = await http.get("/go/p-amy/homework", cookies={COOKIE_NAME: "tok-parent"})
    assert went.status_code == 303, went.text
    location = urlsplit(went.headers["location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "platform.example:8443", "/homework")
    query = parse_qs(location.query)
    assert query["pupil"] == ["p-amy"]
    jwks = (await http.get("/.well-known/jwks.json")).json()
    assert [k["kty"] for k in jwks["keys"]] == ["OKP"] and "d" not in jwks["keys"][0]
    claims = platform_verifies(query["token"][0], jwks)
    assert claims["sub"] == PARENT.account_id and claims["pupil_id"] == "p-amy" and claims["school_id"] == "oak"
    assert claims["iss"] == PUBLIC and claims["aud"] == "https://platform.example:8443"
    assert 0 < claims["exp"] - claims["iat"] <= 300 and claims["jti"]
    assert jwt.get_unverified_header(query["token"][0])["alg"] == "EdDSA"
    # Each area its own template; each click its own token.
    other = await http.get("/go/p-amy/messages", cookies={COOKIE_NAME: "tok-parent"})
    assert other.headers["location"].startswith("https://platform.example:8443/m/p-amy?token=")
    again = await http.get("/go/p-amy/homework", cookies={COOKIE_NAME: "tok-parent"})
    assert (
        platform_verifies(parse_qs(urlsplit(again.headers["location"]).query)["token"][0], jwks)["jti"]
        != (claims["jti"])
    )


async def test_a_token_is_refused_for_another_platform_or_once_expired(http: httpx.AsyncClient) -> None:
    went = await http.get("/go/p-amy/files", cookies={COOKIE_NAME: "tok-parent"})
    token = parse_qs(urlsplit(went.headers["location"]).query)["token"][0]
    jwks = (await http.get("/.well-known/jwks.json")).json()
    with pytest.raises(jwt.InvalidAudienceError):
        platform_verifies(token, jwks, audience="https://other.example")
    head, body, sig = token.split(".")
    with pytest.raises(jwt.InvalidSignatureError):
        platform_verifies(f"{head}.{body}.{sig[:-4]}AAAA", jwks)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(
            token,
            jwt.PyJWKSet.from_dict(jwks).keys[0],
            algorithms=["EdDSA"],
            audience="https://platform.example:8443",
            # Read 400 s later: past the 5 minutes at most a token lives.
            options={"verify_exp": True, "verify_iat": False},
            leeway=-400,
        )


async def test_not_a_parents_child_is_404_and_the_signed_out_sign_in_first(http: httpx.AsyncClient) -> None:
    for path in ("/go/p-zoe/homework", "/go/p-amy/settings"):
        refused = await http.get(path, cookies={COOKIE_NAME: "tok-parent"})
        assert refused.status_code == 404 and "location" not in refused.headers
    staff = await http.get("/go/p-amy/homework", cookies={COOKIE_NAME: "tok-teacher"})
    assert staff.status_code == 404
    signed_out = await http.get("/go/p-amy/homework")
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/login?next=%2Fgo%2Fp-amy%2Fhomework"


async def test_a_p256_key_from_a_file_and_rotation_by_kid(tmp_path: Path) -> None:
    old = write_key(tmp_path / "old.pem", ed25519.Ed25519PrivateKey.generate())
    new = write_key(tmp_path / "new.pem", ec.generate_private_key(ec.SECP256R1()))
    async with client(tmp_path, handoff_key_file=old) as before:
        went = await before.get("/go/p-amy/homework", cookies={COOKIE_NAME: "tok-parent"})
        old_token = parse_qs(urlsplit(went.headers["location"]).query)["token"][0]
        old_kid = (await before.get("/.well-known/jwks.json")).json()["keys"][0]["kid"]
    # Signing with the new key, the old one still published until its tokens have expired.
    async with client(tmp_path, handoff_key_file=new, handoff_published_key_files=str(old)) as after:
        went = await after.get("/go/p-amy/homework", cookies={COOKIE_NAME: "tok-parent"})
        new_token = parse_qs(urlsplit(went.headers["location"]).query)["token"][0]
        jwks = (await after.get("/.well-known/jwks.json")).json()
    assert [k["kid"] for k in jwks["keys"]][1] == old_kid
    assert jwt.get_unverified_header(new_token)["alg"] == "ES256"
    assert jwt.get_unverified_header(new_token)["kid"] == jwks["keys"][0]["kid"] != old_kid
    assert platform_verifies(old_token, jwks)["sub"] == platform_verifies(new_token, jwks)["sub"]


def test_gateways_sharing_a_data_dir_share_the_generated_key_and_bad_keys_stop_the_start(tmp_path: Path) -> None:
    from gateway.pages.go_pages import STATE_KEY

    def kid(app) -> str:
        # The application is wrapped in middleware; its state is on the innermost one.
        while not hasattr(app, "state"):
            app = app.app
        return app.state[STATE_KEY].kid

    one = create_app(GatewaySettings(data_dir=tmp_path), clients=Clients.over(FakeTransport()))
    two = create_app(GatewaySettings(data_dir=tmp_path), clients=Clients.over(FakeTransport()))
    assert kid(one) == kid(two)
    rsa_key = write_key(tmp_path / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(HandoffKeyError, match="Ed25519 or P-256"):
        create_app(GatewaySettings(data_dir=tmp_path, handoff_key_file=rsa_key), clients=Clients.over(FakeTransport()))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(HandoffKeyError, match="junk.pem"):
        create_app(
            GatewaySettings(data_dir=tmp_path, handoff_key_file=tmp_path / "junk.pem"),
            clients=Clients.over(FakeTransport()),
        )


async def test_the_demo_platform_verifies_the_token_and_shows_who_arrived(tmp_path: Path) -> None:
    async with client(tmp_path, base=f"{PUBLIC}/platform") as http:
        went = await http.get("/go/p-amy/homework", cookies={COOKIE_NAME: "tok-parent"})
        assert went.headers["location"].startswith(f"{PUBLIC}/platform/homework?pupil=p-amy&token=")
        arrived = await http.get(went.headers["location"])
        assert arrived.status_code == 200
        assert f"parent <code>{PARENT.account_id}</code> came for pupil" in arrived.text and "p-amy" in arrived.text
        # The same link again (copied, shared): refused.
        again = await http.get(went.headers["location"])
        assert "used already" in again.text and "came for pupil" not in again.text
        forged = await http.get("/platform/homework?pupil=p-amy&token=eyJhbGciOiJub25lIn0.e30.")
        assert "Token refused" in forged.text and "came for pupil" not in forged.text
        bare = await http.get("/platform/homework?pupil=p-amy")
        assert "No token" in bare.text
