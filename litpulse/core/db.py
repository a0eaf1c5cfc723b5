"""Engines, schema creation and the dialect-aware helpers every store uses.

SQLite (the embedded default) and PostgreSQL run the same code: bulk upserts go through
:func:`upsert`, which emits ``INSERT … ON CONFLICT`` for either dialect.

Leases (:func:`acquire_lease`, the ``locks`` table) keep two processes from doing the same
job at once: the nightly run, an index publish, a retrain. Every holder uses the one
:class:`Lease`: a short TTL (:data:`LEASE_TTL_S`) renewed by a heartbeat thread, taken
over at once when its holder on this host is gone (PID and process start time), after
the TTL when a holder elsewhere stopped beating; the work checks it before each write
phase and the commit verifies it (:class:`~litpulse.core.errors.LeaseLostError`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import os
import random
import re
import socket
import sqlite3
import threading
import time
import unicodedata
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    Table,
    Text,
    TextClause,
    and_,
    bindparam,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.types import NullType

from litpulse.core.errors import ConfigError, LeaseLostError
from litpulse.core.schema import (
    FOLDED_TERM_KINDS,
    RETIRED_INDEXES,
    api_tokens,
    article_terms,
    articles,
    checkpoints,
    embedding_counts,
    embeddings,
    feedback,
    feedback_log,
    locks,
    metadata,
    saved_searches,
    store_counts,
    term_forms,
)
from litpulse.core.settings import Settings
from litpulse.core.timeutil import as_utc, iso, utcnow

__all__ = [
    "CONFLICT_ATTEMPTS",
    "conflict_rolled_back",
    "disk_full",
    "lock_waited_out",
    "retry_conflicts",
    "connect",
    "take_turn",
    "add_missing_columns",
    "keep_counts",
    "counts_kept",
    "pending_kept",
    "count_whole",
    "fold_counts",
    "drop_retired_indexes",
    "upsert",
    "bulk_upsert",
    "bulk_insert",
    "insert_tuples",
    "driver_errors",
    "id_in",
    "id_in_clause",
    "pg_array",
    "pg_int_array",
    "bulk_update",
    "bulk_load",
    "utcnow",
    "db_now",
    "mark_written",
    "store_version",
    "IN_CHUNK",
    "LEASE_TTL_S",
    "Lease",
    "acquire_lease",
    "take_lease",
    "release_lease",
    "HeldLease",
    "lease_holder",
    "default_holder",
    "holder_alive",
    "STORE_MARK",
    "store_id",
    "mark_folder",
    "folder_store",
    "live_holder",
    "live_lease",
]

logger = logging.getLogger(__name__)

_ENGINES: dict[str, Engine] = {}
#: Engines whose store :func:`connect` brought up to date in this process.
_UPGRADED: weakref.WeakSet[Engine] = weakref.WeakSet()
#: Seconds a PostgreSQL connection may take to open (libpq's ``connect_timeout``; a URL
#: naming its own keeps it).
PG_CONNECT_TIMEOUT_S = 10

#: Values per ``IN (...)`` list in one statement (SQLite allows 32766 bound parameters,
#: PostgreSQL 65535; smaller lists also keep each statement's plan cheap).
IN_CHUNK = 5000


T = TypeVar("T")

#: SQLSTATEs of a transaction PostgreSQL rolled back to break a conflict with another one
#: (a deadlock, a serialization failure): nothing of it was written; run it again.
_CONFLICT_STATES = frozenset({"40P01", "40001"})
#: How often :func:`retry_conflicts` runs a transaction such a conflict rolled back.
CONFLICT_ATTEMPTS = 5


def conflict_rolled_back(exc: BaseException) -> bool:
    """Whether ``exc`` says the database rolled the transaction back to break a conflict
    with another writer (PostgreSQL's deadlock detected, serialization failure)."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) in _CONFLICT_STATES


#: SQLSTATE of a lock PostgreSQL waited for longer than ``lock_timeout`` allows.
_LOCK_TIMEOUT_STATE = "55P03"


def lock_waited_out(exc: BaseException) -> bool:
    """Whether ``exc`` says a lock was waited for until the wait ran out: another writer
    held it (SQLite's write lock past the busy timeout, ``database is locked``; a
    PostgreSQL ``lock_timeout``). The database is reachable: it is busy."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.OperationalError):
        return getattr(orig, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED") or (
            "is locked" in str(orig)
        )
    return getattr(orig, "sqlstate", None) == _LOCK_TIMEOUT_STATE


#: SQLSTATE of a write PostgreSQL could not make for want of disk space.
_DISK_FULL_STATE = "53100"


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the database's disk is full (SQLite's ``database or disk is
    full``, PostgreSQL's ``disk_full``): reachable, and trying again soon fails again."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.OperationalError):
        return getattr(orig, "sqlite_errorname", "") == "SQLITE_FULL" or "is full" in str(orig)
    return getattr(orig, "sqlstate", None) == _DISK_FULL_STATE


def retry_conflicts(
    work: Callable[[], T], what: str, *, undo: Callable[[], None] | None = None
) -> T:
    """Run ``work`` (one transaction, begun and committed inside it) and, where the database
    rolled it back to break a conflict with another writer (:func:`conflict_rolled_back`:
    two transactions locking the same rows in opposite orders, e.g. an ingest batch and an
    iCite load, which holds no store-writer lease), run it again, up to
    :data:`CONFLICT_ATTEMPTS` times, after a short random pause; ``undo`` first puts back
    what ``work`` changed outside the database. The other transaction goes on meanwhile:
    nothing is lost, and neither run fails for it.

    Raises:
        DBAPIError: Any other database error, or a conflict met on every attempt.
    """
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return work()
        except DBAPIError as exc:
            if attempt == CONFLICT_ATTEMPTS or not conflict_rolled_back(exc):
                raise
            if undo is not None:
                undo()
            first = str(exc.orig).strip().splitlines()[:1]
            logger.warning("%s rolled back by the database (%s): another writer met the same "
                           "rows; running it again", what, "".join(first))  # fmt: skip
            time.sleep(random.uniform(0.02, 0.2) * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def db_now(conn: Connection) -> dt.datetime:
    """The time to stamp rows with: the database server's clock (UTC), so that watermarks
    compare stamps of one clock whichever host wrote them (a writer whose clock lags
    would stamp its rows behind a watermark another host's clock set, and the next
    refresh would miss them); SQLite lives on one host: its clock is this one.
    """
    if conn.dialect.name == "postgresql":
        value = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
        return as_utc(value)
    return utcnow()


#: The checkpoints (this scope; one key per kind of writer) that writes of values a search
#: ranks by move in their own transaction, where ``updated_at`` does not move: iCite's
#: citation values, the in-corpus counts recounted outside an ingest batch, the dates of
#: rows read again (:func:`mark_written`); what :func:`store_version` reads besides
#: ``updated_at``.
VERSION_SCOPE = "store-version"


def mark_written(conn: Connection, kind: str) -> None:
    """Record, last in the transaction that writes values a search ranks by without moving
    ``updated_at`` (``kind``: ``"citations"``, ``"counts"``, ``"dates"``), that they
    changed: a new mark each time, so :func:`store_version` moves when it commits. One row
    a kind: writers of different kinds never wait for each other here, and taken last, it
    is held briefly."""
    upsert(conn, checkpoints, [{"scope": VERSION_SCOPE, "key": kind, "status": "done",
                                "value": {"mark": uuid.uuid4().hex},
                                "updated_at": utcnow()}], keys=["scope", "key"])  # fmt: skip


def store_version(conn: Connection) -> str:
    """A short text that changes whenever what a search ranks by changes in the store:
    an article stored, revised, retracted or deleted (the newest ``updated_at``, moved by
    the transaction that writes it), or citation values or in-corpus counts written
    (:func:`mark_written`). Two pages of one query, index version and reference day with
    the same store version are slices of one list; with another, the store changed
    between them.

    One statement: an index lookup and the few marks.
    """
    c = checkpoints.c
    marks = (
        select(cast(func.max(articles.c.updated_at), Text).label("v"), literal("").label("k"))
        .union_all(select(cast(c.value, Text), c.key).where(c.scope == VERSION_SCOPE))
        .subquery()
    )
    rows = conn.execute(select(marks.c.k, marks.c.v)).all()
    stamp = "|".join(f"{k}={v}" for k, v in sorted((str(k), str(v)) for k, v in rows))
    return hashlib.sha1(stamp.encode()).hexdigest()[:16]


def _make_folder_of(settings: Settings, database: str) -> None:
    """Create the folder of the SQLite file ``database``, or say which setting names a
    place that cannot be one (a file of that name, a file above it, no permission)."""
    if not settings.database_url:  # the home's litpulse.db
        settings.ensure_home()
        return
    try:
        os.makedirs(os.path.dirname(database) or ".", exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"LITPULSE_DATABASE_URL: the folder of the SQLite file {database!r} cannot be "
            f"made: {exc.strerror or exc}"
        ) from None


def connect(settings: Settings, *, create: bool = True) -> Engine:
    """The engine of the configured store, creating missing tables on first use.

    SQLite files get WAL mode and a busy timeout so that a reader (the API) and a
    writer (the nightly job) can work at once.
    """
    url = settings.effective_database_url
    engine = _ENGINES.get(url)
    if engine is not None and create and engine not in _UPGRADED:  # made with create=False
        _upgrade(engine)
        _UPGRADED.add(engine)
    if engine is None:
        if url.startswith("sqlite"):
            database = make_url(url).database  # the path SQLite opens (decoded)
            if database and database != ":memory:" and not database.startswith("file:"):
                _make_folder_of(settings, database)
            engine = create_engine(url, connect_args={"timeout": 60})
            event.listen(engine, "connect", _sqlite_pragmas)
            with _BULK_LOCK:
                _listen_bulk(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True, connect_args=_pg_connect_args(url))
        if create:
            _upgrade(engine)
            _UPGRADED.add(engine)
        _ENGINES[url] = engine
    return engine


def _pg_connect_args(url: str) -> dict[str, Any]:
    """``connect_timeout`` (:data:`PG_CONNECT_TIMEOUT_S`) unless the URL names one: libpq's
    default waits without end for a server that accepts and never answers (hung, or a
    proxy in front of a partitioned one), and every request of the API would wait with it."""
    if "connect_timeout" in make_url(url).query:
        return {}
    return {"connect_timeout": PG_CONNECT_TIMEOUT_S}


def _upgrade(engine: Engine) -> None:
    """Make the missing tables, add the missing columns and indexes, drop the retired
    indexes.

    Several processes may open one store at once (the API and the nightly after an
    upgrade): each step finds what another did meanwhile (a table or column it made) and
    goes on.
    """
    from sqlalchemy import inspect
    from sqlalchemy.exc import DBAPIError

    before = set(inspect(engine).get_table_names())
    try:
        metadata.create_all(engine)
    except DBAPIError:  # another opener made a table between the check and the CREATE
        try:
            metadata.create_all(engine)  # finds them now; a real error is raised again
        except DBAPIError as exc:
            missing = sorted(set(metadata.tables) - set(inspect(engine).get_table_names()))
            raise ConfigError(
                f"the store lacks table(s) {', '.join(missing)} and could not make them "
                f"({_cause(exc)}); open the store once as a role that may create its tables "
                "(the tables' owner)"
            ) from exc
    made = sorted(set(metadata.tables) - before) if before else []
    if made:  # a store of an older release: its reader roles may read the new tables too
        _grant_like_articles(engine, made)
    add_missing_columns(engine)
    add_missing_indexes(engine)
    drop_retired_indexes(engine)
    keep_counts(engine)
    fill_term_forms(engine)
    compose_expert_names(engine)


def _grant_like_articles(engine: Engine, tables: Sequence[str]) -> None:
    """Grant SELECT on ``tables`` (made now, for a store of an older release) to every
    role that may read ``articles`` (PostgreSQL): a read-only role set up with ``GRANT
    SELECT ON ALL TABLES`` (the tables that existed then) reads the new ones as it read
    the old (a MeSH filter reads ``term_forms``). Nothing to do on SQLite."""
    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        return
    q = engine.dialect.identifier_preparer
    with engine.begin() as conn:
        readers = conn.execute(text(
            "SELECT DISTINCT grantee FROM information_schema.role_table_grants "
            "WHERE table_schema = current_schema() AND table_name = 'articles' "
            "AND privilege_type = 'SELECT' AND grantee <> current_user"
        )).scalars().all()  # fmt: skip
        for role in readers:
            for table in tables:
                conn.execute(text(f"GRANT SELECT ON {q.quote(table)} TO {q.quote(role)}"))
    if readers:
        logger.warning("granted SELECT on %s to %s, as on articles", ", ".join(tables),
                       ", ".join(readers))


def take_turn(conn: Connection, key: str) -> None:
    """Make the transactions that take a turn on ``key`` run one after the other, from
    here to their end (read, then write on what was read).

    PostgreSQL: a transaction-level advisory lock on ``key``. SQLite: the database's write
    lock, taken now (a write that changes nothing), before reading.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
    else:
        conn.execute(update(checkpoints).where(text("0")).values(status="done"))


#: The ``checkpoints`` row set once the experts' names are composed.
EXPERT_NAMES_CHECKPOINT = ("store", "expert_names")


def compose_expert_names(engine: Engine) -> int:
    """Compose (NFC) the experts' names an older release stored as typed: a name typed on
    macOS (``é`` as ``e`` and an accent) in ``api_tokens.expert``, ``feedback.user``,
    ``feedback_log.expert`` and ``saved_searches.owner``. This release keeps names
    composed (:func:`litpulse.core.text.visible_name`), so without this an expert of
    such a name would be two: its new judgements beside its old ones (a change of mind
    leaving both standing), two per-hour limits, its own saved searches refused to its
    reissued token. Where one expert holds a standing judgement of the same article for
    the same query in both forms, the newer stands (as a change of mind does); the log
    keeps both. Once per store (a checkpoint); a role that may not write leaves it to the
    next opener that may.

    Returns:
        The names composed (0 when the store was current).
    """
    from sqlalchemy.exc import DBAPIError

    c = checkpoints.c
    key = (c.scope == EXPERT_NAMES_CHECKPOINT[0]) & (c.key == EXPERT_NAMES_CHECKPOINT[1])
    with engine.connect() as conn:
        if conn.execute(select(c.status).where(key)).first() is not None:
            return 0
    changed = 0
    try:
        with engine.begin() as conn:
            # one opener at a time (two processes opening an older store at once): the
            # second waits, then finds the checkpoint and does nothing; without this it
            # read the rows the first was composing and took each for its own twin
            take_turn(conn, "litpulse expert names")
            if conn.execute(select(c.status).where(key)).first() is not None:
                return 0
            for table, column in ((api_tokens, "expert"), (feedback_log, "expert"),
                                  (saved_searches, "owner")):  # fmt: skip
                col = table.c[column]
                for name in conn.execute(select(col).distinct()).scalars().all():
                    composed = unicodedata.normalize("NFC", name) if name else name
                    if composed != name:
                        conn.execute(update(table).where(col == name).values({column: composed}))
                        changed += 1
            f = feedback.c
            for user in conn.execute(select(f.user).distinct()).scalars().all():
                composed = unicodedata.normalize("NFC", user)
                if composed == user:
                    continue
                changed += 1
                for row in conn.execute(select(f.id, f.query, f.pmid, f.created_at)
                                        .where(f.user == user)).all():  # fmt: skip
                    twin = conn.execute(select(f.id, f.created_at).where(
                        f.query == row.query, f.pmid == row.pmid, f.user == composed,
                        f.id != row.id,
                    )).first()  # fmt: skip
                    if twin is not None and as_utc(twin.created_at) >= as_utc(row.created_at):
                        conn.execute(delete(feedback).where(f.id == row.id))
                        continue
                    if twin is not None:
                        conn.execute(delete(feedback).where(f.id == twin.id))
                    conn.execute(update(feedback).where(f.id == row.id).values(user=composed))
            upsert(conn, checkpoints, [{"scope": EXPERT_NAMES_CHECKPOINT[0],
                                        "key": EXPERT_NAMES_CHECKPOINT[1], "status": "done",
                                        "value": {"names": changed}, "updated_at": utcnow()}],
                   keys=["scope", "key"], update=["status", "value", "updated_at"])  # fmt: skip
    except DBAPIError as exc:
        logger.warning("experts' names not composed (%s): left to a writer", _cause(exc))
        return 0
    if changed:
        logger.warning("composed %d expert name(s) stored by an older release (NFC)", changed)
    return changed


#: The ``checkpoints`` row set once ``term_forms`` holds what ``article_terms`` held.
TERM_FORMS_CHECKPOINT = ("store", "term_forms")
#: PMIDs read per statement while :func:`fill_term_forms` scans ``article_terms``.
_FILL_STEP = 250_000


#: How far back a reader's catch-up looks before the newest write it saw: a writer's
#: rows stamped before that moment may commit after it (a batch under way, a clock set
#: back). A writer that recorded its own rows marks exactly where it ended
#: (:func:`set_catch_up_mark` with ``exact``): only later rows are looked at.
CATCH_UP_MARGIN = dt.timedelta(minutes=10)


def catch_up_mark(engine: Engine, key: tuple[str, str]) -> tuple[bool, dt.datetime | None]:
    """Where a catch-up of derived data (:func:`fill_term_forms`, the period ends of
    :meth:`ingest.store.Store.catch_up_period_ends`) stands: whether it ever ran, and the
    ``updated_at`` its next pass reads articles from (``None``: all of them)."""
    c = checkpoints.c
    with engine.connect() as conn:
        row = conn.execute(
            select(c.status, c.value).where(c.scope == key[0], c.key == key[1])
        ).first()
    if row is None or not row.status:
        return False, None
    value = row.value if isinstance(row.value, dict) else {}
    through = value.get("through")
    if not through:
        return True, None
    margin = dt.timedelta(0) if value.get("exact") else CATCH_UP_MARGIN
    return True, as_utc(dt.datetime.fromisoformat(through)) - margin


def set_catch_up_mark(conn: Connection, key: tuple[str, str], through: dt.datetime | None,
                      rows: int, *, exact: bool = False) -> None:
    """Record a catch-up pass: it saw every article written up to ``through`` (``exact``:
    a writer under the store-writer lease marking the end of its own rows, which it
    recorded itself; no other writer's rows can be under way)."""
    upsert(conn, checkpoints, [{"scope": key[0], "key": key[1], "status": "done",
                                "value": {"through": iso(through), "rows": rows,
                                          "exact": exact},
                                "updated_at": utcnow()}],
           keys=["scope", "key"], update=["status", "value", "updated_at"])  # fmt: skip


def fill_term_forms(engine: Engine) -> int:
    """Record in ``term_forms`` the term spellings ``article_terms`` holds and it lacks
    (the folded MeSH and publication-type filters find them through it): when this
    release first opens a store made before it, one pass over ``article_terms`` by PMID
    range (a reader too: a server that only searches finds the folded forms at once);
    afterwards, at each open and before each write (:meth:`ingest.store.Store.apply`), the
    terms of the articles written since the last pass — what a previous release's writer
    stored meanwhile (a rolling upgrade), which writes no spellings. Memory holds the
    distinct spellings only (MeSH: ~30,000). A role that may not write leaves it to the
    next opener that may (its filters meanwhile ignore case and white space only).

    Returns:
        The spellings recorded (0 when the store was current).
    """
    from sqlalchemy.exc import DBAPIError

    from litpulse.core.text import fold_term

    t, a = article_terms.c, articles.c
    ran, since = catch_up_mark(engine, TERM_FORMS_CHECKPOINT)
    try:
        with engine.begin() as conn:
            through = conn.execute(select(func.max(a.updated_at))).scalar()
            if ran and (through is None or (since is not None and through <= since)):
                return 0  # nothing written since
            seen: set[tuple[str, str]] = set()
            if not ran:  # the first pass: every article, a PMID range at a time
                top = conn.execute(select(func.max(t.pmid))).scalar() or 0
                for low in range(0, top + 1, _FILL_STEP):
                    seen.update(conn.execute(
                        select(t.kind, t.term).distinct()
                        .where(t.pmid >= low, t.pmid < low + _FILL_STEP,
                               t.kind.in_(FOLDED_TERM_KINDS))
                    ))  # fmt: skip
            else:  # the articles written since the last pass
                written = select(a.pmid).where(a.updated_at > since) if since else None
                query = select(t.kind, t.term).distinct().where(t.kind.in_(FOLDED_TERM_KINDS))
                if written is not None:
                    query = query.where(t.pmid.in_(written))
                seen.update(conn.execute(query))
            if seen:  # the spellings not recorded yet (term_forms is small: ~30,000 rows)
                seen -= {(k, v) for k, v in conn.execute(select(term_forms.c.kind,
                                                                term_forms.c.term))}
            rows = [{"kind": k, "term": v, "folded": fold_term(v)} for k, v in sorted(seen)]
            upsert(conn, term_forms, rows, keys=["kind", "term"], update=[])
            set_catch_up_mark(conn, TERM_FORMS_CHECKPOINT, as_utc(through) if through else None,
                              len(rows))
    except DBAPIError as exc:
        logger.warning("term spellings not recorded (%s): the MeSH and publication-type "
                       "filters ignore case and white space only until a writer opens "
                       "the store", _cause(exc))
        return 0
    if rows and not ran:
        logger.warning("store upgraded: %d term spellings recorded for the folded MeSH and "
                       "publication-type filters", len(rows))
    return len(rows)


def add_missing_columns(engine: Engine) -> list[str]:
    """Bring a store made by an older litpulse up to the schema: add the new columns.

    ``create_all`` makes missing tables but never alters existing ones. A column that
    the schema has and the database lacks is added with ``ALTER TABLE … ADD COLUMN``,
    with its default filled into existing rows (or the column's ``info["upgrade_fill"]``,
    where rows written before the column existed need another value: a constant, or an
    SQL expression over the row, e.g. a correlated subquery). Only additive
    changes are automatic; a new NOT NULL column without a default, or a new key column,
    is a :class:`ConfigError` naming the column (such a change needs a written migration).

    Returns:
        ``table.column`` for every column added.
    """
    from sqlalchemy import inspect, literal, text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.schema import CreateColumn

    inspector = inspect(engine)
    existing = set(inspector.get_table_names())
    added: list[str] = []
    for table in metadata.sorted_tables:
        if table.name not in existing:
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for col in table.columns:
            if col.name in have:
                continue
            default = ""
            if col.server_default is None and col.default is not None:
                arg = getattr(col.default, "arg", None)
                if getattr(col.default, "is_scalar", False):
                    bound = literal(arg, type_=col.type).compile(
                        dialect=engine.dialect, compile_kwargs={"literal_binds": True}
                    )
                    default = f" DEFAULT {bound}"
            no_default = not default and col.server_default is None
            if col.primary_key or (not col.nullable and no_default):
                raise ConfigError(
                    f"the store lacks column {table.name}.{col.name}, which cannot be "
                    "added automatically (no default); migrate the database by hand"
                )
            spec = CreateColumn(col).compile(dialect=engine.dialect)
            name = engine.dialect.identifier_preparer.quote(table.name)
            try:  # a column and its fill in one transaction (PostgreSQL's DDL is transactional)
                with engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {name} ADD COLUMN {spec}{default}"))
                    if "upgrade_fill" in col.info:
                        fill = {col.name: col.info["upgrade_fill"]}
                        conn.execute(table.update().values(fill))
            except DBAPIError as exc:
                now = {c["name"] for c in inspect(engine).get_columns(table.name)}
                if col.name in now:  # another process opening the store added it meanwhile
                    continue
                raise ConfigError(
                    f"the store lacks column {table.name}.{col.name} and could not add it "
                    f"({_cause(exc)}); open the store once as a role that may alter its "
                    "tables (the tables' owner)"
                ) from exc
            added.append(f"{table.name}.{col.name}")
    if added:
        logger.warning("store schema upgraded: added %s", ", ".join(added))
    return added


@contextmanager
def short_lock_wait(conn: Connection, ms: int | None = None) -> Iterator[None]:
    """Within ``conn``'s transaction: wait at most ``ms`` (default
    :data:`DDL_LOCK_TIMEOUT_MS`) for a lock (PostgreSQL's lock wait, SQLite's busy wait,
    put back after): for a write that may be left to later rather than wait behind a
    writer (a made index, the watermark's kept chain)."""
    ms = DDL_LOCK_TIMEOUT_MS if ms is None else int(ms)
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
        yield
        return
    before = int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0)
    conn.exec_driver_sql(f"PRAGMA busy_timeout = {ms}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA busy_timeout = {before}")


#: How long making a missing index or dropping a retired one waits for PostgreSQL's lock on
#: its table (readers of the table, e.g. the API, wait behind a drop meanwhile); past it
#: the change is left to the next start.
DDL_LOCK_TIMEOUT_MS = 2000


def index_names(engine: Engine, table: str) -> set[str]:
    """The names of ``table``'s indexes, those on expressions too (which SQLAlchemy's
    reflection skips on SQLite)."""
    return set(_index_definitions(engine, table))


def _index_definitions(engine: Engine, table: str) -> dict[str, str | None]:
    """``table``'s indexes: name → definition (SQL), ``None`` for one PostgreSQL marks
    invalid (a ``CREATE INDEX CONCURRENTLY`` that failed: no query reads it)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            sql = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :t"
        else:
            sql = ("SELECT c.relname, CASE WHEN i.indisvalid THEN pg_get_indexdef(c.oid) END, "
                   "quote_ident(current_schema()) "
                   "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                   "JOIN pg_class t ON t.oid = i.indrelid "
                   "WHERE t.relname = :t AND t.relnamespace = current_schema()::regnamespace")
            # the definition names the table with its schema (``ON lit.articles``)
            # where the schema is not ``public``: the schema's DDL names it bare
            return {
                str(n): d if d is None else d.replace(f" ON {schema}.", " ON ", 1)
                for n, d, schema in conn.execute(text(sql), {"t": table}).all()
            }
        return {str(n): d for n, d in conn.execute(text(sql), {"t": table}).all()}


def _same_definition(made: str, kept: str | None) -> bool:
    """Whether an index's kept definition (``sqlite_master.sql``, ``pg_get_indexdef``) is
    the one the schema makes (``made``): quotes, spaces, the schema and the method aside."""
    def norm(sql: str) -> str:
        sql = re.sub(r'[\s"]+', "", sql.lower())
        return sql.replace("ifnotexists", "").replace("usingbtree", "").replace("public.", "")

    return kept is not None and norm(made) == norm(kept)


def add_missing_indexes(engine: Engine) -> list[str]:
    """Make the indexes of the schema that a store made by an older litpulse lacks (such
    as ``ix_articles_doi``), as the tables' owner; returns their names. An index of the
    same name on other columns or expressions, or one PostgreSQL marks invalid (a
    concurrent build that failed), is dropped and made again: no query could read it.

    The build reads the whole table once and holds back writers, not readers, meanwhile.
    It waits at most :data:`DDL_LOCK_TIMEOUT_MS` for its lock (PostgreSQL's lock wait,
    SQLite's busy wait); a build that fails (that wait, a read-only database, a role that
    does not own the table) is a warning: the store works without the index, only slower
    where a query would read it, and the next start tries again.
    """
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.schema import CreateIndex

    tables = set(inspect(engine).get_table_names())
    made: list[str] = []
    for table in metadata.sorted_tables:
        if table.name not in tables:
            continue
        kept = _index_definitions(engine, table.name)
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            ddl = str(CreateIndex(index).compile(dialect=engine.dialect))
            if index.name in kept and _same_definition(ddl, kept[index.name]):
                continue
            name = engine.dialect.identifier_preparer.quote(str(index.name))
            try:
                with engine.begin() as conn, short_lock_wait(conn):
                    if index.name in kept:  # another definition, or invalid
                        logger.warning("index %s is not the schema's (%s): made again",
                                       index.name, kept[index.name])
                        conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
                    conn.execute(text(ddl))
            except DBAPIError as exc:
                now = _index_definitions(engine, table.name).get(str(index.name))
                if _same_definition(ddl, now):  # another opener made it meanwhile
                    continue
                logger.warning(
                    "index %s not made (%s); the store works without it, only slower where "
                    "a query reads it: the next start tries again (a start as the tables' "
                    "owner, on a writable database, makes it)", index.name, _cause(exc),
                )  # fmt: skip
                continue
            made.append(str(index.name))
    if made:
        logger.warning("store schema upgraded: made index(es) %s", ", ".join(made))
    return made




#: The triggers that keep ``store_counts`` (:func:`keep_counts`); a new definition gets a
#: new version in the names, and the store's next open makes it and counts again.
COUNT_TRIGGERS = "litpulse_counts_v3"  # v3: and the current vectors (embedding_counts)
#: ``(table, trigger name suffix, event)`` of each trigger
_COUNT_EVENTS = tuple(
    (table, f"{table}_{ev[:3].lower()}", ev)
    for table in ("articles", "references", "embeddings")
    for ev in ("INSERT", "UPDATE", "DELETE")
    if not (table == "references" and ev == "UPDATE")  # an update moves no count
)
#: SQLite's row triggers on ``articles`` moving ``embedding_counts`` (PostgreSQL's one
#: function a statement does both)
_SQLITE_VECTOR_EVENTS = tuple(
    ("articles", f"articles_v{ev[:3].lower()}", ev) for ev in ("INSERT", "UPDATE", "DELETE"))
#: ``store_counts``' columns: what a row of ``articles`` adds (SQL over its columns)
_ARTICLE_COUNTS = {
    "live": "NOT {r}is_deleted",
    "deleted": "{r}is_deleted AND {r}version > 0",
    "retracted": "NOT {r}is_deleted AND {r}is_retracted",
    "with_abstract": "NOT {r}is_deleted AND {r}has_abstract",
    "with_citations": "NOT {r}is_deleted AND {r}icite_fetched_at IS NOT NULL",
}
_COUNT_COLUMNS = (*_ARTICLE_COUNTS, "refs")
#: Delta rows past which :func:`counts_kept` folds them into one (PostgreSQL)
FOLD_COUNTS_AT = 1000
#: The advisory lock a fold of ``store_counts`` (:func:`fold_counts`) and a count at open
#: (:func:`keep_counts`) hold (PostgreSQL)
_FOLD_LOCK = "hashtext('litpulse_store_counts')"
#: The advisory lock that orders the writers of ``embeddings`` and ``articles`` (PostgreSQL,
#: :func:`_pg_count_functions`): each trigger sees only the other table's committed rows,
#: so an article and its vector written by two open transactions would be counted by
#: neither. An article's trigger takes it shared (its writers run side by side), a
#: vector's exclusive, until commit: whichever trigger comes later sees the other's rows.
_VECTOR_LOCK = "hashtext('litpulse_embedding_counts')"


def _pg_count_functions(schema: str) -> list[str]:
    """PostgreSQL: the two trigger functions (statement level, transition tables): each
    statement on ``articles`` or ``references`` appends one row of what it changed (none
    when nothing counted moved) to the ``store_counts`` of the store's schema, named
    whole, never by the writer's ``search_path``: a session with another path (psql's,
    ``pg_restore``'s empty one) naming ``lit.articles`` would fail, or move the counts of
    the store in its own path. (Not ``TG_TABLE_SCHEMA`` through ``EXECUTE``: a plan a
    statement, measured +220 µs a one-row ``INSERT``, 340 -> 560; a schema renamed gets
    its functions again at its next open, :func:`_count_triggers_made`.)"""
    q = f'"{schema}".store_counts'
    cols = ", ".join(_COUNT_COLUMNS)
    sums = ", ".join(
        f"coalesce(sum(s) FILTER (WHERE {cond.format(r='')}), 0)"
        for cond in _ARTICLE_COUNTS.values()
    )
    picked = "is_deleted, version, is_retracted, has_abstract, icite_fetched_at"
    moved = " OR ".join(f"{c} <> 0" for c in _ARTICLE_COUNTS)

    def rows(src: str) -> str:
        return (f"INSERT INTO {q} ({cols}) SELECT *, 0 FROM (SELECT {sums} FROM ({src}) AS d) "
                f"AS c ({', '.join(_ARTICLE_COUNTS)}) WHERE {moved};")

    new = f"SELECT 1 AS s, {picked} FROM litpulse_new"
    old = f"SELECT -1 AS s, {picked} FROM litpulse_old"
    zeros = ", ".join("0" for _ in _ARTICLE_COUNTS)
    ev = f'"{schema}".embedding_counts (model_version, current_vectors)'

    def current(src: str) -> str:  # the live rows' vectors of the same text, each version
        return (f"INSERT INTO {ev} SELECT e.model_version, sum(d.s) FROM ({src}) AS d "
                f'JOIN "{schema}".embeddings e ON e.pmid = d.pmid AND e.text_hash = d.text_hash '
                "WHERE NOT d.is_deleted GROUP BY e.model_version HAVING sum(d.s) <> 0;")

    def vectors(src: str) -> str:  # the vectors whose live article has their text
        return (f"INSERT INTO {ev} SELECT d.model_version, sum(d.s) FROM ({src}) AS d "
                f'JOIN "{schema}".articles a ON a.pmid = d.pmid AND a.text_hash = d.text_hash '
                "WHERE NOT a.is_deleted GROUP BY d.model_version HAVING sum(d.s) <> 0;")

    def changed(new: str, old: str, cols: str) -> str:  # an update's rows that moved a count
        return (f"SELECT sum(s) AS s, pmid, {cols}, false AS is_deleted FROM ({new} UNION ALL "
                f"{old}) AS u WHERE NOT is_deleted GROUP BY pmid, {cols} HAVING sum(s) <> 0")

    a_new = "SELECT 1 AS s, pmid, text_hash, is_deleted FROM litpulse_new"
    a_old = "SELECT -1 AS s, pmid, text_hash, is_deleted FROM litpulse_old"
    e_new = "SELECT 1 AS s, pmid, model_version, text_hash, false AS is_deleted FROM litpulse_new"
    e_old = "SELECT -1 AS s, pmid, model_version, text_hash, false AS is_deleted FROM litpulse_old"
    return [
        f"""CREATE OR REPLACE FUNCTION "{schema}".{COUNT_TRIGGERS}_articles() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM pg_advisory_xact_lock_shared({_VECTOR_LOCK});
  IF TG_OP = 'INSERT' THEN {rows(new)} {current(a_new)}
  ELSIF TG_OP = 'DELETE' THEN {rows(old)} {current(a_old)}
  ELSE {rows(f"{new} UNION ALL {old}")} {current(changed(a_new, a_old, "text_hash"))}
  END IF;
  RETURN NULL;
END $f$""",
        f"""CREATE OR REPLACE FUNCTION "{schema}".{COUNT_TRIGGERS}_embeddings() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
  PERFORM pg_advisory_xact_lock({_VECTOR_LOCK});
  IF TG_OP = 'INSERT' THEN {vectors(e_new)}
  ELSIF TG_OP = 'DELETE' THEN {vectors(e_old)}
  ELSE {vectors(changed(e_new, e_old, "model_version, text_hash"))}
  END IF;
  RETURN NULL;
END $f$""",
        f"""CREATE OR REPLACE FUNCTION "{schema}".{COUNT_TRIGGERS}_references() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO {q} ({cols}) SELECT {zeros}, count(*) FROM litpulse_new HAVING count(*) > 0;
  ELSE
    INSERT INTO {q} ({cols}) SELECT {zeros}, -count(*) FROM litpulse_old HAVING count(*) > 0;
  END IF;
  RETURN NULL;
END $f$""",
    ]


def _pg_count_trigger(schema: str, table: str, name: str, event: str) -> str:
    refs = {"INSERT": "NEW TABLE AS litpulse_new", "DELETE": "OLD TABLE AS litpulse_old",
            "UPDATE": "OLD TABLE AS litpulse_old NEW TABLE AS litpulse_new"}[event]
    return (f'CREATE TRIGGER {COUNT_TRIGGERS}_{name} AFTER {event} ON "{table}" '
            f"REFERENCING {refs} FOR EACH STATEMENT "
            f'EXECUTE FUNCTION "{schema}".{COUNT_TRIGGERS}_{table}()')


def _sqlite_count_trigger(table: str, name: str, event: str) -> str:
    """SQLite: a row trigger moving the one row of ``store_counts`` (id 1)."""
    head = f'CREATE TRIGGER {COUNT_TRIGGERS}_{name} AFTER {event}'
    if table == "references":
        sign = "+" if event == "INSERT" else "-"
        return (f'{head} ON "references" BEGIN UPDATE store_counts SET refs = refs {sign} 1 '
                "WHERE id = 1; END")
    if event == "UPDATE":  # only when a counted property moved
        moved = " OR ".join(
            f"({cond.format(r='new.')}) IS NOT ({cond.format(r='old.')})"
            for cond in _ARTICLE_COUNTS.values()
        )
        sets = ", ".join(
            f"{c} = {c} + ({cond.format(r='new.')}) - ({cond.format(r='old.')})"
            for c, cond in _ARTICLE_COUNTS.items()
        )
        return (f"{head} OF is_deleted, version, is_retracted, has_abstract, icite_fetched_at "
                f"ON articles WHEN {moved} BEGIN UPDATE store_counts SET {sets} WHERE id = 1; END")
    r, sign = ("new.", "+") if event == "INSERT" else ("old.", "-")
    sets = ", ".join(
        f"{c} = {c} {sign} ({cond.format(r=r)})" for c, cond in _ARTICLE_COUNTS.items())
    return f"{head} ON articles BEGIN UPDATE store_counts SET {sets} WHERE id = 1; END"


def _sqlite_vector_trigger(table: str, name: str, event: str) -> str:
    """SQLite: a row trigger moving ``embedding_counts``' row of each model version
    (one a version: a vector's insert makes its version's row)."""
    head = f"CREATE TRIGGER {COUNT_TRIGGERS}_{name} AFTER {event}"
    ec = "UPDATE embedding_counts SET current_vectors = current_vectors"
    if table == "embeddings":
        def has(r: str) -> str:  # the vector's live article has its text
            return (f"(SELECT count(*) FROM articles a WHERE a.pmid = {r}pmid "
                    f"AND NOT a.is_deleted AND a.text_hash = {r}text_hash)")

        make = ("INSERT INTO embedding_counts (model_version, current_vectors) "
                "SELECT new.model_version, 0 WHERE NOT EXISTS (SELECT 1 FROM embedding_counts "
                "WHERE model_version = new.model_version);")
        plus = f"{ec} + {has('new.')} WHERE model_version = new.model_version;"
        minus = f"{ec} - {has('old.')} WHERE model_version = old.model_version;"
        body = {"INSERT": f"{make} {plus}", "DELETE": minus,
                "UPDATE": f"{make} {minus} {plus}"}[event]
        of = " OF pmid, model_version, text_hash" if event == "UPDATE" else ""
        return f"{head}{of} ON embeddings BEGIN {body} END"

    def same(r: str) -> str:  # the article's vectors of its text, of the row's version
        return (f"(NOT {r}is_deleted) * (SELECT count(*) FROM embeddings e WHERE e.pmid = "
                f"{r}pmid AND e.model_version = embedding_counts.model_version "
                f"AND e.text_hash = {r}text_hash)")

    def versions(*rs: str) -> str:
        pmids = ", ".join(f"{r}pmid" for r in rs)
        return f"model_version IN (SELECT model_version FROM embeddings WHERE pmid IN ({pmids}))"

    if event == "INSERT":
        return (f"{head} ON articles WHEN NOT new.is_deleted BEGIN {ec} + {same('new.')} "
                f"WHERE {versions('new.')}; END")
    if event == "DELETE":
        return (f"{head} ON articles WHEN NOT old.is_deleted BEGIN {ec} - {same('old.')} "
                f"WHERE {versions('old.')}; END")
    moved = ("new.is_deleted IS NOT old.is_deleted OR new.text_hash IS NOT old.text_hash "
             "OR new.pmid IS NOT old.pmid")
    return (f"{head} OF pmid, is_deleted, text_hash ON articles WHEN {moved} BEGIN "
            f"{ec} + {same('new.')} - {same('old.')} WHERE {versions('new.', 'old.')}; END")


def _count_triggers_made(conn: Connection) -> bool:
    """Whether every trigger of :data:`COUNT_TRIGGERS` is there (PostgreSQL: and its
    function names this schema's counts, not a schema's renamed since)."""
    if conn.dialect.name == "sqlite":
        sql = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE :n"
        wanted = len(_COUNT_EVENTS) + len(_SQLITE_VECTOR_EVENTS)
    else:
        sql = ("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
               "JOIN pg_proc p ON p.oid = t.tgfoid "
               "WHERE c.relnamespace = current_schema()::regnamespace AND t.tgname LIKE :n "
               "AND position(format('\"%s\".', current_schema()) IN p.prosrc) > 0")
        wanted = len(_COUNT_EVENTS)
    return int(conn.execute(text(sql), {"n": f"{COUNT_TRIGGERS}_%"}).scalar() or 0) == wanted


def keep_counts(engine: Engine) -> bool:
    """Have the database keep ``store_counts`` (the counts of ``litpulse status``) and
    ``embedding_counts`` (the current vectors of each model version, its
    ``pending_embeddings``): make the triggers on ``articles``, ``references`` and
    ``embeddings`` and count the store once, exactly, in one transaction (a store made
    before the triggers, or whose counts were emptied).

    Every writer then keeps the counts in step, whatever its path (``COPY`` and staged
    upserts, executemany, tombstones, deletes, the iCite fetch, upgrades): PostgreSQL with
    statement-level triggers that append one row of deltas per statement, SQLite with row
    triggers on its one row. The count holds back writers (PostgreSQL: the tables' lock,
    waited for at most :data:`DDL_LOCK_TIMEOUT_MS`; SQLite: the write lock) and reads both
    tables whole, once. Where it cannot be made (that wait, a read-only database, a role
    that does not own the tables), a warning: ``status`` counts the tables whole until a
    later open makes it.

    Returns:
        Whether the counts were made now (``False``: kept already, or not made).
    """
    from sqlalchemy import inspect

    if not {"store_counts", "embedding_counts"} <= set(inspect(engine).get_table_names()):
        return False
    with engine.connect() as conn:
        made = _count_triggers_made(conn)
        if made and conn.execute(select(store_counts.c.id).limit(1)).first() is not None:
            return False
    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.begin() as conn, short_lock_wait(conn):
            if sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the DDL and count in one transaction
                old = conn.execute(text(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE :n"
                ), {"n": "litpulse_counts_%"}).scalars().all()
                for name in old:
                    conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS "{name}"')
                for table, name, event in _COUNT_EVENTS:
                    if table == "embeddings":
                        conn.exec_driver_sql(_sqlite_vector_trigger(table, name, event))
                    else:
                        conn.exec_driver_sql(_sqlite_count_trigger(table, name, event))
                for table, name, event in _SQLITE_VECTOR_EVENTS:
                    conn.exec_driver_sql(_sqlite_vector_trigger(table, name, event))
            else:
                conn.exec_driver_sql('LOCK TABLE articles, "references", embeddings '
                                     "IN SHARE ROW EXCLUSIVE MODE")
                # no fold meanwhile (fold_counts): its summed row, inserted after this
                # transaction's DELETE began, would outlive it and count the store twice
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_FOLD_LOCK})")
                schema = str(conn.exec_driver_sql("SELECT current_schema()").scalar())
                old = conn.execute(text(
                    "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c "
                    "ON c.oid = t.tgrelid WHERE c.relnamespace = current_schema()::regnamespace "
                    "AND t.tgname LIKE :n"), {"n": "litpulse_counts_%"}).all()
                for name, table in old:
                    conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS "{name}" ON "{table}"')
                gone = conn.execute(text(  # an older version's functions
                    "SELECT proname FROM pg_proc WHERE pronamespace = "
                    "current_schema()::regnamespace AND proname LIKE :n AND proname NOT LIKE :v"
                ), {"n": "litpulse_counts_%", "v": f"{COUNT_TRIGGERS}_%"}).scalars().all()
                for name in gone:
                    conn.exec_driver_sql(f'DROP FUNCTION IF EXISTS "{schema}"."{name}"()')
                for sql in _pg_count_functions(schema):
                    conn.exec_driver_sql(sql)
                for table, name, event in _COUNT_EVENTS:
                    conn.exec_driver_sql(_pg_count_trigger(schema, table, name, event))
            conn.execute(store_counts.delete())
            counted = count_whole(conn)
            conn.execute(insert(store_counts).values(id=1, **counted))
            conn.execute(embedding_counts.delete())
            conn.execute(insert(embedding_counts).from_select(
                ["model_version", "current_vectors"], _current_whole()))
            if not sqlite:  # ids of later delta rows follow the first
                conn.exec_driver_sql(
                    "SELECT setval(pg_get_serial_sequence('store_counts', 'id'), 1)")
    except DBAPIError as exc:
        logger.warning(
            "the store's counts are not kept (%s): status counts articles and references "
            "whole until a later start makes them (a start as the tables' owner, on a "
            "writable database)", _cause(exc))  # fmt: skip
        return False
    if any(counted.values()):  # a new store's empty tables: nothing to say
        logger.warning("store upgraded: the database keeps the store's counts (counted once: "
                       "%d live articles, %d references)", counted["live"], counted["refs"])
    return True


def count_whole(conn: Connection) -> dict[str, int]:
    """The counts :data:`store_counts` keeps, counted over the whole of ``articles`` and
    ``references`` (a scan of both: at a store's first keeping, and in tests)."""
    from litpulse.core.schema import references

    a = articles.c
    live = a.is_deleted.is_(False)
    row = conn.execute(select(
        func.count().filter(live),
        func.count().filter(a.is_deleted.is_(True), a.version > 0),
        func.count().filter(live, a.is_retracted.is_(True)),
        func.count().filter(live, a.has_abstract.is_(True)),
        func.count().filter(live, a.icite_fetched_at.is_not(None)),
    )).one()
    refs = conn.execute(select(func.count()).select_from(references)).scalar()
    return {**{c: int(v or 0) for c, v in zip(_ARTICLE_COUNTS, row, strict=True)},
            "refs": int(refs or 0)}


def _current_whole() -> Any:
    """The current vectors of each model version stored, counted over the whole of
    ``embeddings`` (a join with ``articles``), and ``embedding_counts``' row saying they
    are kept (model version ``''``)."""
    e, a = embeddings.c, articles.c
    on = and_(a.pmid == e.pmid, a.text_hash == e.text_hash, a.is_deleted.is_(False))
    each = (select(e.model_version, func.count(a.pmid))
            .select_from(embeddings.outerjoin(articles, on)).group_by(e.model_version))
    return each.union_all(select(literal(""), literal(0)))


def counts_kept(conn: Connection) -> dict[str, int] | None:
    """The counts the database keeps (:func:`keep_counts`), ``None`` where it keeps none.

    PostgreSQL's rows of deltas are summed; past :data:`FOLD_COUNTS_AT` of them they are
    folded into one, in a transaction of its own (a ``DELETE … RETURNING`` summed into a
    new row: a writer only appends rows, so neither waits on the other). A role that may
    not write leaves them as they are; :meth:`ingest.store.Store.apply` folds them too,
    after its last batch.
    """
    if not _table_there(conn, "store_counts"):  # opened without upgrading (create=False)
        return None
    c = store_counts.c
    row = conn.execute(select(func.count(), *(func.sum(c[n]) for n in _COUNT_COLUMNS))).one()
    if not row[0]:
        return None
    if row[0] > FOLD_COUNTS_AT:
        fold_counts(conn.engine)
    return {n: int(v or 0) for n, v in zip(_COUNT_COLUMNS, row[1:], strict=True)}


def _table_there(conn: Connection, name: str) -> bool:
    if conn.dialect.name == "sqlite":
        there = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :n"
    else:
        there = "SELECT to_regclass(:n)"
    return conn.execute(text(there), {"n": name}).scalar() is not None


def pending_kept(conn: Connection, model_version: str) -> int | None:
    """The live articles with no current vector of ``model_version`` (one that is not
    stored, or of another text), from the counts the database keeps: ``store_counts``'
    live less ``embedding_counts``' current vectors of the version, read in one statement
    (one snapshot). ``None`` where they are not kept (an older store not upgraded yet, or
    whose counts could not be made). Folds the rows of deltas as :func:`counts_kept`.
    """
    if not _table_there(conn, "embedding_counts"):
        return None
    sc, ec = store_counts.c, embedding_counts.c

    row = conn.execute(select(*(select(c).scalar_subquery() for c in (
        func.count(sc.id), func.sum(sc.live), func.count(ec.id),
        func.sum(case((ec.model_version == "", 1), else_=0)),
        func.sum(case((ec.model_version == model_version, ec.current_vectors), else_=0)),
    )))).one()
    rows, live, vector_rows, kept, current = (int(v or 0) for v in row)
    if not rows or not kept:
        return None
    if max(rows, vector_rows) > FOLD_COUNTS_AT:
        fold_counts(conn.engine)
    return live - current


def fold_counts(engine: Engine) -> None:
    """PostgreSQL: fold the rows of ``store_counts`` into one (see :func:`counts_kept`),
    unless another fold runs now (two folds of the same rows would wait on each other's
    row locks); SQLite keeps one row already."""
    if engine.dialect.name != "postgresql":
        return
    cols = ", ".join(_COUNT_COLUMNS)
    sums = ", ".join(f"sum({n})" for n in _COUNT_COLUMNS)
    try:
        with engine.begin() as conn:
            if not conn.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({_FOLD_LOCK})"
                                        ).scalar():
                return
            conn.exec_driver_sql(
                f"WITH gone AS (DELETE FROM store_counts RETURNING {cols}) "
                f"INSERT INTO store_counts ({cols}) SELECT {sums} FROM gone HAVING count(*) > 0")
            conn.exec_driver_sql(
                "WITH gone AS (DELETE FROM embedding_counts RETURNING model_version, "
                "current_vectors) INSERT INTO embedding_counts (model_version, current_vectors) "
                "SELECT model_version, sum(current_vectors) FROM gone GROUP BY model_version")
    except DBAPIError as exc:  # a reader's role: the next writer's status folds them
        logger.debug("store counts not folded: %s", _cause(exc))


def drop_retired_indexes(engine: Engine) -> list[str]:
    """Drop the indexes an older store has that the schema retired (:data:`RETIRED_INDEXES`).

    Only their upkeep and disk go: no query reads them. On PostgreSQL the drop waits at
    most :data:`DDL_LOCK_TIMEOUT_MS` for its lock (a long transaction on the table, a
    running ingest). A drop that fails (that wait, a read-only database, a role that does
    not own the table) is a warning: the store works as it is, and the next start tries
    again.

    Returns:
        The indexes dropped.
    """
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import DBAPIError

    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    dropped: list[str] = []
    for table, index in RETIRED_INDEXES:
        if table not in tables or index not in {i["name"] for i in inspector.get_indexes(table)}:
            continue
        quoted = engine.dialect.identifier_preparer.quote(index)
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(text(f"SET LOCAL lock_timeout = {DDL_LOCK_TIMEOUT_MS}"))
                conn.execute(text(f"DROP INDEX IF EXISTS {quoted}"))
        except DBAPIError as exc:  # a lock held too long, a read-only database, not the owner
            logger.warning(
                "retired index %s not dropped (%s); it costs write time only: the next start "
                "tries again (a start as the tables' owner, on a writable database, drops it)",
                index, _cause(exc),
            )  # fmt: skip
            continue
        dropped.append(index)
    if dropped:
        logger.warning("store schema upgraded: dropped %s (read by no query)", ", ".join(dropped))
    return dropped


def _cause(exc: BaseException) -> str:
    """The first line of a database error's own message (not SQLAlchemy's wrapping)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: The ``checkpoints`` row (scope, key) that holds this store's identity.
_STORE_ID = ("store", "id")
#: The file in a folder of the data directory that names the store it was written for.
STORE_MARK = ".litpulse-store"


def store_id(engine: Engine) -> str:
    """This store's identity: a random id made on first use, kept in ``checkpoints``.

    A data directory may meet several stores (the default SQLite store, then a
    ``LITPULSE_DATABASE_URL`` tried beside it): what one store prunes as folders none of
    its rows name must be folders it wrote itself (:func:`mark_folder`).
    """
    scope, key = _STORE_ID
    c = checkpoints.c
    query = select(c.value).where(c.scope == scope, c.key == key)
    with engine.connect() as conn:
        value = conn.execute(query).scalar()
    if value is None:
        with engine.begin() as conn:  # two first callers: one id wins, both read it
            upsert(conn, checkpoints, [{"scope": scope, "key": key, "status": "done",
                                        "value": {"id": uuid.uuid4().hex},
                                        "updated_at": utcnow()}],
                   keys=["scope", "key"], update=[])  # fmt: skip
        with engine.connect() as conn:
            value = conn.execute(query).scalar_one()
    return str(value["id"])


def mark_folder(folder: Path, store: str) -> None:
    """Record in ``folder`` (a folder a store writes) the :func:`store_id` it belongs to."""
    (folder / STORE_MARK).write_text(store + "\n", encoding="utf-8")


def folder_store(folder: Path) -> str | None:
    """The store that marked ``folder`` (:func:`mark_folder`); ``None`` for a folder
    written before folders were marked."""
    try:
        return (folder / STORE_MARK).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def dispose_engines() -> None:
    """Close every pooled connection (tests, forked workers)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


#: Page size of a new SQLite store (one that has none yet; an existing file keeps its own).
#: An article row with its JSON columns is several KB: with SQLite's default 4 KiB pages
#: most rows spill into overflow pages, and a bulk load writes (and checkpoints) many more
#: WAL frames.
SQLITE_PAGE_SIZE = 16384


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # before WAL: fixed from then on
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


def upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    keys: Iterable[str],
    update: Iterable[str] | None = None,
) -> None:
    """Insert rows, or update the listed columns of the rows whose keys exist.

    Args:
        conn: An open connection (inside the caller's transaction).
        table: The target table.
        rows: Row mappings, all with the same keys.
        keys: The conflict target (primary key or unique columns).
        update: Columns to overwrite on conflict; ``None`` means every non-key column
            present in the rows; an empty iterable means "do nothing on conflict".
    """
    if not rows:
        return
    key_cols = list(keys)
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table)
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table)
    else:  # pragma: no cover - other dialects are not supported
        raise NotImplementedError(f"upsert is not implemented for {dialect}")
    cols = list(update) if update is not None else [c for c in rows[0] if c not in key_cols]
    if cols:
        stmt = stmt.on_conflict_do_update(
            index_elements=key_cols, set_={c: stmt.excluded[c] for c in cols}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=key_cols)
    # stay below SQLite's 32766 bound parameters per statement
    per_row = max(1, len(rows[0]))
    chunk = max(1, 30000 // per_row)
    for start in range(0, len(rows), chunk):
        conn.execute(stmt, list(rows[start : start + chunk]))


#: SQLite settings of a connection during a bulk load (:func:`bulk_load`) and after it.
_BULK_PRAGMAS = {"cache_size": (-65536, -2000), "wal_autocheckpoint": (16384, 1000)}


@contextmanager
def bulk_load(engine: Engine) -> Iterator[None]:
    """Tune SQLite for a long series of large write transactions while the block runs.

    Connections the pool hands out inside the block get a 64 MiB page cache and a WAL
    checkpointed every 64 MiB instead of every 4 MiB (fewer, larger checkpoints); they
    are set back at their next checkout after the block. ``journal_mode=WAL`` and
    ``synchronous=NORMAL`` stay as :func:`connect` sets them for every connection: a
    commit is atomic and survives a killed process; a power cut can lose the last
    commits but never leaves a torn one, so the store is always at the end of some
    committed batch (its rows and their source positions together), which is what
    resuming relies on. PostgreSQL is left as it is.
    """
    if engine.dialect.name != "sqlite":
        yield
        return
    # the listener is registered once per engine (adding or removing one while another
    # thread checks a connection out mutates the list SQLAlchemy iterates); the block only
    # counts itself in, so concurrent blocks and other threads' connections are safe
    with _BULK_LOCK:
        _listen_bulk(engine)
        _BULK_DEPTH[engine] += 1
    try:
        yield
    finally:
        with _BULK_LOCK:
            _BULK_DEPTH[engine] -= 1


#: Engines with the :func:`_on_checkout` listener, and how many :func:`bulk_load` blocks
#: are open on each.
_BULK_DEPTH: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()
_BULK_LOCK = threading.Lock()


def _listen_bulk(engine: Engine) -> None:
    """Register the engine's one checkout listener (call under ``_BULK_LOCK``): bulk-load
    pragmas on a connection checked out inside a :func:`bulk_load` block of the engine,
    the usual ones back on one checked out after it."""
    if engine in _BULK_DEPTH:
        return
    _BULK_DEPTH[engine] = 0
    ref = weakref.ref(engine)

    def on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        owner = ref()
        bulk = owner is not None and _BULK_DEPTH.get(owner, 0) > 0
        if bulk and not record.info.get("litpulse_bulk"):
            _set_pragmas(dbapi_conn, 0)
            record.info["litpulse_bulk"] = True
        elif not bulk and record.info.pop("litpulse_bulk", False):
            _set_pragmas(dbapi_conn, 1)

    event.listen(engine, "checkout", on_checkout)


def _set_pragmas(dbapi_conn: Any, which: int) -> None:
    cur = dbapi_conn.cursor()
    for name, values in _BULK_PRAGMAS.items():
        cur.execute(f"PRAGMA {name}={values[which]}")
    cur.close()


#: Why SQLite's one-row ``executemany`` (``bulk_update`` before SQLite 3.33) runs ``UPDATE
#: OR FAIL``: a table with triggers (``store_counts``' on ``articles``, :func:`keep_counts`)
#: makes every execution a write of several rows, and with the default ``ABORT`` SQLite
#: opens a statement journal for each, copying each page it changes (16 KiB) first. ``FAIL``
#: needs none (unless an index on an expression is written: see :func:`_sqlite_rows`), and
#: for one row it is ``ABORT``: the constraint fails before the row or its AFTER trigger
#: writes anything, the same error is raised, the transaction is the caller's to roll back.
SQLITE_FAIL = "OR FAIL"


def bulk_upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[Sequence[Any]],
    *,
    columns: Sequence[str],
    keys: Sequence[str],
    update: Sequence[str],
    json_text: Iterable[str] = (),
) -> None:
    """:func:`upsert` through the driver's bulk path: one set-based statement per call.

    PostgreSQL: the rows are ``COPY``-ed into a temporary staging table shaped like
    ``table`` (with its columns' compression) and merged with one ``INSERT … SELECT …
    ON CONFLICT``. SQLite: one
    ``executemany`` of ``INSERT … ON CONFLICT`` (in-process, no round trips). Values go
    through the columns' own bind conversions (dates, UTC timestamps, booleans), so the
    stored values are those :func:`upsert` stores.

    Args:
        conn: An open connection (inside the caller's transaction).
        table: The target table.
        rows: Value sequences, one value per column of ``columns`` in its order (the
            driver's rows are built straight from them: no mapping per row).
        columns: The columns written.
        keys: The conflict target.
        update: Columns to overwrite on conflict (empty: do nothing on conflict).
        json_text: JSON columns whose values are already serialised JSON text.
    """
    if not rows:
        return
    cols = list(columns)
    values = _bound_rows(conn, table, cols, rows, json_text)
    q = conn.dialect.identifier_preparer
    name = q.format_table(table)
    col_sql = ", ".join(q.quote(c) for c in cols)
    if update:
        action = "DO UPDATE SET " + ", ".join(
            f"{q.quote(c)} = excluded.{q.quote(c)}" for c in update
        )
    else:
        action = "DO NOTHING"
    conflict = f"ON CONFLICT ({', '.join(q.quote(k) for k in keys)}) {action}"
    if conn.dialect.name == "postgresql":
        stage = q.quote(f"_stage_{table.name}")
        # with the table's column compression (PostgreSQL 14+): a staged value is compressed
        # once, as the table stores it, not with pglz here and again when it is merged
        version = conn.dialect.server_version_info or (0,)
        like = " INCLUDING COMPRESSION" if version >= (14,) else ""
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {name}{like}) ON COMMIT DELETE ROWS"
        )
        conn.exec_driver_sql(f"TRUNCATE {stage}")
        _copy(conn, stage, col_sql, values, _binary_types(conn, table, cols))
        conn.exec_driver_sql(
            f"INSERT INTO {name} ({col_sql}) SELECT {col_sql} FROM {stage} {conflict}"
        )
        return
    if conn.dialect.name != "sqlite":  # pragma: no cover - other dialects are not supported
        raise NotImplementedError(f"bulk_upsert is not implemented for {conn.dialect.name}")
    _sqlite_rows(conn, f"INSERT INTO {name} ({col_sql}) VALUES", conflict, len(cols), values)


def bulk_insert(
    conn: Connection,
    table: Table,
    rows: Sequence[Sequence[Any]],
    *,
    columns: Sequence[str],
    json_text: Iterable[str] = (),
) -> None:
    """Insert rows (value sequences in the order of ``columns``) whose keys the table does
    not hold (the caller knows: a conflict fails).

    Like :func:`bulk_upsert` (the same bind conversions) without the conflict handling:
    PostgreSQL ``COPY`` straight into ``table`` (no staging table, no merge); SQLite
    one ``executemany`` of a plain ``INSERT``.
    """
    if not rows:
        return
    cols = list(columns)
    insert_tuples(conn, table, cols, _bound_rows(conn, table, cols, rows, json_text))


def insert_tuples(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert value tuples, already in the driver's form, in one bulk statement.

    PostgreSQL: ``COPY`` into ``table``; SQLite: ``executemany`` on the DBAPI cursor
    (no SQLAlchemy work per row). For new keys only: a conflict raises.
    """
    q = conn.dialect.identifier_preparer
    name = q.format_table(table)
    col_sql = ", ".join(q.quote(c) for c in columns)
    if conn.dialect.name == "postgresql":
        _copy(conn, name, col_sql, rows, _binary_types(conn, table, columns))
        return
    _sqlite_rows(conn, f"INSERT INTO {name} ({col_sql}) VALUES", "", len(columns), rows)


#: Rows per statement of :func:`_sqlite_rows`, at most (fewer where the connection binds
#: fewer values: SQLite before 3.32 binds 999 a statement, 32,766 since)
SQLITE_ROWS_PER_STATEMENT = 256


def _sqlite_rows(
    conn: Connection, head: str, tail: str, width: int, rows: Iterable[Sequence[Any]]
) -> None:
    """SQLite: ``head (?, …), (?, …) … tail`` for ``rows`` (``width`` values each), a few
    hundred rows a statement.

    Not one ``executemany`` execution a row: on a table with row triggers (the counts'
    of :func:`keep_counts`) and an index on an expression (``ix_articles_doi``) every
    execution opens a statement journal and copies each page it changes (16 KiB) first,
    ~15-20 µs a row of ``articles``; once a statement of many rows, it costs next to
    nothing. A failure rolls the statement back as before (``ABORT``).
    """
    from itertools import chain, islice

    it = iter(rows)
    cur = _sqlite_cursor(conn)
    bound = cur.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # 999 before 3.32
    per = max(1, min(SQLITE_ROWS_PER_STATEMENT, bound // max(1, width)))
    one = "(" + ", ".join("?" * width) + ")"
    while chunk := list(islice(it, per)):
        sql = f"{head} {', '.join([one] * len(chunk))} {tail}"
        with driver_errors(conn, sql if len(chunk) == 1 else f"{head} {one} … {tail}"):
            cur.execute(sql, list(chain.from_iterable(chunk)))


def _sqlite_cursor(conn: Connection) -> Any:
    """A DBAPI cursor of ``conn``'s SQLite connection (in its transaction)."""
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]


@contextmanager
def driver_errors(conn: Connection, statement: str) -> Iterator[None]:
    """The driver's errors of a bulk path that goes past SQLAlchemy (its own cursor,
    ``COPY``: here and in :mod:`ingest.icite_snapshot`'s staging) raised as SQLAlchemy's
    (:class:`~sqlalchemy.exc.OperationalError` and the rest, the driver's error as
    ``orig``), as every other statement's are: a deadlock is
    run again (:func:`retry_conflicts`), a full disk or a waited-out lock is told as what
    it is, never a traceback of the driver's."""
    base = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except base as exc:
        raise DBAPIError.instance(statement, None, exc, base, dialect=conn.dialect) from exc


#: PostgreSQL types (by the name SQLAlchemy compiles, up to a parenthesis) that
#: :func:`_copy` sends in ``COPY``'s binary format, and the type psycopg dumps the
#: values as. JSON goes as text: the binary form of ``json`` is its text, and the
#: values are already serialised (:func:`_bound_rows`); psycopg's ``json`` dumper
#: would serialise the text again.
_BINARY_COPY_TYPES = {
    "BIGINT": "int8", "INTEGER": "int4", "SMALLINT": "int2", "FLOAT": "float8",
    "DOUBLE PRECISION": "float8", "BOOLEAN": "bool", "DATE": "date", "TEXT": "text",
    "VARCHAR": "text", "JSON": "text", "TIMESTAMP WITH TIME ZONE": "timestamptz",
}  # fmt: skip


def _binary_types(conn: Connection, table: Table, columns: Sequence[str]) -> tuple[str, ...] | None:
    """What psycopg dumps each of ``columns`` as in a binary ``COPY`` into ``table``;
    ``None`` when a column's type is not one of :data:`_BINARY_COPY_TYPES`."""
    return _binary_types_of(conn.dialect, table, tuple(columns))


@functools.lru_cache(maxsize=64)
def _binary_types_of(
    dialect: Any, table: Table, columns: tuple[str, ...]
) -> tuple[str, ...] | None:
    out: list[str] = []
    for name in columns:
        compiled = table.c[name].type.dialect_impl(dialect).compile(dialect=dialect)
        kind = _BINARY_COPY_TYPES.get(compiled.split("(", 1)[0].strip())
        if kind is None:
            return None
        out.append(kind)
    return tuple(out)


def _copy(
    conn: Connection,
    name: str,
    col_sql: str,
    rows: Iterable[Sequence[Any]],
    types: Sequence[str] | None = None,
) -> None:
    """``COPY`` rows into the table ``name``: in the binary format when ``types`` (the
    psycopg type of each column, :func:`_binary_types`) are given, else as text.

    Binary spares the server the text input functions (timestamps, dates, numbers,
    escapes): about a quarter of its CPU per ``articles`` row; the values stored are the
    same.
    """
    driver = conn.connection.driver_connection
    sql = f"COPY {name} ({col_sql}) FROM STDIN{' (FORMAT BINARY)' if types is not None else ''}"
    with driver_errors(conn, sql), driver.cursor() as cur:  # type: ignore[union-attr]
        with cur.copy(sql) as copy:
            if types is not None:
                copy.set_types(types)
            write = copy.write_row
            for vals in rows:
                write(vals)


def _bound_rows(
    conn: Connection,
    table: Table,
    cols: Sequence[str],
    rows: Sequence[Sequence[Any]],
    json_text: Iterable[str],
) -> Iterable[Sequence[Any]]:
    """The rows (value sequences in the order of ``cols``) through the columns' bind
    conversions.

    Column by column, not row by row: a conversion is a pure function of its value and a
    batch repeats values (one timestamp, the same dates, two booleans), so each column's
    distinct values are converted once and the column is mapped through them, with no
    Python step per row (the rows go back together with ``zip``). Values equal under
    ``==`` share one conversion (``True`` and ``1``, ``2`` and ``2.0``): the column types
    written here convert such values alike. A column whose conversion gives back every
    value (same type, equal) is left as it is; rows with nothing else to convert are
    returned as they are.
    """
    raw = set(json_text)
    dialect = conn.dialect
    procs: list[tuple[int, Callable[[Any], Any]]] = []
    for i, name in enumerate(cols):
        if name in raw:
            continue
        bind = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        if bind is not None:
            procs.append((i, bind))
    if not procs or not rows:
        return rows
    # the distinct values of each converted column first: where the conversion gives
    # each value back (the same type, equal: booleans, UTC timestamps on PostgreSQL),
    # the column is left as it is, and rows with no other column to convert are
    # returned without being taken apart
    todo: list[tuple[int, Callable[[Any], Any], dict[Any, Any] | None]] = []
    for i, proc in procs:
        try:
            seen = {v: None if v is None else proc(v) for v in set(map(itemgetter(i), rows))}
        except TypeError:  # an unhashable value: convert each
            todo.append((i, proc, None))
            continue
        if any(type(w) is not type(v) or w != v for v, w in seen.items()):
            todo.append((i, proc, seen))
    if not todo:
        return rows
    columns: list[Any] = list(zip(*rows, strict=True))
    for i, proc, mapping in todo:
        column = columns[i]
        if mapping is None:
            columns[i] = [None if v is None else proc(v) for v in column]
        else:
            columns[i] = list(map(mapping.__getitem__, column))
    return list(zip(*columns, strict=True))


def id_in(conn: Connection, column: str, ids: Iterable[int]) -> tuple[str, Any]:
    """``column IN ids`` as SQL with one bound parameter, and that parameter.

    One parameter whatever the number of ids (no per-value bind, nothing compiled per
    call): PostgreSQL ``column = ANY(%s::bigint[])`` with an array literal, SQLite
    ``column IN (SELECT value FROM json_each(?))`` with a JSON list. For
    :meth:`Connection.exec_driver_sql`.
    """
    pg = conn.dialect.name == "postgresql"
    return _id_in_sql(pg, column, "%s" if pg else "?"), _id_list(pg, ids)


def id_in_clause(conn: Connection, column: str, ids: Iterable[int]) -> TextClause:
    """:func:`id_in` as a clause of a SQLAlchemy Core statement (``WHERE``): the same one
    parameter, named ``ids``."""
    pg = conn.dialect.name == "postgresql"
    clause = text(_id_in_sql(pg, column, ":ids"))
    # untyped: a VARCHAR parameter would be cast to text first, and PostgreSQL would then
    # compare each row with every id in turn (no hashed array, no plan from the ids)
    return clause.bindparams(bindparam("ids", _id_list(pg, ids), type_=NullType()))


def _id_in_sql(pg: bool, column: str, mark: str) -> str:
    if pg:
        return f"{column} = ANY(CAST({mark} AS bigint[]))"
    return f"{column} IN (SELECT value FROM json_each({mark}))"


def _id_list(pg: bool, ids: Iterable[int]) -> str:
    return pg_int_array(ids) if pg else json.dumps([int(i) for i in ids])


def pg_array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal of numbers, booleans, text and ``None`` (cast it).

    Passing the literal as text and casting it server-side (``%s::bigint[]``) is many
    times cheaper than the driver's per-element adaptation of a Python list.
    """
    parts: list[str] = []
    for v in values:
        if v is None:
            parts.append("NULL")
        elif isinstance(v, bool):
            parts.append("t" if v else "f")
        elif isinstance(v, int | float):
            parts.append(repr(v) if isinstance(v, float) else str(v))
        else:
            text = str(v).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'"{text}"')
    return "{" + ",".join(parts) + "}"


def pg_int_array(values: Iterable[int]) -> str:
    """:func:`pg_array` of integers, without a Python step per element."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


#: PostgreSQL array element types of the column types :func:`bulk_update` handles.
PG_ARRAY_TYPES = {"BigInteger": "bigint", "Integer": "integer", "String": "text",
                  "Text": "text", "Boolean": "boolean", "Float": "double precision"}  # fmt: skip


def bulk_update(
    conn: Connection,
    table: Table,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Set ``columns`` of the rows whose ``key`` is given, in one statement.

    Args:
        conn: An open connection (inside the caller's transaction).
        table: The table.
        key: Its key column; rows with an unknown key are ignored.
        columns: The columns set.
        rows: ``(key, *values)`` tuples (plain numbers and text).

    PostgreSQL joins ``unnest`` of one array per column (array literals:
    :func:`pg_array`); SQLite (3.33+) joins ``json_each`` of one JSON parameter (older
    SQLite: ``executemany``).
    """
    if not rows:
        return
    q = conn.dialect.identifier_preparer
    name = q.format_table(table)
    names = [key, *columns]
    if conn.dialect.name == "postgresql":
        types = [PG_ARRAY_TYPES[type(table.c[c].type).__name__] for c in names]
        arrays = ", ".join(f"%s::{t}[]" for t in types)
        sets = ", ".join(f"{q.quote(c)} = d.c{i}" for i, c in enumerate(columns, 1))
        conn.exec_driver_sql(
            f"UPDATE {name} AS t SET {sets} FROM unnest({arrays}) "
            f"AS d({', '.join(f'c{i}' for i in range(len(names)))}) WHERE t.{q.quote(key)} = d.c0",
            tuple(pg_array(col) for col in zip(*rows, strict=True)),
        )
        return
    if sqlite3.sqlite_version_info >= (3, 33):
        picks = ", ".join(f"json_extract(value, '$[{i}]') AS c{i}" for i in range(len(names)))
        sets = ", ".join(f"{q.quote(c)} = d.c{i}" for i, c in enumerate(columns, 1))
        conn.exec_driver_sql(
            f"UPDATE {name} AS t SET {sets} FROM (SELECT {picks} FROM json_each(?)) AS d "
            f"WHERE t.{q.quote(key)} = d.c0",
            (json.dumps([list(r) for r in rows]),),
        )
        return
    sets = ", ".join(f"{q.quote(c)} = ?" for c in columns)  # pragma: no cover - old SQLite
    conn.exec_driver_sql(  # pragma: no cover
        f"UPDATE OR FAIL {name} SET {sets} WHERE {q.quote(key)} = ?",  # see SQLITE_FAIL
        [(*r[1:], r[0]) for r in rows]
    )


# ---------------------------------------------------------------------------------- leases

#: Seconds a lease lives without renewal. Its heartbeat renews it every quarter of this,
#: so a holder that stops beating (killed on another host, frozen, cut off from the
#: database) blocks the others at most this long; one on this host whose process is gone
#: is taken over at once.
LEASE_TTL_S = 120.0
#: Longest TTL a lease may ask for.
_MAX_TTL_S = 24 * 3600.0


class Lease:
    """A named lease held in the ``locks`` table and renewed by a heartbeat thread.

    Made by :func:`acquire_lease`, released by :meth:`release` (or ``with lease:``).
    The heartbeat pushes the expiry ``ttl_s`` ahead every ``ttl_s / 4`` seconds; a
    heartbeat that finds another holder marks the lease :attr:`lost`. Work done under
    a lease calls :meth:`check` before each write phase and :meth:`verify` inside the
    transaction that commits its result, so a process that lost its lease stops before
    writing anything more (:class:`~litpulse.core.errors.LeaseLostError`).

    Example:
        >>> lease = acquire_lease(engine, "index-publish")  # doctest: +SKIP
        >>> with lease:  # doctest: +SKIP
        ...     lease.check()  # raises LeaseLostError once another process took it
    """

    def __init__(
        self, engine: Engine, name: str, holder: str, ttl_s: float, *, heartbeat: bool = True
    ) -> None:
        self.engine, self.name, self.holder, self.ttl_s = engine, name, holder, ttl_s
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if heartbeat:
            # the thread holds only a weak reference: a lease dropped without release
            # stops beating and expires instead of being renewed for the process's life
            self._thread = threading.Thread(
                target=_heartbeat,
                args=(weakref.ref(self), self._stop, max(0.05, ttl_s / 4)),
                name=f"lease-{name}",
                daemon=True,
            )
            self._thread.start()

    @property
    def lost(self) -> bool:
        """Whether a renewal found the lease held by another process."""
        return self._lost.is_set()

    def renew(self, conn: Connection | None = None) -> bool:
        """Push the expiry ``ttl_s`` ahead; ``False`` (and :attr:`lost`) when another
        process holds the lease now.

        Args:
            conn: Renew inside this open transaction (default: a transaction of its own).
        """
        if self.lost:
            return False

        def push(c: Connection) -> int:
            ahead = db_now(c) + dt.timedelta(seconds=self.ttl_s)  # the takers' clock too
            return int(c.execute(
                update(locks)
                .where(locks.c.name == self.name, locks.c.holder == self.holder)
                .values(expires_at=ahead)
            ).rowcount)  # fmt: skip

        if conn is None:
            with self.engine.begin() as own:
                n = push(own)
        else:
            n = push(conn)
        if not n:
            if not self._lost.is_set():
                logger.error("lease %s was taken over: %s stops", self.name, self.holder)
            self._lost.set()
        return bool(n)

    def check(self) -> None:
        """Make sure this process still holds the lease (asks the database).

        Raises:
            LeaseLostError: Another process took the lease over.
        """
        if not self.renew():
            raise self._lost_error()

    def verify(self, conn: Connection) -> None:
        """:meth:`check` inside the caller's transaction, before the writes it commits.

        The renewal locks the lease row (PostgreSQL) or the database (SQLite) until the
        transaction ends, so no takeover can slip in between this check and the commit.

        Raises:
            LeaseLostError: Another process took the lease over (roll back).
        """
        if not self.renew(conn):
            raise self._lost_error()

    def release(self) -> None:
        """Stop the heartbeat and give the lease back (only if still ours)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        release_lease(self.engine, self.name, self.holder)

    def _lost_error(self) -> LeaseLostError:
        return LeaseLostError(
            f"lease {self.name!r} of {self.holder} was taken over by another process "
            "(its heartbeat had stopped for longer than the lease lives): stopping before "
            "the next write"
        )

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lease({self.name!r}, holder={self.holder!r}, lost={self.lost})"


def _heartbeat(ref: weakref.ref[Lease], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        lease = ref()
        if lease is None:
            return
        try:
            if not lease.renew():
                return
        except Exception as exc:  # noqa: BLE001 - keep beating through a database hiccup
            logger.warning("renewing lease %s failed: %s", lease.name, exc)
        del lease


def default_holder() -> str:
    """``host:pid:start:boot:random``, unique per process and call.

    ``start`` identifies the process (its start time), so a PID reused later by another
    process does not pass for the holder; ``boot`` identifies the machine boot and PID
    namespace, so a container with the same host name cannot judge our PID.
    """
    pid = os.getpid()
    start = _process_start(pid) or "-"
    return f"{socket.gethostname()}:{pid}:{start}:{_boot_mark()}:{uuid.uuid4().hex[:8]}"


def holder_alive(holder: str) -> bool:
    """False only when ``holder`` is provably dead: a process of this host and PID
    namespace that no longer exists, or whose PID now belongs to a later process.

    Holders of other hosts (or not in :func:`default_holder`'s form) count as alive:
    only their lease's expiry tells.
    """
    parts = holder.split(":")
    if len(parts) < 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return True
    pid = int(parts[1])
    if len(parts) >= 5:  # host:pid:start:boot:random
        recorded, boot = parts[2], parts[3]
        if boot != _boot_mark():
            return True  # same host name, another machine or PID namespace
        current = _process_start(pid)
        if current is None:
            return False
        return recorded == "-" or current == "?" or _same_start(recorded, current)
    return _process_start(pid) is not None  # older host:pid:random holders


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started: ``t<ticks since boot>`` (Linux), ``c<epoch s>``
    (elsewhere), ``?`` when it cannot be read, ``None`` when no such process lives."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rpartition(")")[2].split()
        if fields[0] in ("Z", "X"):  # zombie: dead, waiting to be reaped
            return None
        return f"t{fields[19]}"
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return _signal_probe(pid)  # gone, or hidden from us (hidepid)
    except (OSError, IndexError):
        pass
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"c{proc.create_time():.2f}"
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return "?"


def _signal_probe(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except OSError:  # exists, but not ours to signal
        return "?"
    return "?"


def _same_start(recorded: str, current: str) -> bool:
    if recorded[:1] == current[:1] == "c":  # wall-clock based: allow for clock steps
        try:
            return abs(float(recorded[1:]) - float(current[1:])) < 1.0
        except ValueError:
            return False
    return recorded == current


@functools.cache
def _boot_mark() -> str:
    """Eight hex digits naming this boot of this machine and our PID namespace."""
    parts = []
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            parts.append(fh.read().strip())
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        return "-"
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:8]


def acquire_lease(
    engine: Engine,
    name: str,
    *,
    ttl_s: float = LEASE_TTL_S,
    holder: str | None = None,
    heartbeat: bool = True,
) -> Lease | None:
    """Take the lease ``name``; ``None`` when a live holder has it.

    The lease is free when no row names it, when its holder's heartbeat stopped for
    longer than the TTL (expired), or when its holder is provably dead
    (:func:`holder_alive`: a process of this host that is gone). Works across processes
    and hosts on PostgreSQL and SQLite: the insert is atomic on the primary key, and a
    takeover is a conditional update naming the previous holder, so two processes never
    take the same lease. Expiries are stamped and judged by the database's clock
    (:func:`db_now`, as the rows are), never a host's: a holder whose host's clock lags
    the taker's by more than the TTL is not taken for expired while it renews.

    Args:
        engine: The store.
        name: The lease (``index-publish``, ``nightly``, ``retrain``…).
        ttl_s: Seconds the lease lives without renewal.
        holder: Who holds it (default :func:`default_holder`).
        heartbeat: Renew it from a background thread until released.

    Raises:
        ConfigError: ``ttl_s`` is not within (0, 86400].
    """
    if not (isinstance(ttl_s, int | float) and 0 < ttl_s <= _MAX_TTL_S):
        raise ConfigError(f"a lease TTL must be within (0, {_MAX_TTL_S:g}] seconds, got {ttl_s!r}")
    holder = holder or default_holder()
    ttl = dt.timedelta(seconds=ttl_s)
    for _ in range(5):
        try:
            with engine.begin() as conn:
                now = db_now(conn)  # one clock for every holder and taker (hosts drift)
                conn.execute(insert(locks).values(name=name, holder=holder,
                                                  expires_at=now + ttl, acquired_at=now))
            return Lease(engine, name, holder, ttl_s, heartbeat=heartbeat)
        except IntegrityError:
            pass
        with engine.connect() as conn:
            row = conn.execute(
                select(locks.c.holder, locks.c.expires_at).where(locks.c.name == name)
            ).first()
            now = db_now(conn)
        if row is None:
            continue  # released meanwhile
        expired = row.expires_at < now
        dead = not expired and not holder_alive(row.holder)
        if not (expired or dead):
            logger.info("lease %s is held by %s until %s", name, row.holder, row.expires_at)
            return None
        where = [locks.c.name == name, locks.c.holder == row.holder]
        if not dead:
            where.append(locks.c.expires_at < now)  # unless its heartbeat came back
        with engine.begin() as conn:
            taken = conn.execute(
                update(locks).where(*where).values(holder=holder, expires_at=now + ttl,
                                                   acquired_at=now)
            ).rowcount
        if taken:
            why = "its process is gone" if dead else f"it expired at {row.expires_at}"
            logger.warning("took lease %s over from %s: %s", name, row.holder, why)
            return Lease(engine, name, holder, ttl_s, heartbeat=heartbeat)
    return None


def take_lease(
    engine: Engine,
    name: str,
    busy: Callable[[str], Exception],
    *,
    ttl_s: float = LEASE_TTL_S,
    wait_s: float = 0.0,
) -> Lease:
    """Take the lease ``name`` (:func:`acquire_lease`), or raise ``busy(who)``.

    Args:
        engine: The store's engine.
        name: The lease.
        busy: Makes the error raised when a live holder keeps it: it is given who holds
            it (``HOLDER, lease NAME until ISO unless renewed``) for the message.
        ttl_s: As for :func:`acquire_lease`.
        wait_s: Seconds to keep trying (every few seconds) before giving up.

    Example:
        >>> lease = take_lease(engine, "digest", DigestBusyError)  # doctest: +SKIP
    """
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        lease = acquire_lease(engine, name, ttl_s=ttl_s)  # takes a dead one over
        if lease is not None:
            return lease
        if time.monotonic() >= deadline:
            break
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    held = lease_holder(engine, name)
    until = f" until {iso(held[1])} unless renewed" if held else ""
    raise busy(f"{held[0] if held else '?'}, lease {name!r}{until}")


def lease_holder(engine: Engine, name: str) -> tuple[str, dt.datetime] | None:
    """The holder of lease ``name`` and when it expires unless renewed, or ``None``."""
    with engine.connect() as conn:
        row = conn.execute(
            select(locks.c.holder, locks.c.expires_at).where(locks.c.name == name)
        ).first()
    return None if row is None else (str(row.holder), row.expires_at)


@dataclass(frozen=True)
class HeldLease:
    """A lease held now (:func:`live_lease`).

    Attributes:
        holder: Who holds it (:func:`default_holder`).
        since: When the holder took it (``None``: a release that did not record it).
        until: When it expires unless its holder renews it.
    """

    holder: str
    since: dt.datetime | None
    until: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "since": iso(self.since), "until": iso(self.until)}


def live_lease(engine: Engine, name: str) -> HeldLease | None:
    """Who holds lease ``name``, since when and until when, when it is held now
    (unexpired, its process alive: :func:`holder_alive`), else ``None``."""
    with engine.connect() as conn:
        row = conn.execute(
            select(locks.c.holder, locks.c.acquired_at, locks.c.expires_at)
            .where(locks.c.name == name)
        ).first()
        now = db_now(conn)  # the clock leases are stamped by
    if row is None or not (row.expires_at > now and holder_alive(row.holder)):
        return None
    return HeldLease(str(row.holder), row.acquired_at, row.expires_at)


def live_holder(engine: Engine, name: str) -> str | None:
    """The holder of lease ``name`` when it holds it now (:func:`live_lease`), else ``None``."""
    held = live_lease(engine, name)
    return None if held is None else held.holder


def release_lease(engine: Engine, name: str, holder: str) -> None:
    """Give the lease back (only if ``holder`` still holds it)."""
    with engine.begin() as conn:
        conn.execute(delete(locks).where(locks.c.name == name, locks.c.holder == holder))
