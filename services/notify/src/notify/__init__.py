"""Parent Portal notify service: Every outbound email: rendered, sent over SMTP once, retried through outages."""

__version__ = "0.1.0"
