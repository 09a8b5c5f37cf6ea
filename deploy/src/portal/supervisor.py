"""Runs the parts of `portal up` as child processes, restarts those that die, stops them all.

Each child runs in a session (and so a process group) of its own: a terminal's Ctrl-C reaches
only the supervisor, which then stops the children in order, and signalling the group reaches
anything a child started itself. If the supervisor itself is killed without a chance to clean
up, the kernel signals each child (`PR_SET_PDEATHSIG`), so nothing is left running.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# A child that stayed up this long was healthy: its next crash starts the backoff afresh.
STABLE_AFTER = 60.0
STOP_TIMEOUT = 10.0

_PR_SET_PDEATHSIG = 1

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def _child_setup(parent_pid: int, death_signal: int) -> Callable[[], None]:
    def setup() -> None:
        # Runs in the child between fork and exec.
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, int(death_signal), 0, 0, 0)
        if os.getppid() != parent_pid:
            # The supervisor died before prctl took effect: nobody would ever stop this child.
            os._exit(1)

    return setup


def describe_exit(code: int) -> str:
    """`exited with code 1` or `was killed by SIGKILL`, for operators."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def kill_group(pgid: int, sig: int) -> None:
    """Signal a whole process group, ignoring one that is already gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class ChildSpec:
    """How to run one child."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    # False for one-shot jobs (migrations) whose exit is their result.
    restart: bool = True
    # Children with a higher number are stopped first (the gateway before the services
    # before NATS), so none of them spends its shutdown reconnecting to what already left.
    stop_order: int = 0
    # Where its output (stdout and stderr) goes, appended; None: the supervisor's own.
    log_file: Path | None = None


class Child:
    """One supervised child and its restart state."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.backoff = BACKOFF_FIRST
        self.restart_at: float | None = None
        self.restarts = 0
        self.returncode: int | None = None

    @property
    def name(self) -> str:
        """The child's name, as in `portal service <name>`."""
        return self.spec.name

    @property
    def pid(self) -> int | None:
        """The running process's id, None while it waits to be restarted."""
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Starts children, restarts those that die with exponential backoff, stops them all."""

    def __init__(
        self,
        *,
        say: Callable[[str], None] | None = None,
        death_signal: int = signal.SIGTERM,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children: list[Child] = []
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        # SIGTERM rather than SIGKILL: a child then still stops its own children and
        # nats-server closes its store cleanly.
        self._death_signal = death_signal
        self._clock = clock
        self._pid = os.getpid()

    def spawn(self, spec: ChildSpec) -> Child:
        """Start a child now and supervise it from here on."""
        child = Child(spec)
        self.children.append(child)
        self._start(child)
        return child

    def _start(self, child: Child) -> None:
        # Straight into the file, not through a pipe of ours: a child never waits on the
        # supervisor to write its log, and its last words are kept even if the supervisor died.
        out = child.spec.log_file.open("ab") if child.spec.log_file is not None else None
        try:
            child.proc = subprocess.Popen(  # noqa: S603 - argv comes from the supervisor's own specs
                list(child.spec.argv),
                env=dict(child.spec.env) if child.spec.env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
                preexec_fn=_child_setup(self._pid, self._death_signal),
            )
        finally:
            if out is not None:
                out.close()
        child.started_at = self._clock()
        child.restart_at = None
        child.returncode = None

    def poll(self) -> None:
        """One round of supervision: notice exits, schedule and perform restarts."""
        now = self._clock()
        for child in self.children:
            if child.proc is not None:
                code = child.proc.poll()
                if code is None:
                    continue
                self._exited(child, code, now)
            elif child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)
                self._say(f"portal: restarted {child.name} (pid {child.pid})")

    def _exited(self, child: Child, code: int, now: float) -> None:
        assert child.proc is not None
        pid = child.proc.pid
        # Whatever the dead child started would otherwise run on unsupervised.
        kill_group(pid, signal.SIGKILL)
        child.proc = None
        child.returncode = code
        if not child.spec.restart:
            return
        uptime = now - child.started_at
        if uptime >= STABLE_AFTER:
            child.backoff = BACKOFF_FIRST
        delay = child.backoff
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)
        child.restart_at = now + delay
        self._say(
            f"portal: {child.name} (pid {pid}) {describe_exit(code)} after {uptime:.1f}s; restarting in {delay:g}s"
        )

    def wait(
        self, child: Child, *, timeout: float | None = None, interrupted: Callable[[], bool] = lambda: False
    ) -> int | None:
        """Wait for a one-shot child to finish, supervising the others meanwhile; its exit code,
        or None when interrupted or out of time."""
        deadline = None if timeout is None else self._clock() + timeout
        while not interrupted():
            self.poll()
            if child.proc is None and child.restart_at is None:
                return child.returncode
            if deadline is not None and self._clock() > deadline:
                return None
            time.sleep(0.05)
        return None

    def stop_all(self, *, timeout: float = STOP_TIMEOUT, hurry: Callable[[], bool] = lambda: False) -> None:
        """Stop every child: SIGTERM its group, wait up to `timeout` in all, then SIGKILL the group.

        `hurry` returning True (a second Ctrl-C) skips the wait.
        """
        for child in self.children:
            child.restart_at = None
        deadline = self._clock() + timeout
        groups: list[int] = []
        for order in sorted({c.spec.stop_order for c in self.children}, reverse=True):
            tier = [c.proc for c in self.children if c.spec.stop_order == order and c.proc is not None]
            for proc in tier:
                groups.append(proc.pid)
                kill_group(proc.pid, signal.SIGTERM)
            # A later tier still gets a moment even when an earlier one used up the budget.
            tier_deadline = max(deadline, self._clock() + 2.0)
            while any(p.poll() is None for p in tier) and self._clock() < tier_deadline and not hurry():
                time.sleep(0.05)
        for child in self.children:
            if child.proc is not None:
                kill_group(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
                child.returncode = child.proc.returncode
                child.proc = None
        # Grandchildren of a leader that exited on its own are still in its group.
        for pgid in groups:
            kill_group(pgid, signal.SIGKILL)
