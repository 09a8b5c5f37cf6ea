"""`PORTAL_NATS_URL` may list the servers of one NATS cluster, comma-separated: every part, the
gateway and the `portal` command connect to whichever answers and move to another when it goes
(docs/operations.md, "A NATS cluster"). A malformed list is refused at start, naming the setting
and never quoting a password; `portal nats-config --cluster-name --routes` writes a server of a
cluster whose routes authenticate.

The real test runs a 3-server cluster with the generated configuration (`natsauth.authed_cluster`).
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import natsauth
import pytest
from gateway_harness import running_gateway
from helpers import eventually

from contracts.kit.service import migrate
from contracts.kit.settings import CommonSettings, NatsUrlInvalid, nats_servers
from gateway.settings import GatewaySettings
from overview import app as overview_app
from portal.natsconfig import ClusterOptionInvalid, ClusterOptions
from portal.natsserver import free_port
from portal.up import redact_url

PORTAL = str(Path(sys.executable).with_name("portal"))


# -- the setting -----------------------------------------------------------------------------------


def test_a_comma_separated_url_is_a_list_of_servers() -> None:
    assert nats_servers("nats://a:4222, nats://b:4222,nats://c:4222") == [
        "nats://a:4222",
        "nats://b:4222",
        "nats://c:4222",
    ]
    assert nats_servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]
    assert nats_servers("tls://a:4222,b:4222") == ["tls://a:4222", "b:4222"]
    settings = CommonSettings(nats_url="nats://u:pw@a:4222,nats://u:pw@b:4222")
    assert settings.resolve_nats_servers() == ["nats://u:pw@a:4222", "nats://u:pw@b:4222"]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("nats://a:4222,,nats://b:4222", "server 2 of 3 is empty"),
        ("nats://a:4222,", "server 2 of 2 is empty"),
        ("nats://u:hunter2@a:99999", "server 1 of 1 is not a URL"),
        ("http://u:hunter2@a:4222", "scheme 'http'"),
        ("nats://u:hunter2@:4222", "names no host"),
        ("nats://a:4222/x?password=hunter2", "not a server address"),
        ("nats://a:4222,ws://b:8080", "mixes websocket"),
    ],
)
def test_a_malformed_list_is_refused_naming_the_server_by_position_never_its_password(url: str, said: str) -> None:
    with pytest.raises(NatsUrlInvalid) as refused:
        CommonSettings(nats_url=url).resolve_nats_url()
    assert said in str(refused.value) and "PORTAL_NATS_URL" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_each_server_of_a_list_is_redacted() -> None:
    assert (
        redact_url("nats://op:s3cret@a:4222,nats://t0ken@b:4222, nats://c:4222")
        == "nats://op:***@a:4222,nats://***@b:4222,nats://c:4222"
    )
    assert redact_url("smtp://mailer:s3cret@smtp.example:587?starttls=true") == (
        "smtp://mailer:***@smtp.example:587?starttls=true"
    )
    assert redact_url("op:s3cret@a:4222") == "op:***@a:4222"
    assert redact_url("smtp://smtp.example:25?from=a@b.example") == "smtp://smtp.example:25?from=a@b.example"
    assert redact_url("nats://a:4222") == "nats://a:4222"


def test_a_part_and_the_portal_command_refuse_a_malformed_list_at_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(PORTAL_NATS_URL="nats://op:hunter2@127.0.0.1:1,,", PORTAL_DATA_DIR=str(tmp_path))
    part = subprocess.run(
        [PORTAL, "service", "overview"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert part.returncode == 2, part.stdout + part.stderr
    assert "nats_url_invalid" in part.stdout + part.stderr and "server 2 of 3 is empty" in part.stdout + part.stderr
    command = subprocess.run(
        [PORTAL, "dead-letters", "list"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert command.returncode == 2 and "server 2 of 3 is empty" in command.stderr, command.stderr
    up = subprocess.run(
        [PORTAL, "up"],
        env={**env, "PORTAL_HTTP_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert up.returncode == 2 and "invalid setting" in up.stderr and "server 2 of 3" in up.stderr, up.stderr
    assert not (tmp_path / "logs").exists(), "nothing was started"
    for out in (part.stdout, part.stderr, command.stdout, command.stderr, up.stdout, up.stderr):
        assert "hunter2" not in out


# -- portal nats-config for a cluster ------------------------------------------------------------------


def test_nats_config_writes_one_server_of_a_cluster_whose_routes_authenticate(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    routes = "nats-route://10.0.0.1:6222,nats-route://10.0.0.2:6222,nats-route://10.0.0.3:6222"
    wrote = subprocess.run(
        [PORTAL, "nats-config", "--out", str(tmp_path), "--host", "0.0.0.0", "--cluster-name", "portal"]
        + ["--routes", routes, "--server-name", "nats-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert wrote.returncode == 0, wrote.stderr
    secret_file = tmp_path / "cluster-route.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 40
    conf = (tmp_path / "nats-server.conf").read_text()
    assert 'server_name: "nats-1"' in conf and 'name: "portal"' in conf and "port: 6222" in conf
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert f"nats-route://route:{secret}@{host}:6222" in conf
    assert f'password: "{secret}"' in conf
    # The secret is kept: the next server's configuration, written from the same directory, joins.
    again = subprocess.run(
        [PORTAL, "nats-config", "--out", str(tmp_path), "--cluster-name", "portal", "--routes", routes],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0 and secret_file.read_text().strip() == secret


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--cluster-name", "portal"], "go together"),
        (["--routes", "nats-route://a:6222"], "go together"),
        (["--cluster-name", "portal", "--routes", "nats-route://a"], "route 1 is not nats-route://HOST:PORT"),
        (["--cluster-name", "portal", "--routes", "nats-route://a:6222,,"], "every server's route URL"),
        (["--cluster-name", "portal", "--routes", "nats-route://u:pw@a:6222"], "carries credentials"),
        (["--cluster-name", "por tal", "--routes", "nats-route://a:6222"], "without spaces"),
    ],
)
def test_nats_config_refuses_a_bad_cluster_option_and_writes_nothing(tmp_path: Path, args: list, said: str) -> None:
    out = tmp_path / "conf"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    refused = subprocess.run(
        [PORTAL, "nats-config", "--out", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    assert not out.exists()


def test_cluster_options_parse_routes() -> None:
    options = ClusterOptions.parse(name="p", port=6222, routes="nats-route://a:6222, nats://b:6222", host="0.0.0.0")
    assert options.routes == ("nats-route://a:6222", "nats://b:6222")
    with pytest.raises(ClusterOptionInvalid):
        ClusterOptions.parse(name="p", port=0, routes="nats-route://a:6222", host="0.0.0.0")


# -- a real cluster ----------------------------------------------------------------------------------


def _port(url: str | None) -> int | None:
    return None if url is None else int(url.rsplit(":", 1)[1])


async def test_a_part_the_gateway_and_the_portal_command_connect_to_whichever_server_answers_and_move(
    tmp_path: Path,
) -> None:
    servers = natsauth.authed_cluster(tmp_path / "nats")
    by_port = {s.port: s for s in servers}
    url = natsauth.cluster_url(servers)
    try:
        await eventually(lambda: natsauth.jetstream_ready(servers), timeout=30, message="the cluster formed")
        # The first server listed is away when everything starts: the others are tried.
        servers[0].stop(kill=True)
        settings = overview_app.Settings(
            nats_url=url, data_dir=tmp_path / "overview", stream_replicas=3, stream_max_bytes=64 * 1024 * 1024
        )
        await asyncio.to_thread(migrate, overview_app, settings)
        runtime = overview_app.build(settings)
        gateway_settings = GatewaySettings(nats_url=url, data_dir=tmp_path / "gw")
        async with runtime.running(), running_gateway(gateway_settings) as gw:

            async def overview_answers() -> bool:
                r = await gw.http.get("/ready")
                return r.json().get("services", {}).get("overview") == "ok"

            await eventually(overview_answers, timeout=30, message="the gateway hears overview")
            env = {k: v for k, v in os.environ.items() if k != "PORTAL_DATA_DIR"}
            env["PORTAL_NATS_URL"] = url
            listed = await asyncio.to_thread(
                subprocess.run,
                [PORTAL, "dead-letters", "list"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert listed.returncode == 0 and "no dead letters" in listed.stdout, listed.stderr

            # Back with the cluster, then the servers the part and the gateway are on go.
            servers[0].start()
            await eventually(lambda: natsauth.jetstream_ready(servers), timeout=30, message="n1 rejoined")
            part_on = _port(runtime.broker.connection.connected_url.netloc)
            gateway_on = _port(gw.app.state["nats"].connected_url.netloc)
            gone = {part_on, gateway_on}
            for port in gone:
                by_port[port].stop(kill=True)

            async def moved() -> bool:
                part_now = runtime.broker.connection.connected_url
                gateway_now = gw.app.state["nats"].connected_url
                return (
                    runtime.broker.connection.is_connected
                    and gw.nats_connected
                    and _port(part_now.netloc) not in gone
                    and _port(gateway_now.netloc) not in gone
                    and await overview_answers()
                )

            await eventually(moved, timeout=30, interval=0.2, message="the part and the gateway on another server")

        # Every server away: the command says so, each server's password redacted.
        for s in servers:
            s.stop(kill=True)
        env["PORTAL_NATS_URL"] = ",".join(f"nats://op:hunter2@127.0.0.1:{s.port}" for s in servers)
        away = await asyncio.to_thread(
            subprocess.run,
            [PORTAL, "dead-letters", "list"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert away.returncode == 2, away.stdout + away.stderr
        assert f"nats://op:***@127.0.0.1:{servers[2].port}" in away.stderr and "hunter2" not in away.stderr
    finally:
        for s in servers:
            s.stop(kill=True)
