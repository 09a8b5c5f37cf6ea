"""Identity's events and requests."""

from __future__ import annotations

from contracts.base import Message

CONTACTS = "rpc.identity.contacts.v1"


class ContactsRequest(Message):
    """Names and addresses of some accounts, for the one request that needs them."""

    ids: list[str]


class Contact(Message):
    """One account's contact details."""

    id: str
    email: str
    name: str


class ContactsReply(Message):
    """The accounts found; unknown ids are left out."""

    contacts: list[Contact]
