"""docker-compose.yml and its config stay consistent with the code (no engine is needed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from services.config import ROOT, load_settings

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


@pytest.mark.skipif(
    not (shutil.which("docker-compose") or shutil.which("docker")), reason="no docker client"
)
def test_docker_compose_accepts_the_file() -> None:
    """`docker-compose config` (v1) or `docker compose config` (v2) parses and resolves it."""
    argv = (
        ["docker-compose", "config", "-q"]
        if shutil.which("docker-compose")
        else ["docker", "compose", "config", "-q"]
    )
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "unknown shorthand flag" in result.stderr:
        pytest.skip("docker client has no compose plugin")
    assert result.returncode == 0, result.stderr


def test_image_carries_what_the_api_reads_at_run_time() -> None:
    """The Dockerfile copies the migrations (run at start) and gives the ledger a writable home,
    which compose keeps in a volume."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    for needed in ("COPY services", "COPY config", "COPY migrations", "/app/.data"):
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
