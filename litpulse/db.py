"""Engines, schema creation and the dialect-aware helpers every store uses.

SQLite (the embedded default) and PostgreSQL run the same code: bulk upserts go through
:func:`upsert`, which emits ``INSERT … ON CONFLICT`` for either dialect.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, select
from sqlalchemy.engine import Connection

from litpulse.schema import locks, metadata
from litpulse.settings import Settings

__all__ = [
    "connect",
    "upsert",
    "utcnow",
    "Lease",
    "acquire_lease",
    "release_lease",
    "default_holder",
    "holder_alive",
]

logger = logging.getLogger(__name__)

_ENGINES: dict[str, Engine] = {}


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def connect(settings: Settings, *, create: bool = True) -> Engine:
    """The engine of the configured store, creating missing tables on first use.

    SQLite files get WAL mode and a busy timeout so that a reader (the API) and a
    writer (the nightly job) can work at once.
    """
    url = settings.effective_database_url
    engine = _ENGINES.get(url)
    if engine is None:
        if url.startswith("sqlite"):
            if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
                os.makedirs(os.path.dirname(url[len("sqlite:///") :]) or ".", exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 60})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        if create:
            metadata.create_all(engine)
        _ENGINES[url] = engine
    return engine


def dispose_engines() -> None:
    """Close every pooled connection (tests, forked workers)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
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


# ---------------------------------------------------------------------------------- leases


class Lease:
    """A named lease held in the database; see :func:`acquire_lease`."""

    def __init__(self, engine: Engine, name: str, holder: str) -> None:
        self.engine, self.name, self.holder = engine, name, holder

    def release(self) -> None:
        release_lease(self.engine, self.name, self.holder)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def default_holder() -> str:
    """``host:pid:random`` — unique per process and call."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_alive(holder: str) -> bool:
    """False only for a ``host:pid:…`` holder on this host whose process is gone."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lease(
    engine: Engine, name: str, *, ttl_s: float = 3600.0, holder: str | None = None
) -> Lease | None:
    """Take the lease ``name`` if it is free or expired; ``None`` when someone holds it.

    Works across processes and hosts on PostgreSQL and SQLite: the insert is atomic
    on the primary key, and an expired lease is taken over with a conditional update.
    """
    from sqlalchemy import delete, insert
    from sqlalchemy.exc import IntegrityError

    holder = holder or default_holder()
    now = utcnow()
    expires = now + dt.timedelta(seconds=ttl_s)
    with engine.begin() as conn:
        conn.execute(delete(locks).where(locks.c.name == name, locks.c.expires_at < now))
    try:
        with engine.begin() as conn:
            conn.execute(insert(locks).values(name=name, holder=holder, expires_at=expires))
    except IntegrityError:
        with engine.connect() as conn:
            current = conn.execute(select(locks.c.holder).where(locks.c.name == name)).scalar()
        logger.info("lease %s is held by %s", name, current)
        return None
    return Lease(engine, name, holder)


def release_lease(engine: Engine, name: str, holder: str) -> None:
    """Give the lease back (only if ``holder`` still holds it)."""
    from sqlalchemy import delete

    with engine.begin() as conn:
        conn.execute(delete(locks).where(locks.c.name == name, locks.c.holder == holder))
