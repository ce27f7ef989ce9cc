"""The gateway installs like a package: `pip install .` into a fresh venv gives the
`fallback-routing` command, whose subcommands are main.py's, and whose embedded defaults (the
config, the migrations, the console's files) travel inside the package, so that
`fallback-routing all` serves from any directory; `uv tool install .` gives the same command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from services.platform.redis_connection import free_port
from tests.helpers import (
    MAIN,
    ROOT,
    default_config_on_free_ports,
    http,
    interrupt,
    readme_blocks,
    wait_until,
)

UV = ROOT / ".tools" / "bin" / "uv"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv in which the README's install block ran as written (`pip install .` in the
    checkout, then `fallback-routing check-config`); its bin directory."""
    home = tmp_path_factory.mktemp("pip-install")
    venv.create(home / "venv", with_pip=True)
    bin_dir = home / "venv" / "bin"
    (block,) = [text for language, text in readme_blocks()
                if language == "bash" and "pip install ." in text]  # fmt: skip
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_QUIET": "1"}  # fmt: skip
    env.pop("VIRTUAL_ENV", None)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert ": valid" in out.stdout, "the block's check-config ran from the fresh venv"
    assert (bin_dir / "fallback-routing").exists()
    return bin_dir


@pytest.mark.slow
def test_pip_install_gives_the_command_with_main_pys_subcommands(
    installed: Path, tmp_path: Path
) -> None:
    def commands(argv: list[str]) -> set[str]:
        out = subprocess.run([*argv, "--help"], capture_output=True, text=True, check=True,
                             cwd=tmp_path, timeout=60, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
        section = out.stdout.split("Commands")[1]
        return {line.split()[1] for line in section.splitlines() if line.startswith("│ ")}

    installed_commands = commands([str(installed / "fallback-routing")])
    assert installed_commands == commands([sys.executable, MAIN])
    assert {"all", "api", "capacity", "redis", "ledger", "simulate", "check-config"} <= (
        installed_commands
    )
    out = subprocess.run([installed / "fallback-routing", "check-config"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=60, check=True)  # fmt: skip
    assert "site-packages/services/config/default.yaml: valid" in out.stdout


@pytest.mark.slow
def test_the_installed_command_serves_from_any_directory(installed: Path, tmp_path: Path) -> None:
    """`fallback-routing all` in an empty directory, from the installed package alone: the
    embedded config, Redis, the simulated models, the ledger's migrations, the console."""
    config, port = default_config_on_free_ports(tmp_path)
    env = {**os.environ, "FR_CONFIG": str(config),
           "FR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # fmt: skip
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen([installed / "fallback-routing", "all"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", base + "/readyz", timeout=1)[0] == 200, timeout=60,
                   what="readyz")  # fmt: skip
        turn = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
        wait_until(lambda: http("POST", base + "/v1/chat/completions", turn)[0] == 200,
                   what="an answer from the simulated models")  # fmt: skip
        status, _, page = http("GET", base + "/ui")
        assert status == 200 and b"Fallback Routing" in page
        assert json.loads(http("GET", base + "/health")[2])["db_ok"] is True
        assert (tmp_path / "logs" / "api_server.log").exists()
        assert (tmp_path / ".data").is_dir(), "the ledger lives where the command was run"
    finally:
        assert interrupt(proc) == 0


@pytest.mark.slow
@pytest.mark.skipif(not UV.exists(), reason="no uv in .tools (scripts/bootstrap installs it)")
def test_uv_tool_install_and_the_wheel(tmp_path: Path) -> None:
    env = {**os.environ, "UV_TOOL_DIR": str(tmp_path / "tools"),
           "UV_TOOL_BIN_DIR": str(tmp_path / "bin"), "UV_PYTHON_DOWNLOADS": "never"}  # fmt: skip
    subprocess.run([UV, "tool", "install", "--python", sys.executable, str(ROOT)], env=env,
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    out = subprocess.run([tmp_path / "bin" / "fallback-routing", "check-config"], cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    assert ": valid" in out.stdout
    subprocess.run([UV, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT)],
                   env=env, check=True, capture_output=True, timeout=600)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("fallback_routing-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "services/config/default.yaml",
        "services/ledger/migrations/env.py",
        "services/console/static/vendor/uPlot.iife.min.js",
        "services/cli.py",
    ):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    shutil.rmtree(tmp_path / "tools", ignore_errors=True)
