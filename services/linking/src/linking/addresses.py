"""Parents' addresses kept secret: keyed hashes to match them, encryption to show them to admins.

Both keys, and the one that hashes callers' network addresses for the guessing counters, are
derived from the linking code key under labels of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from contracts.addresses import normalise_email
from linking import codes


class AddressVault:
    """Keyed hashes and encryption of addresses, under sub-keys of the linking code key.

    Labels of their own keep these keys apart from the codes' (and from each other).
    """

    def __init__(self, key: str) -> None:
        secret = codes.decode_key(key)
        self._mac_key = codes.derive(secret, b"parent-portal linking address lookup v1")
        self._client_key = codes.derive(secret, b"parent-portal linking client address v1")
        self._aead = AESGCM(codes.derive(secret, b"parent-portal linking address encryption v1"))
        self.key_id = hashlib.sha256(self._mac_key).hexdigest()[:8]

    def lookup_hash(self, email: str) -> str:
        """The keyed hash an address is found by (whatever its case)."""
        return hmac.new(self._mac_key, normalise_email(email).encode(), hashlib.sha256).hexdigest()

    def client_key(self, client_ip: str) -> str:
        """A keyed hash of a network address, so the guessing counters hold no addresses."""
        return hmac.new(self._client_key, client_ip.strip().lower().encode(), hashlib.sha256).hexdigest()

    def encrypt(self, email: str, *, bound_to: str) -> bytes:
        """The address encrypted for storage, readable only with the same `bound_to`."""
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, email.encode(), bound_to.encode())

    def decrypt(self, blob: bytes, *, bound_to: str) -> str:
        """The address back (raises if the row was tampered with or moved)."""
        return self._aead.decrypt(blob[:12], blob[12:], bound_to.encode()).decode()
