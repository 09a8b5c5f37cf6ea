"""Helpers for tests: waiting on eventual outcomes without fixed sleeps."""

from __future__ import annotations

import asyncio


async def eventually(check, *, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    """Retry an (async) check until it returns a truthy value; the value is returned."""
    deadline = asyncio.get_running_loop().time() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except AssertionError as exc:
            last_exc = exc
        if asyncio.get_running_loop().time() > deadline:
            if last_exc:
                raise last_exc
            raise AssertionError(f"{message} not reached within {timeout}s")
        await asyncio.sleep(interval)


def log_events(monkeypatch, module) -> list[str]:
    """The name of every event `module.log` logs from now on (each still logged as before)."""
    logged: list[str] = []
    real = module.log

    class Recording:
        def __getattr__(self, level):
            def record(event, **kw):
                logged.append(event)
                return getattr(real, level)(event, **kw)

            return record

    monkeypatch.setattr(module, "log", Recording())
    return logged
