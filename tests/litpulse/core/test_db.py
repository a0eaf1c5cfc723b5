"""The store's schema upgrade: a database made by an older litpulse gains the new columns."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, Text, select, text

from ingest.store import Store
from litpulse.core import db
from litpulse.core.errors import ConfigError
from litpulse.core.schema import articles
from litpulse.core.settings import Settings
from tests.ingest.test_store import make_record


def test_an_older_store_gains_new_columns_and_keeps_its_rows(settings: Settings) -> None:
    engine = db.connect(settings)
    Store(engine).apply([make_record(11), make_record(12)])
    with engine.begin() as conn:  # as the store was before source_position existed
        conn.execute(text("ALTER TABLE articles DROP COLUMN source_position"))
    db.dispose_engines()

    engine = db.connect(settings)  # reconnecting upgrades the schema

    with engine.connect() as conn:
        rows = conn.execute(select(articles.c.pmid, articles.c.source_position)).all()
    assert sorted(rows) == [(11, 0), (12, 0)]
    assert db.add_missing_columns(engine) == []  # nothing left to add
    counts = Store(engine).apply([make_record(13)])  # and the store works on it
    assert counts.inserted == 1


def test_a_column_that_cannot_be_added_is_a_clear_error(settings: Settings) -> None:
    engine = db.connect(settings)
    extra = MetaData()
    Table("upgrade_probe", extra, Column("id", Integer, primary_key=True)).create(engine)
    try:
        import litpulse.core.schema as schema

        probe = Table(
            "upgrade_probe",
            schema.metadata,
            Column("id", Integer, primary_key=True),
            Column("required", Text, nullable=False),
        )
        try:
            with pytest.raises(ConfigError, match="upgrade_probe.required"):
                db.add_missing_columns(engine)
        finally:
            schema.metadata.remove(probe)
    finally:
        extra.drop_all(engine)
