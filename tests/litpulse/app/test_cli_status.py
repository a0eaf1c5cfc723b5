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


def test_status_says_what_the_digest_has_not_delivered(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data engineer sees in ``litpulse status`` what waits on each configured channel —
    how many matches, how many the receiver refused, how old the oldest is — and that
    nothing waits once the receiver takes them (a digest never fails its task on it)."""
    from litpulse.pipeline import digest as digest_mod
    from litpulse.pipeline.saved_searches import add_search
    from tests.litpulse.pipeline.test_digest import CRISPR, THRESHOLD, _Hook
    from tests.review.test_session27_keys_review import _pending_nights

    monkeypatch.setattr(digest_mod, "MESSAGE_MATCHES", 1)
    monkeypatch.setenv("LITPULSE_HOME", str(settings.home))
    monkeypatch.setenv("LITPULSE_DATABASE_URL", settings.effective_database_url)
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["deliveries"] == {}
    assert main(["status"]) == 0
    assert "no channel configured" in capsys.readouterr().out

    hook = _Hook()
    try:
        s = settings.replace(digest_webhook_url=hook.url)
        monkeypatch.setenv("LITPULSE_DIGEST_WEBHOOK_URL", hook.url)
        search = add_search(s, name="crispr", query=CRISPR, min_score=THRESHOLD, owner="cli:x")
        pmids = sorted(_pending_nights(s, search, nights=2, per_night=2))
        hook.poison = {pmids[0]}  # refused for its content; the others are taken
        hook.status = 200
        digest_mod._deliver(s, db.connect(s))
        assert main(["status", "--json"]) == 0
        waiting = json.loads(capsys.readouterr().out)["deliveries"]
        assert waiting["webhook"]["pending"] == 1 and waiting["webhook"]["refused"] == 1
        assert waiting["webhook"]["searches"] == 1 and waiting["webhook"]["oldest_found_at"]
        assert main(["status"]) == 0
        assert "webhook 1 pending, 1 refused by the receiver" in capsys.readouterr().out
        hook.poison = set()
        digest_mod._deliver(s, db.connect(s))
        assert main(["status", "--json"]) == 0
        done = json.loads(capsys.readouterr().out)["deliveries"]["webhook"]
        assert done == {"pending": 0, "refused": 0, "searches": 0, "oldest_found_at": None}
    finally:
        hook.close()
