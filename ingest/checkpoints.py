"""Checkpoints: named progress markers that let an interrupted ingest resume.

A checkpoint is one row of ``checkpoints`` keyed by ``(scope, key)`` with a status and
a JSON value, e.g. the PMIDs an E-utilities window found (``eutils``/``…#search``) or
the fetch time recorded for a file (``files``/path hash).

Example:
    >>> from litpulse.core import db
    >>> from litpulse.core.settings import Settings
    >>> cps = Checkpoints(db.connect(Settings.from_env({}, database_url="sqlite:///:memory:")))
    >>> cps.set_checkpoint("demo", "k", "done", {"n": 1})
    >>> cps.get_checkpoint("demo", "k")["value"]
    {'n': 1}
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.engine import Connection

from ingest.dates import searched_days
from litpulse.core.db import upsert
from litpulse.core.schema import checkpoints
from litpulse.core.settings import Settings
from litpulse.core.timeutil import as_utc, utcnow

__all__ = [
    "EUTILS_SCOPE",
    "FILES_SCOPE",
    "Checkpoints",
    "file_key",
    "files_first_read",
    "forget_listed",
    "listed_pmids",
    "window_key",
]

#: Scope of the E-utilities windows' marks (:mod:`ingest.eutils`): a window's search
#: (``…#search``, keyed by :func:`window_key`) and its fetched batches.
EUTILS_SCOPE = "eutils"

#: Scope of the fetch times of local files (``ingest --files``: :mod:`ingest.files`),
#: keyed by :func:`file_key`.
FILES_SCOPE = "files"


def file_key(path: str) -> str:
    """The checkpoint key of a local file: the SHA-1 of its absolute path."""
    return hashlib.sha1(path.encode()).hexdigest()


def files_first_read(conn: Connection, paths: Iterable[str]) -> dict[str, dt.datetime]:
    """When this store first read each local file of ``paths`` (absolute paths) as it was
    last read (:meth:`Checkpoints.first_read_at`, scope :data:`FILES_SCOPE`): those it
    holds a fetch time of."""
    keys = {file_key(p): p for p in paths}
    out: dict[str, dt.datetime] = {}
    c = checkpoints.c
    wanted = sorted(keys)
    for start in range(0, len(wanted), 500):
        for key, value in conn.execute(
            select(c.key, c.value).where(c.scope == FILES_SCOPE,
                                         c.key.in_(wanted[start : start + 500]))
        ):  # fmt: skip
            value = value or {}
            if value.get("fetched_at") and value.get("path", keys[key]) == keys[key]:
                out[keys[key]] = dt.datetime.fromisoformat(value["fetched_at"])
    return out


class Checkpoints:
    """Reads and writes checkpoints.

    Args:
        engine: An engine from :func:`litpulse.core.db.connect` (tables exist).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get_checkpoint(self, scope: str, key: str) -> dict[str, Any] | None:
        """The checkpoint ``(scope, key)`` as ``{scope, key, status, value, updated_at}``."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(checkpoints).where(checkpoints.c.scope == scope, checkpoints.c.key == key)
            ).first()
        if row is None:
            return None
        m = row._mapping
        return {
            "scope": m["scope"],
            "key": m["key"],
            "status": m["status"],
            "value": dict(m["value"] or {}),
            "updated_at": m["updated_at"],
        }

    def first_read_at(
        self, scope: str, key: str, identity: dict[str, Any], now: dt.datetime
    ) -> dt.datetime:
        """When this store first read the source ``key`` as ``identity`` describes it.

        A source read again unchanged (a resumed or repeated run) keeps its first fetch
        time, so the store sees the same source and replays it up to where it got; a
        changed one (other size, mtime or checksum) gets ``now`` and counts as a newer
        source. The time is recorded before any item of the source is stored.
        """
        seen = self.get_checkpoint(scope, key)
        if seen is not None and all(seen["value"].get(k) == v for k, v in identity.items()):
            return dt.datetime.fromisoformat(seen["value"]["fetched_at"])
        self.set_checkpoint(scope, key, "read", {**identity, "fetched_at": now.isoformat()})
        return now

    def set_checkpoint(
        self,
        scope: str,
        key: str,
        status: str,
        value: dict[str, Any],
        *,
        conn: Connection | None = None,
    ) -> None:
        """Create or overwrite the checkpoint ``(scope, key)``.

        Args:
            conn: Write it inside this open transaction (committed with the work it
                marks); default: a transaction of its own.
        """
        row = {"scope": scope, "key": key, "status": status, "value": value, "updated_at": utcnow()}
        if conn is not None:
            upsert(conn, checkpoints, [row], keys=["scope", "key"])
            return
        with self.engine.begin() as own:
            upsert(own, checkpoints, [row], keys=["scope", "key"])

    def rewrite_checkpoint(
        self, scope: str, key: str, value: dict[str, Any], *, status: str, was: dt.datetime
    ) -> bool:
        """Write ``value`` into the checkpoint ``(scope, key)`` only if it still has
        ``status`` and was last written at ``was`` (as read): a writer that wrote it since
        keeps what it wrote. Returns whether it was written."""
        c = checkpoints.c
        with self.engine.begin() as conn:
            return bool(conn.execute(
                update(checkpoints)
                .where(c.scope == scope, c.key == key, c.status == status, c.updated_at == was)
                .values(value=value, updated_at=utcnow())
            ).rowcount)  # fmt: skip

    def delete_checkpoint(self, scope: str, key: str, *, conn: Connection) -> None:
        """Remove the checkpoint ``(scope, key)`` inside ``conn``'s open transaction (with
        the work that makes it needless)."""
        c = checkpoints.c
        conn.execute(checkpoints.delete().where(c.scope == scope, c.key == key))

    def delete_checkpoints(self, scope: str, prefixes: Iterable[str], *, conn: Connection) -> int:
        """Remove the checkpoints of ``scope`` whose key starts with one of ``prefixes``
        inside ``conn``'s open transaction (with the work that makes them needless: an
        E-utilities window's batch marks once the window is done). Returns how many."""
        c = checkpoints.c
        removed = 0
        for prefix in prefixes:
            removed += conn.execute(checkpoints.delete().where(
                c.scope == scope, c.key.startswith(prefix, autoescape=True))).rowcount
        return removed


# ------------------------------------------------ an E-utilities window's search mark


def window_key(start: dt.date, end: dt.date, query: str | None) -> str:
    """The checkpoint key of a window: ``2024-01-01..2024-01-02`` plus a query hash."""
    key = f"{start.isoformat()}..{end.isoformat()}"
    if query:
        key += "|q=" + hashlib.sha1(query.encode()).hexdigest()[:16]
    return key


def listed_pmids(
    store: Checkpoints, settings: Settings, since: dt.datetime, until: dt.datetime
) -> list[int] | None:
    """The PMIDs ESearch listed for the window ``[since, until)`` of all PubMed, as its
    last search recorded them (its checkpoint); ``None`` when none is recorded."""
    start, end = searched_days(settings, as_utc(since), as_utc(until))
    search = store.get_checkpoint(EUTILS_SCOPE, f"{window_key(start, end, None)}#search")
    if search is None or "pmids" not in (search.get("value") or {}):
        return None
    return [int(p) for p in search["value"]["pmids"]]


def forget_listed(
    store: Checkpoints, settings: Settings, since: dt.datetime, until: dt.datetime,
    query: str | None = None,
) -> bool:
    """Drop the listed PMIDs from the search mark of the finished window ``[since,
    until)`` (``query``: of that query) once a check judged it, or it was taken unchecked:
    no one reads them again (a rerun searches anew, in a new generation), and a window's
    list may hold millions (NLM's yearly MeSH update revises that many records). The mark
    keeps the rest (its generation, which a rerun numbers on from) and ``listed``, their
    number. Nothing changes when the mark was written again since it was read (a rerun
    began). Returns whether it dropped a list."""
    start, end = searched_days(settings, as_utc(since), as_utc(until))
    key = f"{window_key(start, end, query)}#search"
    mark = store.get_checkpoint(EUTILS_SCOPE, key)
    if mark is None or mark["status"] != "done" or "pmids" not in (mark["value"] or {}):
        return False
    value = {k: v for k, v in mark["value"].items() if k != "pmids"}
    value["listed"] = len(mark["value"]["pmids"])
    was = mark["updated_at"]
    return store.rewrite_checkpoint(EUTILS_SCOPE, key, value, status="done", was=was)
