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


def test_a_childs_output_goes_to_its_log_file_across_restarts(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "talker.log"
    log.parent.mkdir()
    script = "import sys; print('out', flush=True); print('err', file=sys.stderr, flush=True); sys.exit(3)"
    now = [0.0]
    sup = Supervisor(say=lambda _: None, clock=lambda: now[0])
    child = sup.spawn(ChildSpec("talker", [sys.executable, "-c", script], log_file=log))
    child.proc.wait()
    sup.poll()
    now[0] = child.restart_at
    sup.poll()  # restarted: its output is added to the same file
    child.proc.wait()
    sup.stop_all()
    assert log.read_text().splitlines() == ["out", "err", "out", "err"]


def test_the_console_follows_log_files_calmly_in_a_terminal_and_wholly_otherwise(tmp_path: Path) -> None:
    import json

    from portal.console import Console, for_people, start_afresh

    log = tmp_path / "logs" / "notify.log"
    (tmp_path / "logs").mkdir()
    log.write_text("from the last run\n")
    start_afresh(log)
    assert (tmp_path / "logs" / "notify.log.1").read_text() == "from the last run\n"
    assert log.read_text() == ""

    def line(level: str, event: str, **facts: object) -> str:
        record = {"event": event, "service": "notify", "level": level, "timestamp": "2026-12-03T12:00:00Z", **facts}
        return json.dumps(record) + "\n"

    calm: list[str] = []
    whole: list[str] = []
    consoles = [Console(calm=True, write=calm.append), Console(calm=False, write=whole.append)]
    for console in consoles:
        console.follow("notify", log)
    written = [
        line("info", "request", path="/api/v1/me", status=200),
        line("warning", "smtp_refused", detail="no STARTTLS"),
        line("error", "rpc_handler_failed", exception="Traceback (most recent call last):\n  ...\nValueError: boom"),
        "Traceback (most recent call last):\n",
    ]
    with log.open("a") as f:
        for text in written:
            f.write(text)
        f.write('{"event": "half a li')  # not a whole line yet
    for console in consoles:
        console.poll()
    assert calm == [
        "notify: warning: smtp_refused (detail=no STARTTLS)",
        "notify: error: rpc_handler_failed (exception=ValueError: boom)",
        "notify: Traceback (most recent call last):",
    ]
    assert whole == [text.rstrip("\n") for text in written]
    with log.open("a") as f:
        f.write('ne", "level": "error"}\n')
    for console in consoles:
        console.poll()
    assert calm[-1] == "notify: error: half a line"
    assert whole[-1] == '{"event": "half a line", "level": "error"}'
    # A one-shot job's plain progress lines are not shown.
    assert for_people("migrate", "identity: database schema is current", plain=False) is None
