"""PMIDs owed by E-utilities: listed by ESearch, left out by EFetch even when asked twice.

A window's ESearch lists every PMID created or revised in it; EFetch sometimes leaves one
out (a record being withdrawn or re-indexed between the two calls, a backend hiccup). Such
a PMID is *owed* (table ``missing_pmids``): every later E-utilities run asks EFetch for the
PMIDs still owed (:func:`owed`, then :func:`settle`), whatever its own window, until one
returns it — a window's dates alone would never list it again once the overlap has passed.
After ``settings.missing_retries`` later runs asked in vain it is *given up*: kept, shown
by ``litpulse status`` and ``litpulse missing``, and no longer asked for, unless a window
lists it again. A PMID stored by any other path after its last ask (an update file) is
settled (:func:`drop_stored`).

Each ask is counted once per ``key`` (a window and the generation of its search): a run
killed after counting and resumed counts no try twice, and asks only what it has not.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, and_, delete, exists, func, select, update
from sqlalchemy.engine import Connection

from litpulse.core.db import db_now
from litpulse.core.schema import articles, missing_pmids
from litpulse.core.timeutil import iso

logger = logging.getLogger(__name__)
_m = missing_pmids.c


def note_window(
    engine: Engine,
    *,
    listed: Iterable[int],
    missing: Sequence[int],
    where: str,
    key: str,
    retries: int,
) -> list[int]:
    """After a window's batches: owed PMIDs the window got are settled; those it listed
    and did not get are owed (a try more for those owed already).

    Args:
        engine: The store.
        listed: Every PMID the window's ESearch listed.
        missing: Those EFetch did not return (asked twice).
        where: The window and its run, for the record (``2024-01-01..2024-01-31 (run 3)``).
        key: The window and its search's generation (a try is counted once per key).
        retries: ``settings.missing_retries``.

    Returns:
        The PMIDs given up now.
    """
    lost = set(missing)
    with engine.begin() as conn:
        now = db_now(conn)
        known = {r.pmid: r for r in conn.execute(select(_m.pmid, _m.last_asked_in))}
        if known:
            listed_known = {p for p in listed if p in known}
            got = sorted(listed_known - lost)
            if got:
                conn.execute(delete(missing_pmids).where(_m.pmid.in_(got)))
        new = [p for p in sorted(lost) if p not in known]
        if new:
            conn.execute(
                missing_pmids.insert(),
                [
                    {"pmid": p, "first_missing_in": where, "first_missing_at": now,
                     "last_asked_at": now, "last_asked_in": key, "tries": 1,
                     "given_up_at": now if retries == 0 else None}
                    for p in new
                ],  # fmt: skip
            )
        again = [p for p in sorted(lost) if p in known and known[p].last_asked_in != key]
        given_up = _count_try(conn, again, key, retries, now)
    given_up += new if retries == 0 else []
    _warn(given_up, retries)
    return sorted(given_up)


def owed(engine: Engine, key: str) -> list[int]:
    """The PMIDs still owed (not given up) that ``key`` has not asked for yet."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(_m.pmid)
                .where(_m.given_up_at.is_(None), _m.last_asked_in != key)
                .order_by(_m.pmid)
            ).scalars()
        )


def settle(
    engine: Engine, *, asked: Sequence[int], missing: Sequence[int], key: str, retries: int
) -> list[int]:
    """After an EFetch of owed PMIDs (``asked``) whose items are stored: those it got are
    settled, the others get a try more. Returns the PMIDs given up now."""
    lost = set(missing)
    with engine.begin() as conn:
        now = db_now(conn)
        got = [p for p in asked if p not in lost]
        if got:
            conn.execute(delete(missing_pmids).where(_m.pmid.in_(got)))
        given_up = _count_try(conn, sorted(lost), key, retries, now)
    _warn(given_up, retries)
    return given_up


def drop_stored(engine: Engine) -> int:
    """Settle the owed or given-up PMIDs an article row was written for after their last
    ask (an update file brought them); returns how many."""
    a = articles.c
    with engine.begin() as conn:
        stored = exists().where(and_(a.pmid == _m.pmid, a.updated_at > _m.last_asked_at))
        return conn.execute(delete(missing_pmids).where(stored)).rowcount or 0


def counts(conn: Connection) -> dict[str, int]:
    """``{"waiting": owed PMIDs still asked for, "given_up": the others}``."""
    waiting, given_up = conn.execute(
        select(
            func.count().filter(_m.given_up_at.is_(None)),
            func.count().filter(_m.given_up_at.is_not(None)),
        )
    ).one()
    return {"waiting": int(waiting or 0), "given_up": int(given_up or 0)}


def listing(engine: Engine, limit: int = 1000) -> list[dict[str, Any]]:
    """The owed and given-up PMIDs, oldest first: what ``litpulse missing`` shows."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(missing_pmids).order_by(_m.first_missing_at, _m.pmid).limit(limit)
        ).all()
    return [
        {
            "pmid": int(r.pmid),
            "tries": int(r.tries),
            "given_up": r.given_up_at is not None,
            "first_missing_in": r.first_missing_in,
            "first_missing_at": iso(r.first_missing_at),
            "last_asked_at": iso(r.last_asked_at),
        }
        for r in rows
    ]


def _count_try(
    conn: Connection, pmids: Sequence[int], key: str, retries: int, now: dt.datetime
) -> list[int]:
    """One try more for ``pmids`` (asked by ``key`` in vain); the ones given up now."""
    if not pmids:
        return []
    rows = conn.execute(
        select(_m.pmid, _m.tries, _m.given_up_at, _m.last_asked_in).where(_m.pmid.in_(pmids))
    ).all()
    given_up: list[int] = []
    for r in rows:
        if r.last_asked_in == key:  # counted by the run this one resumes
            continue
        tries = int(r.tries) + 1
        up = r.given_up_at is None and tries > retries
        conn.execute(
            update(missing_pmids)
            .where(_m.pmid == r.pmid)
            .values(tries=tries, last_asked_at=now, last_asked_in=key,
                    given_up_at=now if up else r.given_up_at)  # fmt: skip
        )
        if up:
            given_up.append(int(r.pmid))
    return sorted(given_up)


def _warn(given_up: Sequence[int], retries: int) -> None:
    if given_up:
        logger.warning(
            "given up on %d PMIDs ESearch listed but EFetch never returned (asked again by "
            "%d later runs): %s; `litpulse missing` lists them",
            len(given_up), retries, list(given_up)[:20],
        )  # fmt: skip
