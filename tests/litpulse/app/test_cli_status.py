"""`litpulse status`: the published index version, what the digest has not delivered, the
nightly run's lease and the windows held from the watermark."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

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


def test_status_shows_the_nightly_lease_and_the_windows_held_from_the_watermark(
    env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``litpulse status`` names who holds the nightly run's lease, since when and until
    when unless renewed, and the E-utilities windows ingested but held from the watermark:
    not judged yet by their data-quality check, or withheld by a failed step; a window
    that passed its check is not listed, and the watermark moves past it."""
    from litpulse.pipeline.nightly import LEASE_NAME, check_window, ingest_eutils_window
    from litpulse.pipeline.planning import PENDING_CHECK, withhold_watermark
    from tests.emulator import running_emulator

    def status() -> dict[str, Any]:
        assert main(["status", "--json"]) == 0
        return dict(json.loads(capsys.readouterr().out))

    def text() -> str:
        assert main(["status"]) == 0
        return capsys.readouterr().out

    st = status()
    assert st["nightly"] is None and st["held_windows"] == [] and st["watermark"] is None
    assert re.search(r"^nightly +not running$", text(), re.M)

    engine = db.connect(env)
    before = db.utcnow()
    lease = db.acquire_lease(engine, LEASE_NAME, holder="otherhost:7:boot", heartbeat=False)
    assert lease is not None
    try:
        held = status()["nightly"]
        since, until = (dt.datetime.fromisoformat(held[k]) for k in ("since", "until"))
        assert held["holder"] == "otherhost:7:boot" and before <= since <= db.utcnow()
        assert until == since + dt.timedelta(seconds=db.LEASE_TTL_S)
        assert f"otherhost:7:boot since {held['since']}, until {held['until']}" in text()
    finally:
        lease.release()
    assert status()["nightly"] is None

    monday = dt.datetime(2024, 1, 8, tzinfo=dt.UTC)  # a Monday with a record
    window = (monday, monday + dt.timedelta(days=1))
    for emu in running_emulator():
        emu.add_article(1, edat=monday.date(), title="Statins and the gut")
        s = emu.configure(env)
        started = db.utcnow()
        counts = ingest_eutils_window(s, *window).to_dict()  # its check not run yet
        st = status()
        [pending] = st["held_windows"]
        assert pending["window_start"] == monday.isoformat()
        assert pending["window_end"] == window[1].isoformat()
        assert pending["why"] == PENDING_CHECK and pending["run"] == st["last_runs"][0]["id"]
        assert st["watermark"] == monday.isoformat()  # held at the window's start
        shown = text()
        assert f"{monday.isoformat()} .. {window[1].isoformat()}" in shown
        assert PENDING_CHECK in shown
        withhold_watermark(engine, window, started, "citations failed: TransientSourceError")
        [withheld] = status()["held_windows"]
        assert withheld["why"] == "withheld: citations failed: TransientSourceError"
        # the next night ingests and checks the window again: it passes, nothing is held
        counts = ingest_eutils_window(s, *window).to_dict()
        check_window(s, counts, window)
        st = status()
        assert st["held_windows"] == [] and st["watermark"] == window[1].isoformat()
        assert re.search(r"^held windows +none$", text(), re.M)
