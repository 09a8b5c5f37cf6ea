"""Link codes: made, written, read back and kept secret.

A code is 12 characters from a 30-letter alphabet (Crockford's base 32 without 0, 1, I, L, O
and U, so nothing reads as something else): 30**12 ≈ 2**58.9. The database holds a keyed hash
of each code, to find it by what a parent typed, and the code encrypted (AES-GCM, bound to its
pupil), so staff can print a class's sheet again; a copy of the database without the key shows
neither.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import re
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from contracts.kit.logs import get_logger

log = get_logger("linking.codes")

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 12
GROUP = 4
ENTROPY_BITS = LENGTH * math.log2(len(ALPHABET))

_SEPARATORS = re.compile(r"[\s\-‐‑‒–—_.]+")
_VALID = re.compile(f"^[{ALPHABET}]{{{LENGTH}}}$")


def generate() -> str:
    """A new code, normalised (no dashes), from the operating system's CSPRNG."""
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def normalise(typed: str) -> str | None:
    """The code a parent meant, whatever the case, spaces or dashes; None if it cannot be one."""
    candidate = _SEPARATORS.sub("", typed).upper()
    return candidate if _VALID.match(candidate) else None


def display(code: str) -> str:
    """`XXXX-XXXX-XXXX`, as printed and emailed."""
    return "-".join(code[i : i + GROUP] for i in range(0, len(code), GROUP))


class InvalidKey(ValueError):
    """The configured code key is not 32 bytes of URL-safe base64."""


def new_key() -> str:
    """A fresh code key, as `PORTAL_LINKING_CODE_KEY` expects it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def load_or_create_key_file(path: Path) -> str:
    """The development key kept at `path`, made once (by whichever replica gets there first)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process created it between our read and our create: use theirs.
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    log.warning(
        "code_key_generated", path=str(path), detail="development key; set PORTAL_LINKING_CODE_KEY in production"
    )
    return key


class CodeVault:
    """Keyed hashing and encryption of codes, both from one secret.

    Two sub-keys are derived with HKDF under different labels, so the lookup hash says
    nothing about the encryption key and one secret is all an operator keeps.
    """

    def __init__(self, key: str) -> None:
        secret = decode_key(key)
        self._mac_key = derive(secret, b"parent-portal linking code lookup v1")
        self._aead = AESGCM(derive(secret, b"parent-portal linking code encryption v1"))
        # Which key a row was written with, so a future rotation can tell them apart.
        self.key_id = hashlib.sha256(self._mac_key).hexdigest()[:8]

    def lookup_hash(self, code: str) -> str:
        """The keyed hash a normalised code is found by."""
        return hmac.new(self._mac_key, code.encode(), hashlib.sha256).hexdigest()

    def encrypt(self, code: str, *, pupil_id: str) -> bytes:
        """The code encrypted for storage; only this pupil's row can decrypt it."""
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, code.encode(), pupil_id.encode())

    def decrypt(self, blob: bytes, *, pupil_id: str) -> str:
        """The code back from storage (raises if the row was tampered with or moved)."""
        return self._aead.decrypt(blob[:12], blob[12:], pupil_id.encode()).decode()


def decode_key(key: str) -> bytes:
    """The 32 secret bytes of `PORTAL_LINKING_CODE_KEY` (raises `InvalidKey`)."""
    try:
        secret = base64.urlsafe_b64decode(key.encode() + b"=" * (-len(key) % 4))
    except (ValueError, TypeError) as exc:
        raise InvalidKey("PORTAL_LINKING_CODE_KEY is not URL-safe base64") from exc
    if len(secret) != 32:
        raise InvalidKey("PORTAL_LINKING_CODE_KEY must decode to 32 bytes (see `linking.codes.new_key`)")
    return secret


def derive(secret: bytes, label: bytes) -> bytes:
    """A 32-byte sub-key of `secret` for one purpose (HKDF-SHA256, `label` as its info)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)
