"""Schema upgrades: alembic runs only when the schema is behind, so API processes of a deployment
whose database is current never import it (about 10 MB of RSS each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from services.ledger.db import MIGRATIONS_DIR, head_revision

MIGRATE_AND_REPORT = """
import asyncio, sys
from pathlib import Path
from services.ledger.db import make_engine, migrate

async def main() -> None:
    engine = make_engine(sys.argv[1])
    await migrate(engine, Path(sys.argv[2]))
    await engine.dispose()

asyncio.run(main())
print("alembic" in sys.modules)
"""


def test_head_revision_is_alembics_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert head_revision() == ScriptDirectory.from_config(config).get_current_head()


def migrate_in_fresh_process(url: str, lock_dir: Path) -> bool:
    """Migrate in a new interpreter; answer whether alembic got imported."""
    out = subprocess.run([sys.executable, "-c", MIGRATE_AND_REPORT, url, str(lock_dir)],
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return out.stdout.strip().splitlines()[-1] == "True"


def test_alembic_is_imported_only_when_the_schema_is_behind(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    assert migrate_in_fresh_process(url, tmp_path) is True  # empty database: upgrade
    assert migrate_in_fresh_process(url, tmp_path) is False  # at head: no alembic


def test_the_api_app_does_not_import_alembic() -> None:
    code = "import sys, services.app; print('alembic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.strip() == "False"
