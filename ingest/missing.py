"""PMIDs owed by E-utilities: listed by ESearch, left out by EFetch even when asked twice.

A window's ESearch lists every PMID created or revised in it; EFetch sometimes leaves one
out (a record being withdrawn or re-indexed between the two calls, a backend hiccup). Such
a PMID is *owed* (table ``missing_pmids``): every later E-utilities run asks EFetch for the
PMIDs still owed (:func:`owed`, then :func:`settle`), whatever its own window, until one
returns it — a window's dates alone would never list it again once the overlap has passed.
After ``settings.missing_retries`` later runs asked in vain, and once its first miss is as
many days old (a backfill asking many windows in an hour gives nothing up early), it is
*given up*: kept, shown by ``litpulse status`` and ``litpulse missing``, and no longer
asked for, unless a window lists it again. A PMID the store holds deleted is not owed
(EFetch, not serving it, agrees; a record PubMed serves again lifts the deletion when it
comes), and one stored by any other path after its last ask (an update file) is settled
(:func:`drop_stored`).

A window generation (``key``: the window and the generation of its search) notes its misses
once (checkpoint ``<key>#owed-noted``, in the note's transaction) and asks the owed list it
fixed first, batch by batch, each marked done with its settle (``ingest.eutils``): a run
killed anywhere and resumed counts no try twice and asks only what it has not.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, and_, delete, exists, func, or_, select, update
from sqlalchemy.engine import Connection

from ingest.checkpoints import Checkpoints
from ingest.links import chunks
from litpulse.core.db import db_now
from litpulse.core.schema import articles, missing_pmids
from litpulse.core.timeutil import iso

logger = logging.getLogger(__name__)
_m = missing_pmids.c
#: Given up, and the on-call engineer not yet told (an alert owed).
_UNTOLD = and_(_m.given_up_at.is_not(None), _m.alerted_at.is_(None))
#: The checkpoint scope of the notes and owed asks (the E-utilities windows' own).
SCOPE = "eutils"


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
    and did not get are owed (a try more for those owed already), unless the store holds
    them deleted. Done once per ``key``: a resumed run's note is a no-op.

    Args:
        engine: The store.
        listed: Every PMID the window's ESearch listed.
        missing: Those EFetch did not return (asked twice).
        where: The window and its run, for the record (``2024-01-01..2024-01-31 (run 3)``).
        key: The window and its search's generation.
        retries: ``settings.missing_retries``.

    Returns:
        The PMIDs given up now.
    """
    marks = Checkpoints(engine)
    noted = f"{key}#owed-noted"
    if marks.get_checkpoint(SCOPE, noted) is not None:
        return []  # this generation of the window noted its misses already
    with engine.begin() as conn:
        now = db_now(conn)
        lost = set(missing) - _deleted(conn, sorted(set(missing)))
        known = set(conn.execute(select(_m.pmid)).scalars())
        if known:
            for part in chunks(sorted((known & set(listed)) - lost)):
                conn.execute(delete(missing_pmids).where(_m.pmid.in_(part)))
        new = sorted(lost - known)
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
        given_up = _count_try(conn, sorted(lost & known), key, retries, now)
        marks.set_checkpoint(SCOPE, noted, "done", {"missing": len(lost)}, conn=conn)
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
    engine: Engine,
    *,
    asked: Sequence[int],
    missing: Sequence[int],
    key: str,
    retries: int,
    progress: Callable[[list[int]], tuple[str, dict[str, Any]]] | None = None,
) -> list[int]:
    """After an EFetch of owed PMIDs (``asked``) whose items are stored: those it got are
    settled, the others get a try more; ``progress(given_up_now)`` gives a checkpoint (a
    key of :data:`SCOPE` and its value) written in the same transaction. Returns the
    PMIDs given up now."""
    lost = set(missing)
    with engine.begin() as conn:
        now = db_now(conn)
        for part in chunks([p for p in asked if p not in lost]):
            conn.execute(delete(missing_pmids).where(_m.pmid.in_(part)))
        given_up = _count_try(conn, sorted(lost), key, retries, now)
        if progress is not None:
            mark, value = progress(given_up)
            Checkpoints(engine).set_checkpoint(SCOPE, mark, "asking", value, conn=conn)
    _warn(given_up, retries)
    return given_up


def drop_stored(engine: Engine) -> int:
    """Settle the owed or given-up PMIDs the store now holds deleted, or wrote an article
    row for after their last ask (an update file brought them); returns how many."""
    a = articles.c
    with engine.begin() as conn:
        stored = exists().where(
            and_(a.pmid == _m.pmid, or_(a.is_deleted.is_(True), a.updated_at > _m.last_asked_at))
        )
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


def untold(engine: Engine, limit: int = 1000) -> tuple[int, list[dict[str, Any]]]:
    """The given-up PMIDs whose alert is owed (``alerted_at`` unset): how many, and the
    first ``limit`` of them (``pmid``, ``first_missing_in``: the window), oldest first."""
    with engine.connect() as conn:
        total = untold_count(conn)
        rows = conn.execute(
            select(_m.pmid, _m.first_missing_in)
            .where(_UNTOLD)
            .order_by(_m.given_up_at, _m.pmid)
            .limit(limit)
        ).all()
    return total, [{"pmid": int(r.pmid), "first_missing_in": r.first_missing_in} for r in rows]


def mark_told(engine: Engine, pmids: Sequence[int]) -> None:
    """Record that the give-up of ``pmids`` was alerted (:func:`untold` no longer lists
    them)."""
    with engine.begin() as conn:
        now = db_now(conn)
        for part in chunks(sorted(set(pmids))):
            conn.execute(
                update(missing_pmids)
                .where(_m.pmid.in_(part), _UNTOLD)
                .values(alerted_at=now)
            )


def untold_count(conn: Connection) -> int:
    """How many given-up PMIDs' alerts are owed (``litpulse status``)."""
    return int(conn.execute(select(func.count()).where(_UNTOLD)).scalar() or 0)


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
    """One try more for ``pmids`` (asked by ``key`` in vain; none already asked by it);
    the ones given up now: more than ``retries`` tries, the first at least ``retries``
    days ago (a backfill asking many windows in an hour gives nothing up early)."""
    floor = now - dt.timedelta(days=retries)
    given_up: list[int] = []
    for part in chunks(pmids):
        these = and_(_m.pmid.in_(part), _m.last_asked_in != key)
        up = list(
            conn.execute(
                select(_m.pmid).where(
                    these, _m.given_up_at.is_(None), _m.tries + 1 > retries,
                    _m.first_missing_at <= floor,
                )  # fmt: skip
            ).scalars()
        )
        conn.execute(
            update(missing_pmids)
            .where(these)
            .values(tries=_m.tries + 1, last_asked_at=now, last_asked_in=key)
        )
        for few in chunks(up):
            conn.execute(update(missing_pmids).where(_m.pmid.in_(few)).values(given_up_at=now))
        given_up += up
    return sorted(given_up)


def _deleted(conn: Connection, pmids: Sequence[int]) -> set[int]:
    """Those of ``pmids`` the store holds as deleted (EFetch, not serving them, agrees)."""
    a = articles.c
    out: set[int] = set()
    for part in chunks(pmids):
        out.update(
            conn.execute(select(a.pmid).where(a.pmid.in_(part), a.is_deleted.is_(True))).scalars()
        )
    return out


def _warn(given_up: Sequence[int], retries: int) -> None:
    if given_up:
        logger.warning(
            "given up on %d PMIDs ESearch listed but EFetch never returned (asked again by "
            "%d later runs): %s; `litpulse missing` lists them",
            len(given_up), retries, list(given_up)[:20],
        )  # fmt: skip
