"""Configuration: validated YAML, FR_ overrides, errors that name key and value, secrets redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.config import ConfigError, effective_config, load_settings, redact_url


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


MINIMAL = """
models:
  m:
    deployments: [{provider: openai, base_url: "http://127.0.0.1:9/v1", model: up, api_key_env: UP_KEY}]
sessions: {default_selector: m}
"""


def test_default_config_is_valid_and_runs_offline() -> None:
    """The shipped config validates and uses only simulated, local models."""
    settings = load_settings(environ={})
    assert {d.provider for _, _, d in settings.deployments()} == {"simulated"}
    assert settings.sessions.default_selector == "default"


def test_env_overrides_scalars_by_section_and_field(tmp_path: Path) -> None:
    """FR_<SECTION>_<FIELD> overrides a scalar, typed by the schema (FR_LOG_JSON uses the YAML name)."""
    env = {
        "FR_API_PORT": "9001",
        "FR_REDIS_URL": "redis://r:1/2",
        "FR_LOG_JSON": "1",
        "FR_SESSIONS_TTL_SECONDS": "60",
    }
    settings = load_settings(_write(tmp_path, MINIMAL), env)
    assert settings.api.port == 9001 and settings.redis.url == "redis://r:1/2"
    assert settings.log.json_lines is True and settings.sessions.ttl_seconds == 60


def test_fr_config_picks_the_file(tmp_path: Path) -> None:
    """FR_CONFIG names the file when no path is given."""
    settings = load_settings(environ={"FR_CONFIG": str(_write(tmp_path, MINIMAL))})
    assert list(settings.models) == ["m"]


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (MINIMAL, {"FR_API_PORT": "eighty"}, "api.port = 'eighty' (from FR_API_PORT)"),
        (MINIMAL + "api: {port: 70000}\n", {}, "api.port = 70000"),
        (MINIMAL.replace("openai", "openia"), {}, "models.m.deployments.0.provider = 'openia'"),
        (MINIMAL + "chains: {c: [m, nope]}\n", {}, "'nope' is neither a model nor a tier"),
        (
            MINIMAL.replace("default_selector: m", "default_selector: zz"),
            {},
            "'zz' is neither a model nor a chain",
        ),
        (MINIMAL + "api: {prot: 1}\n", {}, "api.prot = 1: Extra inputs are not permitted"),
        ("models: [1, 2]", {}, "models"),
        ("a: [unclosed", {}, "is not valid YAML"),
    ],
)
def test_errors_name_the_key_and_value(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    """Every invalid setting is reported with its dotted key and the bad value."""
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, text), env)
    assert expected in str(caught.value)


def test_simulated_deployments_must_be_local(tmp_path: Path) -> None:
    """A simulated deployment on a remote host is refused (we start it ourselves)."""
    text = MINIMAL.replace("provider: openai", "provider: simulated").replace(
        "127.0.0.1", "10.0.0.1"
    )
    with pytest.raises(ConfigError, match="loopback host"):
        load_settings(_write(tmp_path, text), {})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml", {})


def test_effective_config_redacts_secrets(tmp_path: Path) -> None:
    """check-config shows whether a key is set, never its value, and hides URL passwords."""
    env = {"UP_KEY": "sk-secret-value", "FR_REDIS_URL": "redis://user:hunter2@db:6379/0"}
    shown = effective_config(load_settings(_write(tmp_path, MINIMAL), env), env)
    assert shown["models"]["m"]["deployments"][0]["api_key_env"] == "UP_KEY (set)"
    assert shown["redis"]["url"] == "redis://user:***@db:6379/0"
    assert "sk-secret-value" not in str(shown) and "hunter2" not in str(shown)
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
