"""What `portal up` shows of its parts' logs.

Every part writes its log, one JSON object a line (what a deployment collects from its output),
to `PORTAL_DATA_DIR/logs/<part>.log`. The console follows those files:

- in a terminal (calm): only what a person should see, each on one short line: warnings and
  errors, and any line that is not JSON (a part that crashed before it could log, a traceback);
- otherwise (a pipe, a file, a service manager): every line as the part wrote it, as before,
  for whatever collects `portal up`'s output.

Start-up, where everything is, the demo logins and a restarted part are `portal up`'s own lines
and are shown either way.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Log levels a person is shown in a terminal.
SHOWN = frozenset({"warning", "error", "critical", "exception"})
# Keys every line has; the rest are the line's own facts.
_COMMON = ("event", "level", "timestamp", "service", "logger")
POLL_SECONDS = 0.2
_LONGEST = 400


def log_path(data_dir: Path, part: str) -> Path:
    """Where `portal up` keeps `part`'s log."""
    return data_dir / "logs" / f"{part}.log"


def start_afresh(path: Path) -> None:
    """Keep the previous run's log as `<part>.log.1` (one run back) and start an empty one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))
    path.touch()


def for_people(part: str, line: str, *, plain: bool = True) -> str | None:
    """The console line for one log line in a terminal, or None when it is not for people.

    `plain`: show lines that are not JSON (False for a one-shot job whose plain output is its
    progress; its log is shown if it fails)."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return f"{part}: {line[:_LONGEST]}" if plain else None
    level = str(record.get("level", "")).lower()
    if level not in SHOWN:
        return None
    facts = []
    for key, value in record.items():
        if key in _COMMON:
            continue
        if key == "exception":
            # A traceback: its last line says what; the whole of it is in the file.
            value = str(value).strip().splitlines()[-1] if str(value).strip() else ""
        facts.append(f"{key}={value}")
    text = f"{part}: {level}: {record.get('event', '')}"
    if facts:
        text += " (" + ", ".join(facts) + ")"
    return text[:_LONGEST] + ("…" if len(text) > _LONGEST else "")


@dataclass
class _Followed:
    part: str
    path: Path
    plain: bool
    offset: int = 0
    partial: bytes = b""


class Console:
    """Follows each part's log file and writes what it shows (see the module's docstring)."""

    def __init__(self, *, calm: bool, write: Callable[[str], None] | None = None) -> None:
        self.calm = calm
        self._write = write or (lambda line: print(line, file=sys.stderr, flush=True))
        self._followed: list[_Followed] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def follow(self, part: str, path: Path, *, plain: bool = True) -> None:
        """Show `path`'s lines from its present end on."""
        offset = path.stat().st_size if path.exists() else 0
        with self._lock:
            self._followed.append(_Followed(part, path, plain, offset))

    def poll(self) -> None:
        """Show what was written since the last poll."""
        with self._lock:
            followed = list(self._followed)
        for f in followed:
            try:
                with f.path.open("rb") as fh:
                    fh.seek(f.offset)
                    data = fh.read()
            except OSError:
                continue
            if not data:
                continue
            f.offset += len(data)
            data = f.partial + data
            # Only whole lines: the rest waits for its end.
            complete, newline, rest = data.rpartition(b"\n")
            if not newline:
                f.partial = data
                continue
            f.partial = rest
            for raw in complete.split(b"\n"):
                line = raw.decode(errors="replace")
                shown = for_people(f.part, line, plain=f.plain) if self.calm else line
                if shown is not None and shown.strip():
                    self._write(shown)

    def start(self) -> None:
        """Follow in a thread of its own until `stop`."""

        def run() -> None:
            while not self._stop.wait(POLL_SECONDS):
                self.poll()

        self._thread = threading.Thread(target=run, name="portal-console", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Show what is left, then stop following."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.poll()


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last `lines` lines of a log (to show why a one-shot job failed)."""
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
