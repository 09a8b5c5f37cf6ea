"""The `portal` command, run as an operator runs it: a real `portal up` and its processes.

The slow tests share one `portal up` (the `running` fixture) and run in file order: it is
inspected, then a service is killed and must come back, then SIGTERM must leave nothing behind.
They time a whole start-up against its 30 seconds, so they run alone (`serial`), not beside
another test file.
"""

from __future__ import annotations

import importlib.util
import json
import mailbox
import os
import pty
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import httpx
import nats
import natsauth
import pytest
from helpers import eventually

from contracts.kit import consumer as c
from contracts.kit.streams import ensure_streams
from contracts.rpc import SERVICES, health
from contracts.streams import DEADLETTERS, StreamDef
from portal.natsserver import free_port, wait_for_port

pytestmark = pytest.mark.serial

BIN = Path(sys.executable).parent
PORTAL = str(BIN / "portal")
PARTS = (*SERVICES, "gateway")
READY_WITHIN = 30.0


def clean_env(**overrides: str) -> dict[str, str]:
    """The test's environment without any PORTAL_* setting of the machine, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(overrides)
    return env


def portal(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    """Run one `portal` command to completion."""
    return subprocess.run([PORTAL, *args], env=env, capture_output=True, text=True, timeout=timeout)


# --- the process tree, read from /proc -------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def process_tree(pid: int) -> list[int]:
    """`pid`'s descendants, children before grandchildren."""
    found, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop(0))
        found += kids
        todo += kids
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def identity_of(pid: int) -> tuple[int, str] | None:
    """(pid, start time): a pid the kernel reused for another process compares unequal."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] == "Z":
        return None  # exited; only its parent's bookkeeping is left
    return pid, fields[19]


def is_part(argv: list[str], name: str) -> bool:
    """Whether a command line is `… portal service <name> [--no-migrate]`."""
    if argv and argv[-1] == "--no-migrate":
        argv = argv[:-1]
    return len(argv) >= 3 and argv[-3].endswith("portal") and argv[-2:] == ["service", name]


def environ(pid: int | None) -> list[str]:
    """A process's environment, `NAME=value` each."""
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Running:
    """One `portal up` started by a test."""

    proc: subprocess.Popen
    data_dir: Path
    http_port: int
    started: float
    stdout: Path
    stderr: Path

    def tree(self) -> list[int]:
        return process_tree(self.proc.pid)

    def find(self, match) -> list[int]:
        return [p for p in self.tree() if match(cmdline(p))]

    def part(self, name: str) -> int | None:
        pids = self.find(lambda argv: is_part(argv, name))
        return pids[0] if pids else None

    def output(self) -> str:
        return f"--- stdout\n{self.stdout.read_text()}\n--- stderr (tail)\n{self.stderr.read_text()[-4000:]}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def _copy_terminal(master: int, to: Path) -> None:
    with to.open("wb") as out:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other side closed: `portal up` has exited
                break
            if not data:
                break
            out.write(data.replace(b"\r\n", b"\n"))
            out.flush()
    os.close(master)


def start_portal_up(tmp: Path, *, terminal: bool = False, **env: str) -> Running:
    """`portal up` with its output in files; with `terminal`, its standard output is a terminal
    (a pseudo-terminal whose output is copied to the file), as when a person runs it."""
    port = free_port()
    stdout, stderr = tmp / "up.out", tmp / "up.err"
    data_dir = tmp / "data"
    started = time.monotonic()
    master = None
    if terminal:
        master, slave = pty.openpty()
        out: object = slave
    else:
        out = stdout.open("w")
    proc = subprocess.Popen(
        [PORTAL, "up"],
        env=clean_env(PORTAL_DATA_DIR=str(data_dir), PORTAL_HTTP_PORT=str(port), **env),
        stdout=out,
        stderr=stderr.open("w"),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    if master is not None:
        os.close(slave)
        threading.Thread(target=_copy_terminal, args=(master, stdout), daemon=True).start()
    return Running(proc, data_dir, port, started, stdout, stderr)


OPS_LINE = re.compile(r"^(\w+) ops (http://127\.0\.0\.1:\d+)$", re.MULTILINE)


def ops_urls(up: Running, *, timeout: float = 20) -> dict[str, str]:
    """Each part's ops URL, from the lines `portal up` prints."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = dict(OPS_LINE.findall(up.stdout.read_text()))
        if set(found) >= set(PARTS):
            return found
        assert up.proc.poll() is None, up.output()
        time.sleep(0.1)
    raise AssertionError(f"no ops line for every part\n{up.output()}")


def log_lines(up: Running, part: str) -> list[dict]:
    """`part`'s log file, each line parsed as JSON (a line that is not JSON fails)."""
    text = (up.data_dir / "logs" / f"{part}.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def wait_for_health(url: str, *, deadline: float, creds: Path | None = None) -> None:
    """Return once every service answers its health request on the NATS at `url` (as the
    operator of `creds`, the directory `portal up` wrote its seeds to, when given)."""
    auth = {}
    if creds is not None:
        auth = {"nkeys_seed_str": (creds / "operator.nk").read_text().strip(), "inbox_prefix": "_INBOX.operator"}
    nc = await nats.connect(url, allow_reconnect=False, **auth)
    try:

        async def all_healthy() -> bool:
            for name in SERVICES:
                try:
                    await nc.request(health(name).subject, b"{}", timeout=0.5)
                except Exception:  # noqa: BLE001 - not up yet
                    return False
            return True

        await eventually(
            all_healthy,
            timeout=max(1.0, deadline - time.monotonic()),
            interval=0.2,
            message="every service answering health",
        )
    finally:
        await nc.close()


# --- quick checks of single commands ---------------------------------------------------------


def test_unknown_part_is_a_clear_error() -> None:
    result = portal("service", "nonsense", env=clean_env())
    assert result.returncode == 2
    assert "unknown part 'nonsense'" in result.stderr
    assert "identity, linking, notify, overview, gateway" in result.stderr
    assert "Traceback" not in result.stderr


def test_dead_letters_without_nats_is_a_one_line_error(tmp_path: Path) -> None:
    result = portal("dead-letters", "list", env=clean_env(PORTAL_DATA_DIR=str(tmp_path)))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "PORTAL_NATS_URL" in result.stderr and "portal up" in result.stderr
    assert "Traceback" not in result.stderr


def test_dead_letters_list_empty(fresh_nats) -> None:
    result = portal(
        "dead-letters",
        "list",
        env=clean_env(PORTAL_NATS_URL=fresh_nats.url, PORTAL_NATS_CREDS_DIR=str(natsauth.CREDS_DIR)),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no dead letters"


async def test_dead_letters_list_and_replay(fresh_nats, tmp_path: Path) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, [DEADLETTERS, StreamDef("DLTEST", ("dltest.>",), "test events")])
        headers = {
            c.H_SUBJECT: "dltest.thing.happened.v1",
            c.H_STREAM: "DLTEST",
            c.H_SEQ: "7",
            c.H_CONSUMER: "dltest-totals",
            c.H_SERVICE: "dltest",
            c.H_ERROR: "ValueError: boom\nsecond line",
            c.H_DELIVERIES: "5",
            c.H_AT: "2026-11-30T12:00:00Z",
            c.H_MSG_ID: "evt-1",
        }
        ack = await js.publish("deadletter.dltest.dltest-totals", b'{"event_id": "evt-1"}', headers=headers)
        # The data dir's nats.url is how an operator's commands find a `portal up`.
        (tmp_path / "nats.url").write_text(fresh_nats.url + "\n")
        env = clean_env(PORTAL_DATA_DIR=str(tmp_path))

        listed = portal("dead-letters", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        head, row = listed.stdout.splitlines()
        assert head.split() == ["id", "service", "consumer", "subject", "deliveries", "error", "at"]
        assert row.split()[:5] == [str(ack.seq), "dltest", "dltest-totals", "dltest.thing.happened.v1", "5"]
        assert "ValueError: boom second line" in row and "2026-11-30T12:00:00Z" in row

        missing = portal("dead-letters", "replay", "999999", env=env)
        assert missing.returncode == 1
        assert "no dead letter with id 999999" in missing.stderr and "Traceback" not in missing.stderr

        replayed = portal("dead-letters", "replay", str(ack.seq), env=env)
        assert replayed.returncode == 0, replayed.stderr
        assert "dltest.thing.happened.v1" in replayed.stdout
        assert (await js.stream_info("DLTEST")).state.messages == 1
        assert (await js.stream_info(DEADLETTERS.name)).state.messages == 0
    finally:
        await nc.close()


def test_mail_sink_stores_each_message_in_the_maildir(tmp_path: Path) -> None:
    port, maildir = free_port(), tmp_path / "mail"
    sink = subprocess.Popen(
        [PORTAL, "mail-sink", "--port", str(port), "--maildir", str(maildir)],
        env=clean_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, timeout=10, proc=sink)
        msg = EmailMessage()
        msg["From"] = "portal@school.example"
        msg["To"] = "parent@home.example"
        msg["Subject"] = "Verify your email"
        msg.set_content("Open http://127.0.0.1:8000/verify?token=abc\n")
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
            smtp.send_message(msg, to_addrs=["parent@home.example", "hidden@home.example"])
        box = mailbox.Maildir(maildir, create=False)
        stored = list(box)
        assert len(stored) == 1
        assert stored[0]["Subject"] == "Verify your email"
        assert stored[0].get_all("Delivered-To") == ["parent@home.example", "hidden@home.example"]
        assert "verify?token=abc" in stored[0].get_payload()
        assert not any((maildir / "tmp").iterdir())
    finally:
        sink.send_signal(signal.SIGTERM)
        _, err = sink.communicate(timeout=10)
    assert sink.returncode == 0
    assert "mail_stored" in err
    assert "@" not in err  # logs carry no addresses


# --- a real `portal up` ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    up = start_portal_up(tmp_path_factory.mktemp("portal-up"), terminal=True)
    yield up
    up.stop()


@pytest.mark.slow
def test_up_runs_every_part_as_its_own_named_process(running: Running) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(running.part(p) for p in PARTS):
        assert running.proc.poll() is None, running.output()
        time.sleep(0.1)
    assert all(running.part(p) for p in PARTS), running.output()

    url = (running.data_dir / "nats.url").read_text().strip()
    assert url.startswith("nats://127.0.0.1:")
    [nats_pid] = running.find(lambda argv: bool(argv) and argv[0].endswith("nats-server"))
    nats_argv = cmdline(nats_pid)
    assert nats_argv[nats_argv.index("-p") + 1] == url.rsplit(":", 1)[1]
    # Run with the configuration `portal nats-config` wrote beside its store: users, permissions, JetStream.
    config = Path(nats_argv[nats_argv.index("-c") + 1])
    assert config == running.data_dir / "nats" / "nats-server.conf"
    assert f'store_dir: "{running.data_dir / "nats"}"' in config.read_text()
    assert f"PORTAL_NATS_CREDS_DIR={running.data_dir / 'nats'}" in environ(running.part("gateway"))
    [sink_pid] = running.find(lambda argv: "mail-sink" in argv)
    sink_argv = cmdline(sink_pid)
    assert sink_argv[sink_argv.index("--maildir") + 1] == str(running.data_dir / "mail")
    sink_port = sink_argv[sink_argv.index("--port") + 1]
    assert f"PORTAL_SMTP_URL=smtp://127.0.0.1:{sink_port}" in environ(running.part("notify"))
    assert f"PORTAL_DEV_MAIL_DIR={running.data_dir / 'mail'}" in environ(running.part("gateway"))


@pytest.mark.slow
async def test_up_services_answer_over_the_nats_it_wrote(running: Running) -> None:
    url = (running.data_dir / "nats.url").read_text().strip()
    await wait_for_health(url, deadline=running.started + READY_WITHIN, creds=running.data_dir / "nats")
    # The embedded NATS lets no one in without a seed.
    with pytest.raises(Exception, match="(?i)authorization"):
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


@pytest.mark.slow
def test_up_is_ready_within_30_seconds(running: Running) -> None:
    if importlib.util.find_spec("gateway.__main__") is None:
        pytest.skip("the gateway (gateway.__main__.serve) is not there yet")
    deadline = running.started + READY_WITHIN
    status = None
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                status = client.get(f"http://127.0.0.1:{running.http_port}/ready").status_code
            except httpx.HTTPError:
                status = None
            if status == 200:
                break
            time.sleep(0.1)
    elapsed = time.monotonic() - running.started
    assert status == 200, f"/ready answered {status} after {elapsed:.1f}s\n{running.output()}"
    rss = {name: rss_kb(pid) // 1024 for name in PARTS if (pid := running.part(name))}
    print(f"\n/ready 200 after {elapsed:.1f}s; RSS MB: {rss}")


@pytest.mark.slow
async def test_up_gives_each_part_an_ops_port_serving_livez_readyz_and_metrics(running: Running) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    urls = ops_urls(running)
    assert set(urls) == set(PARTS)
    assert len(set(urls.values())) == len(PARTS)
    assert f":{running.http_port}" not in urls.values()
    async with httpx.AsyncClient(timeout=5) as http:
        for part in PARTS:
            assert f"PORTAL_OPS_PORT={urls[part].rsplit(':', 1)[1]}" in environ(running.part(part))

            async def ready(url: str = urls[part]) -> bool:
                return (await http.get(f"{url}/readyz")).status_code == 200

            await eventually(ready, timeout=READY_WITHIN, message=f"{part} /readyz 200")
            assert (await http.get(f"{urls[part]}/livez")).status_code == 200
        assert (await http.get(f"http://127.0.0.1:{running.http_port}/ready")).status_code == 200
        assert (await http.get(f"http://127.0.0.1:{running.http_port}/metrics")).status_code == 404
        for part in PARTS:
            response = await http.get(f"{urls[part]}/metrics")
            assert response.status_code == 200
            samples = [s for f in text_string_to_metric_families(response.text) for s in f.samples]
            assert [s for s in samples if s.name == "portal_info" and s.labels["part"] == part]
            if part == "gateway":
                # The /ready just asked, by its route.
                assert [s for s in samples if s.name == "portal_http_requests_total" and s.labels["route"] == "/ready"]
            else:
                # /ready asks every service's health.
                asked = [
                    s.value
                    for s in samples
                    if s.name == "portal_rpc_requests_total"
                    and s.labels == {"subject": f"rpc.{part}.health.v1", "outcome": "ok"}
                ]
                assert asked and asked[0] >= 1, part
                assert [s for s in samples if s.name == "portal_outbox_pending"], part


@pytest.mark.slow
def test_up_keeps_each_parts_log_in_a_json_file_and_the_terminal_calm(running: Running) -> None:
    for part in PARTS:
        lines = log_lines(running, part)
        assert lines, part
        assert {line["service"] for line in lines} == {part}
        assert all({"event", "level", "timestamp"} <= set(line) for line in lines), part
    assert [line for line in log_lines(running, "gateway") if line["event"] == "request"]
    deadline = time.monotonic() + READY_WITHIN
    while "portal: ready after" not in running.stdout.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)  # `portal up` says so once its own look at /ready found it 200
    console = running.stdout.read_text() + running.stderr.read_text()
    # The terminal shows where everything is, and no access log line or other chatter.
    assert "Parent Portal is starting:" in console and "portal: ready after" in console
    assert "request" not in console.replace("requests", "")
    assert "service_started" not in console and '{"' not in console


@pytest.mark.slow
def test_portal_status_lists_every_part_and_exits_0_when_all_are_up(running: Running) -> None:
    env = clean_env(PORTAL_DATA_DIR=str(running.data_dir))
    result = portal("status", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["part"][:5] == ["part", "replicas", "state", "outbox", "oldest"]
    for part in PARTS:
        assert rows[part][1:3] == ["1", "ok"], result.stdout
    assert rows["notify-requests"][1:4] == ["notify", "NOTIFY_REQUESTS", "0"], result.stdout
    assert "dead letters: none" in result.stdout

    as_json = portal("status", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    state = json.loads(as_json.stdout)
    assert state["ok"] is True
    assert {p: s["replicas"] for p, s in state["parts"].items()} == dict.fromkeys(PARTS, 1)
    assert state["parts"]["identity"]["outbox_pending"] == 0


@pytest.mark.slow
def test_portal_status_names_a_part_that_stopped_answering_and_exits_1(running: Running) -> None:
    overview = running.part("overview")
    assert overview is not None
    os.kill(overview, signal.SIGSTOP)  # there, but answering nothing
    try:
        result = portal("status", env=clean_env(PORTAL_DATA_DIR=str(running.data_dir)))
    finally:
        os.kill(overview, signal.SIGCONT)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert rows["overview"][1:3] == ["0", "missing"]
    assert rows["identity"][1:3] == ["1", "ok"]
    assert result.stderr.strip() == "portal: overview is missing: no replica answered"


@pytest.mark.slow
def test_up_restarts_a_service_that_dies(running: Running) -> None:
    old = running.part("linking")
    assert old is not None, running.output()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    new = None
    while time.monotonic() < deadline:
        new = running.part("linking")
        if new is not None and new != old:
            break
        time.sleep(0.1)
    assert new is not None and new != old, running.output()
    assert "linking" in running.stderr.read_text() and "restarting in 1s" in running.stderr.read_text()


@pytest.mark.slow
def test_up_stops_every_process_on_sigterm(running: Running) -> None:
    pids = running.tree()
    assert len(pids) >= 7, running.output()  # nats-server, mail sink, four services, gateway
    before = {p: identity_of(p) for p in pids}
    assert running.stop() == 0, running.output()
    left = [p for p, ident in before.items() if ident is not None and identity_of(p) == ident]
    assert left == [], f"still running: {[cmdline(p) for p in left]}"
    assert "portal: stopped" in running.stderr.read_text()


@pytest.mark.slow
async def test_up_uses_given_nats_and_smtp_and_starts_neither(nats_server, tmp_path: Path) -> None:
    smtp_url = f"smtp://127.0.0.1:{free_port()}"
    up = start_portal_up(
        tmp_path,
        PORTAL_NATS_URL=nats_server.url,
        PORTAL_NATS_CREDS_DIR=str(natsauth.CREDS_DIR),
        PORTAL_SMTP_URL=smtp_url,
    )
    try:
        await wait_for_health(nats_server.url, deadline=up.started + READY_WITHIN)
        assert (up.data_dir / "nats.url").read_text().strip() == nats_server.url
        assert all(up.part(p) for p in PARTS), up.output()
        argvs = [cmdline(p) for p in up.tree()]
        assert not [a for a in argvs if a and a[0].endswith("nats-server")]
        assert not [a for a in argvs if "mail-sink" in a]
        assert f"PORTAL_SMTP_URL={smtp_url}" in environ(up.part("notify"))
        assert not [e for e in environ(up.part("gateway")) if e.startswith("PORTAL_DEV_MAIL_DIR=")]
        # Not a terminal: every part's lines pass through as they are, and are in its file too.
        await eventually(
            lambda: '"event":"service_started"' in up.stderr.read_text(), timeout=10, message="lines passed through"
        )
        assert [line for line in log_lines(up, "notify") if line["event"] == "service_started"]
        assert set(ops_urls(up)) == set(PARTS)

        # Even a supervisor killed outright leaves nothing running: the kernel stops its children.
        before = {p: identity_of(p) for p in up.tree()}
        up.proc.kill()
        up.proc.wait()

        def all_gone() -> bool:
            return not [p for p, ident in before.items() if ident is not None and identity_of(p) == ident]

        await eventually(all_gone, timeout=15, interval=0.1, message="every child of a killed `portal up` gone")
    finally:
        up.stop()
