"""Peer gateways for bench/run.py's `--peer`: installed into their own venv under
`bench/.peers/` (never into the gateway's), configured to forward to the same nginx upstream.

LiteLLM: the proxy (`litellm[proxy]`, pinned below) with one uvicorn worker, one model whose
`api_base` is an nginx answering the canned JSON completion (LiteLLM asks its upstream for a
non-streamed answer, so it is given one), no master key (its local-development switch), its
cost map read from the package rather than fetched.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / ".peers"
LITELLM_VERSION = "1.106.2"


def litellm_executable() -> Path:
    """The `litellm` CLI of bench/.peers/litellm, installed with uv on first use."""
    venv = PEERS / "litellm"
    exe = venv / "bin" / "litellm"
    version_file = venv / ".version"
    if exe.exists() and version_file.exists() and version_file.read_text() == LITELLM_VERSION:
        return exe
    uv = ROOT / ".tools" / "bin" / "uv"
    subprocess.run([str(uv), "venv", "-q", "--clear", "--python", "python3", str(venv)],
                   check=True)  # fmt: skip
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    f"litellm[proxy]=={LITELLM_VERSION}"], check=True)  # fmt: skip
    version_file.write_text(LITELLM_VERSION)
    return exe


def start_litellm(workdir: Path, port: int, upstream_url: str) -> subprocess.Popen[bytes]:
    """LiteLLM's proxy on 127.0.0.1:`port` forwarding model `bench-upstream` to `upstream_url`."""
    params = {"model": "openai/bench-upstream", "api_base": upstream_url, "api_key": "sk-bench"}
    config = {
        "model_list": [
            {
                "model_name": "bench-upstream",
                "litellm_params": params,
            }
        ],
        "litellm_settings": {"telemetry": False},
    }
    path = workdir / "litellm.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    env = {
        **os.environ,
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
    }
    cmd = [str(litellm_executable()), "--config", str(path), "--host", "127.0.0.1",
           "--port", str(port), "--num_workers", "1"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
