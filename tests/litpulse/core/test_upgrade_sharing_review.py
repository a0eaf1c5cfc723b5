"""Review: a store opened or shared in ways the happy path does not expect.

Older stores opened by new code (:func:`litpulse.core.db.connect`,
:func:`~litpulse.core.db.add_missing_columns`, :func:`~litpulse.core.db.drop_retired_indexes`)
while another process opens them too, on a database the opener may not alter; and two
deployments sharing one ``LITPULSE_HOME`` (its ``downloads`` staging folder).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url

from ingest.bootstrap import load_files, pending_files, stage_file, staged
from ingest.store import Store
from ingest.updatefiles import downloads_folder
from litpulse.app.demo.pubmed_xml import article_xml, gz, pubmed_set
from litpulse.core import db
from litpulse.core.schema import articles, source_files
from litpulse.core.settings import Settings
from tests.conftest import PG_ADMIN_URL, fresh_postgres_database
from tests.ingest.test_store import make_record

RETIRED = "ix_article_terms_term"


def _indexes(engine: Engine, table: str) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes(table)}


def _columns(engine: Engine, table: str) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns(table)}


def _forget(url: str) -> None:
    """Dispose of the cached engine of ``url`` only (the session's others stay)."""
    eng = db._ENGINES.pop(url, None)
    if eng is not None:
        eng.dispose()


def _older_store(settings: Settings) -> Engine:
    """A store as an older litpulse left it: rows, no ``source_position``, the retired index."""
    engine = db.connect(settings)
    Store(engine).apply([make_record(11), make_record(12)])
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE articles DROP COLUMN source_position"))
        conn.execute(text(f"CREATE INDEX {RETIRED} ON article_terms (kind, term)"))
    _forget(settings.effective_database_url)
    return create_engine(settings.effective_database_url)


def _run_first(engine: Engine, marker: str, action: Any) -> None:
    """Run ``action()`` once, just before ``engine`` executes its first statement that
    contains ``marker``: another process doing the same step in the window between this
    one's inspection and its DDL."""
    fired: list[bool] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if marker in statement and not fired:
            fired.append(True)
            action()


# ------------------------------------------------------------- two openers of an old store


def test_two_processes_upgrading_an_older_store_at_once_both_open_it(settings: Settings) -> None:
    first = _older_store(settings)
    second = create_engine(settings.effective_database_url)
    try:
        _run_first(first, "ADD COLUMN", lambda: db.add_missing_columns(second))
        db.add_missing_columns(first)  # the other process added it meanwhile
        assert "source_position" in _columns(first, "articles")
        with first.connect() as conn:
            rows = conn.execute(select(articles.c.pmid, articles.c.source_position)).all()
        assert sorted(rows) == [(11, 2**63 - 1), (12, 2**63 - 1)]
    finally:
        first.dispose()
        second.dispose()


def test_two_processes_dropping_the_retired_index_at_once_both_open_the_store(
    settings: Settings,
) -> None:
    """Holds: ``DROP INDEX IF EXISTS`` after the other opener dropped it is no error."""
    first = _older_store(settings)
    second = create_engine(settings.effective_database_url)
    try:
        db.add_missing_columns(first)
        other: list[list[str]] = []
        _run_first(first, "DROP INDEX", lambda: other.append(db.drop_retired_indexes(second)))
        db.drop_retired_indexes(first)
        assert other == [[RETIRED]]
        assert RETIRED not in _indexes(first, "article_terms")
        with first.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM article_terms")).scalar_one() > 0
    finally:
        first.dispose()
        second.dispose()


def test_connect_without_create_first_does_not_skip_the_upgrade_for_good(
    sqlite_settings: Settings,
) -> None:
    _older_store(sqlite_settings).dispose()
    db.connect(sqlite_settings, create=False)
    engine = db.connect(sqlite_settings)  # asks for the schema: must upgrade it
    assert "source_position" in _columns(engine, "articles")
    assert RETIRED not in _indexes(engine, "article_terms")


# ------------------------------------------------- the drop failing for another reason


@pytest.mark.postgres
def test_a_read_only_postgresql_store_with_the_retired_index_still_opens(tmp_path: Path) -> None:
    with fresh_postgres_database("litpulse_review_ro") as url:
        s = Settings.from_env({}, home=tmp_path / "home", database_url=url)
        try:
            engine = db.connect(s)
            Store(engine).apply([make_record(11)])
            with engine.begin() as conn:
                conn.execute(text(f"CREATE INDEX {RETIRED} ON article_terms (kind, term)"))
            _forget(url)
            name = make_url(url).database
            admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(
                    text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
                )
            admin.dispose()

            engine = db.connect(s)  # a reader: must open it, leaving the index to a writer
            with engine.connect() as conn:
                assert conn.execute(select(articles.c.pmid)).scalars().all() == [11]
            assert RETIRED in _indexes(engine, "article_terms")
        finally:
            _forget(url)


@pytest.fixture
def app_role() -> Iterator[str]:
    """A login role that is not the tables' owner (the usual application role)."""
    role = f"litpulse_review_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
    except Exception as exc:  # noqa: BLE001 - no server: the fixture's own rule
        admin.dispose()
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield role
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def _as_app_role(engine: Engine, url: str, role: str, tmp_path: Path) -> tuple[Settings, str]:
    """Grant ``role`` what an application role has (DML, no ownership); its settings and URL
    (the owner's cached engine is forgotten)."""
    with engine.begin() as conn:
        conn.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
        conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public '
                          f'TO "{role}"'))  # fmt: skip
        conn.execute(text(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"'))
    _forget(url)
    app_url = make_url(url).set(username=role).render_as_string(hide_password=False)
    return Settings.from_env({}, home=tmp_path / "home", database_url=app_url), app_url


@pytest.mark.postgres
def test_a_non_owner_application_role_still_opens_an_older_store(
    tmp_path: Path, app_role: str
) -> None:
    with fresh_postgres_database("litpulse_review_role") as url:
        owner = Settings.from_env({}, home=tmp_path / "home", database_url=url)
        try:
            engine = db.connect(owner)
            Store(engine).apply([make_record(11)])
            with engine.begin() as conn:
                conn.execute(text(f"CREATE INDEX {RETIRED} ON article_terms (kind, term)"))
            app, app_url = _as_app_role(engine, url, app_role, tmp_path)
            try:
                engine = db.connect(app)
                assert Store(engine).apply([make_record(12)]).inserted == 1
            finally:
                _forget(app_url)
        finally:
            _forget(url)


@pytest.mark.postgres
def test_a_column_a_non_owner_role_cannot_add_is_a_clear_error(
    tmp_path: Path, app_role: str
) -> None:
    """A missing column the opener may not add: a ConfigError naming it, not a traceback."""
    from litpulse.core.errors import ConfigError

    with fresh_postgres_database("litpulse_review_col") as url:
        owner = Settings.from_env({}, home=tmp_path / "home", database_url=url)
        try:
            engine = db.connect(owner)
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE articles DROP COLUMN source_position"))
            app, app_url = _as_app_role(engine, url, app_role, tmp_path)
            try:
                with pytest.raises(ConfigError, match=r"articles\.source_position.*owner"):
                    db.connect(app)
            finally:
                _forget(app_url)
            assert "source_position" in _columns(db.connect(owner), "articles")  # the owner can
        finally:
            _forget(url)


def test_a_retired_index_under_a_sqlite_writer_is_left_to_the_next_start(
    sqlite_settings: Settings,
) -> None:
    """Holds: on SQLite a drop that fails (here: the writer lock held past the busy
    timeout) is a warning, the store opens and the next start drops it."""
    engine = _older_store(sqlite_settings)
    db.add_missing_columns(engine)
    engine.dispose()
    path = make_url(sqlite_settings.effective_database_url).database
    import sqlite3

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer (the nightly) holds the write lock
    quick = create_engine(sqlite_settings.effective_database_url,
                          connect_args={"timeout": 0.2})  # fmt: skip
    try:
        assert db.drop_retired_indexes(quick) == []
        assert RETIRED in _indexes(quick, "article_terms")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert db.drop_retired_indexes(quick) == [RETIRED]
    quick.dispose()


# ------------------------------------------------------- two stores sharing one home


def _mirror(root: Path, pmids: range, title: str) -> None:
    """A ``file://`` PubMed mirror holding one baseline file of ``pmids``."""
    base = root / "baseline"
    base.mkdir(parents=True)
    (root / "updatefiles").mkdir()
    edat = dt.date(2024, 6, 1)
    data = gz(pubmed_set([article_xml(p, edat=edat, title=f"{title} {p}") for p in pmids]))
    name = "pubmed26n0001.xml.gz"
    (base / name).write_bytes(data)
    (base / f"{name}.md5").write_text(f"MD5({name})= {hashlib.md5(data).hexdigest()}\n")


def _two_stores(tmp_path: Path, same_mirror: bool) -> tuple[Settings, Settings]:
    """Two deployments, each with its own SQLite database, both with ``tmp_path/home``."""
    _mirror(tmp_path / "mirror-a", range(100, 110), "Mirror A")
    if not same_mirror:
        _mirror(tmp_path / "mirror-b", range(200, 210), "Mirror B")
    home = tmp_path / "home"
    a = Settings.from_env({}, home=home, database_url=f"sqlite:///{tmp_path / 'a.db'}",
                          pubmed_files_url=f"file://{tmp_path / 'mirror-a'}/")  # fmt: skip
    mirror_b = tmp_path / ("mirror-a" if same_mirror else "mirror-b")
    b = a.replace(database_url=f"sqlite:///{tmp_path / 'b.db'}",
                  pubmed_files_url=f"file://{mirror_b}/")  # fmt: skip
    return a, b


@pytest.fixture
def two_stores(tmp_path: Path) -> Iterator[Any]:
    made: list[Settings] = []

    def make(same_mirror: bool) -> tuple[Settings, Settings]:
        pair = _two_stores(tmp_path, same_mirror)
        made.extend(pair)
        return pair

    yield make
    for s in made:
        _forget(s.effective_database_url)


def _pmids(settings: Settings) -> list[int]:
    with db.connect(settings).connect() as conn:
        return sorted(conn.execute(select(articles.c.pmid)).scalars())


def test_a_store_never_applies_a_file_another_store_staged_in_the_shared_home(
    two_stores: Any,
) -> None:
    a, b = two_stores(same_mirror=False)
    f = pending_files(a).pending[0]
    assert stage_file(a, f) is not None  # A (e.g. a test deployment) staged it, then stopped
    load_files(b, workers=0, prefetch=0)
    assert _pmids(b) == list(range(200, 210))  # B's own mirror's records
    with db.connect(b).connect() as conn:
        md5 = conn.execute(select(source_files.c.md5)).scalar_one()
    published = (Path(b.pubmed_files_url[len("file://") :]) / "baseline" / f.name).read_bytes()
    assert md5 == hashlib.md5(published).hexdigest()


def test_a_store_does_not_discard_the_files_another_store_staged(two_stores: Any) -> None:
    a, b = two_stores(same_mirror=True)
    load_files(b, workers=0, prefetch=0)  # B applied the file
    f = pending_files(a).pending[0]
    got = stage_file(a, f)  # A staged it, not applied yet
    assert got is not None
    load_files(b, workers=0, prefetch=0)  # nothing to do for B
    assert staged(downloads_folder(a), f) == got


def test_a_store_does_not_remove_the_live_spill_folder_of_another_store(
    two_stores: Any,
) -> None:
    from ingest.bootstrap import WRITER_LEASE

    a, b = two_stores(same_mirror=True)
    engine_a = db.connect(a)
    folder = downloads_folder(a)
    folder.mkdir(parents=True, exist_ok=True)
    lease = db.acquire_lease(engine_a, WRITER_LEASE)  # A's bootstrap is running
    assert lease is not None
    with lease:
        spill = Path(tempfile.mkdtemp(prefix="litpulse-spill-", dir=folder))
        db.mark_folder(spill, db.store_id(engine_a))
        (spill / "job-3.pkl").write_bytes(b"spilled ahead of A's writer")
        load_files(b, workers=0, prefetch=0)
        assert (spill / "job-3.pkl").exists()


def test_a_store_applies_its_own_files_beside_another_stores_leftovers(two_stores: Any) -> None:
    """Holds: each store records its own files and rows; the two databases do not mix."""
    a, b = two_stores(same_mirror=False)
    load_files(a, workers=0, prefetch=0)
    load_files(b, workers=0, prefetch=0)
    assert _pmids(a) == list(range(100, 110))
    assert _pmids(b) == list(range(200, 210))
    assert db.store_id(db.connect(a)) != db.store_id(db.connect(b))
