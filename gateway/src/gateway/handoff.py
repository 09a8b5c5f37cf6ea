"""The signed handoff into the learning platform (docs/platform-handoff.md).

A parent's click on "Amy's homework" goes to `/go/<pupil_id>/homework`; the gateway checks at
that moment that the child is theirs, and answers 303 to the school's link template with a
short-lived JWT (RFC 7519) in it. The platform verifies it against the portal's public keys at
`/.well-known/jwks.json`, so it knows which parent arrives for which pupil, and shows nothing to
a bare pupil id.

Keys: the signing key is a PEM private key, Ed25519 (EdDSA) or P-256 (ES256), from
`PORTAL_HANDOFF_KEY_FILE`; unset, one is generated under `PORTAL_DATA_DIR` once and shared by
every gateway using that directory. Its `kid` is its RFC 7638 thumbprint, the same on every
replica. `PORTAL_HANDOFF_PUBLISHED_KEY_FILES` lists more keys published in the JWKS but never
used to sign: the next key before a rotation, the previous one until its tokens have expired.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gateway.settings import GatewaySettings

GENERATED_KEY = "handoff-key.pem"
AREAS = ("homework", "files", "messages")
# The token only has to survive a redirect: minutes would give a copied URL a long life.
MAX_LIFETIME = 300

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class HandoffKeyError(ValueError):
    """A key file that cannot be used: named with the reason, at start-up."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The key as a JWK (RFC 7517/8037): its public part only, with `kid`, `alg` and `use`."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        members = {"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}
        alg = "EdDSA"
    else:
        numbers = key.public_numbers()
        members = {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64(numbers.x.to_bytes(32, "big")),
            "y": _b64(numbers.y.to_bytes(32, "big")),
        }
        alg = "ES256"
    # RFC 7638: the required members, sorted, no whitespace.
    kid = _b64(hashlib.sha256(json.dumps(members, sort_keys=True, separators=(",", ":")).encode()).digest())
    return {**members, "kid": kid, "alg": alg, "use": "sig"}


def _check_curve(key: Any, path: Path) -> None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return
    raise HandoffKeyError(f"{path}: the handoff key must be Ed25519 or P-256, not {type(key).__name__}")


def load_private(path: Path) -> PrivateKey:
    """A PEM private key, Ed25519 or P-256."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise HandoffKeyError(f"{path}: not a readable PEM private key without a password ({exc})") from None
    _check_curve(key, path)
    assert isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey)
    return key


def load_public(path: Path) -> PublicKey:
    """A PEM public key, or the public part of a PEM private key."""
    data = path.read_bytes() if path.exists() else b""
    try:
        if b"PRIVATE KEY" in data:
            return load_private(path).public_key()
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise HandoffKeyError(f"{path}: not a readable PEM key ({exc})") from None
    _check_curve(key, path)
    assert isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey)
    return key


def generated_key(data_dir: Path) -> PrivateKey:
    """The key under `data_dir`, made now if there is none; every gateway using the directory
    gets the same one (the first to write it wins, atomically)."""
    path = data_dir / GENERATED_KEY
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".handoff-key-")
        try:
            os.write(fd, pem)
            os.close(fd)
            try:
                os.link(tmp, path)  # fails if another gateway made it meanwhile: theirs is kept
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    return load_private(path)


@dataclass(frozen=True)
class HandoffKeys:
    """The signing key and every key published in the JWKS."""

    signing: PrivateKey
    kid: str
    alg: str
    jwks: dict[str, list[dict[str, str]]]

    @classmethod
    def load(cls, settings: GatewaySettings) -> HandoffKeys:
        """From the settings (a clear `HandoffKeyError` for a bad file)."""
        signing = (
            load_private(settings.handoff_key_file) if settings.handoff_key_file else generated_key(settings.data_dir)
        )
        own = public_jwk(signing.public_key())
        published = [own]
        for name in filter(None, (p.strip() for p in settings.handoff_published_key_files.split(","))):
            jwk = public_jwk(load_public(Path(name)))
            if all(k["kid"] != jwk["kid"] for k in published):
                published.append(jwk)
        return cls(signing=signing, kid=own["kid"], alg=own["alg"], jwks={"keys": published})


def origin(url: str) -> str:
    """`scheme://host[:port]` of a URL, lower-cased, default ports left out."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


def sign(
    keys: HandoffKeys,
    *,
    issuer: str,
    audience: str,
    parent_id: str,
    pupil_id: str,
    school_id: str | None,
    lifetime: int,
    now: float | None = None,
) -> str:
    """A handoff token for one click."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": parent_id,
        "pupil_id": pupil_id,
        "school_id": school_id,
        "iat": issued,
        "exp": issued + min(lifetime, MAX_LIFETIME),
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, keys.signing, algorithm=keys.alg, headers={"kid": keys.kid, "typ": "JWT"})


def verify(jwks: dict[str, Any], token: str, *, issuer: str, audience: str) -> dict[str, Any]:
    """What a platform does (docs/platform-handoff.md): the key by `kid`, the algorithm the
    key names, the signature, `iss`, `aud`, `exp` and the claims that must be there. Raises
    `jwt.PyJWTError` naming what is wrong."""
    kid = jwt.get_unverified_header(token).get("kid")
    found = next((k for k in jwks["keys"] if k.get("kid") == kid), None)
    if found is None:
        raise jwt.InvalidTokenError(f"no published key has kid {kid!r}")
    key = jwt.PyJWK(found)
    return jwt.decode(
        token,
        key,
        algorithms=[found["alg"]],
        issuer=issuer,
        audience=audience,
        options={"require": ["iss", "aud", "sub", "iat", "exp", "jti", "pupil_id"]},
        leeway=30,
    )
