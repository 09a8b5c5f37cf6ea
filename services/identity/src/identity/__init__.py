"""Parent Portal identity service: Parent and staff accounts, email verification, sessions, password reset."""

__version__ = "0.1.0"
