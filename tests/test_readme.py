"""The README's code blocks, run as written (the gateway on a free port instead of 8000, and
the shipped config's simulated models on free ports, so that a run never collides with a
gateway already on this machine):

    scripts/run                  starts everything (main.py all); the test waits for /readyz
    the curl block               bash, as written: a session, then a chat turn on it
    the OpenAI SDK block         python, as written: a completion and a stream
    pip install . / check-config tests/test_packaging.py runs it in a fresh venv
    scripts/check                is this suite (CI runs it through .ci/run; not run from here)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.platform.redis_connection import free_port
from tests.helpers import (
    ROOT,
    default_config_on_free_ports,
    http,
    interrupt,
    isolated_ledger_env,
    readme_blocks,
    wait_until,
)


def blocks_with(needle: str) -> list[tuple[str, str]]:
    return [(language, text) for language, text in readme_blocks() if needle in text]


def test_every_runnable_block_is_covered() -> None:
    """Each bash and python block is one of those this module (or test_packaging) runs: a new
    block fails here until a test runs it."""
    runnable = [text for language, text in readme_blocks() if language in ("bash", "python")]
    covered = [text for needle in ("scripts/run ", "initiate_call", "from openai", "pip install .")
               for _, text in blocks_with(needle)]  # fmt: skip
    assert sorted(runnable) == sorted(covered)
    assert "scripts/check" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_the_readme_runs_as_written(tmp_path: Path) -> None:
    config, port = default_config_on_free_ports(tmp_path)
    env = {**os.environ, "FR_CONFIG": str(config), **isolated_ledger_env(tmp_path),
           "FR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # fmt: skip

    ((_, setup),) = blocks_with("scripts/run ")
    run_line = setup.splitlines()[0].split("#")[0].strip()
    assert run_line == "scripts/run"
    proc = subprocess.Popen([str(ROOT / run_line)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", base + "/readyz", timeout=1)[0] == 200, timeout=120,
                   what="scripts/run serving")  # fmt: skip
        ((_, curls),) = blocks_with("initiate_call")
        out = subprocess.run(["bash", "-euo", "pipefail", "-c",
                              curls.replace("localhost:8000", f"127.0.0.1:{port}")],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        session, completion = (json.loads(line) for line in out.stdout.replace("}{", "}\n{")
                               .splitlines() if line.strip())  # fmt: skip
        assert session == {"session_id": "readme-demo", "model": "default", "expires_in": 3600}
        assert completion["session_id"] == "readme-demo"
        assert completion["choices"][0]["message"]["content"]

        ((_, sdk),) = blocks_with("from openai")
        out = subprocess.run([sys.executable, "-c",
                              sdk.replace("127.0.0.1:8000", f"127.0.0.1:{port}")],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        assert out.stdout.startswith("[small-model]"), out.stdout
    finally:
        assert interrupt(proc) == 0
