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
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from litpulse.core.db import upsert
from litpulse.core.schema import checkpoints
from litpulse.core.timeutil import utcnow

__all__ = ["Checkpoints"]


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
