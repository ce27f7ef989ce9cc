"""`main.py redis`: version and round trip when reachable, exit 1 with a reason when not."""

from __future__ import annotations

import subprocess
import sys

from services.platform.redis_connection import free_port
from services.platform.redis_health import check_redis
from tests.helpers import MAIN


def test_check_reports_version_and_rtt(redis_url: str) -> None:
    result = check_redis(redis_url)
    assert result.ok and result.version and result.version[0].isdigit()
    assert result.rtt_ms is not None and 0 < result.rtt_ms < 1000


def test_unreachable_redis_is_reported_not_raised() -> None:
    result = check_redis(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    assert not result.ok and "Connection" in (result.error or "")


def test_cli_exit_codes(redis_url: str) -> None:
    """The once-mode command exits 0 with the version, or 1 naming the (redacted) URL."""
    ok = subprocess.run([sys.executable, MAIN, "redis"], env={"FR_REDIS_URL": redis_url, "PATH": ""},
                        capture_output=True, text=True, timeout=30)  # fmt: skip
    assert ok.returncode == 0 and "Redis OK" in ok.stdout and "version" in ok.stdout
    url = f"redis://u:pw-secret@127.0.0.1:{free_port()}/0"
    bad = subprocess.run([sys.executable, MAIN, "redis"], env={"FR_REDIS_URL": url, "PATH": ""},
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 1 and "UNREACHABLE" in bad.stdout and "pw-secret" not in bad.stdout
