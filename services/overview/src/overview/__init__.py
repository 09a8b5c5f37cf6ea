"""Parent Portal overview service: Per-pupil projections of homework, messages and stars."""

__version__ = "0.1.0"
