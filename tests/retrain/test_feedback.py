"""Expert feedback: upsert per (query, pmid, user), validation, unknown articles."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, func, select

from bench.drift import insert_batch
from litpulse.core.errors import ConfigError, NotFoundError
from litpulse.core.schema import feedback
from litpulse.core.settings import Settings
from retrain.feedback import record_feedback


def test_upsert_and_validation(settings: Settings, engine: Engine) -> None:
    insert_batch(engine, start_pmid=10, n=3, start=dt.date(2024, 1, 1), days=3,
                 ingested=dt.datetime(2024, 1, 5, tzinfo=dt.UTC))
    a = record_feedback(settings, query="  gout   flares ", pmid=10, relevant=True, user="ann")
    b = record_feedback(settings, query="gout flares", pmid=10, relevant=False, user="ann")
    c = record_feedback(settings, query="gout flares", pmid=10, relevant=True, user="bob")
    assert a == b != c
    with engine.connect() as conn:
        rows = conn.execute(select(feedback).order_by(feedback.c.id)).all()
        assert conn.execute(select(func.count()).select_from(feedback)).scalar() == 2
    assert rows[0].query == "gout flares" and rows[0].relevant is False
    with pytest.raises(NotFoundError):
        record_feedback(settings, query="q", pmid=999, relevant=True, user="ann")
    with pytest.raises(ConfigError, match="`query`"):
        record_feedback(settings, query="   ", pmid=10, relevant=True, user="ann")
    with pytest.raises(ConfigError, match="`query`"):
        record_feedback(settings, query="x" * 1001, pmid=10, relevant=True, user="ann")
    with pytest.raises(ConfigError, match="`user`"):
        record_feedback(settings, query="q", pmid=10, relevant=True, user="")
    with pytest.raises(ConfigError, match="`pmid`"):
        record_feedback(settings, query="q", pmid=-1, relevant=True, user="ann")
