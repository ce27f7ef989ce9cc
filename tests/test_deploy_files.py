"""docker-compose.yml and its config stay consistent with the code (no engine is needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.config import ROOT, load_settings
from services.platform.redis_topology import parse_redis_url

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_config_is_valid_and_names_real_deployments() -> None:
    """Each simulated service runs a deployment of config/compose.yaml, on the port its URL names."""
    settings = load_settings(ROOT / "config" / "compose.yaml", {})
    deployments = {name: d for _, name, d in settings.deployments()}
    for service in ("large-model", "small-model"):
        command = COMPOSE["services"][service]["command"]
        deployment = deployments[command[command.index("--deployment") + 1]]
        assert deployment.base_url == f"http://{service}:{deployment.port}/v1"
        assert f":{deployment.port}/health" in " ".join(
            COMPOSE["services"][service]["healthcheck"]["test"]
        )


def test_api_service_points_at_compose_redis_and_config() -> None:
    env = COMPOSE["x-gateway"]["environment"]
    assert env["FR_REDIS_URL"] == "redis://redis:6379/0"
    assert env["FR_CONFIG"] == "/app/config/compose.yaml"
    assert COMPOSE["services"]["api"]["ports"] == ["8000:8000"]


def compose_argv() -> list[str] | None:
    """`docker-compose` (v1) or `docker compose` (v2), whichever works without an engine."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:  # fmt: skip
        return ["docker", "compose"]
    return None


@pytest.mark.skipif(compose_argv() is None, reason="no docker-compose and no compose plugin")
def test_docker_compose_accepts_the_file_and_insists_on_keys() -> None:
    """`docker compose config` parses and resolves it with keys exported, and refuses without."""
    argv = [*(compose_argv() or []), "config", "-q"]
    keys = {"FR_API_KEYS": "k1,k2", "FR_ADMIN_KEY": "admin"}
    env = {k: v for k, v in os.environ.items() if k not in keys}
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**env, **keys})  # fmt: skip
    assert result.returncode == 0, result.stderr
    refused = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode != 0 and "FR_API_KEYS" in refused.stderr


def test_compose_runs_every_process_with_room_to_drain() -> None:
    services = COMPOSE["services"]
    assert services["capacity"]["command"][-1] == "capacity"
    assert services["health-checker"]["command"][-2:] == ["redis", "--watch"]
    settings = load_settings(ROOT / "config" / "compose.yaml", {})
    assert settings.capacity.enabled and settings.capacity.large.scaler.base_url.startswith(
        "http://capacity:"
    ), "replicas are reached through the capacity service's name"
    grace = int(services["api"]["stop_grace_period"].rstrip("s"))
    assert grace >= settings.api.drain_delay_seconds + settings.api.shutdown_grace_seconds


def test_image_carries_what_the_api_reads_at_run_time() -> None:
    """The Dockerfile copies the package (its migrations, run at start, and default config
    inside) and the example configs, and gives the ledger a writable home,
    which compose keeps in a volume."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    for needed in ("COPY services", "COPY config", "/app/.data"):  # migrations: in services/
        assert needed in dockerfile, needed
    assert "data:/app/.data" in " ".join(COMPOSE["x-gateway"]["volumes"])
    assert "data" in COMPOSE["volumes"]


def test_compose_runs_a_ledger_writer_when_the_api_does_not_write() -> None:
    """With `ledger.writer: external` someone must write: a service runs `main.py ledger` on the
    same data volume as the API (the WAL directory is how they meet)."""
    assert load_settings(ROOT / "config" / "compose.yaml", COMPOSE["x-gateway"]["environment"]
                         ).ledger.writer == "external"  # fmt: skip
    writer = COMPOSE["services"]["ledger-writer"]
    assert writer["command"][-1] == "ledger"
    assert "data:/app/.data" in " ".join(COMPOSE["x-gateway"]["volumes"])


K8S = ROOT / "deploy" / "kubernetes"


def k8s_documents() -> list[dict[str, Any]]:
    return [d for path in sorted(K8S.glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d]  # fmt: skip


def k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_kubernetes_manifests_match_the_code(tmp_path: Path) -> None:
    """They parse; the API's probes hit real endpoints on the port the config listens on; the
    grace period covers preStop, the drain delay and the shutdown grace; the embedded config is
    valid and its planner scales Deployments that exist, with the permissions to do it."""
    from services.app import create_app

    config_text = k8s("ConfigMap", "fallback-routing-config")["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(config_text)
    settings = load_settings(tmp_path / "config.yaml", {})
    # Every route is in the OpenAPI document (app.routes nests included routers).
    routes = set(create_app(settings, environ={}).openapi()["paths"])
    api = k8s("Deployment", "fallback-routing-api")["spec"]["template"]["spec"]
    container = api["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == settings.api.port and settings.api.host == "0.0.0.0"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes and get["port"] == "http", probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert api["terminationGracePeriodSeconds"] >= (
        pre_stop + settings.api.drain_delay_seconds + settings.api.shutdown_grace_seconds
    )
    service = k8s("Service", "fallback-routing-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    secret_keys = set(k8s("Secret", "fallback-routing")["stringData"])
    assert {"FR_API_KEYS", "FR_ADMIN_KEY", "FR_DATABASE_URL"} <= secret_keys
    assert settings.ledger.writer == "inline", "pods share no disk with an external writer"
    for role in ("large", "small"):
        scaler = getattr(settings.capacity, role).scaler
        assert scaler.kind == "kubernetes"
        burst = k8s("Deployment", scaler.deployment or "")
        assert burst["spec"]["replicas"] == 0
        assert k8s("Service", scaler.deployment or "")  # base_url names it
        assert scaler.base_url.startswith(f"http://{scaler.deployment}:")
    rules = k8s("Role", "fallback-routing-capacity")["rules"]
    assert {
        "resources": ["deployments/scale"],
        "verbs": ["get", "patch"],
        "apiGroups": ["apps"],
    } in rules
    capacity = k8s("Deployment", "fallback-routing-capacity")["spec"]["template"]["spec"]
    assert capacity["serviceAccountName"] == "fallback-routing-capacity"


def test_grafana_dashboard_uses_only_metrics_the_gateway_exports(gateway: Any) -> None:
    """Every metric an expression names is in a live /metrics page (histograms by their
    _bucket series, counters by _total)."""
    from tests.helpers import http

    exported = {line.split(" ")[2] for line in http("GET", gateway.base + "/metrics")[2].decode()
                .splitlines() if line.startswith("# TYPE")}  # fmt: skip
    series = exported | {f"{n}_bucket" for n in exported} | {f"{n}_total" for n in exported}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "fallback-routing.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b([a-z_]+_[a-z_]+)\b(?=[\[{)\s]|$)", e)}
    used -= {"histogram_quantile", "sum", "max", "rate", "by", "le"}
    metric_like = {n for n in used if n.startswith(("llm_", "circuit_", "fallback_", "capacity_",
                                                     "gateway_"))}  # fmt: skip
    assert len(metric_like) >= 12
    missing = metric_like - series
    assert not missing, missing


SCALEOUT = ROOT / "deploy" / "scaleout"


def scaleout_compose() -> dict[str, Any]:
    return dict(yaml.safe_load((SCALEOUT / "docker-compose.yml").read_text()))


def test_scaleout_compose_has_three_replicas_behind_one_address_on_sentinel() -> None:
    """Three API replicas, each named in nginx's upstream; the gateway's Redis URL names the
    three sentinels and the service they monitor; one ledger writer, two planners."""
    services = scaleout_compose()["services"]
    apis = sorted(name for name, s in services.items() if s.get("command", [])[-3:-2] == ["api"])
    assert apis == ["api-1", "api-2", "api-3"]
    nginx = (SCALEOUT / "nginx.conf").read_text()
    assert sorted(re.findall(r"server (api-\d):8000", nginx)) == apis
    url = services["api-1"]["environment"]["FR_REDIS_URL"]
    target = parse_redis_url(url)
    sentinels = sorted(n for n in services if n.startswith("sentinel-"))
    assert target.mode == "sentinel" and sorted(h for h, _ in target.nodes) == sentinels
    monitor = " ".join(services["sentinel-1"]["command"])
    assert f"sentinel monitor {target.service} redis-primary 6379 2" in monitor
    assert "--replicaof" in services["redis-replica"]["command"]
    assert [n for n, s in services.items() if s.get("command", [])[-1:] == ["ledger"]] == [
        "ledger-writer"
    ]
    assert services["api-1"]["environment"]["FR_LEDGER_WRITER"] == "external"
    planners = [n for n, s in services.items() if s.get("command", [])[-1:] == ["capacity"]]
    assert len(planners) == 2


def test_scaleout_nginx_config_is_valid(tmp_path: Path) -> None:
    """nginx accepts the load balancer's config (the replicas' names made local for the test)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("no nginx binary")
    conf = (SCALEOUT / "nginx.conf").read_text().replace("api-1", "127.0.0.1")
    conf = conf.replace("api-2", "127.0.0.2").replace("api-3", "127.0.0.3")
    conf = f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n" + conf
    (tmp_path / "nginx.conf").write_text(conf)
    result = subprocess.run([nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-e",
                             str(tmp_path / "error.log")], capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(compose_argv() is None, reason="no docker-compose and no compose plugin")
def test_docker_compose_accepts_the_scaleout_file() -> None:
    env = {**os.environ, "FR_API_KEYS": "k1", "FR_ADMIN_KEY": "admin", "POSTGRES_PASSWORD": "pw"}
    result = subprocess.run([*(compose_argv() or []), "-f", str(SCALEOUT / "docker-compose.yml"),
                             "config", "-q"], capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_kubernetes_sentinel_set_matches_the_url_in_its_header() -> None:
    """Three sentinels monitoring `fr` on redis-node-0; the URL the header gives names them."""
    text = (K8S / "redis-sentinel.yaml").read_text()
    url = re.search(r"FR_REDIS_URL=(\S+),\n# (\S+),(\S+)\n", text)
    assert url is not None
    target = parse_redis_url(f"{url.group(1)},{url.group(2)},{url.group(3)}")
    sentinel = k8s("StatefulSet", "redis-sentinel")
    assert sentinel["spec"]["replicas"] == 3 == len(target.nodes)
    assert all(h == f"redis-sentinel-{n}.redis-sentinel" for n, (h, _) in enumerate(target.nodes))
    assert f"sentinel monitor {target.service} redis-node-0.redis-node 6379 2" in text
    assert k8s("StatefulSet", "redis-node")["spec"]["replicas"] == 2
    assert k8s("Deployment", "fallback-routing-api")["spec"]["replicas"] == 3
