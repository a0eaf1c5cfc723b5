"""`litpulse status --json` names the published index version."""

from __future__ import annotations

import json

import pytest

from litpulse.app.cli import main
from litpulse.core import db
from litpulse.core.settings import Settings
from ranking import refresh
from tests.ranking.test_index import add_articles


def test_status_shows_the_published_index_version(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    assert main(["status", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["index"]["version"] is None and before["index"]["size"] == 0

    add_articles(db.connect(sqlite_settings), [11, 12, 13])
    report = refresh.refresh_index(sqlite_settings)
    assert main(["status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["index"]["version"] == report.id
    assert st["index"]["size"] == 3 and st["index"]["model_version"] == "base"
    assert st["index"]["pending_embeddings"] == 0
    assert main(["status"]) == 0
    assert f"{report.id} (model base, 3 vectors" in capsys.readouterr().out
