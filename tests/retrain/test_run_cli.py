"""``retrain`` without training (dry run, skips) and the CLI commands."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import Engine

from bench.drift import insert_batch
from litpulse.app.cli import main
from litpulse.core.db import acquire_lease
from litpulse.core.settings import Settings
from litpulse.core.states import RetrainOutcome
from litpulse.pipeline.planning import reindex_now
from retrain.run import LEASE, RetrainBusyError, retrain

T0 = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)


def _corpus(engine: Engine) -> None:
    insert_batch(engine, start_pmid=1000, n=80, start=dt.date(2024, 1, 1), days=90,
                 ingested=T0, new_share_from=0.2, new_share_to=0.8, seed=1)


def test_dry_run_counts_pairs(settings: Settings, engine: Engine) -> None:
    _corpus(engine)
    report = retrain(settings, reindex=reindex_now, dry_run=True)
    assert report.status == "dry_run"
    assert report.status is RetrainOutcome.DRY_RUN
    assert type(report.to_dict()["status"]) is str
    assert report.pairs["counts"]["title_abstract"] > 0
    assert report.pairs["new_articles"] == 80
    assert report.version_id is None
    assert any("pairs:" in line for line in report.summary())
    json.dumps(report.to_dict(), default=str)


def test_skips(settings: Settings, engine: Engine) -> None:
    report = retrain(settings, reindex=reindex_now)
    assert report.status == "skipped"
    _corpus(engine)
    few = retrain(settings, reindex=reindex_now, min_new_articles=settings.retrain_min_new_articles)
    assert few.status == "skipped" and "fewer than 500" in few.reasons[0]
    lease = acquire_lease(engine, LEASE)
    assert lease is not None
    try:  # busy: refused, naming the holder (the CLI exits 75; the nightly skips it)
        with pytest.raises(RetrainBusyError, match=lease.holder):
            retrain(settings, reindex=reindex_now, dry_run=True)
    finally:
        lease.release()
    assert {report.status, few.status} == {RetrainOutcome.SKIPPED}
    assert all(type(r.status) is RetrainOutcome for r in (report, few))


def test_cli(sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> None:
    from litpulse.core import db

    monkeypatch.setenv("LITPULSE_HOME", str(sqlite_settings.home))
    _corpus(db.connect(sqlite_settings))
    assert main(["models", "list"]) == 0
    assert "base model is in use" in capsys.readouterr().out
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["feedback", "--query", "gout", "--pmid", "1001", "--relevant",
                 "--user", "ann", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == 1
    assert main(["feedback", "--query", "gout", "--pmid", "5", "--not-relevant",
                 "--user", "ann"]) == 1
    assert main(["retrain", "--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "dry_run" and out["pairs"]["counts"]["title_abstract"] > 0
    assert main(["models", "show", "m-missing"]) == 1
    assert main(["models", "rollback"]) == 1
