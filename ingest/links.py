"""Article links: MeSH/publication-type terms, references and in-corpus citation counts.

``article_terms`` and ``references`` are replaced for every changed article and kept
only for live ones; ``cited_by_in_corpus`` moves by deltas in the same transaction
(:func:`replace_links`), and :func:`recompute_cited_by` recounts from scratch. A bulk load
may leave the counts alone (``counts=False``) and recount every article once at the end,
a PMID range per statement (:func:`recount_range`).

Every write is set-based: one statement per batch for the terms, the references and
the count changes (PostgreSQL: ``unnest`` of arrays; SQLite: ``json_each`` of one JSON
parameter). ``bulk=False`` writes the counts one ``UPDATE`` per PMID instead: the
record-by-record reference the tests compare the bulk path with.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence, Set
from itertools import chain, repeat
from typing import Any, TypeVar

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.engine import Connection

from ingest.rows import PreparedRecord
from litpulse.core.db import id_in, insert_tuples, mark_written, pg_int_array, upsert
from litpulse.core.schema import FOLDED_TERM_KINDS, article_terms, articles, references, term_forms
from litpulse.core.text import fold_term

T = TypeVar("T")

__all__ = [
    "IN_CHUNK",
    "add_term_forms",
    "chunks",
    "new_cited_by",
    "recompute_cited_by",
    "recount_range",
    "replace_links",
]

#: Largest IN (...) list per statement (SQLite allows 32766 bound parameters).
IN_CHUNK = 5000
#: ``UPDATE … FROM`` (3.33) and ``json_each`` make the SQLite count updates set-based.
_SQLITE_SET_BASED = sqlite3.sqlite_version_info >= (3, 33)
_NONE: frozenset[int] = frozenset()

_SET_CITED_BY = (
    update(articles)
    .where(articles.c.pmid == bindparam("b_pmid"))
    .values(cited_by_in_corpus=bindparam("b_n"))
)

_ADD_CITED_BY = (
    update(articles)
    .where(articles.c.pmid == bindparam("b_pmid"))
    .values(cited_by_in_corpus=articles.c.cited_by_in_corpus + bindparam("b_n"))
)


def replace_links(
    conn: Connection,
    stored_changed: set[int],
    live: dict[int, PreparedRecord],
    was_live: set[int],
    *,
    bulk: bool = True,
    new: Set[int] = _NONE,
    counted: Set[int] = _NONE,
    counts: bool = True,
) -> None:
    """Replace terms and references of changed articles; keep ``cited_by_in_corpus``.

    Args:
        conn: The batch's connection.
        stored_changed: Changed PMIDs that had a row before the batch (their old
            links are removed; new PMIDs have none).
        live: The changed PMIDs that end the batch live, with their prepared record.
        was_live: PMIDs that were live before the batch.
        bulk: Set-based count updates (``False``: one ``UPDATE`` per PMID).
        new: PMIDs whose rows this batch inserted (their stored count is 0: only their
            recount is read).
        counted: Those of ``new`` inserted with their count already right
            (:func:`new_cited_by`): neither recounted nor moved by deltas.
        counts: Keep ``cited_by_in_corpus`` (``False``: leave every count alone; a bulk
            load recounts them all at its end).

    The in-corpus counts move by deltas: -1 for each reference of an article that
    was live before, +1 for each reference of an article live now. An article that
    becomes live in this batch, and a row this batch inserts as a tombstone, get their
    own count recounted from ``references`` (so the count never depends on how the
    items fell into batches).
    """
    delta: Counter[int] = Counter()
    if stored_changed:
        where, param = id_in(conn, "citing_pmid", stored_changed)
        old = conn.exec_driver_sql(
            f'SELECT citing_pmid, cited_pmid FROM "references" WHERE {where}', (param,)
        ).all()
        delta.subtract([cited for citing, cited in old if citing in was_live])
        conn.exec_driver_sql(f'DELETE FROM "references" WHERE {where}', (param,))
        where, param = id_in(conn, "pmid", stored_changed)
        conn.exec_driver_sql(f"DELETE FROM article_terms WHERE {where}", (param,))
    term_rows: list[tuple[Any, ...]] = []
    ref_rows: list[tuple[int, int]] = []
    for pmid, prep in live.items():
        term_rows.extend(map((pmid,).__add__, prep.terms))
        ref_rows.extend(zip(repeat(pmid), prep.references))
    delta.update(chain.from_iterable(prep.references for prep in live.values()))
    insert_tuples(conn, article_terms, ("pmid", "kind", "term", "major"), term_rows)
    insert_tuples(conn, references, ("citing_pmid", "cited_pmid"), ref_rows)
    if not counts:
        return
    # articles live now but not before: count every live citer (delta would miss old ones);
    # so too a new tombstone (a deletion of a PMID never stored): citers stored in earlier
    # batches were not counted on a row that did not exist
    recount = (live.keys() - was_live) | (new - live.keys())
    changes = [(p, n) for p, n in sorted(delta.items()) if n and p not in recount]
    _update_cited_by(conn, changes, add=True, bulk=bulk)
    recount -= counted
    if recount:
        recompute_cited_by(conn, recount, bulk=bulk, fresh=recount & new)


def add_term_forms(
    conn: Connection, live: dict[int, PreparedRecord], known: Set[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Record in ``term_forms`` the spellings of MeSH descriptors and publication types
    that ``live`` carries and ``known`` does not hold, with their folded form (one
    statement; a spelling another writer added meanwhile is left as it is).

    Args:
        conn: The batch's connection.
        live: The batch's records that end it live.
        known: Spellings known to be recorded already (the caller's cache: it adds what
            this returns once the batch has committed).

    Returns:
        The ``(kind, term)`` spellings this batch wrote.
    """
    seen = {t[:2] for prep in live.values() for t in prep.terms if t[0] in FOLDED_TERM_KINDS}
    fresh = seen - known
    if fresh:  # in key order: two writers wait for each other rather than deadlock
        rows = [{"kind": k, "term": t, "folded": fold_term(t)} for k, t in sorted(fresh)]
        upsert(conn, term_forms, rows, keys=["kind", "term"], update=[])
    return fresh


def new_cited_by(
    conn: Connection,
    new: Set[int],
    stored_changed: Set[int],
    live: dict[int, PreparedRecord],
) -> Counter[int]:
    """The ``cited_by_in_corpus`` that PMIDs a batch is about to insert end the batch
    with, read before the batch writes anything, so their rows go in with it (an
    ``UPDATE`` of a just-inserted row writes a whole new version of it, and a row is
    several KB).

    The live citers after the batch are the stored ones it leaves unchanged (their
    references are stored: one grouped count, which leaves out ``stored_changed``) and
    the batch's own live records (``live``: counted here). That is what
    :func:`recompute_cited_by` counts after the batch's writes.
    """
    counts: Counter[int] = Counter()
    if not new:
        return counts
    counts.update(_live_citers(conn, new, skip=stored_changed))
    counts.update(c for prep in live.values() for c in prep.references if c in new)
    return counts


def recompute_cited_by(
    conn: Connection, pmids: set[int], *, bulk: bool = True, fresh: Set[int] = _NONE
) -> int:
    """Count live citing articles for the stored ones among ``pmids``; write the changes
    and return how many there were.

    Done as a grouped count driven by ``ix_references_cited`` and an update of the rows
    that differ (a correlated ``UPDATE`` lets SQLite's planner scan every live article).
    PMIDs in ``fresh`` are known to be stored with a count of 0 (their stored count is
    not read).
    """
    a = articles.c
    changes: list[tuple[int, int]] = []
    rest = sorted(pmids - fresh)
    for chunk in chunks(rest):
        stored: dict[int, int] = dict(
            conn.execute(select(a.pmid, a.cited_by_in_corpus).where(a.pmid.in_(chunk))).all()
        )
        if not stored:
            continue
        counts = _live_citers(conn, stored.keys())
        changes.extend(
            (pmid, counts.get(pmid, 0))
            for pmid, old in stored.items()
            if counts.get(pmid, 0) != old
        )
    if fresh:
        changes.extend(_live_citers(conn, fresh).items())
    _update_cited_by(conn, changes, add=False, bulk=bulk)
    return len(changes)


def recount_range(conn: Connection, lo: int, hi: int) -> int:
    """Set ``cited_by_in_corpus`` of every article with ``lo <= pmid < hi`` to its count of
    live citers, in one statement (a grouped count over ``ix_references_cited`` joined to
    the articles of the range); only the rows whose count differs are written.

    Returns:
        How many rows changed.
    """
    if conn.dialect.name == "sqlite" and not _SQLITE_SET_BASED:  # old SQLite: no UPDATE … FROM
        a = articles.c
        pmids = conn.execute(select(a.pmid).where(a.pmid >= lo, a.pmid < hi)).scalars()
        return recompute_cited_by(conn, set(pmids))
    result = conn.execute(
        text(
            "UPDATE articles AS a SET cited_by_in_corpus = d.n FROM ("
            "SELECT x.pmid AS pmid, coalesce(c.n, 0) AS n FROM articles AS x LEFT JOIN ("
            f"{_live_citer_counts(conn, 'r.cited_pmid >= :lo AND r.cited_pmid < :hi')}"
            ") AS c ON c.cited = x.pmid "
            "WHERE x.pmid >= :lo AND x.pmid < :hi) AS d "
            "WHERE a.pmid = d.pmid AND a.cited_by_in_corpus <> d.n"
        ),
        {"lo": lo, "hi": hi},
    )
    changed = int(result.rowcount or 0)
    if changed:
        mark_written(conn, "counts")  # counts a search ranks by changed: store_version
    return changed


def _live_citers(conn: Connection, cited: Set[int], *, skip: Set[int] = _NONE) -> dict[int, int]:
    """How many stored live articles (leaving out the citers in ``skip``) cite each of
    ``cited`` (those cited by none are absent): one grouped count over the set."""
    where, param = id_in(conn, "r.cited_pmid", cited)
    params: tuple[Any, ...] = (param,)
    if skip:
        skip_sql, skip_param = id_in(conn, "r.citing_pmid", skip)
        where += f" AND NOT ({skip_sql})"
        params += (skip_param,)
    return {
        int(p): int(n) for p, n in conn.exec_driver_sql(_live_citer_counts(conn, where), params)
    }


def _live_citer_counts(conn: Connection, where: str) -> str:
    """SQL of ``(cited, n)`` rows: for each ``r.cited_pmid`` of the references that
    ``where`` keeps (``references AS r``), how many stored live articles cite it (cited by
    none: no row). A grouped count driven by ``ix_references_cited``; ``where`` carries
    the caller's placeholders."""
    false, true = ("false", "true") if conn.dialect.name == "postgresql" else ("0", "1")
    return (
        'SELECT r.cited_pmid AS cited, count(*) AS n FROM "references" AS r '
        "JOIN articles AS citer ON citer.pmid = r.citing_pmid "
        # an expression, not the bare column: keeps the planner off ix_articles_is_deleted
        f"WHERE {where} AND coalesce(citer.is_deleted, {true}) = {false} "
        "GROUP BY r.cited_pmid"
    )


def _update_cited_by(
    conn: Connection, changes: list[tuple[int, int]], *, add: bool, bulk: bool
) -> None:
    """Add ``n`` to (``add``) or set to ``n`` the ``cited_by_in_corpus`` of each stored
    ``pmid`` of ``(pmid, n)`` (others are ignored), in one statement when ``bulk``."""
    if not changes:
        return
    value = "a.cited_by_in_corpus + d.n" if add else "d.n"
    if bulk and conn.dialect.name == "postgresql":
        pmids, ns = zip(*changes, strict=True)
        conn.exec_driver_sql(
            f"UPDATE articles AS a SET cited_by_in_corpus = {value} "
            "FROM unnest(%s::bigint[], %s::integer[]) AS d(pmid, n) WHERE a.pmid = d.pmid",
            (pg_int_array(pmids), pg_int_array(ns)),
        )
        return
    if bulk and conn.dialect.name == "sqlite" and _SQLITE_SET_BASED:
        conn.exec_driver_sql(
            f"UPDATE articles AS a SET cited_by_in_corpus = {value} FROM ("
            "SELECT json_extract(value, '$[0]') AS pmid, json_extract(value, '$[1]') AS n "
            "FROM json_each(?)) AS d WHERE a.pmid = d.pmid",
            (json.dumps(changes),),
        )
        return
    stmt = _ADD_CITED_BY if add else _SET_CITED_BY
    conn.execute(stmt, [{"b_pmid": p, "b_n": n} for p, n in changes])


def chunks(seq: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``seq`` in slices of at most ``size`` (for ``IN (...)`` lists)."""
    for start in range(0, len(seq), size):
        yield seq[start : start + size]
