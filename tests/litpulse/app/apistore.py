"""Helpers of the API tests: a private copy of the real store, and settings without limits.

:func:`clone_store` copies the session's real corpus (SQLite database and index files,
see :func:`tests.ranking.corpus.real_corpus`) into a new home, so a test may add tokens,
feedback or index versions without changing what the other tests see, and without
embedding the corpus again. The shared real corpus itself is never written to.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import update

from litpulse.core import db
from litpulse.core.schema import api_tokens, feedback, feedback_log, index_versions
from litpulse.core.settings import Settings

#: Rate and body limits high enough that a test about something else never meets them.
UNLIMITED: dict[str, Any] = {
    "api_rate_per_second": 10000.0,
    "api_rate_burst": 100000,
    "api_feedback_per_hour": 100000,
}


def _sqlite_file(settings: Settings) -> Path:
    return Path(settings.effective_database_url.removeprefix("sqlite:///"))


def clone_store(real: Settings, home: Path, **changes: Any) -> Settings:
    """Settings of a copy of ``real`` (database and published index files) in ``home``,
    without any API token or feedback."""
    home.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(_sqlite_file(real))
    dst = sqlite3.connect(home / "litpulse.db")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    old = str(real.home.resolve())
    new = str(home.resolve())
    shutil.copytree(real.home / "indexes", home / "indexes")
    settings = Settings.from_env({}, home=home, **changes)
    with db.connect(settings).begin() as conn:
        for table in (api_tokens, feedback, feedback_log):
            conn.execute(table.delete())
        for row in conn.execute(index_versions.select()).all():
            conn.execute(
                update(index_versions)
                .where(index_versions.c.id == row.id)
                .values(path=row.path.replace(old, new, 1))
            )
    return settings


def unlimited_store(tmp_path: Path, tmp_path_factory: Any, monkeypatch: Any) -> Settings:
    """A copy of the real corpus's store in ``tmp_path`` without API limits
    (:data:`UNLIMITED`), its home and limits set in the environment too (for the CLI)."""
    from tests.ranking.corpus import real_corpus

    s = clone_store(real_corpus(tmp_path_factory), tmp_path / "home", **UNLIMITED)
    monkeypatch.setenv("LITPULSE_HOME", str(s.home))
    for key, value in UNLIMITED.items():
        monkeypatch.setenv(f"LITPULSE_{key.upper()}", str(value))
    return s
