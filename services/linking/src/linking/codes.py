"""Link codes: made, written, read back and kept secret.

A code is 12 characters from a 30-letter alphabet (Crockford's base 32 without 0, 1, I, L, O
and U, so nothing reads as something else): 30**12 ≈ 2**58.9. The database holds a keyed hash
of each code, to find it by what a parent typed, and the code encrypted (AES-GCM, bound to its
pupil), so staff can print a class's sheet again; a copy of the database without the key shows
neither.

The key can be rotated: codes are written under the current key and read under it or any of
the old ones (`PORTAL_LINKING_CODE_OLD_KEYS`), until `linking.rekey` has rewritten every row
under the current key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
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


KEY_SETTING = "PORTAL_LINKING_CODE_KEY"
OLD_KEYS_SETTING = "PORTAL_LINKING_CODE_OLD_KEYS"
KEY_BYTES = 32
# 32 random bytes hold ~30 distinct values; fewer than this is a typed or repeated pattern, not a key
# (the chance that 32 random bytes have fewer than 16 distinct values is below 1e-20).
MIN_DISTINCT_BYTES = 16
HOW_TO_MAKE = "make one with `portal linking new-key`"

_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64,}$")


class InvalidKey(ValueError):
    """A configured code key is not at least 32 random bytes (URL-safe base64 or hex)."""


class CodeKeyError(RuntimeError):
    """Linking must not start with these key settings (the message names the settings)."""


@dataclass(frozen=True)
class CodeKeys:
    """The key codes and bars are written under, and the earlier keys still accepted for reading."""

    current: str
    old: tuple[str, ...] = ()


def new_key() -> str:
    """A fresh code key, as `PORTAL_LINKING_CODE_KEY` expects it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode()


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


class _CodeKey:
    """The two sub-keys of one code key."""

    def __init__(self, key: str, setting: str) -> None:
        secret = decode_key(key, setting)
        self.mac_key = derive(secret, b"parent-portal linking code lookup v1")
        self.aead = AESGCM(derive(secret, b"parent-portal linking code encryption v1"))
        # Which key a row was written with: rotation and the start-up check tell rows apart by it.
        self.key_id = hashlib.sha256(self.mac_key).hexdigest()[:8]

    def lookup_hash(self, code: str) -> str:
        return hmac.new(self.mac_key, code.encode(), hashlib.sha256).hexdigest()


class CodeVault:
    """Keyed hashing and encryption of codes, both from one secret.

    Two sub-keys are derived with HKDF under different labels, so the lookup hash says
    nothing about the encryption key and one secret is all an operator keeps. Rows are written
    under `key`; `old_keys` are tried too when reading, so that rotating the key loses nothing.
    """

    def __init__(self, key: str, old_keys: Iterable[str] = ()) -> None:
        self._current = _CodeKey(key, KEY_SETTING)
        self._all = [self._current, *(_CodeKey(k, old_key_setting(i)) for i, k in enumerate(old_keys))]
        self.key_id = self._current.key_id
        # Every key a row may have been written with and is still readable under.
        self.key_ids = frozenset(k.key_id for k in self._all)

    def lookup_hash(self, code: str) -> str:
        """The keyed hash a normalised code is stored under (the current key)."""
        return self._current.lookup_hash(code)

    def lookup_hashes(self, code: str) -> list[str]:
        """The hashes a stored code may have: under the current key, then each old one."""
        return list(dict.fromkeys(k.lookup_hash(code) for k in self._all))

    def encrypt(self, code: str, *, pupil_id: str) -> bytes:
        """The code encrypted for storage; only this pupil's row can decrypt it."""
        nonce = secrets.token_bytes(12)
        return nonce + self._current.aead.encrypt(nonce, code.encode(), pupil_id.encode())

    def decrypt(self, blob: bytes, *, pupil_id: str) -> str:
        """The code back from storage, under whichever key wrote it (raises `InvalidTag` if none
        did, or the row was tampered with or moved)."""
        return decrypt_any([k.aead for k in self._all], blob, pupil_id.encode())


def old_key_setting(index: int) -> str:
    """How an error names the `index`-th (from 0) of the old keys, without showing it."""
    return f"{OLD_KEYS_SETTING} (key {index + 1})"


def decrypt_any(keys: list[AESGCM], blob: bytes, bound_to: bytes) -> str:
    """`blob` decrypted under the first of `keys` that wrote it (raises `InvalidTag` if none did)."""
    for aead in keys:
        try:
            return aead.decrypt(blob[:12], blob[12:], bound_to).decode()
        except InvalidTag:
            continue
    raise InvalidTag()


def decode_key(key: str, setting: str = KEY_SETTING) -> bytes:
    """The secret bytes of a code key: at least 32 random bytes, written as URL-safe (or standard)
    base64, or as hex (raises `InvalidKey`, naming `setting` but never the key)."""
    text = key.strip()
    if _HEX_KEY.match(text) and len(text) % 2 == 0:
        secret = bytes.fromhex(text)
    else:
        try:
            secret = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidKey(f"{setting} is neither base64 nor hex: {HOW_TO_MAKE}") from exc
    if len(secret) < KEY_BYTES:
        raise InvalidKey(
            f"{setting} holds {len(secret)} bytes; it needs at least {KEY_BYTES} random bytes: {HOW_TO_MAKE}"
        )
    if len(set(secret)) < MIN_DISTINCT_BYTES:
        raise InvalidKey(f"{setting} is a pattern, not random bytes: {HOW_TO_MAKE}")
    return secret


def derive(secret: bytes, label: bytes) -> bytes:
    """A 32-byte sub-key of `secret` for one purpose (HKDF-SHA256, `label` as its info)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)
