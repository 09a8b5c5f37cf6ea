"""The supervisor of `portal up`: restart backoff, group stop, children dying with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from portal.supervisor import ChildSpec, Supervisor

STUBBORN = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open(sys.argv[1], 'w').close(); time.sleep(300)"


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_restart_backoff_doubles_up_to_30s_and_resets_after_a_stable_minute() -> None:
    now = [1000.0]
    said: list[str] = []
    sup = Supervisor(say=said.append, clock=lambda: now[0])
    child = sup.spawn(ChildSpec("crasher", ["sh", "-c", "exit 3"]))
    delays = []
    for _ in range(7):
        child.proc.wait()
        sup.poll()
        assert child.proc is None
        delays.append(child.restart_at - now[0])
        now[0] = child.restart_at
        sup.poll()
        assert child.proc is not None
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert child.restarts == 7
    assert "crasher (pid" in said[0] and "exited with code 3" in said[0] and "restarting in 1s" in said[0]
    assert said[1].startswith("portal: restarted crasher (pid ")

    child.proc.wait()
    now[0] += 60
    sup.poll()
    assert child.restart_at - now[0] == 1
    sup.stop_all()


def test_a_killed_child_is_reported_by_signal() -> None:
    said: list[str] = []
    sup = Supervisor(say=said.append)
    child = sup.spawn(ChildSpec("sleeper", ["sleep", "300"]))
    os.kill(child.pid, signal.SIGKILL)
    assert wait_until(lambda: (sup.poll(), child.proc is None)[1])
    assert "was killed by SIGKILL" in said[0]
    sup.stop_all()


def test_stop_reaches_grandchildren_and_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    sup = Supervisor(say=lambda _: None)
    marker = tmp_path / "grandchild"
    polite = sup.spawn(ChildSpec("polite", ["sh", "-c", f"sleep 300 & echo $! > {marker}; wait"], stop_order=1))
    ignoring = tmp_path / "ignoring"
    stubborn = sup.spawn(ChildSpec("stubborn", [sys.executable, "-c", STUBBORN, str(ignoring)]))
    assert wait_until(lambda: ignoring.exists() and marker.exists() and marker.read_text().strip() != "")
    grandchild = int(marker.read_text())
    pids = [polite.pid, stubborn.pid, grandchild]
    started = time.monotonic()
    sup.stop_all(timeout=1.0)
    assert time.monotonic() - started < 6
    assert stubborn.returncode == -signal.SIGKILL
    assert polite.returncode == -signal.SIGTERM
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=5)


def test_children_die_when_the_supervisor_is_killed() -> None:
    script = (
        "import time\n"
        "from portal.supervisor import ChildSpec, Supervisor\n"
        "sup = Supervisor()\n"
        "child = sup.spawn(ChildSpec('sleeper', ['sleep', '300']))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child_pid = int(proc.stdout.readline())
    assert alive(child_pid)
    proc.kill()
    proc.wait()
    assert wait_until(lambda: not alive(child_pid), timeout=5)
