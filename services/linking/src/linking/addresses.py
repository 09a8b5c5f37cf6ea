"""Parents' addresses kept secret: keyed hashes to match them, encryption to show them to admins.

Both keys, and the one that hashes callers' network addresses for the guessing counters, are
derived from the linking code key under labels of their own. Like codes, addresses are written
under the current key and read (matched, decrypted) under it or any old one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from contracts.addresses import normalise_email
from linking import codes


class AddressVault:
    """Keyed hashes and encryption of addresses, under sub-keys of the linking code key.

    Labels of their own keep these keys apart from the codes' (and from each other).
    """

    def __init__(self, key: str, old_keys: Iterable[str] = ()) -> None:
        self._current = _AddressKey(key, codes.KEY_SETTING)
        self._all = [self._current, *(_AddressKey(k, codes.old_key_setting(i)) for i, k in enumerate(old_keys))]
        self.key_id = self._current.key_id
        self.key_ids = frozenset(k.key_id for k in self._all)

    def lookup_hash(self, email: str) -> str:
        """The keyed hash an address is stored under (whatever its case; the current key)."""
        return self._current.lookup_hash(email)

    def lookup_hashes(self, email: str) -> list[str]:
        """The hashes a stored address may have: under the current key, then each old one."""
        return list(dict.fromkeys(k.lookup_hash(email) for k in self._all))

    def client_key(self, client_ip: str) -> str:
        """A keyed hash of a network address, so the guessing counters hold no addresses."""
        return self._current.client_key(client_ip)

    def client_keys(self, client_ip: str) -> list[str]:
        """The keyed hashes a network address was counted under, by each key still accepted."""
        return list(dict.fromkeys(k.client_key(client_ip) for k in self._all))

    def encrypt(self, email: str, *, bound_to: str) -> bytes:
        """The address encrypted for storage, readable only with the same `bound_to`."""
        nonce = secrets.token_bytes(12)
        return nonce + self._current.aead.encrypt(nonce, email.encode(), bound_to.encode())

    def decrypt(self, blob: bytes, *, bound_to: str) -> str:
        """The address back, under whichever key wrote it (raises if none did, or the row was
        tampered with or moved)."""
        return codes.decrypt_any([k.aead for k in self._all], blob, bound_to.encode())


class _AddressKey:
    """The sub-keys of one code key that address hashing and encryption use."""

    def __init__(self, key: str, setting: str) -> None:
        secret = codes.decode_key(key, setting)
        self.mac_key = codes.derive(secret, b"parent-portal linking address lookup v1")
        self.client_mac_key = codes.derive(secret, b"parent-portal linking client address v1")
        self.aead = AESGCM(codes.derive(secret, b"parent-portal linking address encryption v1"))
        self.key_id = hashlib.sha256(self.mac_key).hexdigest()[:8]

    def lookup_hash(self, email: str) -> str:
        return hmac.new(self.mac_key, normalise_email(email).encode(), hashlib.sha256).hexdigest()

    def client_key(self, client_ip: str) -> str:
        return hmac.new(self.client_mac_key, client_ip.strip().lower().encode(), hashlib.sha256).hexdigest()
