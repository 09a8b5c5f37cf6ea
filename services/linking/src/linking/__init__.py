"""Parent Portal linking service: The roster copy, school settings, link codes, invitations, parent-pupil links, bars and the audit trail."""

__version__ = "0.1.0"
